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
    char vendor[9];                /* T10 vendor id, trimmed */
    char product[17];
    char revision[5];
    char serial[LUN_ID_MAX];       /* VPD 0x80 unit serial number */
    char id[LUN_ID_MAX];           /* VPD 0x83 designator as text, e.g. "naa.60000000..."
                                      or "t10.IET..."; for files "file.<dev>.<ino>" */
    uint32_t block_size;           /* logical block size in bytes: 512 or 4096 */
    uint32_t physical_block_size;  /* >= block_size */
    uint64_t num_blocks;           /* capacity in logical blocks */
    uint32_t max_transfer_blocks;  /* per command; 0 = no limit reported */
    uint32_t max_unmap_blocks;     /* 0 = unknown */
    struct lun_caps caps;
};

struct lun_options {
    const char *host_name;       /* used for a default initiator name; NULL = gethostname() */
    const char *initiator_name;  /* iSCSI initiator IQN; NULL = iqn.2026-11.org.clusterfs:<host> */
    unsigned timeout_ms;         /* per command; default 5000 */
    unsigned connect_timeout_ms; /* login; default 5000 */
    bool read_only;
    bool no_direct;              /* files: do not try O_DIRECT */
    uint32_t file_block_size;    /* files: logical block size, 512 (default) or 4096 */
};

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
static inline uint32_t lun_block_size(const struct lun *lun)
{
    return lun_get_info(lun)->block_size;
}

/* ---- Synchronous I/O (simple callers) ---------------------------------- */

#define LUN_IO_FUA   (1u << 0) /* write: force unit access */
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
    uint64_t holder_key;            /* reservation key of the holder; 0 for all-registrants */
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
    unsigned flags;        /* LUN_IO_* */
    lun_io_done_fn done;   /* called exactly once, on a LUN thread: do not block in it */
    void *opaque;
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
