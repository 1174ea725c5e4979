/* TEMPORARY: the LUN layer's deadline API (issue 10, owned by multipath/)
 * until it lands on main. Same names and semantics as announced; removed at
 * the merge. Here the deadline is checked once, before the call. */
#ifndef LOCKING_LUN_DL_COMPAT_H
#define LOCKING_LUN_DL_COMPAT_H
#include <stdint.h>
struct lun;
uint64_t lun_now_ns(void);
int lun_write_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags,
                 uint64_t deadline_ns);
int lun_read_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, void *buf, uint64_t deadline_ns);
int lun_compare_and_write_dl(struct lun *lun, uint64_t lba, const void *expect, const void *data,
                             void *found, uint64_t deadline_ns);
void lun_fence_self(struct lun *lun);
unsigned lun_max_io_time_ms(const struct lun *lun);
#endif
