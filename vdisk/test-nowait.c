/* Link-time test seam for vd_pread_nowait: see test-nowait.h. Linked only
 * into test executables, with -Wl,--wrap=preadv2,--wrap=preadv64v2 (with
 * _FILE_OFFSET_BITS=64, glibc's header redirects preadv2 to preadv64v2). */
#include "test-nowait.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

int vd_test_nowait_eagain;

/* Should this RWF_NOWAIT read miss? Consumes one from the counter. */
static bool test_nowait_miss(int flags)
{
    if (!(flags & RWF_NOWAIT))
        return false;
    int n = __atomic_load_n(&vd_test_nowait_eagain, __ATOMIC_RELAXED);
    while (n > 0)
        if (__atomic_compare_exchange_n(&vd_test_nowait_eagain, &n, n - 1, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return true;
    return false;
}

ssize_t __real_preadv2(int fd, const struct iovec *iov, int iovcnt, int64_t off, int flags);
ssize_t __wrap_preadv2(int fd, const struct iovec *iov, int iovcnt, int64_t off, int flags);
ssize_t __real_preadv64v2(int fd, const struct iovec *iov, int iovcnt, int64_t off, int flags);
ssize_t __wrap_preadv64v2(int fd, const struct iovec *iov, int iovcnt, int64_t off, int flags);

ssize_t __wrap_preadv2(int fd, const struct iovec *iov, int iovcnt, int64_t off, int flags)
{
    if (test_nowait_miss(flags)) {
        errno = EAGAIN;
        return -1;
    }
    return __real_preadv2(fd, iov, iovcnt, off, flags);
}

ssize_t __wrap_preadv64v2(int fd, const struct iovec *iov, int iovcnt, int64_t off, int flags)
{
    if (test_nowait_miss(flags)) {
        errno = EAGAIN;
        return -1;
    }
    return __real_preadv64v2(fd, iov, iovcnt, off, flags);
}
