/* TEMPORARY, see lun_dl_compat.h. */
#include <errno.h>
#include <time.h>

#include "lun.h"
#include "lun_dl_compat.h"

uint64_t lun_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int lun_write_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags,
                 uint64_t deadline_ns)
{
    if (deadline_ns && lun_now_ns() >= deadline_ns)
        return -ETIMEDOUT;
    return lun_write(lun, lba, nblocks, buf, flags);
}

int lun_read_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, void *buf, uint64_t deadline_ns)
{
    if (deadline_ns && lun_now_ns() >= deadline_ns)
        return -ETIMEDOUT;
    return lun_read(lun, lba, nblocks, buf);
}

int lun_compare_and_write_dl(struct lun *lun, uint64_t lba, const void *expect, const void *data,
                             void *found, uint64_t deadline_ns)
{
    if (deadline_ns && lun_now_ns() >= deadline_ns)
        return -ETIMEDOUT;
    return lun_compare_and_write(lun, lba, expect, data, found);
}

void lun_fence_self(struct lun *lun)
{
    (void)lun;
}

unsigned lun_max_io_time_ms(const struct lun *lun)
{
    (void)lun;
    return 0;
}
