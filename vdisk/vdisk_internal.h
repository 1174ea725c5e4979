/* vdisk internals: shared by the engine files (vdisk.c, vd_*.c, vmdk_*.c), the
 * snapshot/clone code and the unit tests in vdisk/. Nothing outside vdisk/
 * includes it: tools and tests use vdisk.h. Not a stable API.
 *
 * Object model
 *   struct vd_image   one opened image file (raw, or a VMDK descriptor with
 *                     its extents); img->parent is the next image down the
 *                     chain (opened read-only), NULL for a base.
 *   struct vmdk_desc  the parsed text descriptor (embedded in a
 *                     monolithicSparse file, or a separate small file).
 *   struct vmdk_extent one extent line: FLAT/VMFS (a range of a plain file),
 *                     SPARSE (a hosted sparse extent with grain tables),
 *                     ZERO.
 *   struct vmdk_sparse the state of a hosted sparse extent: header fields,
 *                     grain directory and ALL grain tables cached in memory.
 *
 * Lock order: vmdk_sparse.flush_lock -> vmdk_sparse.meta_lock;
 *             vmdk_sparse.stripe[i] -> vmdk_sparse.alloc_lock;
 *             vmdk_sparse.stripe[i] -> vmdk_sparse.meta_lock;
 *             vd_image.cid_lock is taken alone (before any stripe lock).
 */
#ifndef VDISK_VDISK_INTERNAL_H
#define VDISK_VDISK_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk.h"

#define VD_SECTOR 512u
#define VD_MAX_CHAIN 64        /* deepest parent chain we follow */
#define VD_MAX_DESC (1u << 20) /* largest descriptor we parse (bytes) */
#define VD_MAX_EXTENTS 4096
/* grain tables cached by one whole chain (every sparse extent of every
 * image): a hostile chain of huge sparse extents fails the open instead */
#define VD_MAX_CHAIN_GT_BYTES (2ull << 30)
#define VD_MAX_DDB 256
/* vd_open flag for snapshot.c only: open a frozen image (ddb.frozen) for
 * writing; without it such an image opens read-only or not at all. */
#define VD_OPEN_FROZEN_OK (1u << 8)
/* vd_open flag for the snapshot/clone code, which holds the disk's image
 * lock itself for the whole operation (or runs inside the server holding
 * it): take no image locks. Inherited by the parents. */
#define VD_OPEN_NOLOCK (1u << 9)

/* ---------------------------------------------------------------- header */
/* Hosted sparse extent header ("KDMV", VMware Virtual Disk Format 1.1, and
 * QEMU's VMDK4Header). 512 bytes on disk, little-endian. */
#define VMDK4_MAGIC 0x564d444bu /* "KDMV" read as LE u32 */
#define VMDK4_FLAG_NL_DETECT (1u << 0)
#define VMDK4_FLAG_RGD (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESS (1u << 16)
#define VMDK4_FLAG_MARKER (1u << 17)
#define VMDK4_GD_AT_END 0xffffffffffffffffull
#define VMDK4_COMPRESS_DEFLATE 1
#define VMDK_GTE_ZEROED 1u       /* grain table entry: grain reads as zeroes */
#define VMDK3_MAGIC_BYTES "COWD" /* ESX vmfsSparse extent; header below at offset 4 */
#define VMDK3_GTES 4096u

struct vmdk4_header_disk {
    uint8_t magic[4];
    uint8_t version[4];
    uint8_t flags[4];
    uint8_t capacity[8];    /* sectors */
    uint8_t grain_size[8];  /* sectors */
    uint8_t desc_offset[8]; /* sectors */
    uint8_t desc_size[8];   /* sectors */
    uint8_t num_gtes_per_gt[4];
    uint8_t rgd_offset[8]; /* sectors */
    uint8_t gd_offset[8];  /* sectors */
    uint8_t overhead[8];   /* sectors: first grain */
    uint8_t unclean_shutdown;
    uint8_t single_end_line_char;
    uint8_t non_end_line_char;
    uint8_t double_end_line_char1;
    uint8_t double_end_line_char2;
    uint8_t compress_algorithm[2];
    uint8_t pad[433];
};
_Static_assert(sizeof(struct vmdk4_header_disk) == 512, "vmdk4 header is one sector");
_Static_assert(offsetof(struct vmdk4_header_disk, num_gtes_per_gt) == 44, "numGTEsPerGT");
_Static_assert(offsetof(struct vmdk4_header_disk, overhead) == 64, "overHead");
_Static_assert(offsetof(struct vmdk4_header_disk, compress_algorithm) == 77, "compressAlgorithm");

struct vmdk4_header {
    uint32_t version;
    uint32_t flags;
    uint64_t capacity;
    uint64_t grain_size;
    uint64_t desc_offset;
    uint64_t desc_size;
    uint32_t num_gtes_per_gt;
    uint64_t rgd_offset;
    uint64_t gd_offset;
    uint64_t overhead;
    uint8_t unclean_shutdown;
    uint16_t compress_algorithm;
};

void vmdk4_header_encode(const struct vmdk4_header *h, struct vmdk4_header_disk *d);
/* Decode an ESX "COWD" header (first 512 bytes) into the same in-memory form. */
int vmdk3_header_decode(const uint8_t *b, struct vmdk4_header *h, const char *what);
/* Decode and validate ranges. `what` names the file in messages. Returns 0,
 * -EINVAL (bad magic: not a sparse extent) or -EUCLEAN (bad field). */
int vmdk4_header_decode(const struct vmdk4_header_disk *d, struct vmdk4_header *h,
                        const char *what);

/* ------------------------------------------------------------ descriptor */
/* VMFSSPARSE appears only in descriptors: at run time it is a SPARSE extent
 * whose file is an ESX "COWD" sparse extent (vmfsSparse deltas; read-only). */
enum vmdk_ext_type {
    VMDK_EXT_FLAT,
    VMDK_EXT_SPARSE,
    VMDK_EXT_ZERO,
    VMDK_EXT_VMFS,
    VMDK_EXT_VMFSSPARSE,
    VMDK_EXT_SESPARSE /* ESXi seSparse delta extent (read-only) */
};
enum vmdk_access { VMDK_ACC_RW, VMDK_ACC_RDONLY, VMDK_ACC_NOACCESS };

struct vmdk_desc_extent {
    enum vmdk_access access;
    enum vmdk_ext_type type;
    uint64_t sectors;
    char *fname;     /* NULL for ZERO */
    uint64_t offset; /* sectors into fname (FLAT) */
};

struct vmdk_kv {
    char *key;
    char *val; /* without quotes */
};

struct vmdk_desc {
    uint32_t version;
    uint32_t cid;
    uint32_t parent_cid; /* 0xffffffff: no parent */
    char *create_type;   /* "monolithicSparse", ... */
    char *parent_hint;   /* parentFileNameHint or NULL */
    struct vmdk_desc_extent *ext;
    int n_ext;
    struct vmdk_kv *ddb; /* ddb.* keys, in file order */
    int n_ddb;
};

/* Parse `len` bytes of descriptor text (need not be NUL-terminated; stops
 * at the first NUL). Extent names must be plain names in the same folder.
 * Returns 0 or -EUCLEAN with a message naming `what` and the line. */
int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d, const char *what);
/* Emit the descriptor text (malloc'd, NUL-terminated) in QEMU's layout. */
char *vmdk_desc_emit(const struct vmdk_desc *d);
void vmdk_desc_free(struct vmdk_desc *d);
const char *vmdk_desc_ddb_get(const struct vmdk_desc *d, const char *key);
int vmdk_desc_ddb_set(struct vmdk_desc *d, const char *key, const char *val);
int vmdk_desc_set_str(char **field, const char *val); /* strdup helper; val may be NULL */
bool vmdk_fname_is_safe(const char *name);

/* ---------------------------------------------------------------- sparse */
#define VMDK_STRIPES 64

struct vmdk_sparse {
    struct vmdk4_header h;
    uint64_t grain_bytes;
    uint32_t num_gts;     /* grain directory entries */
    uint32_t *gd;         /* sectors of each GT (primary); immutable after open */
    uint32_t *rgd;        /* redundant GD or NULL */
    uint32_t *gt;         /* all GTEs (num_gts * gtes_per_gt); read/written
                             with __atomic ops; changes under stripe lock */
    bool compressed;      /* streamOptimized: grains are deflate + marker */
    bool zero_grain;      /* GTE 1 means zeroed grain */
    bool cowd;            /* ESX COWD extent: read-only here */
    bool sesparse;        /* ESXi seSparse extent: read-only here; its 64-bit
                             tables are translated into gt[] at open */
    uint64_t file_size;   /* bytes, at open */
    uint64_t file_end;    /* bytes; next grain goes here; under alloc_lock */
    uint64_t durable_end; /* bytes: the file was extended (and fdatasync'ed)
                             ahead of new grains up to here in this session,
                             0 before the first; under alloc_lock */
    pthread_mutex_t alloc_lock;
    pthread_mutex_t stripe[VMDK_STRIPES]; /* stripe[gt index % N] */
    /* Deferred grain table entries (vmdk_sparse.c "Design notes"): a new
     * grain that hides the parent's data is published in gt[] at once but
     * written to the file only by the next vmdk_sparse_flush(), after an
     * fdatasync of its data. State per 512-byte GT sector (128 entries),
     * allocated at the first deferred entry. */
    bool defer_ok;              /* entries per GT a multiple of 128; set at open */
    pthread_mutex_t meta_lock;  /* every write of GT entries to the file, and
                                  the fields below */
    pthread_mutex_t flush_lock; /* one vmdk_sparse_flush() at a time */
    struct vmdk_gt_sector *gts; /* NULL until the first deferred entry */
    uint32_t *dirty;            /* GT sectors with pending entries, n_dirty of them */
    uint32_t *flushing;         /* the list taken by the running flush (flush_lock) */
    uint32_t n_dirty;           /* under meta_lock */
};

/* One 512-byte grain table sector. Bit i: entry i of the sector. */
struct vmdk_gt_sector {
    uint64_t pend[2];  /* published in memory, the file still holds 0 */
    uint64_t flush[2]; /* taken by the running flush: data synced, the
                          sector write pending */
    bool listed;       /* in vmdk_sparse.dirty */
};

/* ---------------------------------------------------------------- extent */
struct vmdk_extent {
    struct vd_image *img; /* the image this extent belongs to */
    enum vmdk_ext_type type;
    enum vmdk_access access;
    uint64_t start;         /* bytes into the virtual disk */
    uint64_t len;           /* bytes */
    char *path;             /* file path (resolved beside the descriptor) */
    const struct vd_io *io; /* the backend fd belongs to */
    int fd;                 /* backend handle; -1 for ZERO */
    uint64_t file_off;      /* FLAT: byte offset of the extent in the file */
    struct vmdk_sparse *sp; /* SPARSE only */
};

/* Mapping of a range inside one image (not the chain). */
enum vd_map_state {
    VD_MAP_DATA,       /* at fd:file_off */
    VD_MAP_ZERO,       /* reads as zeroes in this image */
    VD_MAP_UNALLOC,    /* not here: go to the parent (or zeroes) */
    VD_MAP_COMPRESSED, /* compressed grain at fd:file_off */
};
struct vd_map {
    enum vd_map_state state;
    uint64_t len; /* bytes with this state from the asked offset */
    int fd;
    uint64_t file_off;
    struct vmdk_extent *ext;
};

/* ----------------------------------------------------------------- image */
enum vd_kind { VD_KIND_RAW, VD_KIND_VMDK };

struct vd_image {
    /* Everything from here to `cid_lock` is the open image's state; a live
     * switch (vd_image_switch) exchanges it, in place, with a freshly opened
     * image's, so pointers to this struct (an NBD export's) stay valid. */
    char *path;
    char *dir;      /* folder holding the descriptor, as named ("" or ".../") */
    char *real_dir; /* the same folder, absolute and normalised (no '/' at the end) */
    const struct vd_io *io;
    int dirh;        /* backend handle of that folder, -1 if none */
    bool has_desc;   /* a real descriptor (not a bare extent): its CID means something */
    bool desc_torn;  /* embedded descriptor read from its journal copy (vmdk_open.c) */
    bool probed_raw; /* raw by probe and name, not by the caller's word: sector 0 guarded */
    unsigned flags;
    bool ro;
    enum vd_kind kind;
    uint64_t size;
    uint32_t gran;
    int fd; /* RAW: the file; VMDK: the descriptor file */
    /* VMDK only: */
    struct vmdk_desc desc;       /* CID protected by cid_lock */
    bool desc_embedded;          /* descriptor inside extent 0's sparse file */
    uint64_t desc_off, desc_cap; /* bytes: where, and room for it */
    struct vmdk_extent *ext;
    int n_ext;
    struct vd_image *parent; /* read-only, owned */
    int cid_updated;         /* atomic; set after the first write rewrote CID */
    /* atomic: -errno of the first failed fdatasync of any file of this
     * image, 0 before. Sticky until the image is closed: Linux reports a
     * writeback error once per open file, so a later sync that succeeds
     * proves nothing about the writes before the failure (vd_sync_fd). */
    int sync_err;
    /* the roots the caller gave vd_open_ex (vd_open_opts), for a reopen */
    char **open_roots;
    int n_open_roots;
    /* ---- not exchanged by a live switch (add state fields above) ---- */
    pthread_mutex_t cid_lock;
    /* Held shared by every I/O call (vd_pread, vd_pwrite, vd_flush, ...),
     * exclusively by vd_image_switch: a switch happens between requests.
     * Writer-preferring, so a switch is not starved by a stream of I/O. */
    pthread_rwlock_t io_lock;
    int dead; /* atomic: -errno once a switch could not reopen the disk */
};

/* vdisk.c */
#include "imagelock.h"
/* Switch an image that is open for I/O (an NBD export's) to what its path
 * holds after `op` changed the chain on disk (a snapshot create, revert or
 * delete): waits for the I/O in progress and holds off new I/O, flushes
 * (a failed flush: -errno, op is not run), runs op(path, arg), then reopens
 * the path and exchanges the new image's state with img's in place, closes
 * the old state and takes the image locks of the new chain. op runs while
 * img's own image locks are held, so it must open files with
 * VD_OPEN_NOLOCK. Returns op's result; if the reopen fails, every later
 * I/O call on img fails with -EIO (the disk changed under it). */
int vd_image_switch(struct vd_image *img, int (*op)(const char *path, void *arg), void *arg);
/* The image lock mode for a file of an image opened with `flags`, written
 * (rw) or only read. */
enum vd_lock_mode vd_lock_mode_for(unsigned flags, bool rw);
/* fdatasync one file of img (EINVAL/EROFS: nothing to sync, 0). The first
 * failure is recorded in img->sync_err and returned; from then on every
 * call fails with -EIO at once, without syncing (QEMU's file driver does
 * the same): the image must be closed and reopened (and checked). */
int vd_sync_fd(struct vd_image *img, int fd, const char *path);
/* 0, or -EIO (logged) when an earlier sync of img failed. */
int vd_sync_failed(struct vd_image *img);
struct vd_image *vd_image_alloc(const char *path, unsigned flags);
void vd_image_free(struct vd_image *img);

/* vd_chain.c: state of one vd_open_ex() while it opens a chain. */
struct vd_chain {
    const struct vd_io *io;
    char **roots; /* normalised absolute folders; roots[0] is the top image's */
    int n_roots;
    struct {
        uint64_t dev, ino;
    } * files; /* every file opened so far */
    int n_files, cap_files;
    int depth;         /* of the image being opened; 0 = top */
    uint64_t gt_bytes; /* grain tables cached so far */
};
/* Open `name` (relative to the absolute folder from_dir, or absolute) for a
 * chain: confined to c->roots, no symbolic links, regular files only, each
 * file once. `what` prefixes messages. Optional outs: the normalised path,
 * its folder, and a handle of that folder. */
int vd_chain_open_file(struct vd_chain *c, const char *what, const char *from_dir, const char *name,
                       bool rw, int *h, char **path_out, char **dir_out, int *dirh_out);
/* 0 if an image at image_path may name target (an existing file) as its
 * parent under the process-wide roots, else -EPERM with a message. */
int vd_chain_path_allowed(const char *image_path, const char *target);
/* Take QEMU's image locks (`mode`) on the open file h of a chain through
 * the backend's imagelock op (none: 0); -EBUSY naming the holder. */
int vd_image_lock_file(const struct vd_io *io, int h, const char *path, enum vd_lock_mode mode);
/* Would this first sector make the probe say VMDK? */
bool vd_probe_is_vmdk(const uint8_t *first, size_t n);
/* Does the file name say raw (.raw, .img, ...)? */
bool vd_name_says_raw(const char *path);
/* Open img's parent (parentFileNameHint), checking its CID. */
int vd_chain_open_parent(struct vd_chain *c, struct vd_image *img);

/* Map [off, off+len) of THIS image only (no chain). len > 0; returns 0 and
 * m->len in (0, len]. */
int vd_map_local(struct vd_image *img, uint64_t off, uint64_t len, struct vd_map *m);
/* Read THIS image only: unallocated areas read as zeroes. */
int vd_pread_local(struct vd_image *img, void *buf, size_t len, uint64_t off);
/* Iterate allocated ranges (DATA, COMPRESSED or ZERO-marked) of THIS image;
 * cb returns 0 to continue, nonzero to stop (returned). */
typedef int (*vd_alloc_cb)(uint64_t off, uint64_t len, enum vd_map_state state, void *opaque);
int vd_alloc_iterate(struct vd_image *img, vd_alloc_cb cb, void *opaque);
/* Copy one grain's worth of bytes [off, off+len) from src (chain read) to
 * dst; skips the write when the data is all zeroes and dst has no parent. */
int vd_copy_range(struct vd_image *src, struct vd_image *dst, uint64_t off, uint64_t len);
bool vd_buf_is_zero(const void *buf, size_t len);

/* vmdk_open.c: open a VMDK (header/descriptor already probed). */
int vmdk_open(struct vd_image *img, const uint8_t *first, size_t first_len, struct vd_chain *c);
void vmdk_close(struct vd_image *img);
/* An embedded descriptor area of `cap` bytes (NUL-padded): text and len get
 * the text to parse: the area's own (0), or its journal copy when the text
 * was torn by a crash (1, logged); -EUCLEAN when neither is whole. */
int vmdk_desc_recover(const char *area, size_t cap, size_t *len, const char **text,
                      const char *what);
/* Emit d with its checksum key (ddb.vdisk.descriptorCRC) set. */
char *vmdk_desc_emit_sealed(struct vmdk_desc *d);
/* Rewrite the descriptor (embedded or separate file) from img->desc, never
 * leaving a torn one after a crash (vmdk_open.c "descriptor rewrite"). */
int vmdk_desc_write(struct vd_image *img);
/* Update CID once per open, before the first write (as QEMU does). */
int vmdk_cid_touch(struct vd_image *img);

/* vmdk_sparse.c */
int vmdk_sparse_open(struct vmdk_extent *e, const char *what);
void vmdk_sparse_free(struct vmdk_sparse *sp);
/* streamOptimized: decode the footer header (at end - 1024) into h. */
int vmdk_sparse_read_footer(const struct vd_io *io, int fd, uint64_t fsize, struct vmdk4_header *h,
                            const char *what);
int vmdk_sparse_map(struct vmdk_extent *e, uint64_t off, uint64_t len, struct vd_map *m);
int vmdk_sparse_read_compressed(struct vmdk_extent *e, uint64_t file_off, uint64_t grain,
                                uint8_t *out);
int vmdk_sparse_write(struct vd_image *img, struct vmdk_extent *e, const uint8_t *buf, uint64_t len,
                      uint64_t off, unsigned flags);
/* Zero [off,off+len) of the extent: whole grains become zeroed-grain GTEs
 * (or unallocated when `unmap_to_parent`), partial grains are written. */
int vmdk_sparse_zero(struct vd_image *img, struct vmdk_extent *e, uint64_t off, uint64_t len,
                     unsigned flags);
/* Discard [off,off+len): whole grains become zeroed-grain entries, pieces
 * of grains allocated here are punched out of the file (they read zeroes);
 * pieces of grains not allocated here are left alone (TRIM is advisory: no
 * copy-up of a whole grain to give back a piece of it). */
int vmdk_sparse_discard(struct vd_image *img, struct vmdk_extent *e, uint64_t off, uint64_t len);
/* Make every write that completed before the call durable: fdatasync the
 * data, write the GT sectors holding deferred entries (primary, then
 * redundant), fdatasync again. Thread-safe. */
int vmdk_sparse_flush(struct vmdk_extent *e);
/* Cut the space grown ahead of new grains back to the last grain (as close
 * does), so that another open of the file sees its real end. No I/O on the
 * extent meanwhile. */
int vmdk_sparse_trim_ahead(struct vmdk_extent *e);

/* vmdk_create.c (enum vd_type, struct vd_create_opts: vdisk.h) */
/* Create a VMDK image file (never overwrites: -EEXIST); vd_create is the
 * public name. */
int vmdk_create(const char *path, const struct vd_create_opts *o);
uint32_t vmdk_random_cid(void);
/* ddb.adapterType values QEMU and the VMDK specification know. */
bool vmdk_adapter_known(const char *adapter);
/* ddb.geometry.cylinders for `sectors` with `heads` heads and 63 sectors
 * per track; IDE (16 heads) capped at 16383. */
uint64_t vmdk_geometry_cylinders(uint64_t sectors, unsigned heads);

#endif
