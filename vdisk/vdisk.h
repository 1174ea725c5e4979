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

struct vd_image;

/* vd_open flags */
#define VD_OPEN_RDONLY (1u << 0)
#define VD_OPEN_RAW (1u << 1) /* treat the file as raw, do not probe */
/* Read-only and force-share (qemu-img -U): take only QEMU's consistent-read
 * image lock and share everything, so it opens while a writer holds the
 * image (what it reads may change under it). Without it, vd_open takes
 * QEMU's image locks (imagelock.h) on every file of the chain: a writable
 * open those of a writer, a read-only one (and every parent) those of a
 * reader; -EBUSY, naming the holder, when another process (QEMU's tools, a
 * VM, another vdisk) holds a conflicting one. Readers share. */
#define VD_OPEN_SHARED (1u << 2)

int vd_open(const char *path, unsigned flags, struct vd_image **out);
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

#endif
