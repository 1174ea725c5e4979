/* vdisk: virtual disk images (VMDK in all the flavours QEMU and ESXi write,
 * and raw), with snapshots and clones. Works on any file path: a datastore
 * mount or a local folder. Every call returns 0 or -errno and logs the most
 * specific reason (file, field, expected vs found) through common/log.h.
 *
 * Thread model: vd_pread / vd_pwrite / vd_discard / vd_write_zeroes /
 * vd_block_status / vd_flush may be called from many threads at once on one
 * open image; I/O on different grains runs in parallel, and a grain is
 * allocated once even when two writers race for it. Open, close, and the
 * chain operations (snapshot, clone, ...) are not concurrent with I/O.
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
 * not the parent's data); partial grains are zeroed. */
int vd_discard(struct vd_image *img, uint64_t off, uint64_t len);
int vd_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags);

/* Block status: describe the extent starting at `off` (at most `len` bytes)
 * whose status is uniform. *ext_len gets its length (>0), *status a mask of: */
#define VD_STATUS_HOLE (1u << 0) /* not allocated in this image or its chain */
#define VD_STATUS_ZERO (1u << 1) /* reads as zeroes */
int vd_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *ext_len,
                    unsigned *status);

#endif
