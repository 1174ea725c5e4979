/* vdisk: virtual disk images (VMDK in all the flavours QEMU and ESXi write,
 * and raw), with snapshots and clones. Works on any file path: a datastore
 * mount or a local folder. Every call returns 0 or -errno and logs the most
 * specific reason (file, field, expected vs found) through common/log.h.
 *
 * Thread model: vd_pread / vd_pwrite / vd_discard / vd_write_zeroes /
 * vd_block_status / vd_flush may be called from many threads at once on one
 * open image; I/O on different grains runs in parallel, and a grain is
 * allocated once even when two writers race for it. Open and close are not
 * concurrent with I/O; the chain operations (snapshot.h) run on an image in
 * use only through vd_snapshot_*_open, which wait for the I/O in progress
 * and hold new I/O back while they switch the image to the new chain.
 */
#ifndef VDISK_VDISK_H
#define VDISK_VDISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vd_io.h"

struct vd_image;

/* vd_open flags */
#define VD_OPEN_RDONLY (1u << 0)
#define VD_OPEN_RAW (1u << 1)  /* the user says raw: do not probe */
#define VD_OPEN_VMDK (1u << 2) /* the user says VMDK: anything else is an error */
/* Without either, the format is probed, and raw is never a guess: a file
 * with a VMDK header or descriptor is a VMDK; a file without one is raw
 * only if its name says so (.raw, .img, .bin, .iso, .dd) or it is a block
 * device; anything else (a .vmdk whose magic is damaged, a name that says
 * nothing) is refused with the reason (-EMEDIUMTYPE), and so is a raw-named
 * file that holds a VMDK header. On an image probed as raw, a write that
 * would make sector 0 probe as a VMDK is refused (-EPERM), as QEMU does. */
/* Read-only and force-share (qemu-img -U): take only QEMU's consistent-read
 * image lock and share everything, so it opens while a writer holds the
 * image (what it reads may change under it). Without it, vd_open takes
 * QEMU's image locks (imagelock.h) on every file of the chain: a writable
 * open those of a writer, a read-only one (and every parent) those of a
 * reader; -EBUSY, naming the holder, when another process (QEMU's tools, a
 * VM, another vdisk) holds a conflicting one. Readers share. */
#define VD_OPEN_SHARED (1u << 3)

int vd_open(const char *path, unsigned flags, struct vd_image **out);

/* Where the files of a chain may be. The extent files and parents named by
 * an image's descriptors must lie inside the top image's own folder or one
 * of the roots (no absolute path or ".." leading elsewhere, no symbolic
 * link, regular files only, each file once per chain): -EPERM, -ELOOP,
 * -EINVAL otherwise, with the name and the reason logged. */
struct vd_open_opts {
    const struct vd_io *io;   /* NULL: POSIX files */
    const char *const *roots; /* folders allowed besides the disk's own */
    int n_roots;
};
int vd_open_ex(const char *path, unsigned flags, const struct vd_open_opts *o,
               struct vd_image **out);
/* Add a root allowed for every later open of this process (the tools'
 * --allow-root DIR). */
int vd_allow_root(const char *dir);
int vd_close(struct vd_image *img); /* flushes if writable; returns the flush result */

uint64_t vd_size(const struct vd_image *img); /* virtual size in bytes */
bool vd_is_readonly(const struct vd_image *img);
const char *vd_path(const struct vd_image *img);
/* Allocation granularity for block status / discard (grain size; 4096 for raw). */
uint32_t vd_granularity(const struct vd_image *img);

/* I/O flags */
#define VD_FUA (1u << 0)     /* write through to stable storage before returning */
#define VD_NO_HOLE (1u << 1) /* write_zeroes: keep the range allocated */
/* write_zeroes: fail with -ENOTSUP, before changing anything, unless the
 * range can be zeroed without writing zero data (metadata, a hole punch,
 * FALLOC_FL_ZERO_RANGE): NBD's FAST_ZERO. */
#define VD_ZERO_FAST (1u << 2)

/* Byte-addressed I/O; any alignment. Reads of unallocated areas return the
 * parent's data or zeroes. Out-of-range requests are -EINVAL. */
int vd_pread(struct vd_image *img, void *buf, size_t len, uint64_t off);
/* Non-blocking read, for a thread that must never wait for the disk (an NBD
 * connection's reader): the same result as vd_pread when every byte comes
 * from memory (page cache, zeroes, holes), else -EAGAIN with buf partly
 * written (a page-cache miss, which starts readahead; a compressed grain;
 * a filesystem without RWF_NOWAIT; an I/O error): call vd_pread then. Logs
 * nothing. Out-of-range requests are -EINVAL. */
int vd_pread_nowait(struct vd_image *img, void *buf, size_t len, uint64_t off);
int vd_pwrite(struct vd_image *img, const void *buf, size_t len, uint64_t off, unsigned flags);
int vd_flush(struct vd_image *img);
/* Deallocate where the whole grain is covered (reads then return zeroes,
 * not the parent's data). Advisory for pieces of grains (NBD TRIM, SCSI
 * UNMAP): a piece of a grain allocated in this image is punched out (reads
 * zeroes), a piece of one that is not is left as it is (it may go on
 * reading the parent's data): never a copy-up of a whole grain. Raw and
 * flat images: the range reads zeroes. */
int vd_discard(struct vd_image *img, uint64_t off, uint64_t len);
int vd_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags);

/* Block status: describe the extent starting at `off` (at most `len` bytes)
 * whose status is uniform. *ext_len gets its length (>0), *status a mask of: */
#define VD_STATUS_HOLE (1u << 0) /* not allocated in this image or its chain */
#define VD_STATUS_ZERO (1u << 1) /* reads as zeroes */
int vd_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *ext_len,
                    unsigned *status);

/* -------------------------------------------------------- what it is */
bool vd_is_vmdk(const struct vd_image *img);
const char *vd_create_type(const struct vd_image *img); /* createType; "raw" for raw */
uint32_t vd_cid(const struct vd_image *img);            /* VMDK: CID; raw: 0 */
uint32_t vd_parent_cid(const struct vd_image *img);     /* 0xffffffff: no parent */
const char *vd_parent_hint(const struct vd_image *img); /* parentFileNameHint or NULL */
/* A descriptor key's value ("ddb.adapterType", ...), NULL if absent. */
const char *vd_desc_key(const struct vd_image *img, const char *key);
struct vd_image *vd_parent(const struct vd_image *img); /* next image down, or NULL */
/* Bytes allocated by this image's own files (not its parents'). */
uint64_t vd_allocated_bytes(const struct vd_image *img);
struct vd_extent_info {
    const char *path; /* NULL for ZERO */
    const char *type; /* "SPARSE", "FLAT", "VMFS", "ZERO" */
    uint64_t start, len;
    bool sparse; /* the fields below are set */
    uint64_t grain_size;
    bool compressed, zeroed_grain, cowd;
    uint32_t version;
};
int vd_extent_count(const struct vd_image *img); /* 0 for raw */
int vd_extent_get(const struct vd_image *img, int i, struct vd_extent_info *out);

/* ----------------------------------------------------------- create */
enum vd_type { VD_TYPE_THIN, VD_TYPE_THICK, VD_TYPE_EAGER, VD_TYPE_STREAM /* convert only */ };
struct vd_create_opts {
    uint64_t size; /* bytes, rounded up to 512 */
    enum vd_type type;
    const char *adapter;     /* "ide", "lsilogic", "buslogic", "legacyESX"; NULL: lsilogic */
    const char *parent_hint; /* delta disk: parentFileNameHint (thin only) */
    uint32_t parent_cid;     /* with parent_hint */
    bool no_zero_grain;      /* do not set the zeroed-grain flag (version 1) */
};
/* thin: monolithicSparse; thick, eager: monolithicFlat. Never overwrites
 * (-EEXIST). */
int vd_create(const char *path, const struct vd_create_opts *o);
int vd_create_raw(const char *path, uint64_t size);

/* ----------------------------------------------------- resize, convert */
/* Grow (or shrink with VD_RESIZE_SHRINK) an image; not concurrent with I/O.
 * flags may also carry VD_OPEN_RAW / VD_OPEN_VMDK (the format). */
#define VD_RESIZE_SHRINK (1u << 16)
int vd_resize(const char *path, uint64_t size, unsigned flags);
/* Copy every byte of src that does not read as zeroes into dst (a fresh
 * image that reads as zeroes), in pieces of gs bytes, skipping all-zero
 * pieces so they stay unallocated; a progress meter named `what`. */
int vd_copy_sparse(struct vd_image *src, struct vd_image *dst, uint64_t gs, const char *what,
                   bool progress);
/* Write src as a new streamOptimized image (one pass). */
int vd_stream_write(struct vd_image *src, const char *path, const char *adapter, bool progress);

/* ------------------------------------------------------------- check */
struct vd_check_report {
    unsigned errors;     /* problems found */
    unsigned repaired;   /* fixed by --repair */
    unsigned repairable; /* of the errors: --repair knows the fix */
    unsigned leaks;      /* informational */
};
#define VD_CHECK_REPAIR 1u   /* fix what is safe (true works too) */
#define VD_CHECK_PROGRESS 2u /* draw the progress meter even when stderr is not a terminal */
#define VD_CHECK_RAW 4u      /* the user says raw (nothing to check) */
#define VD_CHECK_VMDK 8u     /* the user says VMDK */
struct json;                 /* common/json.h; NULL: problems go to the log */
int vd_check(const char *path, unsigned flags, struct json *j, struct vd_check_report *r);

/* ------------------------------------------------- snapshots, clones
 * A disk at PATH keeps its path for the VMM. vd_snapshot_create freezes the
 * current contents into "<stem>-NNNNNN.vmdk" (read-only from then on) and
 * makes PATH a new empty delta on top of it; the tree lives in ddb.snapshot.*
 * keys of PATH's own descriptor (docs/snapshots.md). The path calls take
 * the disk's writer image lock (QEMU's, see VD_OPEN_SHARED) for their run,
 * so they are refused (-EBUSY, naming the holder) while anyone has the disk
 * open; a process that has it open for I/O (vdisk serve) uses the *_open
 * calls instead, which run between its requests and switch its open image
 * to the new chain. */
#define VD_SNAP_NAME_MAX 64

struct vd_snap {
    int id; /* > 0, unique within the disk, never reused */
    char *name;
    char *file;      /* frozen image, relative to the disk's folder */
    uint32_t cid;    /* CID of the frozen image */
    int parent;      /* id of the parent snapshot, 0: none */
    int64_t created; /* unix seconds */
};

struct vd_snap_list {
    struct vd_snap *s; /* sorted by id */
    int n;
    int current; /* id the live delta sits on, 0: none */
    int last_id; /* highest id ever given (ddb.snapshot.lastId), 0: none */
};

void vd_snap_list_free(struct vd_snap_list *l);
/* Read the snapshot tree of the disk at path (a frozen file is refused). */
int vd_snapshot_list(const char *path, struct vd_snap_list *out);
/* -EEXIST: name taken; -EROFS: path is frozen or read-only. *id may be NULL. */
int vd_snapshot_create(const char *path, const char *name, int *id);
/* -ENOENT: no snapshot of that name. */
int vd_snapshot_revert(const char *path, const char *name);
/* -EBUSY: linked clones depend on the snapshot (they are named in the log). */
int vd_snapshot_delete(const char *path, const char *name);

/* The same on a disk this process has open for I/O (an NBD export): in-flight
 * I/O completes, new I/O waits, the image is flushed (a failed flush refuses
 * the operation), the operation runs, and img then reads and writes the
 * disk's new live delta, reopened through the same chain opener (vd_open_ex:
 * backend, allowed roots). A revert to a snapshot of another size is refused
 * (-EINVAL: an export keeps its size). */
int vd_snapshot_create_open(struct vd_image *img, const char *name, int *id);
int vd_snapshot_revert_open(struct vd_image *img, const char *name);
int vd_snapshot_delete_open(struct vd_image *img, const char *name);
/* Can img have snapshots (a VMDK that is not frozen)? */
bool vd_snapshot_capable(const struct vd_image *img);

struct vd_clone_opts {
    bool linked;       /* delta on a frozen copy of src's current state */
    enum vd_type type; /* full clone: THIN (monolithicSparse) or THICK (flat) */
    bool progress;     /* force the progress meter */
};
/* -EEXIST: dst exists. */
int vd_clone(const char *src, const char *dst, const struct vd_clone_opts *o);

#endif
