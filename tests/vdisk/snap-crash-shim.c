/* LD_PRELOAD fault layer for snap-crash.sh and snap-power.sh: the process
 * dies (_exit(99), no cleanup, nothing flushed by us) right before its N+1st
 * file-changing call (pwrite, rename(at)(2), link(at), unlink(at),
 * ftruncate, fsync, fdatasync, fallocate), N = $SNAP_CRASH_AFTER. Unset:
 * count only, and print the count to $SNAP_CRASH_COUNT_FILE at exit, so the
 * test knows how many points to try.
 *
 * SNAP_CRASH_MODE=power makes the death a power cut, over every file the
 * process wrote: what was written to a file since its last fsync/fdatasync
 * is undone (contents and size), then each 4 KiB piece of each write is
 * re-applied, in the original order, with probability 1/2
 * (SNAP_CRASH_SEED picks the pattern), as a kernel that wrote back some
 * dirty pages and not others. Names (rename, link, unlink) are taken as
 * durable when the call returns: the code under test syncs the folder after
 * each, and the model tests what it must get right itself, the order of its
 * data writes and syncs.
 *
 * Design notes: an undo/redo log since each file's last sync, in memory:
 * before each write the old bytes and the old size are saved with a dup of
 * the descriptor (the caller may close its own); a sync of a file drops its
 * entries (matched by device and inode). Production code knows nothing of
 * this. */
#undef _FILE_OFFSET_BITS /* define pwrite and pwrite64 both, as libc does */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))
#define PIECE 4096

static long crash_after = -1, ops;
static int power;
static unsigned seed = 1;

struct undo {
    int fd; /* our dup */
    dev_t dev;
    ino_t ino;
    off_t off, old_size, new_size;
    size_t len, old_len;
    unsigned char *old, *new_;
};
static struct undo *log_;
static size_t n_log, cap_log;

__attribute__((constructor)) static void shim_init(void)
{
    const char *s = getenv("SNAP_CRASH_AFTER"), *m = getenv("SNAP_CRASH_MODE");
    const char *sd = getenv("SNAP_CRASH_SEED");
    if (s && *s)
        crash_after = atol(s);
    power = m && strcmp(m, "power") == 0;
    if (sd && *sd)
        seed = (unsigned)strtoul(sd, NULL, 10);
}

__attribute__((destructor)) static void shim_fini(void)
{
    const char *f = getenv("SNAP_CRASH_COUNT_FILE");
    FILE *o = f ? fopen(f, "w") : NULL;
    if (o) {
        fprintf(o, "%ld\n", ops);
        fclose(o);
    }
}

static void power_cut(void)
{
    for (size_t i = n_log; i-- > 0;) {
        struct undo *u = &log_[i];
        if (u->old_len)
            NEXT(pwrite)(u->fd, u->old, u->old_len, u->off);
        NEXT(ftruncate)(u->fd, u->old_size);
    }
    for (size_t i = 0; i < n_log; i++) {
        struct undo *u = &log_[i];
        if (!u->old && (rand_r(&seed) % 2)) /* a size change */
            NEXT(ftruncate)(u->fd, u->new_size);
        for (size_t k = 0; k < u->len;) {
            off_t at = u->off + (off_t)k;
            size_t n = PIECE - (size_t)(at % PIECE);
            if (n > u->len - k)
                n = u->len - k;
            if (rand_r(&seed) % 2)
                NEXT(pwrite)(u->fd, u->new_ + k, n, at);
            k += n;
        }
    }
    _exit(99);
}

static void shim_op(void)
{
    if (crash_after >= 0 && ++ops > crash_after) {
        if (power)
            power_cut();
        _exit(99);
    }
    if (crash_after < 0)
        ops++;
}

static struct undo *log_add(int fd, off_t off, size_t len, int data)
{
    struct stat st;
    if (!power || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return NULL;
    if (n_log == cap_log) {
        cap_log = cap_log ? cap_log * 2 : 64;
        log_ = realloc(log_, cap_log * sizeof(*log_));
        if (!log_)
            abort();
    }
    struct undo *u = &log_[n_log++];
    memset(u, 0, sizeof(*u));
    u->fd = dup(fd);
    u->dev = st.st_dev;
    u->ino = st.st_ino;
    u->off = off;
    u->old_size = st.st_size;
    if (!data)
        return u;
    u->len = len;
    u->old_len = off >= st.st_size
                     ? 0
                     : (size_t)(st.st_size - off < (off_t)len ? st.st_size - off : (off_t)len);
    u->old = malloc(len ? len : 1);
    u->new_ = calloc(1, len ? len : 1);
    if (!u->old || !u->new_ || u->fd < 0)
        abort();
    if (u->old_len && pread(fd, u->old, u->old_len, off) != (ssize_t)u->old_len)
        abort();
    return u;
}

static void log_synced(int fd)
{
    struct stat st;
    if (!power || fstat(fd, &st) < 0)
        return;
    size_t j = 0;
    for (size_t i = 0; i < n_log; i++) {
        if (log_[i].dev == st.st_dev && log_[i].ino == st.st_ino) {
            close(log_[i].fd);
            free(log_[i].old);
            free(log_[i].new_);
        } else {
            log_[j++] = log_[i];
        }
    }
    n_log = j;
}

static ssize_t do_pwrite(ssize_t (*real)(int, const void *, size_t, off_t), int fd, const void *b,
                         size_t n, off_t off)
{
    shim_op();
    struct undo *u = log_add(fd, off, n, 1);
    ssize_t r = real(fd, b, n, off);
    if (u && r > 0)
        memcpy(u->new_, b, (size_t)r);
    if (u)
        u->len = r > 0 ? (size_t)r : 0;
    return r;
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
    return do_pwrite(NEXT(pwrite), fd, b, n, off);
}
ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
    return do_pwrite(NEXT(pwrite64), fd, b, n, off);
}
int rename(const char *a, const char *b)
{
    shim_op();
    return NEXT(rename)(a, b);
}
int renameat(int da, const char *a, int db, const char *b)
{
    shim_op();
    return NEXT(renameat)(da, a, db, b);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned flags)
{
    shim_op();
    return NEXT(renameat2)(da, a, db, b, flags);
}
int link(const char *a, const char *b)
{
    shim_op();
    return NEXT(link)(a, b);
}
int linkat(int da, const char *a, int db, const char *b, int flags)
{
    shim_op();
    return NEXT(linkat)(da, a, db, b, flags);
}
int unlink(const char *a)
{
    shim_op();
    return NEXT(unlink)(a);
}
int unlinkat(int d, const char *a, int flags)
{
    shim_op();
    return NEXT(unlinkat)(d, a, flags);
}
static int do_ftruncate(int (*real)(int, off_t), int fd, off_t len)
{
    shim_op();
    struct undo *u = log_add(fd, 0, 0, 0);
    if (u)
        u->new_size = len;
    return real(fd, len);
}
int ftruncate(int fd, off_t len)
{
    return do_ftruncate(NEXT(ftruncate), fd, len);
}
int ftruncate64(int fd, off_t len)
{
    return do_ftruncate(NEXT(ftruncate64), fd, len);
}
int fsync(int fd)
{
    shim_op();
    int r = NEXT(fsync)(fd);
    if (r == 0)
        log_synced(fd);
    return r;
}
int fdatasync(int fd)
{
    shim_op();
    int r = NEXT(fdatasync)(fd);
    if (r == 0)
        log_synced(fd);
    return r;
}
static int do_fallocate(int (*real)(int, int, off_t, off_t), int fd, int mode, off_t off, off_t len)
{
    shim_op();
    /* a punch or zero-range reads as zeroes: log it as a write of zeroes */
    struct undo *u = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
                         ? log_add(fd, off, (size_t)len, 1)
                         : NULL;
    int r = real(fd, mode, off, len);
    if (u && r != 0)
        u->len = 0;
    return r;
}
int fallocate(int fd, int mode, off_t off, off_t len)
{
    return do_fallocate(NEXT(fallocate), fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len)
{
    return do_fallocate(NEXT(fallocate64), fd, mode, off, len);
}
