/* LD_PRELOAD fault layer for snap-crash.sh: the process dies (_exit(99),
 * no cleanup, nothing flushed by us) right before its N+1st file-changing
 * call (pwrite, write, rename, link, unlink, ftruncate, fsync, fdatasync,
 * fallocate), N = $SNAP_CRASH_AFTER. Unset: count only, and print the count
 * to $SNAP_CRASH_COUNT_FILE at exit, so the test knows how many points to
 * try. Production code knows nothing of this. */
#undef _FILE_OFFSET_BITS /* define pwrite and pwrite64 both, as libc does */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

static long crash_after = -1, ops;

__attribute__((constructor)) static void shim_init(void)
{
    const char *s = getenv("SNAP_CRASH_AFTER");
    if (s && *s)
        crash_after = atol(s);
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

static void shim_op(void)
{
    if (crash_after >= 0 && ++ops > crash_after)
        _exit(99);
    if (crash_after < 0)
        ops++;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
    shim_op();
    return NEXT(pwrite)(fd, b, n, off);
}
ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
    shim_op();
    return NEXT(pwrite64)(fd, b, n, off);
}
int rename(const char *a, const char *b)
{
    shim_op();
    return NEXT(rename)(a, b);
}
int link(const char *a, const char *b)
{
    shim_op();
    return NEXT(link)(a, b);
}
int unlink(const char *a)
{
    shim_op();
    return NEXT(unlink)(a);
}
int ftruncate(int fd, off_t len)
{
    shim_op();
    return NEXT(ftruncate)(fd, len);
}
int ftruncate64(int fd, off_t len)
{
    shim_op();
    return NEXT(ftruncate64)(fd, len);
}
int fsync(int fd)
{
    shim_op();
    return NEXT(fsync)(fd);
}
int fdatasync(int fd)
{
    shim_op();
    return NEXT(fdatasync)(fd);
}
int fallocate(int fd, int mode, off_t off, off_t len)
{
    shim_op();
    return NEXT(fallocate)(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len)
{
    shim_op();
    return NEXT(fallocate64)(fd, mode, off, len);
}
