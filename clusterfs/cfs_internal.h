/* Internals of the volume library. Not for use outside clusterfs/.
 *
 * Lock order (top first):
 *   1. inode->io (rwlock): data I/O of one file (shared) against truncate,
 *      punch, allocation and unaligned writes (exclusive);
 *   2. v->mtx: every piece of metadata state: the block cache, the inode
 *      cache, the running transaction, the allocator, the journal. Held
 *      across a commit (the journal's writes and flushes), never across
 *      file data I/O of the read/write fast paths.
 * Namespace operations on several inodes (rename, link) run entirely under
 * v->mtx on this host; the on-disk inode locks they will take across hosts
 * are taken in increasing inode number (docs/design.md, "Lock order").
 */
#ifndef CLUSTERFS_CFS_INTERNAL_H
#define CLUSTERFS_CFS_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cfs_format.h"
#include "volume.h"

struct lun;

/* A cached metadata block (4 or 8 KiB). Protected by v->mtx. */
struct cfs_buf {
    uint64_t addr;
    uint32_t size;
    uint16_t type;
    uint8_t *data;
    int refs;   /* users + 1 while dirty */
    bool dirty; /* part of the running transaction */
    struct cfs_buf *hnext;
    struct cfs_buf *lprev, *lnext; /* LRU of clean, unreferenced blocks */
    struct cfs_buf *dnext;         /* dirty list of the running transaction */
};

/* An inode in memory. d, nlookup, nopen, pins, dirty: protected by v->mtx. */
struct cfs_inode {
    struct cfs_dinode d;
    uint64_t nlookup; /* FUSE lookup references */
    unsigned nopen;   /* open handles */
    unsigned pins;    /* internal references (operations in progress) */
    bool dirty;
    bool orphan; /* on this host's orphan list */
    pthread_rwlock_t io;
    struct cfs_inode *hnext, *dnext;
};

struct cfs_file {
    struct cfs_volume *v;
    struct cfs_inode *ip;
    int flags;
};

/* What we know of a resource cluster. Protected by v->mtx. */
enum { CFS_CL_UNKNOWN = 0, CFS_CL_LOADED, CFS_CL_BAD };
struct cfs_clinfo {
    uint8_t state;
    struct cfs_cluster *c; /* decoded header, when loaded */
};

/* A set of byte addresses (open addressing), for blocks freed in the
 * running transaction: not reusable until it commits. */
struct cfs_addrset {
    uint64_t *slots;
    size_t cap, n;
};

struct cfs_volume {
    struct lun *lun;
    struct cfs_super sb;
    uint8_t uuid[16];
    uint32_t lbs;      /* LUN logical block size */
    uint32_t bs;       /* file block size */
    unsigned bshift;   /* log2(bs) */
    uint32_t spp;      /* slots (8 KiB) per pool block */
    uint64_t cl_bytes; /* bytes per cluster */
    struct cfs_open_opts opts;
    bool ro;
    bool unmap; /* the LUN can deallocate */

    pthread_mutex_t mtx;
    int fatal; /* -errno once a commit failed: no more changes */

    /* block cache (buf.c) */
    struct cfs_buf **bh;
    size_t bh_cap, nbufs;
    uint64_t cache_bytes, cache_max;
    struct cfs_buf lru; /* sentinel */

    /* inode cache (inode.c) */
    struct cfs_inode **ih;
    size_t ih_cap, ninodes;

    /* running transaction (journal.c) */
    struct cfs_buf *dirty_bufs;
    unsigned ndirty;
    uint64_t dirty_bytes;
    struct cfs_inode *dirty_inodes;
    unsigned ndirty_inodes;
    struct cfs_addrset freed;
    uint64_t *unmaps; /* data blocks freed in the transaction: unmapped after commit */
    size_t nunmaps, unmaps_cap;

    /* journal of this host */
    uint32_t slot;
    uint64_t j_off;       /* byte address of the journal */
    uint64_t j_ring;      /* ring size in 4 KiB blocks */
    uint64_t j_head;      /* next ring position to write */
    uint64_t j_seq;       /* sequence of the next transaction */
    uint64_t j_used;      /* ring blocks since the on-disk tail */
    uint64_t j_commits;   /* statistics */
    struct cfs_host host; /* orphan list (journal block 1) */
    bool host_dirty;

    /* allocator (alloc.c) */
    struct cfs_clinfo *cl;
    uint64_t cur_cl;
    uint64_t laid_out; /* clusters with a header (the resource map) */
    int rmap_err;      /* the resource map did not decode (then all are laid out) */

    /* several hosts (locks.c); NULL ls: a local open */
    struct lockspace *ls;
    uint64_t gl_lba;    /* the volume metadata lock (lockspace table lock 0) */
    pthread_mutex_t gl; /* recursive: this host's operations, one at a time */
    unsigned gl_depth;  /* protected by gl */
    uint64_t gl_ver;    /* lock record version after our last acquire, 0 = unknown */
    pthread_mutex_t rec_mtx;
    uint32_t rec_slots[64]; /* recovered by the hook, orphans still to free (rec_mtx) */
    unsigned nrec;

    /* commit thread */
    pthread_t thr;
    pthread_cond_t cond;
    bool stop, thr_started;
};

/* ---- buf.c ----------------------------------------------------------------- */
int cfs_buf_init(struct cfs_volume *v);
void cfs_buf_fini(struct cfs_volume *v);
/* Read (or find cached) and check a metadata block. -ENODATA if it was
 * never written (all zeroes), -ESTALE if it belongs to another volume. */
int cfs_buf_get(struct cfs_volume *v, uint64_t addr, uint32_t size, unsigned type,
                struct cfs_buf **out);
/* A block about to be written whole: cached copy or zeroes, not read. */
int cfs_buf_new(struct cfs_volume *v, uint64_t addr, uint32_t size, unsigned type,
                struct cfs_buf **out);
void cfs_buf_put(struct cfs_volume *v, struct cfs_buf *b);
void cfs_buf_dirty(struct cfs_volume *v, struct cfs_buf *b);
/* Forget a cached block that was freed (if clean and unused). */
void cfs_buf_drop(struct cfs_volume *v, uint64_t addr);
void cfs_buf_trim(struct cfs_volume *v);
/* Forget every clean, unreferenced block. */
void cfs_buf_drop_all(struct cfs_volume *v);

/* ---- journal.c --------------------------------------------------------------- */
int cfs_journal_open(struct cfs_volume *v, bool replay);
/* Commit the running transaction: journal write, flush, commit block,
 * flush, home writes. Called with v->mtx held. */
int cfs_txn_commit(struct cfs_volume *v);
/* Commit if the transaction grew past its soft limit. */
int cfs_txn_maybe_commit(struct cfs_volume *v);
/* Empty the journal: flush home writes, move the tail to the head. */
int cfs_journal_checkpoint(struct cfs_volume *v);
/* Replay host slot `slot`'s journal (apply: write the images home, flush,
 * then mark the journal empty); without apply only count. The caller makes
 * sure nobody else writes that journal. */
int cfs_journal_replay(struct lun *lun, const struct cfs_super *sb, uint32_t slot, bool apply,
                       uint64_t *ntxn, uint64_t *end_pos, uint64_t *end_seq);
/* Read-only scan: committed transactions pending replay. */
int cfs_journal_pending(struct lun *lun, const struct cfs_super *sb, uint32_t slot, uint64_t *ntxn);
int cfs_journal_format(struct lun *lun, const struct cfs_super *sb, uint32_t slot);
void cfs_txn_stamp(struct cfs_volume *v, void *buf, uint32_t size);

/* ---- alloc.c ---------------------------------------------------------------- */
int cfs_alloc_init(struct cfs_volume *v);
/* Forget what is known of the clusters; re-read the resource map. */
int cfs_alloc_reload(struct cfs_volume *v);
void cfs_alloc_fini(struct cfs_volume *v);
/* A file block (kind DATA): byte address. -ENOSPC when none is free. */
int cfs_alloc_block(struct cfs_volume *v, uint64_t *addr);
/* An 8 KiB slot of a small-block pool / an inode slot. */
int cfs_alloc_small(struct cfs_volume *v, uint64_t *addr);
int cfs_alloc_inode(struct cfs_volume *v, uint64_t *ino);
int cfs_free_block(struct cfs_volume *v, uint64_t addr);
int cfs_free_small(struct cfs_volume *v, uint64_t addr);
int cfs_free_inode(struct cfs_volume *v, uint64_t ino);
/* Free file blocks and slots over the whole volume (reads every laid-out
 * cluster header once). */
int cfs_alloc_count(struct cfs_volume *v, uint64_t *free_blocks, uint64_t *free_small,
                    uint64_t *free_inodes, uint64_t *laid_out);
/* Check: every allocated unit (data block, small slot, inode slot) of the
 * laid-out clusters; err < 0 for a cluster header that does not decode
 * (addr = the header) or whose free counters disagree (-ERANGE). */
typedef int (*cfs_alloc_scan_fn)(void *ctx, uint64_t addr, uint8_t kind, int err);
int cfs_alloc_scan(struct cfs_volume *v, cfs_alloc_scan_fn fn, void *ctx);
/* Repair: mark one unit allocated / free; recompute a cluster's counters. */
int cfs_alloc_set(struct cfs_volume *v, uint64_t addr, uint8_t kind, bool on);
int cfs_alloc_fix_counts(struct cfs_volume *v, uint64_t cluster_addr);
int cfs_cluster_format_first(struct lun *lun, const struct cfs_super *sb, uint64_t *root_ino);
bool cfs_addrset_has(const struct cfs_addrset *s, uint64_t a);
int cfs_addrset_add(struct cfs_addrset *s, uint64_t a);
void cfs_addrset_clear(struct cfs_addrset *s);

/* ---- inode.c ------------------------------------------------------------------ */
int cfs_inode_get(struct cfs_volume *v, cfs_ino_t ino, struct cfs_inode **out);
void cfs_inode_put(struct cfs_volume *v, struct cfs_inode *ip);
void cfs_inode_dirty(struct cfs_volume *v, struct cfs_inode *ip);
/* After the commit wrote it: drop the inode from memory if unused. */
void cfs_inode_clean(struct cfs_volume *v, struct cfs_inode *ip);
/* Allocate and initialise a new inode (pinned, dirty). */
int cfs_inode_alloc(struct cfs_volume *v, mode_t mode, uid_t uid, gid_t gid, cfs_ino_t parent,
                    struct cfs_inode **out);
void cfs_inode_attr(struct cfs_volume *v, const struct cfs_inode *ip, struct cfs_attr *a);
int64_t cfs_now_ns(void);
void cfs_inode_fini(struct cfs_volume *v);
/* Drop unreferenced inodes, re-read the referenced ones. */
int cfs_inode_reload_all(struct cfs_volume *v);
/* Free the inodes on the orphan list (mount, after replay). */
int cfs_orphans_process(struct cfs_volume *v);
/* Forget every cached block, cluster and unreferenced inode; re-read the
 * referenced inodes (after another writer changed the volume). */
int cfs_cache_drop(struct cfs_volume *v);
void cfs_orphan_add(struct cfs_volume *v, struct cfs_inode *ip);

/* ---- bmap.c ------------------------------------------------------------------- */
/* Block map of an inode: a radix tree of 8 KiB pointer blocks, 1008 wide. */
int cfs_bmap_get(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr);
int cfs_bmap_set(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t ptr);
/* Visit the non-hole entries with index in [start, end); fn may change
 * *ptr (0 frees the entry's slot in the tree; emptied pointer blocks are
 * freed). fn returns 0 to go on, 1 to stop, -errno to fail. */
typedef int (*cfs_bmap_fn)(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr,
                           void *ctx);
int cfs_bmap_walk(struct cfs_volume *v, struct cfs_inode *ip, uint64_t start, uint64_t end,
                  cfs_bmap_fn fn, void *ctx);
/* Free every data block with index >= start (budget: at most `max` blocks
 * per call; returns 1 when more remain). */
int cfs_bmap_free_from(struct cfs_volume *v, struct cfs_inode *ip, uint64_t start, uint64_t max);
/* Visit the pointer blocks (for check). */
typedef int (*cfs_bmap_meta_fn)(struct cfs_volume *v, uint64_t addr, void *ctx);
int cfs_bmap_walk_meta(struct cfs_volume *v, struct cfs_inode *ip, cfs_bmap_meta_fn fn, void *ctx);

/* ---- dir.c -------------------------------------------------------------------- */
int cfs_dir_lookup(struct cfs_volume *v, struct cfs_inode *dp, const char *name, cfs_ino_t *ino,
                   unsigned *dtype);
int cfs_dir_add(struct cfs_volume *v, struct cfs_inode *dp, const char *name, cfs_ino_t ino,
                unsigned dtype);
int cfs_dir_remove(struct cfs_volume *v, struct cfs_inode *dp, const char *name);
int cfs_dir_init(struct cfs_volume *v, struct cfs_inode *dp);
/* List from cookie; fn as cfs_readdir_fn (without "." and ".."). */
int cfs_dir_iterate(struct cfs_volume *v, struct cfs_inode *dp, uint64_t off, cfs_readdir_fn fn,
                    void *ctx);
uint64_t cfs_name_hash(const char *name, size_t len);

/* ---- file.c ------------------------------------------------------------------- */
int cfs_file_truncate_locked(struct cfs_volume *v, struct cfs_inode *ip, uint64_t size);
/* Free all blocks of an inode (it is being deleted). */
int cfs_file_free_all(struct cfs_volume *v, struct cfs_inode *ip);
ssize_t cfs_file_pwrite(struct cfs_volume *v, struct cfs_inode *ip, const void *buf, size_t size,
                        uint64_t off);
ssize_t cfs_file_pread(struct cfs_volume *v, struct cfs_inode *ip, void *buf, size_t size,
                       uint64_t off);

/* ---- locks.c: the only file that talks to the lockspace ----------------- */
/* Join the lockspace embedded in the volume: v->slot becomes our slot. */
int cfs_locks_join(struct cfs_volume *v);
void cfs_locks_leave(struct cfs_volume *v);
/* Around every public operation (no-ops for a local open): take the
 * volume metadata lock (and drop the caches if another host held it since),
 * then commit, checkpoint and release it. Recursive within a thread. */
int cfs_op_begin(struct cfs_volume *v);
void cfs_op_end(struct cfs_volume *v);
/* An inode's open lock (shared while open on this host): an unlinked
 * inode is freed only by the host that gets it exclusive. Under v->mtx. */
int cfs_ilock_open(struct cfs_volume *v, struct cfs_inode *ip);
void cfs_ilock_close(struct cfs_volume *v, struct cfs_inode *ip);
/* 0: nobody else has it open (held exclusive until cfs_ilock_done);
 * -EBUSY: open on another host. */
int cfs_ilock_try_delete(struct cfs_volume *v, struct cfs_inode *ip);
void cfs_ilock_done(struct cfs_volume *v, struct cfs_inode *ip);
int cfs_ilock_format(struct cfs_volume *v, uint64_t ino);
/* The fencing token stamped in every metadata block written: heartbeat
 * slot, generation, version of the metadata lock record (0s when local). */
void cfs_locks_token(struct cfs_volume *v, uint32_t *slot, uint32_t *gen, uint64_t *ver);
/* 0 if this host may write (not fenced); -EIO otherwise. */
int cfs_locks_check_write(struct cfs_volume *v);

/* ---- the public operations, without the multi-host lock (api.c wraps
 * each in cfs_op_begin / cfs_op_end) ------------------------------------- */
int cfsi_getattr(struct cfs_volume *v, cfs_ino_t ino, struct cfs_attr *out);
int cfsi_lookup(struct cfs_volume *v, cfs_ino_t parent, const char *name, struct cfs_attr *out);
void cfsi_forget(struct cfs_volume *v, cfs_ino_t ino, uint64_t nlookup);
int cfsi_mknod(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, dev_t rdev,
               uid_t uid, gid_t gid, struct cfs_attr *out);
int cfsi_mkdir(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, uid_t uid,
               gid_t gid, struct cfs_attr *out);
int cfsi_symlink(struct cfs_volume *v, cfs_ino_t parent, const char *name, const char *target,
                 uid_t uid, gid_t gid, struct cfs_attr *out);
ssize_t cfsi_readlink(struct cfs_volume *v, cfs_ino_t ino, char *buf, size_t size);
int cfsi_create(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, int flags,
                uid_t uid, gid_t gid, struct cfs_attr *out, struct cfs_file **fh);
int cfsi_link(struct cfs_volume *v, cfs_ino_t ino, cfs_ino_t newparent, const char *newname,
              struct cfs_attr *out);
int cfsi_unlink(struct cfs_volume *v, cfs_ino_t parent, const char *name);
int cfsi_rmdir(struct cfs_volume *v, cfs_ino_t parent, const char *name);
int cfsi_rename(struct cfs_volume *v, cfs_ino_t parent, const char *name, cfs_ino_t newparent,
                const char *newname, unsigned flags);
int cfsi_readdir(struct cfs_volume *v, cfs_ino_t dir, uint64_t off, cfs_readdir_fn fn, void *ctx);
int cfsi_setattr(struct cfs_volume *v, cfs_ino_t ino, const struct cfs_attr *in, unsigned mask,
                 struct cfs_attr *out);
int cfsi_truncate(struct cfs_volume *v, cfs_ino_t ino, uint64_t size);
int cfsi_setxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, const void *value,
                  size_t size, int flags);
ssize_t cfsi_getxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, void *value,
                      size_t size);
ssize_t cfsi_listxattr(struct cfs_volume *v, cfs_ino_t ino, char *list, size_t size);
int cfsi_removexattr(struct cfs_volume *v, cfs_ino_t ino, const char *name);
int cfsi_fallocate(struct cfs_file *f, int mode, uint64_t off, uint64_t len);
int64_t cfsi_lseek(struct cfs_file *f, int64_t off, int whence);
int cfsi_open(struct cfs_volume *v, cfs_ino_t ino, int flags, struct cfs_file **fh);
int cfsi_release(struct cfs_file *f);
ssize_t cfsi_read(struct cfs_file *f, void *buf, size_t size, uint64_t off);
ssize_t cfsi_write(struct cfs_file *f, const void *buf, size_t size, uint64_t off);
int cfsi_fsync(struct cfs_file *f, bool datasync);
int cfsi_volume_info(struct cfs_volume *v, struct cfs_volume_info *out);
int cfsi_statfs(struct cfs_volume *v, struct statvfs *out);
int cfsi_sync(struct cfs_volume *v);
int cfsi_volume_recover_slot(struct cfs_volume *v, uint32_t slot, uint64_t *ntxn);
int cfsi_check(struct cfs_volume *v, unsigned flags, cfs_check_msg_fn fn, void *ctx,
               struct cfs_check_report *rep);

/* ---- super.c ------------------------------------------------------------------- */
int cfs_super_read(struct lun *lun, struct cfs_super *sb, int *which);
int cfs_dev_read(struct cfs_volume *v, uint64_t addr, void *buf, size_t len);
int cfs_dev_write(struct cfs_volume *v, uint64_t addr, const void *buf, size_t len);
int cfs_dev_read_lun(struct lun *lun, uint64_t addr, void *buf, size_t len);
int cfs_dev_write_lun(struct lun *lun, uint64_t addr, const void *buf, size_t len);
static inline uint64_t cfs_cluster_addr(const struct cfs_volume *v, uint64_t i)
{
    return v->sb.data_off + i * v->cl_bytes;
}

#endif
