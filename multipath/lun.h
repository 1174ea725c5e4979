/* The LUN: one block device, whatever its paths are.
 *
 * A LUN is reached through one or more paths: an iSCSI session (libiscsi)
 * or a plain file / block device. Layers above see only this header: they
 * never see iSCSI, sessions or paths. Every call returns 0 or -errno.
 *
 * Addressing is in logical blocks (lun_info.block_size bytes, 512 or 4096).
 * Buffers need no particular alignment.
 *
 * Error codes, the same for every kind of path:
 *   -EINVAL      bad argument (range past the end, nblocks 0 where not allowed)
 *   -EIO         medium error, or I/O failed on every path / APD time expired
 *   -EILSEQ      COMPARE AND WRITE miscompare (the block did not hold `expect`)
 *   -EBADE       RESERVATION CONFLICT: another initiator holds a reservation
 *                that excludes us, or our key was preempted (we are fenced)
 *   -EOPNOTSUPP  the LUN does not support the operation (see lun_info.caps)
 *   -ETIMEDOUT   a command did not complete within the timeout
 *   -ENOTCONN    transport lost (single-path LUN)
 *   -ENODEV      permanent device loss (LUN gone, 05/25/00)
 *   -EROFS       LUN opened read-only, or write protected
 *   -EACCES      login / CHAP refused
 *   -ENOENT      no such file, target or LUN number
 *   -EHOSTUNREACH / -ECONNREFUSED  portal unreachable
 * The most specific human-readable reason (which object, which path, what
 * was expected and found) is logged once through common/log.h.
 */
#ifndef MULTIPATH_LUN_H
#define MULTIPATH_LUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lun;

/* What the target says it can do: probed (REPORT SUPPORTED OPERATION CODES,
 * VPD pages 0x00/0xB0/0xB2, PERSISTENT RESERVE IN REPORT CAPABILITIES),
 * never assumed. For a multipath LUN: what every path supports. */
struct lun_caps {
    bool compare_and_write;       /* SCSI COMPARE AND WRITE (ATS) or file emulation */
    bool persistent_reservations; /* PERSISTENT RESERVE IN/OUT */
    bool pr_we_all_registrants;   /* reservation type 7 accepted */
    bool pr_preempt_abort;        /* PREEMPT AND ABORT */
    bool unmap;                   /* UNMAP / hole punching */
    bool write_same;              /* WRITE SAME(16) */
    bool write_same_unmap;        /* WRITE SAME with UNMAP bit */
    bool sync_cache;              /* SYNCHRONIZE CACHE(16) or (10) */
    bool fua;                     /* FUA bit honoured on WRITE */
};

#define LUN_ID_MAX 256

struct lun_info {
    char vendor[9]; /* T10 vendor id, trimmed */
    char product[17];
    char revision[5];
    char serial[LUN_ID_MAX];      /* VPD 0x80 unit serial number */
    char id[LUN_ID_MAX];          /* VPD 0x83 designator as text, e.g. "naa.60000000..."
                                     or "t10.IET..."; for files "file.<dev>.<ino>" */
    uint32_t block_size;          /* logical block size in bytes: 512 or 4096 */
    uint32_t physical_block_size; /* >= block_size */
    uint64_t num_blocks;          /* capacity in logical blocks */
    uint32_t max_transfer_blocks; /* per command; 0 = no limit reported */
    uint32_t max_unmap_blocks;    /* 0 = unknown */
    struct lun_caps caps;
    struct lun_caps caps_unknown; /* what the path could not probe (e.g. MODE SENSE refused
                                     under another initiator's reservation): neither claimed
                                     nor denied */
};

/* Path selection policies of a multipath LUN (see docs/multipath.md). */
enum lun_policy {
    LUN_POLICY_DEFAULT = 0,  /* the measured best: service-time */
    LUN_POLICY_FIXED,        /* the preferred path; fail back when it returns */
    LUN_POLICY_MRU,          /* most recently used: stay where you are */
    LUN_POLICY_ROUND_ROBIN,  /* switch paths every rr_ios I/Os */
    LUN_POLICY_SERVICE_TIME, /* least outstanding work (bytes in flight) */
};

struct lun_options {
    const char *host_name;       /* used for a default initiator name; NULL = gethostname() */
    const char *initiator_name;  /* iSCSI initiator IQN; NULL = iqn.2026-11.org.clusterfs:<host> */
    unsigned timeout_ms;         /* per command; default 5000 */
    unsigned connect_timeout_ms; /* login; default 5000 */
    bool read_only;
    bool no_direct;           /* files: do not try O_DIRECT */
    uint32_t file_block_size; /* files: logical block size, 512 (default) or 4096 */
    /* Multipath (used with two or more paths, or with `multipath` set).
     * 0 means the default given in brackets. */
    bool multipath;             /* the engine (checker, reconnect, queueing) even for 1 path */
    enum lun_policy policy;     /* [service-time] */
    unsigned rr_ios;            /* round-robin: switch every N I/Os [1] */
    unsigned preferred_path;    /* fixed: index of the preferred path [0] */
    unsigned queue_ms;          /* all paths down: queue I/O this long, then EIO [60000] */
    unsigned check_interval_ms; /* TEST UNIT READY on every path this often [250] */
    unsigned check_timeout_ms;  /* a path whose TUR hangs this long is failed [1000] */
    unsigned flap_count;        /* a path that failed this often ... [3] */
    unsigned flap_window_ms;    /* ... within this window [30000] ... */
    unsigned flap_hold_ms;      /* ... waits this long before it is used again [5000] */
    /* Liveness pings (iSCSI NOP-Out) on every path of the engine, idle or
     * not: a path whose pings go unanswered for nop_max_missed intervals in
     * a row is failed like a timed-out command. LUN_NOP_OFF: no pings. */
    unsigned nop_interval_ms; /* a NOP-Out this often [1000] */
    unsigned nop_max_missed;  /* intervals without a NOP-In before the path fails [2] */
};

#define LUN_NOP_OFF 0xFFFFFFFFu /* lun_options.nop_interval_ms: no NOP-Out pings */

void lun_options_init(struct lun_options *opts);

/* Open a LUN by one path. `uri` is one of:
 *   iscsi://[user[%password]@]host[:port]/target-iqn/lun   (libiscsi's form)
 *   file:///absolute/path   or a plain path to a file / block device
 * A file URI may carry "?block_size=4096". The path is probed (INQUIRY,
 * VPD, READ CAPACITY, supported opcodes) before lun_open returns. */
int lun_open(const char *uri, const struct lun_options *opts, struct lun **out);

/* Open one LUN through several paths (issue: multipath). Every path must
 * report the same identity (lun_info.id); a path to a different LUN is
 * refused, naming both identities. */
int lun_open_paths(const char *const *uris, unsigned n, const struct lun_options *opts,
                   struct lun **out);

void lun_close(struct lun *lun);

const struct lun_info *lun_get_info(const struct lun *lun);
const char *lun_name(const struct lun *lun); /* for messages: the URI without password */
/* The paths of a LUN, for tools: count, kind ("file", "iscsi", "fault") and
 * name (URI without password) of path i; NULL if i is out of range. */
unsigned lun_num_paths(const struct lun *lun);
/* A malloc'd copy of a LUN URI without the password ("iscsi://u%pw@h/..."
 * -> "iscsi://u@h/..."), for messages; NULL on ENOMEM. */
char *lun_uri_redact(const char *uri);
const char *lun_path_kind(const struct lun *lun, unsigned i);
const char *lun_path_name(const struct lun *lun, unsigned i);
static inline uint32_t lun_block_size(const struct lun *lun)
{
    return lun_get_info(lun)->block_size;
}

/* ---- Multipath state and statistics (tools: `clusterfs paths`) --------- */

enum lun_path_state {
    LUN_PATH_ACTIVE,  /* carries I/O under the policy */
    LUN_PATH_STANDBY, /* healthy, not chosen by the policy (fixed, mru) */
    LUN_PATH_FAILED,  /* down (or held back after flapping) */
};

#define LUN_LAT_BUCKETS 32 /* bucket b counts latencies in [2^(b-1), 2^b) microseconds */

struct lun_path_stats {
    enum lun_path_state state;
    bool held;                      /* failed and waiting out the flap hysteresis */
    unsigned inflight;              /* commands on the path now */
    uint64_t reads, writes, others; /* completed commands */
    uint64_t read_bytes, write_bytes;
    uint64_t errors;       /* commands that failed on this path */
    uint64_t failures;     /* times the path went to FAILED */
    uint64_t state_age_ms; /* time in the current state */
    uint64_t lat_hist[LUN_LAT_BUCKETS];
    uint64_t pings;       /* NOP-Outs answered (iSCSI; all sessions of the path) */
    uint64_t nop_misses;  /* ping intervals that passed without a NOP-In */
    char last_error[128]; /* why it last failed, "" if never */
};

/* Snapshot of path i's state and counters; -EINVAL if i is out of range. */
int lun_path_get_stats(struct lun *lun, unsigned i, struct lun_path_stats *out);
/* What path i reported when it was last probed (at open, or when it came
 * back): identity, geometry, capabilities. -ENOENT if it never answered
 * (unreachable since the open); -EINVAL if i is out of range. */
int lun_path_get_info(struct lun *lun, unsigned i, struct lun_info *out);
/* The latency below which a fraction q (0..1) of the commands completed,
 * in microseconds (upper edge of the log2 bucket); 0 with no samples. */
uint64_t lun_lat_percentile(const uint64_t hist[LUN_LAT_BUCKETS], double q);
const char *lun_path_state_name(enum lun_path_state s);
const char *lun_policy_name(enum lun_policy p);
/* "fixed", "mru", "round-robin" (or "rr"), "service-time" (or "st"). */
int lun_policy_parse(const char *s, enum lun_policy *out);
enum lun_policy lun_get_policy(const struct lun *lun);
bool lun_is_multipath(const struct lun *lun);
unsigned lun_queued_ios(struct lun *lun); /* I/Os waiting for a path */

/* Fencing. After lun_pr_register(key), the engine re-registers `key` on every
 * path that reconnects (a new I_T nexus has no registration) and, before the
 * path carries I/O, asks `fn(opaque)`: 1 = this host's heartbeat generation
 * is still its own, 0 = it was taken over (we are fenced), -errno = cannot
 * tell (the path stays failed and is tried again). A host that is fenced, or
 * that saw 2A/03 / RESERVATION CONFLICT while registered, never re-registers
 * by itself: lun_is_fenced() says so and writes fail with -EBADE until the
 * owner calls lun_pr_register() again. Without a callback re-registration is
 * unchecked. */
typedef int (*lun_register_check_fn)(void *opaque);
void lun_set_register_check(struct lun *lun, lun_register_check_fn fn, void *opaque);
/* True once this host is fenced: by the target (RESERVATION CONFLICT or
 * 2A/03 while registered, or the register check said 0) or by itself
 * (lun_fence_self). */
bool lun_is_fenced(struct lun *lun);

/* Fence this host by itself (the lock layer's self-fence deadline passed):
 * from now on no write (WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE) of
 * this LUN reaches a path. Writes waiting in the LUN layer (all-paths-down
 * queue, waiting for a failed path's teardown) complete at once with
 * -EBADE, later ones too, and so do retries and failovers of writes that
 * are in flight now; reads go on. Writes in flight on a path are aborted
 * where the path can (iSCSI: ABORT TASK, see docs/multipath.md). Lifted by
 * the next lun_pr_register() with a non-zero key (the host rejoins). */
void lun_fence_self(struct lun *lun);

/* ---- Deadlines (lock-guarded I/O) -------------------------------------- */

/* CLOCK_BOOTTIME now, in nanoseconds: the clock of lun_io.deadline_ns. */
uint64_t lun_now_ns(void);

/* The longest a single write without a deadline can stay in the LUN layer
 * before it completes or is known to be dropped, with this LUN's options:
 * command timeouts times tries on the same path, on a first path and after
 * a failover, the teardown of a failed session, and the all-paths-down
 * queue (multipath). docs/lun.md gives the numbers at the defaults. */
unsigned lun_max_io_time_ms(const struct lun *lun);

/* ---- Synchronous I/O (simple callers) ---------------------------------- */

#define LUN_IO_FUA (1u << 0)   /* write: force unit access */
#define LUN_IO_UNMAP (1u << 1) /* write_same: allow deallocation */

int lun_read(struct lun *lun, uint64_t lba, uint32_t nblocks, void *buf);
int lun_write(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags);
int lun_flush(struct lun *lun);
int lun_unmap(struct lun *lun, uint64_t lba, uint32_t nblocks);
/* Write one block of data (block_size bytes) to every block of the range. */
int lun_write_same(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *block,
                   unsigned flags);
/* Atomically: if block `lba` holds `expect`, write `data` there and return 0;
 * otherwise write nothing, copy the current contents to `found` (if not
 * NULL) and return -EILSEQ. One logical block. -EOPNOTSUPP where the LUN
 * lacks it (tgt). */
int lun_compare_and_write(struct lun *lun, uint64_t lba, const void *expect, const void *data,
                          void *found);
int lun_test_unit_ready(struct lun *lun);

/* The same with a deadline (absolute lun_now_ns() nanoseconds; 0 = none):
 * see lun_io.deadline_ns. */
int lun_read_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, void *buf, uint64_t deadline_ns);
int lun_write_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags,
                 uint64_t deadline_ns);
int lun_compare_and_write_dl(struct lun *lun, uint64_t lba, const void *expect, const void *data,
                             void *found, uint64_t deadline_ns);

/* ---- Persistent reservations (SPC-4) ------------------------------------ */

enum lun_pr_type {
    LUN_PR_NONE = 0,
    LUN_PR_WRITE_EXCLUSIVE = 1,
    LUN_PR_EXCLUSIVE_ACCESS = 3,
    LUN_PR_WE_REGISTRANTS_ONLY = 5,
    LUN_PR_EA_REGISTRANTS_ONLY = 6,
    LUN_PR_WE_ALL_REGISTRANTS = 7,
    LUN_PR_EA_ALL_REGISTRANTS = 8,
};

#define LUN_PR_MAX_KEYS 256

struct lun_pr_state {
    uint32_t generation;
    unsigned nkeys;
    uint64_t keys[LUN_PR_MAX_KEYS]; /* registered keys (one per I_T nexus) */
    bool reserved;
    uint64_t holder_key; /* reservation key of the holder; 0 for all-registrants */
    enum lun_pr_type type;
};

/* REGISTER AND IGNORE EXISTING KEY with `key` on every path (key 0 = unregister). */
int lun_pr_register(struct lun *lun, uint64_t key);
int lun_pr_reserve(struct lun *lun, uint64_t key, enum lun_pr_type type);
int lun_pr_release(struct lun *lun, uint64_t key, enum lun_pr_type type);
/* Remove `victim`'s registrations (and its reservation); with `abort`,
 * PREEMPT AND ABORT where supported (-EOPNOTSUPP otherwise). */
int lun_pr_preempt(struct lun *lun, uint64_t key, uint64_t victim, enum lun_pr_type type,
                   bool abort);
int lun_pr_clear(struct lun *lun, uint64_t key);
int lun_pr_read(struct lun *lun, struct lun_pr_state *out);

/* ---- Asynchronous I/O (hot paths) --------------------------------------- */

enum lun_op {
    LUN_OP_READ,
    LUN_OP_WRITE,
    LUN_OP_FLUSH,
    LUN_OP_UNMAP,
    LUN_OP_WRITE_SAME,
    LUN_OP_COMPARE_AND_WRITE, /* buf: 2 blocks, expect then data; miscompare -> -EILSEQ
                                 with the current block copied into buf's first block */
};

struct lun_io;
typedef void (*lun_io_done_fn)(struct lun_io *io, int result);

struct lun_io {
    /* set by the caller */
    enum lun_op op;
    uint64_t lba;
    uint32_t nblocks;
    void *buf;
    unsigned flags;      /* LUN_IO_* */
    lun_io_done_fn done; /* called exactly once, on a LUN thread: do not block in it */
    void *opaque;
    /* Absolute deadline in lun_now_ns() (CLOCK_BOOTTIME) nanoseconds; 0 =
     * none. An I/O whose deadline has passed is never dispatched to a
     * path, retried, failed over or taken from the all-paths-down queue:
     * it completes with -ETIMEDOUT (lun_submit refuses it at once). Each
     * command it sends gets min(timeout_ms, time left) as its timeout. A
     * write that fails with -ETIMEDOUT past its deadline may or may not
     * have reached the medium, but no copy of it is left in flight that
     * the target could still execute, except behind a session the LUN
     * layer is still tearing down (docs/multipath.md, Deadlines). */
    uint64_t deadline_ns;
    /* set by the LUN layer before done() is called */
    uint8_t sense_key, asc, ascq; /* SCSI sense of the final failure, 0 if none */
    /* private to the LUN layer */
    void *priv[6];
};

/* Queue an I/O. Returns 0 when accepted (done() will be called exactly
 * once, possibly before lun_submit returns), or -errno when refused at once
 * (done() is then not called). */
int lun_submit(struct lun *lun, struct lun_io *io);

#endif
