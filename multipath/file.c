/* A path to a LUN that is a plain file or a block device.
 *
 * Design notes
 * ------------
 * - O_DIRECT when the filesystem allows it, so that several processes (the
 *   "hosts" of a test cluster) sharing one file see each other's writes as
 *   they would on a SAN, and so that a flush means what it says. If open()
 *   or the first aligned pread() with O_DIRECT fails with EINVAL (tmpfs,
 *   some FUSE filesystems, a 512-byte block on a 4K-sector device), the
 *   path silently falls back to buffered I/O (fcntl clears O_DIRECT); it
 *   does so again if a later transfer gets EINVAL. Caller buffers need no
 *   alignment: unaligned ones go through a bounce buffer, in pieces of at
 *   most FILE_BOUNCE_MAX bytes.
 *
 * - Asynchronous submit: a pool of FILE_WORKERS threads takes lun_ios from
 *   an intrusive FIFO (the link is io->priv[3]); at most FILE_QUEUE_MAX are
 *   queued, after which submit waits for room -- except when called from a
 *   worker (a completion that resubmits), which never waits.
 *
 * - COMPARE AND WRITE is emulated atomically across processes by locking
 *   the block's byte range: an in-process stripe mutex (OFD locks do not
 *   exclude threads that share the open file description) and then an OFD
 *   write lock (F_OFD_SETLKW), read, compare, write, unlock. The emulation
 *   is atomic against other CAWs of any process that uses this code, which
 *   is what the lock layer needs. A plain WRITE of exactly one block takes
 *   the same lock briefly, and a plain READ of exactly one block takes it
 *   shared, so a CAW never sees, nor leaves visible, a torn block. A READ
 *   of up to FILE_READ_LOCK_MAX blocks takes a shared OFD lock on its range
 *   (no stripe mutexes), so it sees other processes' (and other struct
 *   luns') CAWs whole too. Other writers of the range (multi-block writes,
 *   other programs) are NOT excluded: a CAW and such a write are as
 *   unordered as on a real disk.
 *
 * - FUA = pwritev2(RWF_DSYNC) (or pwrite + fdatasync where that is
 *   refused); flush = fdatasync; unmap = fallocate(PUNCH_HOLE|KEEP_SIZE)
 *   (zero writes where that is unsupported), so unmapped blocks read back
 *   as zeroes; write same = repeated writes of the pattern, or a punch when
 *   the pattern is zero and LUN_IO_UNMAP is set.
 *
 * - Identity: "file.<st_dev hex>.<st_ino hex>", so two paths to the same file
 *   match. Persistent reservations are not supported on files.
 *
 * Locking: fp->qlock protects the queue (head, tail, queued, stop). The
 * stripe mutexes are taken before the OFD lock, and released after it;
 * nothing else is held meanwhile. fp->direct is read and cleared atomically.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "path.h"
#include "sense.h"

#define FILE_WORKERS 4
#define FILE_QUEUE_MAX 256
#define FILE_ALIGN 4096
#define FILE_BOUNCE_MAX (1u << 20)
#define FILE_LOCK_STRIPES 64
#define FILE_READ_LOCK_MAX 256 /* reads up to this many blocks take a shared OFD lock */
#define FILE_DEFAULT_BLOCK_SIZE 512

struct file_path {
    struct lun_path path;
    char *file;     /* the file name, for messages; immutable */
    int fd;         /* immutable */
    bool direct;    /* O_DIRECT in use; accessed atomically, only ever cleared */
    bool read_only; /* immutable */
    uint32_t bs;    /* immutable */
    uint64_t nblocks;
    dev_t dev;
    ino_t ino;
    bool is_blockdev;
    bool pr_warned; /* accessed atomically */

    pthread_mutex_t qlock; /* protects head, tail, queued, stop */
    pthread_cond_t qwork;  /* signalled when an I/O is queued or stop is set */
    pthread_cond_t qspace; /* signalled when an I/O leaves the queue */
    struct lun_io *head, *tail;
    unsigned queued;
    bool stop;
    pthread_t workers[FILE_WORKERS];
    unsigned nworkers;

    pthread_mutex_t stripes[FILE_LOCK_STRIPES]; /* in-process half of the block lock */
};

static __thread bool file_in_worker;

/* ---- URI ---------------------------------------------------------------- */

static int file_block_size_check(const char *what, uint64_t v)
{
    if (v != 512 && v != 4096) {
        log_err("%s: block size %llu not supported (512 or 4096)", what, (unsigned long long)v);
        return -EINVAL;
    }
    return 0;
}

int lun_file_uri_parse(const char *uri, char **path, uint32_t *block_size)
{
    *path = NULL;
    if (!uri || !*uri) {
        log_err("empty file LUN path");
        return -EINVAL;
    }
    if (strncasecmp(uri, "file://", 7) != 0) {
        *path = strdup(uri);
        return *path ? 0 : -ENOMEM;
    }
    const char *rest = uri + 7;
    if (strncasecmp(rest, "localhost/", 10) == 0)
        rest += 9;
    if (rest[0] != '/') {
        log_err("%s: a file URI must be file:///absolute/path (no host part)", uri);
        return -EINVAL;
    }
    size_t plen = strcspn(rest, "?");
    char *p = strndup(rest, plen);
    if (!p)
        return -ENOMEM;
    const char *q = rest[plen] == '?' ? rest + plen + 1 : NULL;
    while (q && *q) {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (eq && (size_t)(eq - q) == 10 && strncmp(q, "block_size", 10) == 0) {
            char num[32];
            size_t nlen = len - 11;
            char *end;
            if (nlen == 0 || nlen >= sizeof num) {
                log_err("%s: bad block_size value", uri);
                free(p);
                return -EINVAL;
            }
            memcpy(num, eq + 1, nlen);
            num[nlen] = '\0';
            errno = 0;
            unsigned long long v = strtoull(num, &end, 10);
            if (*end || errno || num[0] == '-') {
                log_err("%s: bad block_size value '%s'", uri, num);
                free(p);
                return -EINVAL;
            }
            if (file_block_size_check(uri, v) < 0) {
                free(p);
                return -EINVAL;
            }
            *block_size = (uint32_t)v;
        } else {
            log_err("%s: unknown file URI option '%.*s' (known: block_size)", uri, (int)len, q);
            free(p);
            return -EINVAL;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    *path = p;
    return 0;
}

/* ---- Raw transfers ------------------------------------------------------ */

static bool file_direct(struct file_path *fp)
{
    return __atomic_load_n(&fp->direct, __ATOMIC_RELAXED);
}

/* O_DIRECT refused a transfer (EINVAL): continue buffered. */
static bool file_direct_off(struct file_path *fp)
{
    if (!__atomic_exchange_n(&fp->direct, false, __ATOMIC_RELAXED))
        return false;
    int fl = fcntl(fp->fd, F_GETFL);
    if (fl >= 0)
        fcntl(fp->fd, F_SETFL, fl & ~O_DIRECT);
    log_debug("%s: O_DIRECT refused, using buffered I/O", fp->file);
    return true;
}

static int file_pread_raw(struct file_path *fp, void *buf, size_t len, uint64_t off)
{
    uint8_t *b = buf;
    while (len) {
        ssize_t n = pread(fp->fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {
            log_err("%s: short read at offset %llu (file shrank?)", fp->file,
                    (unsigned long long)off);
            return -EIO;
        }
        b += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int file_pwrite_raw(struct file_path *fp, const void *buf, size_t len, uint64_t off,
                           bool fua)
{
    const uint8_t *b = buf;
    bool need_sync = false;
    while (len) {
        struct iovec iov = {.iov_base = (void *)b, .iov_len = len};
        ssize_t n = pwritev2(fp->fd, &iov, 1, (off_t)off, fua && !need_sync ? RWF_DSYNC : 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (fua && !need_sync && errno == EOPNOTSUPP) {
                need_sync = true;
                continue;
            }
            return -errno;
        }
        b += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    if (need_sync && fdatasync(fp->fd) < 0)
        return -errno;
    return 0;
}

/* Transfer through an aligned bounce buffer when O_DIRECT is in use and the
 * caller's buffer is not aligned. Retries once buffered on EINVAL. */
static int file_xfer(struct file_path *fp, bool write, void *buf, size_t len, uint64_t off,
                     bool fua)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc;
        if (!file_direct(fp) || ((uintptr_t)buf % FILE_ALIGN) == 0) {
            rc =
                write ? file_pwrite_raw(fp, buf, len, off, fua) : file_pread_raw(fp, buf, len, off);
        } else {
            size_t blen = len < FILE_BOUNCE_MAX ? len : FILE_BOUNCE_MAX;
            void *bounce;
            if (posix_memalign(&bounce, FILE_ALIGN, blen))
                return -ENOMEM;
            rc = 0;
            for (size_t done = 0; done < len && rc == 0;) {
                size_t n = len - done < blen ? len - done : blen;
                if (write) {
                    memcpy(bounce, (uint8_t *)buf + done, n);
                    rc = file_pwrite_raw(fp, bounce, n, off + done, fua);
                } else {
                    rc = file_pread_raw(fp, bounce, n, off + done);
                    if (rc == 0)
                        memcpy((uint8_t *)buf + done, bounce, n);
                }
                done += n;
            }
            free(bounce);
        }
        if (rc == -EINVAL && file_direct_off(fp))
            continue;
        if (rc < 0)
            log_err("%s: %s of %zu bytes at offset %llu failed: %s", fp->file,
                    write ? "write" : "read", len, (unsigned long long)off, strerror(-rc));
        return rc;
    }
    return -EINVAL;
}

/* ---- The block lock (CAW emulation) ------------------------------------- */

/* OFD lock of blocks [lba, lba + n): other open file descriptions (other
 * processes, other struct luns on the file) are excluded, threads sharing
 * ours are not. */
static int file_range_lock(struct file_path *fp, uint64_t lba, uint32_t n, short type)
{
    struct flock fl = {
        .l_type = type,
        .l_whence = SEEK_SET,
        .l_start = (off_t)(lba * fp->bs),
        .l_len = (off_t)n * fp->bs,
    };
    while (fcntl(fp->fd, F_OFD_SETLKW, &fl) < 0) {
        if (errno == EINTR)
            continue;
        int err = errno;
        log_err("%s: cannot lock %u blocks at lba %llu (OFD lock): %s", fp->file, n,
                (unsigned long long)lba, strerror(err));
        return -err;
    }
    return 0;
}

static void file_range_unlock(struct file_path *fp, uint64_t lba, uint32_t n)
{
    struct flock fl = {
        .l_type = F_UNLCK,
        .l_whence = SEEK_SET,
        .l_start = (off_t)(lba * fp->bs),
        .l_len = (off_t)n * fp->bs,
    };
    while (fcntl(fp->fd, F_OFD_SETLK, &fl) < 0 && errno == EINTR)
        ;
}

/* One block, excluding everyone: our threads (stripe mutex) and others. */
static int file_block_lock(struct file_path *fp, uint64_t lba, short type)
{
    pthread_mutex_lock(&fp->stripes[lba % FILE_LOCK_STRIPES]);
    int rc = file_range_lock(fp, lba, 1, type);
    if (rc < 0)
        pthread_mutex_unlock(&fp->stripes[lba % FILE_LOCK_STRIPES]);
    return rc;
}

static void file_block_unlock(struct file_path *fp, uint64_t lba)
{
    file_range_unlock(fp, lba, 1);
    pthread_mutex_unlock(&fp->stripes[lba % FILE_LOCK_STRIPES]);
}

/* ---- Commands ----------------------------------------------------------- */

static int file_read(struct file_path *fp, struct lun_io *io)
{
    size_t len = (size_t)io->nblocks * fp->bs;
    uint64_t off = io->lba * fp->bs;
    int rc;
    if (io->nblocks > FILE_READ_LOCK_MAX)
        return file_xfer(fp, false, io->buf, len, off, false);
    if (io->nblocks > 1) {
        /* Metadata-sized reads (a heartbeat region, a lock table) never see
         * a block of another process's CAW half-written. */
        rc = file_range_lock(fp, io->lba, io->nblocks, F_RDLCK);
        if (rc < 0)
            return rc;
        rc = file_xfer(fp, false, io->buf, len, off, false);
        file_range_unlock(fp, io->lba, io->nblocks);
        return rc;
    }
    rc = file_block_lock(fp, io->lba, F_RDLCK);
    if (rc < 0)
        return rc;
    rc = file_xfer(fp, false, io->buf, len, off, false);
    file_block_unlock(fp, io->lba);
    return rc;
}

static int file_refuse_ro(struct file_path *fp, const struct lun_io *io, const char *what)
{
    log_err("%s: %s at lba %llu refused: opened read-only", fp->file, what,
            (unsigned long long)io->lba);
    return -EROFS;
}

static int file_write(struct file_path *fp, struct lun_io *io)
{
    if (fp->read_only)
        return file_refuse_ro(fp, io, "write");
    size_t len = (size_t)io->nblocks * fp->bs;
    uint64_t off = io->lba * fp->bs;
    bool fua = io->flags & LUN_IO_FUA;
    if (io->nblocks != 1)
        return file_xfer(fp, true, io->buf, len, off, fua);
    int rc = file_block_lock(fp, io->lba, F_WRLCK);
    if (rc < 0)
        return rc;
    rc = file_xfer(fp, true, io->buf, len, off, fua);
    file_block_unlock(fp, io->lba);
    return rc;
}

static int file_flush(struct file_path *fp)
{
    if (fdatasync(fp->fd) < 0) {
        int err = errno;
        if (err == EINVAL || err == EROFS)
            return 0; /* nothing to sync (special file / read-only) */
        log_err("%s: fdatasync failed: %s", fp->file, strerror(err));
        return -err;
    }
    return 0;
}

static int file_write_pattern(struct file_path *fp, uint64_t lba, uint32_t nblocks,
                              const void *block, bool fua)
{
    uint32_t chunk = nblocks < 256 ? nblocks : 256;
    uint8_t *buf;
    if (posix_memalign((void **)&buf, FILE_ALIGN, (size_t)chunk * fp->bs))
        return -ENOMEM;
    for (uint32_t i = 0; i < chunk; i++)
        memcpy(buf + (size_t)i * fp->bs, block, fp->bs);
    int rc = 0;
    for (uint32_t done = 0; done < nblocks && rc == 0;) {
        uint32_t n = nblocks - done < chunk ? nblocks - done : chunk;
        rc = file_xfer(fp, true, buf, (size_t)n * fp->bs, (lba + done) * fp->bs, fua);
        done += n;
    }
    free(buf);
    return rc;
}

static int file_punch(struct file_path *fp, uint64_t lba, uint32_t nblocks)
{
    off_t off = (off_t)(lba * fp->bs), len = (off_t)nblocks * fp->bs;
    if (fallocate(fp->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) == 0)
        return 0;
    int err = errno;
    if (err != EOPNOTSUPP && err != ENOSYS && err != EINVAL) {
        log_err("%s: punching %u blocks at lba %llu failed: %s", fp->file, nblocks,
                (unsigned long long)lba, strerror(err));
        return -err;
    }
    /* No hole punching here: write zeroes so unmapped blocks read back 0. */
    void *zero = calloc(1, fp->bs);
    if (!zero)
        return -ENOMEM;
    int rc = file_write_pattern(fp, lba, nblocks, zero, false);
    free(zero);
    return rc;
}

static bool file_all_zero(const uint8_t *b, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (b[i])
            return false;
    return true;
}

static int file_caw(struct file_path *fp, struct lun_io *io)
{
    if (fp->read_only)
        return file_refuse_ro(fp, io, "compare-and-write");
    uint8_t *cur;
    if (posix_memalign((void **)&cur, FILE_ALIGN, fp->bs))
        return -ENOMEM;
    int rc = file_block_lock(fp, io->lba, F_WRLCK);
    if (rc < 0) {
        free(cur);
        return rc;
    }
    uint64_t off = io->lba * fp->bs;
    rc = file_xfer(fp, false, cur, fp->bs, off, false);
    if (rc == 0) {
        if (memcmp(cur, io->buf, fp->bs) != 0) {
            memcpy(io->buf, cur, fp->bs);
            io->sense_key = LUN_SK_MISCOMPARE;
            io->asc = 0x1D;
            io->ascq = 0x00;
            rc = -EILSEQ;
        } else {
            rc = file_xfer(fp, true, (uint8_t *)io->buf + fp->bs, fp->bs, off, false);
        }
    }
    file_block_unlock(fp, io->lba);
    free(cur);
    return rc;
}

static int file_exec(struct file_path *fp, struct lun_io *io)
{
    switch (io->op) {
    case LUN_OP_READ:
        return file_read(fp, io);
    case LUN_OP_WRITE:
        return file_write(fp, io);
    case LUN_OP_FLUSH:
        return file_flush(fp);
    case LUN_OP_UNMAP:
        if (fp->read_only)
            return file_refuse_ro(fp, io, "unmap");
        return file_punch(fp, io->lba, io->nblocks);
    case LUN_OP_WRITE_SAME:
        if (fp->read_only)
            return file_refuse_ro(fp, io, "write-same");
        if ((io->flags & LUN_IO_UNMAP) && file_all_zero(io->buf, fp->bs))
            return file_punch(fp, io->lba, io->nblocks);
        return file_write_pattern(fp, io->lba, io->nblocks, io->buf, io->flags & LUN_IO_FUA);
    case LUN_OP_COMPARE_AND_WRITE:
        return file_caw(fp, io);
    }
    return -EINVAL;
}

/* ---- Worker pool -------------------------------------------------------- */

static void *file_worker(void *arg)
{
    struct file_path *fp = arg;
    file_in_worker = true;
    pthread_mutex_lock(&fp->qlock);
    for (;;) {
        while (!fp->head && !fp->stop)
            pthread_cond_wait(&fp->qwork, &fp->qlock);
        struct lun_io *io = fp->head;
        if (!io)
            break; /* stop, and the queue is drained */
        fp->head = io->priv[3];
        if (!fp->head)
            fp->tail = NULL;
        fp->queued--;
        pthread_cond_signal(&fp->qspace);
        pthread_mutex_unlock(&fp->qlock);
        int rc = file_exec(fp, io);
        io->done(io, rc);
        pthread_mutex_lock(&fp->qlock);
    }
    pthread_mutex_unlock(&fp->qlock);
    return NULL;
}

static int file_submit(struct lun_path *p, struct lun_io *io)
{
    struct file_path *fp = p->priv;
    io->priv[3] = NULL;
    pthread_mutex_lock(&fp->qlock);
    while (fp->queued >= FILE_QUEUE_MAX && !fp->stop && !file_in_worker)
        pthread_cond_wait(&fp->qspace, &fp->qlock);
    if (fp->stop) {
        pthread_mutex_unlock(&fp->qlock);
        return -ESHUTDOWN;
    }
    if (fp->tail)
        fp->tail->priv[3] = io;
    else
        fp->head = io;
    fp->tail = io;
    fp->queued++;
    pthread_cond_signal(&fp->qwork);
    pthread_mutex_unlock(&fp->qlock);
    return 0;
}

/* ---- Path ops ------------------------------------------------------------ */

static int file_probe(struct lun_path *p, struct lun_info *info)
{
    struct file_path *fp = p->priv;
    memset(info, 0, sizeof *info);
    snprintf(info->vendor, sizeof info->vendor, "CLUSTERF");
    snprintf(info->product, sizeof info->product, "FILE LUN");
    snprintf(info->revision, sizeof info->revision, "0001");
    snprintf(info->id, sizeof info->id, "file.%llx.%llx", (unsigned long long)fp->dev,
             (unsigned long long)fp->ino);
    snprintf(info->serial, sizeof info->serial, "%llx%016llx", (unsigned long long)fp->dev,
             (unsigned long long)fp->ino);
    info->block_size = fp->bs;
    info->physical_block_size = fp->bs;
    info->num_blocks = fp->nblocks;
    info->max_transfer_blocks = 0;
    info->max_unmap_blocks = 0;
    info->caps = (struct lun_caps){
        .compare_and_write = true,
        .persistent_reservations = false,
        .pr_we_all_registrants = false,
        .pr_preempt_abort = false,
        .unmap = true,
        .write_same = true,
        .write_same_unmap = true,
        .sync_cache = true,
        .fua = true,
    };
    return 0;
}

static int file_pr_unsupported(struct file_path *fp)
{
    if (!__atomic_exchange_n(&fp->pr_warned, true, __ATOMIC_RELAXED))
        log_err("%s: persistent reservations are not supported on file LUNs", fp->file);
    return -EOPNOTSUPP;
}

static int file_pr_out(struct lun_path *p, enum lun_pr_action action, uint64_t key, uint64_t sa_key,
                       enum lun_pr_type type)
{
    return file_pr_unsupported(p->priv);
}

static int file_pr_in(struct lun_path *p, struct lun_pr_state *out)
{
    return file_pr_unsupported(p->priv);
}

static int file_test_unit_ready(struct lun_path *p)
{
    struct file_path *fp = p->priv;
    struct stat st;
    if (fstat(fp->fd, &st) < 0) {
        int err = errno;
        log_err("%s: fstat failed: %s", fp->file, strerror(err));
        return -err;
    }
    if (!fp->is_blockdev && st.st_nlink == 0) {
        log_err("%s: the file was deleted", fp->file);
        return -ENODEV;
    }
    return 0;
}

static void file_close(struct lun_path *p)
{
    struct file_path *fp = p->priv;
    pthread_mutex_lock(&fp->qlock);
    fp->stop = true;
    pthread_cond_broadcast(&fp->qwork);
    pthread_cond_broadcast(&fp->qspace);
    pthread_mutex_unlock(&fp->qlock);
    for (unsigned i = 0; i < fp->nworkers; i++)
        pthread_join(fp->workers[i], NULL);
    if (fp->fd >= 0)
        close(fp->fd);
    for (unsigned i = 0; i < FILE_LOCK_STRIPES; i++)
        pthread_mutex_destroy(&fp->stripes[i]);
    pthread_cond_destroy(&fp->qspace);
    pthread_cond_destroy(&fp->qwork);
    pthread_mutex_destroy(&fp->qlock);
    free(fp->file);
    free(fp->path.name);
    free(fp);
}

static const struct lun_path_ops file_ops = {
    .kind = "file",
    .probe = file_probe,
    .submit = file_submit,
    .pr_out = file_pr_out,
    .pr_in = file_pr_in,
    .test_unit_ready = file_test_unit_ready,
    .close = file_close,
};

/* Size and type of the open file; refuses what cannot be a LUN. */
static int file_geometry(struct file_path *fp)
{
    struct stat st;
    uint64_t size;
    if (fstat(fp->fd, &st) < 0) {
        int err = errno;
        log_err("%s: %s", fp->file, strerror(err));
        return -err;
    }
    fp->dev = st.st_dev;
    fp->ino = st.st_ino;
    if (S_ISREG(st.st_mode)) {
        size = (uint64_t)st.st_size;
    } else if (S_ISBLK(st.st_mode)) {
        fp->is_blockdev = true;
        fp->dev = st.st_rdev;
        if (ioctl(fp->fd, BLKGETSIZE64, &size) < 0) {
            int err = errno;
            log_err("%s: cannot get the block device size: %s", fp->file, strerror(err));
            return -err;
        }
    } else {
        log_err("%s: not a regular file or a block device", fp->file);
        return -EINVAL;
    }
    if (size < fp->bs) {
        log_err("%s: %llu bytes is smaller than one %u-byte block", fp->file,
                (unsigned long long)size, fp->bs);
        return -EINVAL;
    }
    if (size % fp->bs) {
        log_err("%s: size %llu bytes is not a multiple of the %u-byte block size", fp->file,
                (unsigned long long)size, fp->bs);
        return -EINVAL;
    }
    fp->nblocks = size / fp->bs;
    return 0;
}

/* Check that an aligned O_DIRECT read of one block works; else go buffered. */
static void file_direct_probe(struct file_path *fp)
{
    void *b;
    if (!fp->direct || posix_memalign(&b, FILE_ALIGN, fp->bs))
        return;
    ssize_t n = pread(fp->fd, b, fp->bs, 0);
    if (n < 0 && errno == EINVAL)
        file_direct_off(fp);
    free(b);
}

int lun_path_open_file(const char *uri, const struct lun_options *opts, struct lun_path **out)
{
    struct lun_options defaults;
    uint32_t bs = 0;
    char *file = NULL;
    *out = NULL;
    if (!opts) {
        lun_options_init(&defaults);
        opts = &defaults;
    }
    int rc = lun_file_uri_parse(uri, &file, &bs);
    if (rc < 0)
        return rc;
    if (!bs) {
        bs = opts->file_block_size ? opts->file_block_size : FILE_DEFAULT_BLOCK_SIZE;
        if (file_block_size_check(file, bs) < 0) {
            free(file);
            return -EINVAL;
        }
    }
    struct file_path *fp = calloc(1, sizeof *fp);
    if (!fp) {
        free(file);
        return -ENOMEM;
    }
    fp->file = file;
    fp->fd = -1;
    fp->bs = bs;
    fp->read_only = opts->read_only;
    fp->path.ops = &file_ops;
    fp->path.priv = fp;
    pthread_mutex_init(&fp->qlock, NULL);
    pthread_cond_init(&fp->qwork, NULL);
    pthread_cond_init(&fp->qspace, NULL);
    for (unsigned i = 0; i < FILE_LOCK_STRIPES; i++)
        pthread_mutex_init(&fp->stripes[i], NULL);
    fp->path.name = lun_uri_redact(uri);
    if (!fp->path.name) {
        rc = -ENOMEM;
        goto fail;
    }

    int flags = (fp->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    fp->direct = !opts->no_direct;
    fp->fd = open(file, flags | (fp->direct ? O_DIRECT : 0));
    if (fp->fd < 0 && errno == EINVAL && fp->direct) {
        fp->direct = false;
        fp->fd = open(file, flags);
    }
    if (fp->fd < 0) {
        rc = -errno;
        log_err("%s: %s", file, strerror(-rc));
        goto fail;
    }
    rc = file_geometry(fp);
    if (rc < 0)
        goto fail;
    file_direct_probe(fp);

    for (unsigned i = 0; i < FILE_WORKERS; i++) {
        int err = pthread_create(&fp->workers[i], NULL, file_worker, fp);
        if (err) {
            log_err("%s: cannot start I/O threads: %s", file, strerror(err));
            rc = -err;
            goto fail;
        }
        fp->nworkers++;
    }
    *out = &fp->path;
    return 0;

fail:
    file_close(&fp->path);
    return rc;
}
