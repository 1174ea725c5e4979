/* vd_io_posix.c: the POSIX backend of the vdisk I/O seam (vd_io.h): file
 * descriptors as handles, openat(2) with O_NOFOLLOW | O_NONBLOCK and an
 * fstat check, pread/pwrite, fdatasync, fallocate, SEEK_DATA/SEEK_HOLE,
 * linkat/renameat2/unlinkat, flock, QEMU's OFD image locks (imagelock.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "imagelock.h"
#include "util.h"
#include "vd_io.h"

static int px_open(void *ctx, int dir, const char *name, unsigned flags, int *h)
{
    (void)ctx;
    int of = O_CLOEXEC | O_NONBLOCK;
    if (!(flags & VD_IO_FOLLOW))
        of |= O_NOFOLLOW;
    if (flags & VD_IO_DIR)
        of |= O_DIRECTORY | O_RDONLY;
    else
        of |= (flags & VD_IO_RDWR) ? O_RDWR : O_RDONLY;
    if (flags & VD_IO_CREATE)
        of |= O_CREAT | O_EXCL;
    int fd = openat(dir == VD_IO_CWD ? AT_FDCWD : dir, name, of, 0644);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    bool ok =
        (flags & VD_IO_DIR) ? S_ISDIR(st.st_mode) : (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
    if (!ok) {
        close(fd);
        return -EINVAL;
    }
    /* the open itself must not block on a FIFO; I/O afterwards may block */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *h = fd;
    return 0;
}

static int px_close(void *ctx, int h)
{
    (void)ctx;
    return close(h) < 0 ? -errno : 0;
}

static int px_stat(void *ctx, int h, struct vd_io_stat *out)
{
    (void)ctx;
    struct stat st;
    if (fstat(h, &st) < 0)
        return -errno;
    out->kind = S_ISREG(st.st_mode)   ? VD_IO_REG
                : S_ISDIR(st.st_mode) ? VD_IO_DIRECTORY
                : S_ISBLK(st.st_mode) ? VD_IO_BLOCK
                                      : VD_IO_OTHER;
    out->size = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(h, 0, SEEK_END);
        out->size = end > 0 ? (uint64_t)end : 0;
    }
    out->blocks = (uint64_t)st.st_blocks * 512;
    out->dev = (uint64_t)st.st_dev;
    out->ino = (uint64_t)st.st_ino;
    out->mode = (unsigned)(st.st_mode & 07777);
    return 0;
}

static int px_pread(void *ctx, int h, void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    return pread_full(h, buf, len, off);
}

static int px_pread_nowait(void *ctx, int h, void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    uint8_t *p = buf;
    while (len > 0) {
        struct iovec iov = {.iov_base = p, .iov_len = len};
        ssize_t n = preadv2(h, &iov, 1, (off_t)off, RWF_NOWAIT);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return -EAGAIN; /* miss, EOF, EOPNOTSUPP, EIO: the caller retries blocking */
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int px_pwrite(void *ctx, int h, const void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    return pwrite_full(h, buf, len, off);
}

static int px_flush(void *ctx, int h)
{
    (void)ctx;
    if (fdatasync(h) == 0)
        return 0;
    if (errno == EINVAL || errno == EROFS) /* special files: nothing to sync */
        return 0;
    return -errno;
}

static int px_punch(void *ctx, int h, uint64_t off, uint64_t len, bool keep_alloc)
{
    (void)ctx;
    int mode = FALLOC_FL_KEEP_SIZE | (keep_alloc ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE);
    if (fallocate(h, mode, (off_t)off, (off_t)len) == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL || errno == ENODEV)
        return -EOPNOTSUPP;
    return -errno;
}

static int px_truncate(void *ctx, int h, uint64_t size)
{
    (void)ctx;
    return ftruncate(h, (off_t)size) < 0 ? -errno : 0;
}

static int px_allocate(void *ctx, int h, uint64_t off, uint64_t len)
{
    (void)ctx;
    if (fallocate(h, 0, (off_t)off, (off_t)len) == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL || errno == ENODEV)
        return -EOPNOTSUPP;
    return -errno;
}

static int px_seek(void *ctx, int h, uint64_t off, bool data, uint64_t *out)
{
    (void)ctx;
    off_t r = lseek(h, (off_t)off, data ? SEEK_DATA : SEEK_HOLE);
    if (r < 0)
        return errno == ENXIO ? -ENXIO : -EOPNOTSUPP;
    *out = (uint64_t)r;
    return 0;
}

static int px_link(void *ctx, int dir, const char *from, const char *to)
{
    (void)ctx;
    int d = dir == VD_IO_CWD ? AT_FDCWD : dir;
    return linkat(d, from, d, to, 0) < 0 ? -errno : 0;
}

static int px_rename(void *ctx, int dir, const char *from, const char *to, bool noreplace)
{
    (void)ctx;
    int d = dir == VD_IO_CWD ? AT_FDCWD : dir;
    if (!noreplace)
        return renameat(d, from, d, to) < 0 ? -errno : 0;
    if (renameat2(d, from, d, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return -errno;
    struct stat st; /* no RENAME_NOREPLACE here: check, then rename */
    if (fstatat(d, to, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return -EEXIST;
    return renameat(d, from, d, to) < 0 ? -errno : 0;
}

static int px_unlink(void *ctx, int dir, const char *name)
{
    (void)ctx;
    return unlinkat(dir == VD_IO_CWD ? AT_FDCWD : dir, name, 0) < 0 ? -errno : 0;
}

static int px_lock(void *ctx, int h, bool exclusive)
{
    (void)ctx;
    if (flock(h, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
        return 0;
    if (errno == EWOULDBLOCK)
        return -EWOULDBLOCK;
    return -EOPNOTSUPP;
}

static int px_imagelock(void *ctx, int h, const char *path, int mode, bool take)
{
    (void)ctx;
    return take ? vd_imagelock_take(h, path, (enum vd_lock_mode)mode)
                : vd_imagelock_set(h, path, (enum vd_lock_mode)mode);
}

static const struct vd_io_ops vd_io_posix_ops = {
    .name = "posix",
    .open = px_open,
    .close = px_close,
    .stat = px_stat,
    .pread = px_pread,
    .pread_nowait = px_pread_nowait,
    .pwrite = px_pwrite,
    .flush = px_flush,
    .punch = px_punch,
    .truncate = px_truncate,
    .allocate = px_allocate,
    .seek = px_seek,
    .link = px_link,
    .rename = px_rename,
    .unlink = px_unlink,
    .lock = px_lock,
    .imagelock = px_imagelock,
};

const struct vd_io vd_io_posix = {.ops = &vd_io_posix_ops, .ctx = NULL};
