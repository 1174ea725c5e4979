/* LD_PRELOAD fault layer for sparse-crash.sh: crash a process at its Nth
 * write-side system call on ONE file, as a kill -9 or as a power cut.
 *
 *   SPARSE_CRASH_FILE   the file to watch (other files are left alone)
 *   SPARSE_CRASH_AT     N: the process dies right before its Nth (1-based)
 *                       pwrite / fsync / fdatasync / fallocate / ftruncate on
 *                       the file; unset: count them, and write the count to
 *                       SPARSE_CRASH_COUNT_FILE at exit, and the numbers of
 *                       the fsync/fdatasync calls among them, one a line, to
 *                       SPARSE_CRASH_SYNCS_FILE (if set)
 *   SPARSE_CRASH_MODE   "kill" (default): _exit(99), everything written so far
 *                       stays (the page cache survives a process crash);
 *                       "power": before dying, forget a random subset of what
 *                       was written since the last fsync/fdatasync of the file,
 *                       in 4 KiB file pages, as a power cut during writeback
 *                       would: every write since the last sync is undone (the
 *                       file goes back to its synced contents and size), then
 *                       each 4 KiB piece of each write is re-applied, in the
 *                       original order, with probability 1/2
 *                       (SPARSE_CRASH_SEED picks the pattern)
 *
 * Design notes
 * - Undo/redo log since the last sync, kept in memory: before each write the
 *   old bytes (up to the file's end) and the old size are saved; a sync
 *   empties the log. Rolling back every entry in reverse order restores the
 *   synced state exactly; re-applying a subset of pages in order models a
 *   kernel that wrote back some dirty pages (and the size updates that go
 *   with them) and not others.
 * - A punched hole is logged as a write of zeroes (that is what it reads as).
 * - Single-threaded callers only (the workload driver is), but a mutex keeps
 *   the log consistent if a library thread writes too.
 * Production code knows nothing of this. */
#undef _FILE_OFFSET_BITS /* define pwrite and pwrite64 both, as libc does */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))
#define PIECE 4096

struct undo {
    int fd;
    off_t off, old_size;
    size_t len, old_len; /* old_len: bytes that existed before the write */
    unsigned char *old, *new_;
};

static dev_t dev;
static ino_t ino;
static int watching;
static long crash_at = -1, ops;
static long *syncs; /* counting run: numbers of the sync calls */
static size_t n_syncs, cap_syncs;
static int power;
static unsigned seed = 1;
static struct undo *log_;
static size_t n_log, cap_log;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

__attribute__((constructor)) static void shim_init(void)
{
    const char *f = getenv("SPARSE_CRASH_FILE"), *s = getenv("SPARSE_CRASH_AT");
    const char *m = getenv("SPARSE_CRASH_MODE"), *sd = getenv("SPARSE_CRASH_SEED");
    struct stat st;
    if (f && stat(f, &st) == 0) {
        dev = st.st_dev;
        ino = st.st_ino;
        watching = 1;
    }
    if (s && *s)
        crash_at = atol(s);
    power = m && strcmp(m, "power") == 0;
    if (sd && *sd)
        seed = (unsigned)strtoul(sd, NULL, 10);
}

__attribute__((destructor)) static void shim_fini(void)
{
    const char *f = getenv("SPARSE_CRASH_COUNT_FILE");
    FILE *o = f && crash_at < 0 ? fopen(f, "w") : NULL;
    if (o) {
        fprintf(o, "%ld\n", ops);
        fclose(o);
    }
    const char *sf = getenv("SPARSE_CRASH_SYNCS_FILE");
    o = sf && crash_at < 0 ? fopen(sf, "w") : NULL;
    for (size_t i = 0; o && i < n_syncs; i++)
        fprintf(o, "%ld\n", syncs[i]);
    if (o)
        fclose(o);
}

static int watched(int fd)
{
    struct stat st;
    return watching && fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

static off_t fd_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_size : 0;
}

static void log_clear(void)
{
    for (size_t i = 0; i < n_log; i++) {
        free(log_[i].old);
        free(log_[i].new_);
    }
    n_log = 0;
}

/* Save what [off, off+len) holds now; new_ is filled after the write. */
static struct undo *log_add(int fd, off_t off, size_t len)
{
    if (n_log == cap_log) {
        cap_log = cap_log ? cap_log * 2 : 64;
        log_ = realloc(log_, cap_log * sizeof(*log_));
        if (!log_)
            abort();
    }
    struct undo *u = &log_[n_log++];
    memset(u, 0, sizeof(*u));
    u->fd = fd;
    u->off = off;
    u->len = len;
    u->old_size = fd_size(fd);
    u->old_len = off >= u->old_size
                     ? 0
                     : (size_t)(u->old_size - off < (off_t)len ? u->old_size - off : (off_t)len);
    u->old = malloc(len ? len : 1);
    u->new_ = calloc(1, len ? len : 1);
    if (!u->old || !u->new_)
        abort();
    if (u->old_len && pread(fd, u->old, u->old_len, off) != (ssize_t)u->old_len)
        abort();
    return u;
}

/* The cut: roll back everything since the last sync, re-apply a random
 * subset of 4 KiB pieces in order, die. */
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

/* Called before each write-side call on the watched file. */
static void shim_op(void)
{
    ops++;
    if (crash_at >= 0 && ops >= crash_at) {
        if (power)
            power_cut();
        _exit(99);
    }
}

static ssize_t do_pwrite(ssize_t (*real)(int, const void *, size_t, off_t), int fd, const void *b,
                         size_t n, off_t off)
{
    if (!watched(fd))
        return real(fd, b, n, off);
    pthread_mutex_lock(&mu);
    shim_op();
    struct undo *u = power ? log_add(fd, off, n) : NULL;
    ssize_t r = real(fd, b, n, off);
    if (u && r > 0)
        memcpy(u->new_, b, (size_t)r);
    if (u)
        u->len = r > 0 ? (size_t)r : 0;
    pthread_mutex_unlock(&mu);
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

static int do_sync(int (*real)(int), int fd)
{
    if (!watched(fd))
        return real(fd);
    pthread_mutex_lock(&mu);
    shim_op();
    if (crash_at < 0) {
        if (n_syncs == cap_syncs) {
            cap_syncs = cap_syncs ? cap_syncs * 2 : 64;
            syncs = realloc(syncs, cap_syncs * sizeof(*syncs));
            if (!syncs)
                abort();
        }
        syncs[n_syncs++] = ops;
    }
    int r = real(fd);
    if (r == 0)
        log_clear();
    pthread_mutex_unlock(&mu);
    return r;
}

int fsync(int fd)
{
    return do_sync(NEXT(fsync), fd);
}
int fdatasync(int fd)
{
    return do_sync(NEXT(fdatasync), fd);
}

static int do_fallocate(int (*real)(int, int, off_t, off_t), int fd, int mode, off_t off, off_t len)
{
    if (!watched(fd))
        return real(fd, mode, off, len);
    pthread_mutex_lock(&mu);
    shim_op();
    /* a punch or zero-range reads as zeroes afterwards: log it as such a
     * write (new_ is calloc'ed); plain allocation changes no bytes */
    int zeroes = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) != 0;
    struct undo *u = power && zeroes ? log_add(fd, off, (size_t)len) : NULL;
    int r = real(fd, mode, off, len);
    if (u && r != 0)
        u->len = 0;
    pthread_mutex_unlock(&mu);
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

static int do_ftruncate(int (*real)(int, off_t), int fd, off_t len)
{
    if (!watched(fd))
        return real(fd, len);
    pthread_mutex_lock(&mu);
    shim_op();
    int r = real(fd, len);
    pthread_mutex_unlock(&mu);
    return r;
}

int ftruncate(int fd, off_t len)
{
    return do_ftruncate(NEXT(ftruncate), fd, len);
}
int ftruncate64(int fd, off_t len)
{
    return do_ftruncate(NEXT(ftruncate64), fd, len);
}
