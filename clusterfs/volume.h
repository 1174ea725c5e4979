/* The clustered volume: a file system on one shared LUN (public API).
 *
 * Shaped for libfuse3's low-level API and for the in-daemon disk server:
 *   - objects are named by inode number (cfs_ino_t, stable for the life of
 *     the inode; FUSE's nodeid and generation come straight from it);
 *   - cfs_lookup / cfs_create / cfs_mkdir / ... count one lookup reference
 *     on the inode they return, cfs_forget drops n of them (FUSE's forget);
 *   - open files are handles (struct cfs_file); an unlinked inode lives on
 *     while it has lookup references or open handles, and its blocks are
 *     freed after the last of them goes;
 *   - every function is thread-safe and returns 0 (or a byte count) or
 *     -errno, logging the most specific reason once (common/log.h).
 *
 * Durability: metadata changes are transactions in this host's redo journal,
 * committed at cfs_fsync / cfs_sync / close of the volume and every
 * commit interval; file data goes straight to the LUN, and cfs_fsync makes
 * it durable too. After a crash, replay brings back every committed
 * transaction and nothing of an uncommitted one.
 */
#ifndef CLUSTERFS_VOLUME_H
#define CLUSTERFS_VOLUME_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>

struct lun;
struct cfs_volume;
struct cfs_file;
typedef uint64_t cfs_ino_t;

#define CFS_NAME_LEN_MAX 255

/* ---- Format ------------------------------------------------------------ */

struct cfs_format_params {
    const char *label;      /* up to 63 bytes; NULL = "" */
    uint32_t max_hosts;     /* 0 = 64 */
    uint32_t block_size;    /* file block, 64 KiB .. 1 MiB, power of 2; 0 = 1 MiB */
    uint32_t io_timeout_ms; /* 0 = the lockspace default (2000) */
    uint64_t journal_bytes; /* per host; 0 = 8 MiB */
    bool force;             /* overwrite an existing volume */
};

/* Lay a volume on the whole LUN. Refuses (-EEXIST) a LUN that holds a
 * volume or a lockspace unless `force`, and (-ENOSPC) one too small for the
 * journals plus one resource cluster of two blocks. Writes only the
 * superblocks, the lockspace, the journal headers, the first resource
 * cluster and the root directory: resources are laid out on demand, so the
 * time does not grow with the size. */
int cfs_format(struct lun *lun, const struct cfs_format_params *p);

/* ---- Open / close -------------------------------------------------------- */

struct cfs_open_opts {
    const char *host_name; /* NULL = gethostname() */
    /* Single-host mode: no lockspace join, journal slot 0. For tests, tools
     * and `check`; refused later by hosts that do join. */
    bool local;
    uint32_t slot;               /* local: the journal slot to use (default 0) */
    bool read_only;              /* no journal replay, no writes (status) */
    unsigned commit_interval_ms; /* 0 = 1000 */
    uint64_t cache_bytes;        /* metadata cache; 0 = 64 MiB */
};

/* Open the volume on `lun` (not owned: close it after cfs_volume_close).
 * Without `local`, the host joins the lockspace embedded in the volume (its
 * heartbeat slot is its journal; give each host its own struct lun, i.e.
 * its own sessions) and every operation takes the volume metadata lock;
 * with `local`, no other host may use the volume. Replays this host's
 * journal. */
int cfs_volume_open(struct lun *lun, const struct cfs_open_opts *o, struct cfs_volume **out);
/* Commit, checkpoint the journal (empty at a clean close), free. Open
 * handles are released. */
int cfs_volume_close(struct cfs_volume *v);

struct cfs_volume_info {
    char label[64];
    uint8_t uuid[16];
    unsigned version_major, version_minor;
    uint32_t feat_compat, feat_incompat, feat_ro_compat;
    uint64_t volume_bytes, block_size, max_hosts, io_timeout_ms;
    uint64_t journal_bytes, nclusters, clusters_laid_out;
    uint64_t free_bytes;       /* file blocks free, in bytes */
    uint64_t ls_offset_blocks; /* the lockspace, in LUN blocks */
    cfs_ino_t root;
};
/* Replay another host slot's journal and free the inodes on its orphan
 * list: for check --repair and the recovery of a dead host. The caller
 * guarantees that host writes no more (it is dead, fenced, or never
 * mounted). Returns 0 and the number of transactions replayed. */
int cfs_volume_recover_slot(struct cfs_volume *v, uint32_t slot, uint64_t *ntxn);
/* Committed transactions in host slot `slot`'s journal not yet replayed. */
int cfs_volume_journal_pending(struct cfs_volume *v, uint32_t slot, uint64_t *ntxn);
int cfs_volume_info(struct cfs_volume *v, struct cfs_volume_info *out);
cfs_ino_t cfs_root(const struct cfs_volume *v);

/* ---- Attributes ----------------------------------------------------------- */

struct cfs_attr {
    cfs_ino_t ino;
    uint32_t generation;
    mode_t mode;
    nlink_t nlink;
    uid_t uid;
    gid_t gid;
    dev_t rdev;
    uint64_t size;
    uint64_t blocks; /* 512-byte units allocated */
    uint32_t blksize;
    struct timespec atime, mtime, ctime, btime;
};
void cfs_attr_to_stat(const struct cfs_attr *a, struct stat *st);

#define CFS_SET_MODE (1u << 0)
#define CFS_SET_UID (1u << 1)
#define CFS_SET_GID (1u << 2)
#define CFS_SET_SIZE (1u << 3)
#define CFS_SET_ATIME (1u << 4)
#define CFS_SET_MTIME (1u << 5)
#define CFS_SET_ATIME_NOW (1u << 6)
#define CFS_SET_MTIME_NOW (1u << 7)
#define CFS_SET_CTIME (1u << 8)

int cfs_getattr(struct cfs_volume *v, cfs_ino_t ino, struct cfs_attr *out);
/* chmod / chown / truncate / utimens in one call (FUSE setattr). */
int cfs_setattr(struct cfs_volume *v, cfs_ino_t ino, const struct cfs_attr *in, unsigned mask,
                struct cfs_attr *out);
int cfs_truncate(struct cfs_volume *v, cfs_ino_t ino, uint64_t size);

/* ---- Namespace --------------------------------------------------------------- */

/* Each returns the inode's attributes and counts one lookup reference. */
int cfs_lookup(struct cfs_volume *v, cfs_ino_t parent, const char *name, struct cfs_attr *out);
void cfs_forget(struct cfs_volume *v, cfs_ino_t ino, uint64_t nlookup);
int cfs_mknod(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, dev_t rdev,
              uid_t uid, gid_t gid, struct cfs_attr *out);
int cfs_mkdir(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, uid_t uid,
              gid_t gid, struct cfs_attr *out);
int cfs_symlink(struct cfs_volume *v, cfs_ino_t parent, const char *name, const char *target,
                uid_t uid, gid_t gid, struct cfs_attr *out);
/* Returns the target length (not NUL-terminated if it does not fit). */
ssize_t cfs_readlink(struct cfs_volume *v, cfs_ino_t ino, char *buf, size_t size);
int cfs_link(struct cfs_volume *v, cfs_ino_t ino, cfs_ino_t newparent, const char *newname,
             struct cfs_attr *out);
int cfs_unlink(struct cfs_volume *v, cfs_ino_t parent, const char *name);
int cfs_rmdir(struct cfs_volume *v, cfs_ino_t parent, const char *name);
/* flags: RENAME_NOREPLACE, RENAME_EXCHANGE (linux/fs.h values). */
int cfs_rename(struct cfs_volume *v, cfs_ino_t parent, const char *name, cfs_ino_t newparent,
               const char *newname, unsigned flags);

/* Directory listing from cookie `off` (0 = start; "." and ".." first).
 * fn is called per entry with the cookie of the next one; a non-zero return
 * stops the listing (the entry it was called for counts as not returned).
 * Cookies stay valid across inserts and removals of other entries: every
 * entry present for the whole listing is returned exactly once. fn runs
 * under the volume's lock: it must not call back into this library (FUSE:
 * fill the reply buffer with fuse_add_direntry only). */
typedef int (*cfs_readdir_fn)(void *ctx, const char *name, cfs_ino_t ino, unsigned dtype,
                              uint64_t next_off);
int cfs_readdir(struct cfs_volume *v, cfs_ino_t dir, uint64_t off, cfs_readdir_fn fn, void *ctx);

/* ---- Files ------------------------------------------------------------------- */

/* O_CREAT | O_EXCL semantics in one step; returns an open handle too. */
int cfs_create(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, int flags,
               uid_t uid, gid_t gid, struct cfs_attr *out, struct cfs_file **fh);
/* flags: O_RDONLY / O_WRONLY / O_RDWR, O_TRUNC, O_APPEND. */
int cfs_open(struct cfs_volume *v, cfs_ino_t ino, int flags, struct cfs_file **fh);
ssize_t cfs_read(struct cfs_file *f, void *buf, size_t size, uint64_t off);
ssize_t cfs_write(struct cfs_file *f, const void *buf, size_t size, uint64_t off);
int cfs_fsync(struct cfs_file *f, bool datasync);
int cfs_release(struct cfs_file *f);
cfs_ino_t cfs_file_ino(const struct cfs_file *f);
/* mode: 0 (preallocate), FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE |
 * FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE [| KEEP_SIZE]. */
int cfs_fallocate(struct cfs_file *f, int mode, uint64_t off, uint64_t len);
/* SEEK_DATA / SEEK_HOLE (SEEK_SET/CUR/END are the caller's business). */
int64_t cfs_lseek(struct cfs_file *f, int64_t off, int whence);

/* ---- Extended attributes ------------------------------------------------------ */

/* flags: XATTR_CREATE, XATTR_REPLACE. The names and values of one inode
 * share 2816 bytes (see README, Limits). */
int cfs_setxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, const void *value,
                 size_t size, int flags);
ssize_t cfs_getxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, void *value,
                     size_t size);
ssize_t cfs_listxattr(struct cfs_volume *v, cfs_ino_t ino, char *list, size_t size);
int cfs_removexattr(struct cfs_volume *v, cfs_ino_t ino, const char *name);

/* ---- Check ----------------------------------------------------------------- */

/* One problem found: `what` is a short class ("leaked block", "link count",
 * "bad CRC", ...), `msg` names the structure and its address; `fixed` says
 * whether --repair corrected it. */
typedef void (*cfs_check_msg_fn)(void *ctx, const char *what, const char *msg, bool fixed);

struct cfs_check_report {
    unsigned problems, fixed, left;
    uint64_t inodes, directories, files, data_blocks, small_blocks;
};

#define CFS_CHECK_REPAIR (1u << 0)

/* Check the volume (opened local read-write for a repair, or read-only):
 * superblock copies, resource cluster headers, every inode reachable from
 * the root, every block map and directory, link counts, leaked and doubly
 * allocated blocks, orphan and dangling entries. Returns 0 (clean), 1 (all
 * problems fixed), 4 (problems left), or -errno when it could not run. */
int cfs_check(struct cfs_volume *v, unsigned flags, cfs_check_msg_fn fn, void *ctx,
              struct cfs_check_report *rep);

/* ---- Volume ------------------------------------------------------------------- */

int cfs_statfs(struct cfs_volume *v, struct statvfs *out);
/* Commit the running transaction and flush the LUN. */
int cfs_sync(struct cfs_volume *v);

#endif
