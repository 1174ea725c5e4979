/* NBD export backend over a vdisk image (vdisk.h). vdisk does the real
 * work and is safe for concurrent I/O on one open image; this file only
 * maps flags and status bits.
 *
 * Inline reads. `submit` (called by the connection's reader thread) takes
 * a READ only when vd_pread_nowait can answer it from memory (page cache,
 * zeroes, holes): the data is copied and done() is called inside submit,
 * so a cache-hot 4 KiB read costs no hand-off to a worker and back. A miss
 * (or a compressed grain, ...) declines with -EAGAIN and the core runs the
 * request on a worker with vd_pread, as every WRITE, FLUSH, TRIM and
 * WRITE_ZEROES is. The reader never waits for the disk: RWF_NOWAIT. */
#include <errno.h>

#include "protocol.h"
#include "backend-vdisk.h"
#include "vdisk.h"

static uint64_t vd_be_size(void *be)
{
    return vd_size(be);
}
static uint32_t vd_be_granularity(void *be)
{
    return vd_granularity(be);
}
static uint32_t vd_be_min_block(void *be)
{
    return 1;
}
static bool vd_be_readonly(void *be)
{
    return vd_is_readonly(be);
}

static int vd_be_pread(void *be, void *buf, uint32_t len, uint64_t off)
{
    return vd_pread(be, buf, len, off);
}

static int vd_be_pwrite(void *be, const void *buf, uint32_t len, uint64_t off, bool fua)
{
    return vd_pwrite(be, buf, len, off, fua ? VD_FUA : 0);
}

static int vd_be_submit(void *be, struct nbd_aio *aio)
{
    if (aio->type != NBD_CMD_READ)
        return -EAGAIN;
    int rc = vd_pread_nowait(be, aio->buf, aio->len, aio->off);
    if (rc < 0)
        return -EAGAIN;
    aio->done(aio, 0);
    return 0;
}

static int vd_be_flush(void *be)
{
    return vd_flush(be);
}

static int vd_be_trim(void *be, uint64_t off, uint32_t len)
{
    return vd_discard(be, off, len);
}

static int vd_be_zero(void *be, uint64_t off, uint32_t len, bool no_hole, bool fast)
{
    /* FAST_ZERO: vdisk refuses (-ENOTSUP, nothing changed) unless no zero
     * data has to be written: whole grains become zeroed-grain entries,
     * allocated ones are zeroed in place (ZERO_RANGE), raw and flat files
     * are punched or zeroed by fallocate. */
    return vd_write_zeroes(be, off, len, (no_hole ? VD_NO_HOLE : 0) | (fast ? VD_ZERO_FAST : 0));
}

static int vd_be_block_status(void *be, uint64_t off, uint64_t len, uint64_t *ext_len,
                              uint32_t *flags)
{
    unsigned st = 0;
    int rc = vd_block_status(be, off, len, ext_len, &st);
    if (rc < 0)
        return rc;
    *flags =
        ((st & VD_STATUS_HOLE) ? NBD_STATE_HOLE : 0) | ((st & VD_STATUS_ZERO) ? NBD_STATE_ZERO : 0);
    return 0;
}

const struct nbd_export_ops nbd_vd_ops = {
    .size = vd_be_size,
    .granularity = vd_be_granularity,
    .min_block = vd_be_min_block,
    .readonly = vd_be_readonly,
    .pread = vd_be_pread,
    .pwrite = vd_be_pwrite,
    .flush = vd_be_flush,
    .trim = vd_be_trim,
    .zero = vd_be_zero,
    .block_status = vd_be_block_status,
    .submit = vd_be_submit,
};
