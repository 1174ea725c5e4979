/* Internals of the lockspace: on-disk formats, the liveness state machine,
 * the atomic step. Not for use outside locking/. */
#ifndef LOCKING_LS_INTERNAL_H
#define LOCKING_LS_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "lockspace.h"
#include "lun.h"

/* Every record is encoded in the first LS_REC_SIZE bytes of its block; the
 * rest of a larger block is zero and not covered by the CRC. */
#define LS_REC_SIZE 512
#define LS_CRC_OFF 508

#define LS_MAGIC_HEADER 0x534c4643u /* "CFLS" */
#define LS_MAGIC_HB 0x42484643u     /* "CFHB" */
#define LS_MAGIC_LOCK 0x4b4c4643u   /* "CFLK" */
#define LS_MAGIC_LEADER 0x4c504643u /* "CFPL" */
#define LS_MAGIC_DBLOCK 0x44504643u /* "CFPD" */
#define LS_VERSION_MAJOR 1          /* heartbeat, lock, leader and dblock records */
/* The header: major 2 records the atomic-step method (a major-1 reader
 * would ignore it and mix methods, so the major was bumped) and carries
 * feature flags: an unknown incompat bit is refused, unknown compat bits
 * are ignored. */
#define LS_HDR_VERSION_MAJOR 2
#define LS_VERSION_MINOR 0
#define LS_INCOMPAT_KNOWN 0u
#define LS_COMPAT_KNOWN 0u
#define LS_NO_SLOT 0xffffffffu

/* ---- On-disk layouts (offsets only; encode/decode use le.h) ------------- */

struct ls_header_disk {
    uint32_t magic;
    uint16_t version_major;
    uint16_t version_minor;
    uint32_t block_size;
    uint32_t io_timeout_ms;
    uint32_t max_hosts;
    uint32_t max_locks;
    uint64_t hb_off; /* blocks from the lockspace start */
    uint64_t paxos_off;
    uint64_t locks_off;
    uint64_t total_blocks;
    uint8_t uuid[16];
    uint16_t atomic; /* enum ls_atomic_method: 1 CAW, 2 paxos */
    uint16_t reserved0;
    uint32_t incompat; /* feature flags a reader must know */
    uint32_t compat;   /* feature flags a reader may ignore */
    uint8_t reserved[424];
    uint32_t crc;
};
_Static_assert(sizeof(struct ls_header_disk) == LS_REC_SIZE, "header size");
_Static_assert(offsetof(struct ls_header_disk, atomic) == 72, "header atomic");
_Static_assert(offsetof(struct ls_header_disk, incompat) == 76, "header incompat");
_Static_assert(offsetof(struct ls_header_disk, compat) == 80, "header compat");
_Static_assert(offsetof(struct ls_header_disk, hb_off) == 24, "header hb_off");
_Static_assert(offsetof(struct ls_header_disk, uuid) == 56, "header uuid");
_Static_assert(offsetof(struct ls_header_disk, crc) == LS_CRC_OFF, "header crc");

struct ls_hb_disk {
    uint32_t magic;
    uint16_t version;
    uint16_t state; /* enum ls_slot_state */
    uint32_t slot;
    uint32_t generation;
    uint64_t counter; /* bumped by every renewal */
    uint64_t pr_key;  /* the host's reservation key, 0 = none */
    uint32_t io_timeout_ms;
    uint32_t rec_slot; /* RECOVERING: slot of the recovering host */
    uint32_t rec_gen;  /* RECOVERING: its generation */
    uint32_t reserved0;
    uint64_t journal_lba;
    uint8_t uuid[16];
    char name[64];
    uint8_t rec_uuid[16]; /* RECOVERING: uuid of the recovering host */
    uint64_t rec_key;     /* RECOVERING by a joiner: the joiner's PR key */
    uint8_t reserved[348];
    uint32_t crc;
};
_Static_assert(sizeof(struct ls_hb_disk) == LS_REC_SIZE, "hb size");
_Static_assert(offsetof(struct ls_hb_disk, rec_uuid) == 136, "hb rec_uuid");
_Static_assert(offsetof(struct ls_hb_disk, rec_key) == 152, "hb rec_key");
_Static_assert(offsetof(struct ls_hb_disk, counter) == 16, "hb counter");
_Static_assert(offsetof(struct ls_hb_disk, journal_lba) == 48, "hb journal");
_Static_assert(offsetof(struct ls_hb_disk, name) == 72, "hb name");
_Static_assert(offsetof(struct ls_hb_disk, crc) == LS_CRC_OFF, "hb crc");

struct ls_owner_disk {
    uint16_t slot;
    uint8_t gen[4]; /* le32, unaligned */
};
_Static_assert(sizeof(struct ls_owner_disk) == 6, "owner size");

struct ls_lock_disk {
    uint32_t magic;
    uint16_t version;
    uint8_t mode;
    uint8_t nowners;
    uint64_t rec_version; /* bumped on every change */
    uint32_t writer_slot; /* identity of the last writer */
    uint32_t writer_gen;
    char name[48];
    uint32_t xwait;     /* slot + 1 of an exclusive waiter (0 = none): readers hold back */
    uint32_t xwait_gen; /* its generation */
    uint8_t reserved[16];
    struct ls_owner_disk owners[LS_LOCK_MAX_OWNERS];
    uint8_t reserved2[28];
    uint32_t crc;
};
_Static_assert(sizeof(struct ls_lock_disk) == LS_REC_SIZE, "lock size");
_Static_assert(offsetof(struct ls_lock_disk, rec_version) == 8, "lock version");
_Static_assert(offsetof(struct ls_lock_disk, name) == 24, "lock name");
_Static_assert(offsetof(struct ls_lock_disk, owners) == 96, "lock owners");
_Static_assert(offsetof(struct ls_lock_disk, xwait) == 72, "lock xwait");
_Static_assert(offsetof(struct ls_lock_disk, crc) == LS_CRC_OFF, "lock crc");

struct ls_leader_disk {
    uint32_t magic;
    uint16_t version;
    uint16_t state; /* 0 free, 1 held */
    uint64_t lver;  /* paxos instance of the current/last holder */
    uint32_t owner_slot;
    uint32_t owner_gen;
    uint8_t reserved[484];
    uint32_t crc;
};
_Static_assert(sizeof(struct ls_leader_disk) == LS_REC_SIZE, "leader size");
_Static_assert(offsetof(struct ls_leader_disk, owner_slot) == 16, "leader owner");
_Static_assert(offsetof(struct ls_leader_disk, crc) == LS_CRC_OFF, "leader crc");

struct ls_dblock_disk {
    uint32_t magic;
    uint16_t version;
    uint16_t reserved0;
    uint64_t lver;     /* instance this ballot is for */
    uint64_t mbal;     /* highest ballot this host started */
    uint64_t bal;      /* ballot of the accepted value, 0 = none */
    uint32_t inp_slot; /* accepted value: the proposed owner */
    uint32_t inp_gen;
    uint8_t reserved[468];
    uint32_t crc;
};
_Static_assert(sizeof(struct ls_dblock_disk) == LS_REC_SIZE, "dblock size");
_Static_assert(offsetof(struct ls_dblock_disk, inp_slot) == 32, "dblock inp");
_Static_assert(offsetof(struct ls_dblock_disk, crc) == LS_CRC_OFF, "dblock crc");

/* ---- In-memory forms ----------------------------------------------------- */

struct ls_header {
    uint32_t block_size, io_timeout_ms, max_hosts, max_locks;
    uint16_t version_major, version_minor;
    uint64_t hb_off, paxos_off, locks_off, total_blocks;
    uint8_t uuid[16];
    enum ls_atomic_method atomic;
    uint32_t incompat, compat;
};

enum ls_slot_state { LS_SLOT_FREE = 0, LS_SLOT_LIVE = 1, LS_SLOT_RECOVERING = 2 };

struct ls_hb {
    enum ls_slot_state state;
    uint32_t slot, generation, io_timeout_ms, rec_slot, rec_gen;
    uint64_t counter, pr_key, journal_lba;
    uint8_t uuid[16];
    char name[LS_NAME_MAX + 1];
    /* RECOVERING: who recovers it. A joined host sets rec_slot/rec_gen to its
     * own slot; a joiner that will claim the slot sets rec_slot = the slot
     * itself, rec_gen = the generation it will claim, rec_key = its key. */
    uint8_t rec_uuid[16];
    uint64_t rec_key;
};

struct ls_owner {
    uint32_t slot, gen;
};

struct ls_lockrec {
    enum ls_lock_mode mode;
    unsigned nowners;
    uint64_t version;
    uint32_t writer_slot, writer_gen;
    char name[LS_LOCK_NAME_MAX + 1];
    bool xwait;                     /* an exclusive waiter is announced: */
    uint32_t xwait_slot, xwait_gen; /* ... this one; new shared owners hold back */
    struct ls_owner owners[LS_LOCK_MAX_OWNERS];
};

struct ls_leader {
    unsigned held;
    uint64_t lver;
    uint32_t owner_slot, owner_gen;
};

struct ls_dblock {
    uint64_t lver, mbal, bal;
    uint32_t inp_slot, inp_gen;
};

/* Encode into a zeroed LS_REC_SIZE buffer (the CRC last); decode checks
 * magic, CRC and version and logs "what at lba N: reason" on failure
 * (what == NULL: no log, for reads that are retried). */
void ls_header_encode(void *buf, const struct ls_header *h);
int ls_header_decode(const void *buf, struct ls_header *h, const char *what, uint64_t lba);
void ls_hb_encode(void *buf, const struct ls_hb *h);
int ls_hb_decode(const void *buf, struct ls_hb *h, const char *what, uint64_t lba);
void ls_lockrec_encode(void *buf, const struct ls_lockrec *r);
int ls_lockrec_decode(const void *buf, struct ls_lockrec *r, const char *what, uint64_t lba);
void ls_leader_encode(void *buf, const struct ls_leader *l);
int ls_leader_decode(const void *buf, struct ls_leader *l, const char *what, uint64_t lba);
void ls_dblock_encode(void *buf, const struct ls_dblock *d);
int ls_dblock_decode(const void *buf, struct ls_dblock *d, const char *what, uint64_t lba);

/* ---- Lock-record transitions (pure) ------------------------------------- */

bool ls_mode_compatible(enum ls_lock_mode held, enum ls_lock_mode want);
int ls_lockrec_find_owner(const struct ls_lockrec *r, uint32_t slot, uint32_t gen);
/* Add (slot, gen) in `mode`: 0, 1 if already an owner, -EBUSY if the mode
 * conflicts (or a non-exclusive mode while another host's exclusive wait is
 * announced), -ENOSPC if full. Bumps version and sets the writer; an
 * exclusive owner clears its own announcement. */
int ls_lockrec_add_owner(struct ls_lockrec *r, enum ls_lock_mode mode, uint32_t slot, uint32_t gen);
/* Remove (slot, gen): 0, or -ENOENT. Last owner out frees the record. */
int ls_lockrec_remove_owner(struct ls_lockrec *r, uint32_t slot, uint32_t gen, uint32_t wslot,
                            uint32_t wgen);

/* ---- Liveness: judged only on the observer's CLOCK_MONOTONIC ------------ */

struct ls_peer {
    bool seen;
    enum ls_host_state state;
    uint32_t generation;
    uint16_t slot_state;
    uint64_t counter;
    uint8_t uuid[16];
    uint64_t first_seen_ns; /* completion of the first read showing this value */
    bool changed;           /* we saw it change: first_seen_ns is when */
};

/* Feed one read of the slot (read issued at start_ns, completed at end_ns).
 * corrupt: the slot did not decode. */
void ls_peer_update(struct ls_peer *p, const struct ls_hb *hb, bool corrupt, uint64_t start_ns,
                    uint64_t end_ns, uint64_t dead_ns);

/* ---- The lockspace object ----------------------------------------------- */

struct ls_held {
    uint64_t lba;
    enum ls_lock_mode mode;
    uint64_t version; /* the record's version after our acquire (fencing token) */
    struct ls_held *next;
};

struct lockspace {
    struct lun *lun;
    uint64_t offset; /* first block */
    uint32_t bs;     /* logical block size */
    struct ls_header hdr;
    struct ls_timeouts to;
    struct ls_open_opts opts;
    char name[LS_NAME_MAX + 1];
    uint8_t uuid[16];
    bool caw; /* atomic step = COMPARE AND WRITE (else paxos mutex) */
    bool pr;  /* fencing by persistent reservations */

    pthread_mutex_t lock; /* protects everything below */
    pthread_cond_t cond;
    bool joined;
    bool claiming; /* join: recovering a dead slot; writes gated by deadline_ns */
    bool fenced;
    bool stop;
    bool thread_running;
    pthread_t thread;
    uint32_t slot, generation;
    uint64_t counter;
    uint64_t pr_key;
    uint64_t deadline_ns;      /* self-fence: no write issued at or after this */
    uint8_t *hb_raw;           /* last read of the heartbeat region (max_hosts blocks) */
    uint64_t hb_read_ns;       /* when hb_raw was read (completion) */
    uint64_t hb_read_start_ns; /* ... and when that read was issued */
    struct ls_peer *peers;     /* max_hosts */
    struct ls_held *held;
    uint8_t *hb_mine;   /* our slot as we last wrote it (renewal CAW expects it) */
    bool renewing_mark; /* a joiner's hook runs: the renewal thread renews its mark */
    uint64_t mark_lba;  /* ... at this lba */
    bool hk_running;    /* the housekeeping recovery thread runs (recovery.c) */
    bool hk_stop;       /* ... asked to stop; both protected by lock */
    pthread_t hk_thread;
    void (*hk_stop_fn)(struct lockspace *ls); /* set by recovery.c: stop it (leave/close) */
    ls_test_hook_fn hook;                     /* atomically read; set by lockspace_set_test_hook */
    void *hook_opaque;
    uint64_t nio;               /* atomically updated */
    unsigned paxos_round;       /* protected by mutex_lock */
    uint64_t mutex_lver;        /* paxos instance we hold; protected by mutex_lock */
    uint64_t mutex_deadline_ns; /* writes under the mutex stop here; protected by mutex_lock */
    pthread_mutex_t mutex_lock; /* serialises this host's use of the paxos mutex */
};

/* ---- The I/O gate (io.c) ------------------------------------------------- */

/* CLOCK_BOOTTIME in ns (the LUN layer's clock): every deadline here. */
uint64_t ls_now_ns(void);
int ls_read(struct lockspace *ls, uint64_t lba, uint32_t n, void *buf);
/* Caller holds ls->lock: 0 (and the deadline writes carry, 0 = none) or
 * -EIO once fenced or past the self-fence deadline (fences then). */
int ls_write_gate_locked(struct lockspace *ls, uint64_t *deadline);
/* Gate, test hook, then the write / CAW with deadline = the earlier of the
 * self-fence deadline and `deadline` (0 = none). -EBADE fences us. */
int ls_write_dl(struct lockspace *ls, enum ls_test_point where, uint64_t lba, uint32_t n,
                const void *buf, unsigned flags, uint64_t deadline);
int ls_caw_dl(struct lockspace *ls, enum ls_test_point where, uint64_t lba, const void *expect,
              const void *data, void *found, uint64_t deadline);
/* ls_write_dl(LS_TP_META_WRITE, no extra deadline). */
int ls_write_raw(struct lockspace *ls, uint64_t lba, uint32_t n, const void *buf);
/* The atomic step on one block: write `data` iff the block holds `expect`.
 * 0, -EILSEQ (then `found` holds the current block), or -errno. */
int ls_cas(struct lockspace *ls, uint64_t lba, const void *expect, const void *data, void *found);
/* Paxos mutex (paxos.c): exclusive among hosts for a few I/Os. */
int ls_mutex_acquire(struct lockspace *ls);
int ls_mutex_release(struct lockspace *ls);
/* Self-fence now (logs `why`). Caller holds ls->lock. */
void ls_fence_locked(struct lockspace *ls, enum ls_fence_reason why, const char *msg);
/* Judge a lock owner on the cached view: 1 live/unknown (or the view is
 * older than the owner), 0 gone (slot free at a generation >= gen, or a
 * greater generation), 2 dead. Rescan before acting on 0 or 2. */
int ls_owner_liveness(struct lockspace *ls, uint32_t slot, uint32_t gen);
/* fence.c: PREEMPT `key` (a host being recovered), read the keys back until
 * it is gone, make sure the reservation exists. 0, or -errno (then the key
 * may still be registered: do not recover). No-op without reservations. */
int ls_fence_key(struct lockspace *ls, uint64_t key, const char *name, uint32_t slot, uint32_t gen);
/* Preempt a dead host's PR key (no-op without reservations). */
int ls_host_fence(struct lockspace *ls, uint32_t slot, uint32_t gen);
/* Break a dead host: mark recovering, hook, fence, clear gen+1. */
int ls_host_break(struct lockspace *ls, uint32_t slot, uint32_t gen);
/* The same, ending with `final` (an encoded block) instead of the cleared
 * slot: a joiner claims the slot in the step that clears it. */
int ls_host_break_to(struct lockspace *ls, uint32_t slot, uint32_t gen, const void *final);
/* Write `data` over the block at `lba` that read as `expect` without an
 * atomic step (sanlock's delta lease): read it, write within io_timeout/2,
 * wait 2.5 io_timeout, read back. 0 if ours survived, -EILSEQ if it changed
 * (`found` gets the block) or was overwritten by a racer. */
int ls_delta_write(struct lockspace *ls, uint64_t lba, const void *expect, const void *data,
                   void *found);
/* A joiner's recovery hook runs: renew its mark (at lba) from the renewal
 * thread; stop copies the mark as last written into `mark`. */
int ls_mark_renew_start(struct lockspace *ls, uint64_t lba, const void *mark);
void ls_mark_renew_stop(struct lockspace *ls, void *mark);
/* Read the heartbeat region and update peers (one I/O). */
int ls_hb_scan(struct lockspace *ls);

#endif
