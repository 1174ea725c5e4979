/* Lockspace: heartbeats, on-disk locks, lock break and fencing (issue 4).
 *
 * A lockspace is laid at a block offset of a LUN: a header block, a
 * heartbeat region (one block per host slot), a paxos region (used only on
 * LUNs without COMPARE AND WRITE) and a table of lock records. The file
 * system embeds one in its volume; tests and `clusterfs locks init` lay one
 * on a bare LUN. Lock records may also live outside the table (next to the
 * metadata they guard): any block formatted with lock_record_format().
 *
 * Every call returns 0 or -errno and logs the most specific reason once:
 *   -EBUSY      lock held by a live host in a conflicting mode
 *   -ETIMEDOUT  lock still held when the wait expired
 *   -EIO        this host is fenced (missed its heartbeat deadline, or its
 *               slot was recovered by another host); nothing is written
 *   -EBADMSG    a record has a bad CRC; -EUCLEAN a bad magic;
 *               -EPROTO an unsupported version. Never treated as free.
 *   -EINVAL     mount parameters differ from the ones on disk
 *   -ENOSPC     no free or dead heartbeat slot / too many shared owners
 *   -EINPROGRESS the lock's owner is dead and being recovered by the
 *               housekeeping thread (try only; lockspace_start_recovery_thread)
 *   -EDEADLK    this host already holds the lock (a second acquire by the
 *               same host is refused; one release frees it)
 *   -EOPNOTSUPP the lockspace was formatted for an atomic step (COMPARE AND
 *               WRITE) this host's LUN cannot do: it refuses to join
 * See docs/locking.md for the format, the algorithm and the timeouts.
 */
#ifndef LOCKING_LOCKSPACE_H
#define LOCKING_LOCKSPACE_H

#include <stdbool.h>
#include <stdint.h>

struct lun;
struct lockspace;

#define LS_MAX_HOSTS_MIN 1
#define LS_MAX_HOSTS_MAX 4096
#define LS_DEFAULT_HOSTS 256
#define LS_DEFAULT_LOCKS 64
#define LS_DEFAULT_IO_TIMEOUT_MS 2000
#define LS_NAME_MAX 63
#define LS_LOCK_NAME_MAX 47
#define LS_LOCK_MAX_OWNERS 64

/* ---- Timeouts: everything derives from io_timeout ---------------------- */

struct ls_timeouts {
    uint32_t io_timeout_ms;  /* longest one I/O may take (incl. path failover) */
    uint32_t renew_ms;       /* heartbeat renewal period = io_timeout */
    uint32_t fence_ms;       /* self-fence: no write after last good renewal + fence_ms */
    uint32_t dead_ms;        /* observer: slot unchanged this long => dead */
    uint32_t mutex_hold_ms;  /* paxos mutex: the holder's writes stop at its phase 2 + this */
    uint32_t mutex_steal_ms; /* a holder seen this long is taken over (hold + in-flight + margin) */
};

/* dead = fence + io_timeout (in-flight) + io_timeout (margin) > fence + io.
 * Returns -EINVAL for an io_timeout outside 10 ms .. 600 s. */
int ls_timeouts_derive(uint32_t io_timeout_ms, struct ls_timeouts *out);

/* ---- Format ------------------------------------------------------------- */

/* The atomic step, chosen at format time and recorded in the header: every
 * host of a lockspace uses the same one (a host using COMPARE AND WRITE and
 * one using the Disk Paxos mutex would not exclude each other). */
enum ls_atomic_method {
    LS_ATOMIC_AUTO = 0,  /* format: CAW where the LUN has it, else paxos */
    LS_ATOMIC_CAW = 1,   /* SCSI COMPARE AND WRITE (ATS) */
    LS_ATOMIC_PAXOS = 2, /* Disk Paxos mutex + read-compare-write */
};
const char *ls_atomic_method_name(enum ls_atomic_method m);

struct ls_format_params {
    uint32_t io_timeout_ms;       /* 0 = LS_DEFAULT_IO_TIMEOUT_MS */
    enum ls_atomic_method atomic; /* 0 = CAW if the LUN has it, else paxos */
    uint32_t max_hosts;           /* 0 = LS_DEFAULT_HOSTS */
    uint32_t max_locks;           /* 0 = LS_DEFAULT_LOCKS */
};

/* Size of a lockspace in logical blocks. */
uint64_t lockspace_size_blocks(const struct ls_format_params *p);
/* Write a fresh lockspace at `offset` (in blocks): every slot free, every
 * lock record free, the paxos region empty. Not for a lockspace in use. */
int lockspace_format(struct lun *lun, uint64_t offset, const struct ls_format_params *p);

/* ---- Open / join / leave ------------------------------------------------ */

enum ls_fence_reason {
    LS_FENCE_DEADLINE = 1, /* could not renew the heartbeat in time */
    LS_FENCE_PREEMPTED,    /* the target refused our writes (key preempted) */
    LS_FENCE_SLOT_LOST,    /* our slot's generation changed: drop all cached state */
};

struct ls_host_info {
    uint32_t slot;
    uint32_t generation;
    char name[LS_NAME_MAX + 1];
    uint8_t uuid[16];
    uint64_t journal_lba;
    uint64_t pr_key; /* its reservation key (0 = none); already preempted when the hook runs */
};

/* Called (from the lockspace's thread) once, when this host fences itself. */
typedef void (*ls_fenced_fn)(struct lockspace *ls, enum ls_fence_reason why, void *opaque);
/* Called by the host that breaks a dead host's locks (journal replay), in
 * this order: mark its slot "recovering", PREEMPT its key, read the keys
 * back (the key must be gone), THEN this hook, then clear the slot. The
 * recoverer keeps renewing its own heartbeat (a joiner: its mark) while the
 * hook runs. A non-zero return aborts the break; the slot stays
 * "recovering" (another host takes it over once we are gone). */
typedef int (*ls_recover_fn)(struct lockspace *ls, const struct ls_host_info *dead, void *opaque);

struct ls_open_opts {
    const char *host_name;    /* NULL = gethostname() */
    const uint8_t *host_uuid; /* 16 bytes; NULL = random */
    uint32_t io_timeout_ms;   /* 0 = take the on-disk value; otherwise must match */
    uint32_t max_hosts;       /* 0 = any; otherwise must match */
    uint64_t journal_lba;     /* recorded in the slot for recovery */
    bool force_paxos;         /* this host cannot use CAW: refuse a CAW lockspace (tests) */
    bool no_fencing;          /* do not register a PR key (observers, tests) */
    ls_fenced_fn fenced;
    ls_recover_fn recover;
    void *opaque;
};

/* Read and check the header. No write happens until lockspace_join. */
int lockspace_open(struct lun *lun, uint64_t offset, const struct ls_open_opts *o,
                   struct lockspace **out);
/* Register the PR key (where the LUN has reservations), claim a slot, start
 * the renewal thread. A free slot is taken at once; with none free, the
 * joiner watches every slot for the dead time (as a new observer) and takes
 * a dead host's slot after recovering it (mark, recovery hook, fence, slot
 * to generation + 1 and ours in one atomic step). -ENOSPC ("all N slots
 * live", or what it saw) once every slot was seen live, or after
 * dead + 2 renew ms. See docs/locking.md for the bound on the join time. */
int lockspace_join(struct lockspace *ls);
/* Release all locks, free the slot, stop renewing, unregister. */
int lockspace_leave(struct lockspace *ls);
/* Stop the renewal thread and free; writes nothing (leave first). */
void lockspace_close(struct lockspace *ls);
/* Recover every host this observer judges dead (slot unchanged for the dead
 * time), whether or not it holds a lock we want: mark, recovery hook, fence,
 * clear (generation + 1), which frees its slot for a new host. Returns the
 * number of hosts recovered, or -errno. Call it from a housekeeping thread
 * (never from the fenced/recover callbacks). */
int lockspace_recover_dead(struct lockspace *ls);
/* Recovery off the callers' path (issue 11): a housekeeping thread runs
 * lockspace_recover_dead every renewal period (the recovery hook runs
 * there). From then on lock_acquire never breaks a dead owner inline: a
 * lock whose owner is dead or being recovered is busy until the recovery
 * cleared the owner's slot; a try (timeout 0) returns -EINPROGRESS for it
 * (-EBUSY for a live owner). Stopped by lockspace_leave / close. */
int lockspace_start_recovery_thread(struct lockspace *ls);
/* Test helper: stop renewing at once, as if the process had died. */
void lockspace_abandon(struct lockspace *ls);

/* Fault injection for tests: `fn` is called right after the write gate
 * (fence / deadline check) passed and right before the write goes to the
 * LUN, so a test can pause a host exactly between its check and its write
 * (e.g. raise(SIGSTOP), or block on a condition). NULL removes it. */
enum ls_test_point {
    LS_TP_DATA_WRITE = 1, /* ls_write: data guarded by a lock */
    LS_TP_META_WRITE,     /* lockspace blocks (paxos dblock / leader, leave) */
    LS_TP_RENEW,          /* heartbeat renewal of our own slot */
    LS_TP_CAS,            /* the COMPARE AND WRITE of the atomic step */
    LS_TP_DELTA,          /* a delta-lease write (mark / claim without CAW) */
};
typedef void (*ls_test_hook_fn)(struct lockspace *ls, enum ls_test_point where, uint64_t lba,
                                void *opaque);
void lockspace_set_test_hook(struct lockspace *ls, ls_test_hook_fn fn, void *opaque);

const struct ls_timeouts *lockspace_timeouts(const struct lockspace *ls);
uint32_t lockspace_slot(const struct lockspace *ls);
uint32_t lockspace_generation(const struct lockspace *ls);
/* This host's persistent-reservation key (0 = none: no PR on the LUN). */
uint64_t lockspace_pr_key(const struct lockspace *ls);
bool lockspace_uses_caw(const struct lockspace *ls);
/* Whether a dead host is fenced off the LUN by persistent reservations;
 * false: safety rests on the timeouts alone (said loudly at join). */
bool lockspace_has_pr_fencing(const struct lockspace *ls);
/* LBA (absolute) of lock record `index` of the lockspace's table. */
uint64_t lockspace_lock_lba(const struct lockspace *ls, uint32_t index);
/* I/Os issued by this lockspace so far (benchmarks). */
uint64_t lockspace_io_count(const struct lockspace *ls);

/* 0 if this host may write to the LUN now, -EIO once it is fenced or past
 * its self-fence deadline. Callers guarding data with a lock call it right
 * before each write; ls_write does both. */
int lockspace_check_write(struct lockspace *ls);
int ls_write(struct lockspace *ls, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags);
/* For writes the caller sends itself (lun_submit with lun_io.deadline_ns,
 * lun_write_dl): the deadline they must carry, absolute lun_now_ns()
 * (CLOCK_BOOTTIME) ns = the self-fence deadline; -EIO once fenced. Ask
 * again for every write: renewals move it. */
int lockspace_write_deadline(struct lockspace *ls, uint64_t *deadline_ns);

/* ---- Locks ---------------------------------------------------------------- */

enum ls_lock_mode {
    LS_LOCK_FREE = 0,
    LS_LOCK_EXCLUSIVE = 1,
    LS_LOCK_SHARED = 2,       /* read-only, many holders */
    LS_LOCK_MULTI_WRITER = 3, /* many holders that coordinate themselves */
};

const char *ls_lock_mode_name(enum ls_lock_mode m);

/* Lay a free lock record at an absolute `lba`. */
int lock_record_format(struct lockspace *ls, uint64_t lba, const char *name);
/* Take the lock at `lba` in `mode`. timeout_ms 0 = try once (-EBUSY),
 * < 0 = wait forever. Holders whose host is dead are broken (recovered,
 * fenced) on the way. */
int lock_acquire(struct lockspace *ls, uint64_t lba, enum ls_lock_mode mode, int timeout_ms);
int lock_release(struct lockspace *ls, uint64_t lba);

/* Fencing token of a lock this host holds (issue 11): stamp it into the
 * metadata written under the lock. (slot, generation) name the holder's
 * incarnation; lock_version is the record's version after our acquire,
 * bumped by every change of the record, so a later holder's token is
 * always greater. A reader that finds metadata stamped with a token whose
 * (slot, generation) is gone (recovered) knows it came from a fenced
 * holder. -ENOENT if this host does not hold the lock. */
struct ls_fence_token {
    uint32_t slot, generation;
    uint64_t lock_version;
};
int lock_fence_token(struct lockspace *ls, uint64_t lba, struct ls_fence_token *out);

/* ---- Status (for `clusterfs locks`) -------------------------------------- */

enum ls_host_state {
    LS_HOST_FREE = 0,
    LS_HOST_UNKNOWN,    /* seen, but not yet changed nor dead-time old */
    LS_HOST_LIVE,       /* slot changed while we watched */
    LS_HOST_DEAD,       /* unchanged for at least the dead-time */
    LS_HOST_RECOVERING, /* marked by a host that is breaking its locks */
    LS_HOST_CORRUPT,    /* bad CRC / magic */
};
const char *ls_host_state_name(enum ls_host_state s);

struct ls_status_host {
    struct ls_host_info info;
    enum ls_host_state state;
    uint64_t counter;
    uint64_t age_ms; /* time since this observer saw the slot change (or first saw it) */
    bool changed;    /* it saw the slot change (else age_ms is a lower bound) */
    bool self;
};

struct ls_status_lock {
    uint32_t index;
    uint64_t lba;
    char name[LS_LOCK_NAME_MAX + 1];
    enum ls_lock_mode mode;
    uint64_t version;
    unsigned nowners;
    uint32_t owner_slot[LS_LOCK_MAX_OWNERS];
    uint32_t owner_gen[LS_LOCK_MAX_OWNERS];
    int error; /* -EBADMSG etc. for a corrupt record */
};

struct ls_status {
    struct ls_timeouts timeouts;
    uint32_t max_hosts, max_locks, block_size;
    bool caw;
    bool pr_fencing; /* the LUN has persistent reservations (type 7) */
    unsigned nhosts; /* non-free slots listed */
    struct ls_status_host *hosts;
    unsigned nlocks; /* lock records of the table that are held or corrupt */
    struct ls_status_lock *locks;
};

/* Read the heartbeat region `samples` times, renew_ms apart (more samples =
 * more hosts judged live rather than unknown), then the lock table.
 * LS_STATUS_SETTLE: sample until no slot is unknown (every host live or
 * dead), at most dead_ms + 2 renew_ms. */
#define LS_STATUS_SETTLE 0xffffffffu
int lockspace_status(struct lockspace *ls, unsigned samples, struct ls_status *out);
void ls_status_free(struct ls_status *st);

#endif
