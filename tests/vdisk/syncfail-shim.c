/* LD_PRELOAD fault layer for flush-error.sh: make ONE fdatasync/fsync of one
 * file fail with EIO, when the test says so, as a path loss or a writeback
 * error would.
 *
 *   SYNCFAIL_FILE     the file to watch (other files are left alone)
 *   SYNCFAIL_TRIGGER  a path: when a sync of SYNCFAIL_FILE finds this file,
 *                     it removes it, runs the real sync (which, as on Linux
 *                     after a writeback error, reports nothing the next
 *                     time) and returns -1 / EIO. So each touch of the
 *                     trigger fails exactly one sync, at a moment the test
 *                     chooses (between two requests), with no timing.
 *   SYNCFAIL_ERRNO    errno to fail with (default EIO; e.g. 28 for ENOSPC)
 *
 * Production code knows nothing of this. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

static int syncfail_armed(int fd)
{
    const char *file = getenv("SYNCFAIL_FILE"), *trig = getenv("SYNCFAIL_TRIGGER");
    struct stat a, b;
    if (!file || !trig || fstat(fd, &a) < 0 || stat(file, &b) < 0)
        return 0;
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return 0;
    return unlink(trig) == 0; /* one failure per touch, even with many threads */
}

static int syncfail_errno(void)
{
    const char *e = getenv("SYNCFAIL_ERRNO");
    return e ? atoi(e) : EIO;
}

int fdatasync(int fd)
{
    int armed = syncfail_armed(fd);
    int rc = NEXT(fdatasync)(fd);
    if (armed) {
        errno = syncfail_errno();
        return -1;
    }
    return rc;
}

int fsync(int fd)
{
    int armed = syncfail_armed(fd);
    int rc = NEXT(fsync)(fd);
    if (armed) {
        errno = syncfail_errno();
        return -1;
    }
    return rc;
}
