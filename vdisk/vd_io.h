/* vd_io.h: the I/O seam of the vdisk engine.
 *
 * The engine reaches the files of an image (descriptors, extents, parents)
 * only through a struct vd_io: a small ops table and its context, as QEMU's
 * block drivers reach their backing files through a child handle. The POSIX
 * implementation (vd_io_posix) is the default; the datastore daemon can hand
 * the same engine a backend over the volume's file API.
 *
 * Handles are small non-negative integers chosen by the backend (file
 * descriptors for POSIX). Every op returns 0 or -errno. Files are opened by
 * ONE name component relative to a directory handle (openat), never by a
 * path that the backend would resolve through symbolic links: the chain
 * opener (vd_chain.c) walks paths component by component itself, so a
 * descriptor cannot lead the engine out of the roots the user allowed.
 */
#ifndef VDISK_VD_IO_H
#define VDISK_VD_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* vd_io_ops.open flags */
#define VD_IO_RDWR (1u << 0)   /* else read-only */
#define VD_IO_DIR (1u << 1)    /* open a directory (for further opens) */
#define VD_IO_CREATE (1u << 2) /* create, fail with -EEXIST if it exists */
#define VD_IO_FOLLOW                                                                               \
    (1u << 3) /* follow a symbolic link in the last component                                      \
                 (only for names the user typed) */
/* the "current directory" handle: names relative to it are the user's paths */
#define VD_IO_CWD (-100)

enum vd_io_kind { VD_IO_REG, VD_IO_DIRECTORY, VD_IO_BLOCK, VD_IO_OTHER };

struct vd_io_stat {
    enum vd_io_kind kind;
    uint64_t size;   /* bytes (block devices: their size) */
    uint64_t blocks; /* allocated bytes */
    uint64_t dev, ino;
    unsigned mode; /* permission bits */
};

struct vd_io_ops {
    const char *name;
    /* name: one component (no '/') relative to dir, or, with dir ==
     * VD_IO_CWD, any path (only paths the user gave). Non-blocking open (a
     * FIFO does not hang); regular files, directories and block devices
     * only (-EINVAL otherwise); a symbolic link is -ELOOP unless
     * VD_IO_FOLLOW. */
    int (*open)(void *ctx, int dir, const char *name, unsigned flags, int *h);
    int (*close)(void *ctx, int h);
    int (*stat)(void *ctx, int h, struct vd_io_stat *st);
    /* full transfers; a read past the end of the file is -EIO */
    int (*pread)(void *ctx, int h, void *buf, size_t len, uint64_t off);
    /* served from memory only, else -EAGAIN (may be NULL: always -EAGAIN) */
    int (*pread_nowait)(void *ctx, int h, void *buf, size_t len, uint64_t off);
    int (*pwrite)(void *ctx, int h, const void *buf, size_t len, uint64_t off);
    int (*flush)(void *ctx, int h); /* data and size durable (fdatasync) */
    /* deallocate (or, keep_alloc, zero in place) a range; -EOPNOTSUPP when
     * the backend cannot: the caller writes zeroes */
    int (*punch)(void *ctx, int h, uint64_t off, uint64_t len, bool keep_alloc);
    int (*truncate)(void *ctx, int h, uint64_t size);
    int (*allocate)(void *ctx, int h, uint64_t off, uint64_t len); /* -EOPNOTSUPP allowed */
    /* next data (data=true) or hole at or after off: *out; -ENXIO: no data
     * after off; -EOPNOTSUPP: everything is data */
    int (*seek)(void *ctx, int h, uint64_t off, bool data, uint64_t *out);
    /* names are single components inside the directory handle dir */
    int (*link)(void *ctx, int dir, const char *from, const char *to);
    int (*rename)(void *ctx, int dir, const char *from, const char *to, bool noreplace);
    int (*unlink)(void *ctx, int dir, const char *name);
    /* exclusive (or shared) advisory lock of a whole file or directory,
     * non-blocking: -EWOULDBLOCK when held elsewhere, -EOPNOTSUPP when the
     * file system has none */
    int (*lock)(void *ctx, int h, bool exclusive);
    /* QEMU's image locks (imagelock.h) on an open file: take `mode` (enum
     * vd_lock_mode; VD_LOCK_NONE drops them) and check for conflicting
     * holders: -EBUSY, naming the holder. take=false only changes what is
     * held, without the check. May be NULL: the backend's files cannot be
     * reached by QEMU, nothing to lock. */
    int (*imagelock)(void *ctx, int h, const char *path, int mode, bool take);
};

struct vd_io {
    const struct vd_io_ops *ops;
    void *ctx;
};

extern const struct vd_io vd_io_posix;

/* Call helpers: vd_io_pread(io, h, ...) */
#define VD_IO(io, op, ...) ((io)->ops->op((io)->ctx, __VA_ARGS__))

#endif
