/* NBD export backend over a raw LUN (lun.h), as qemu-nbd serves an
 * iscsi:// URL.
 *
 * Design notes
 * ------------
 * NBD is byte-addressed, the LUN block-addressed. Aligned requests go
 * straight to lun_read / lun_write. An unaligned write becomes a
 * read-modify-write of its first and last blocks; to keep it atomic against
 * other writers of the same blocks, aligned I/O takes b->rmw as a reader and
 * a read-modify-write takes it as a writer (unaligned writes are rare: every
 * VMM sends the preferred block size we advertise, LUN block size or more).
 * Requests longer than the LUN's max transfer are split. Zeroing uses WRITE
 * SAME (with UNMAP unless NO_HOLE) where the LUN has it, else writes of a
 * zero buffer. A LUN knows nothing of allocation, so block status reports
 * the whole range as data.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lun.h"
#include "nbd_proto.h"
#include "nbd_server.h"
#include "util.h"

#define LUN_BE_CHUNK (1u << 20) /* split big requests into 1 MiB commands */

struct nbd_lun_backend {
    struct lun *lun;
    uint32_t bs;
    uint64_t size;
    uint32_t max_blocks; /* per command */
    bool readonly;
    pthread_rwlock_t rmw; /* aligned I/O: read lock; read-modify-write: write lock */
    void *zero_blk;       /* one zeroed block, read-only after creation */
};

int nbd_lun_backend_new(struct lun *lun, bool readonly, struct nbd_lun_backend **out)
{
    const struct lun_info *li = lun_get_info(lun);
    struct nbd_lun_backend *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->zero_blk = calloc(1, li->block_size);
    if (!b->zero_blk) {
        free(b);
        return -ENOMEM;
    }
    b->lun = lun;
    b->bs = li->block_size;
    b->size = li->num_blocks * li->block_size;
    b->max_blocks = LUN_BE_CHUNK / b->bs;
    if (li->max_transfer_blocks && li->max_transfer_blocks < b->max_blocks)
        b->max_blocks = li->max_transfer_blocks;
    b->readonly = readonly;
    pthread_rwlock_init(&b->rmw, NULL);
    *out = b;
    return 0;
}

void nbd_lun_backend_free(struct nbd_lun_backend *b)
{
    if (!b)
        return;
    pthread_rwlock_destroy(&b->rmw);
    free(b->zero_blk);
    free(b);
}

static uint64_t lun_be_size(void *be) { return ((struct nbd_lun_backend *)be)->size; }
static uint32_t lun_be_gran(void *be) { return ((struct nbd_lun_backend *)be)->bs; }
static uint32_t lun_be_min_block(void *be) { return 1; }
static bool lun_be_readonly(void *be) { return ((struct nbd_lun_backend *)be)->readonly; }

/* Aligned block I/O, split into commands of at most max_blocks. */
static int lun_be_io(struct nbd_lun_backend *b, bool write, uint64_t lba, uint64_t nblocks,
                     void *buf, unsigned flags)
{
    uint8_t *p = buf;
    while (nblocks) {
        uint32_t n = (uint32_t)MIN(nblocks, (uint64_t)b->max_blocks);
        int rc = write ? lun_write(b->lun, lba, n, p, flags) : lun_read(b->lun, lba, n, p);
        if (rc < 0)
            return rc;
        lba += n;
        nblocks -= n;
        p += (size_t)n * b->bs;
    }
    return 0;
}

static int lun_be_pread(void *be, void *buf, uint32_t len, uint64_t off)
{
    struct nbd_lun_backend *b = be;
    uint64_t first = off / b->bs, last = (off + len - 1) / b->bs;
    if (off % b->bs == 0 && len % b->bs == 0)
        return lun_be_io(b, false, first, len / b->bs, buf, 0);
    /* unaligned read: through a bounce buffer (no lock needed for reads:
     * a concurrent write may be seen or not, as on any disk) */
    size_t blen = (size_t)(last - first + 1) * b->bs;
    uint8_t *tmp = malloc(blen);
    if (!tmp)
        return -ENOMEM;
    int rc = lun_be_io(b, false, first, last - first + 1, tmp, 0);
    if (rc == 0)
        memcpy(buf, tmp + (off - first * b->bs), len);
    free(tmp);
    return rc;
}

static int lun_be_pwrite(void *be, const void *buf, uint32_t len, uint64_t off, bool fua)
{
    struct nbd_lun_backend *b = be;
    unsigned flags = fua ? LUN_IO_FUA : 0;
    uint64_t first = off / b->bs, last = (off + len - 1) / b->bs;
    int rc;
    if (off % b->bs == 0 && len % b->bs == 0) {
        pthread_rwlock_rdlock(&b->rmw);
        rc = lun_be_io(b, true, first, len / b->bs, (void *)buf, flags);
        pthread_rwlock_unlock(&b->rmw);
        return rc;
    }
    size_t blen = (size_t)(last - first + 1) * b->bs;
    uint8_t *tmp = malloc(blen);
    if (!tmp)
        return -ENOMEM;
    pthread_rwlock_wrlock(&b->rmw);
    /* read only the edge blocks; the middle is overwritten entirely */
    rc = lun_be_io(b, false, first, 1, tmp, 0);
    if (rc == 0 && last != first)
        rc = lun_be_io(b, false, last, 1, tmp + blen - b->bs, 0);
    if (rc == 0) {
        memcpy(tmp + (off - first * b->bs), buf, len);
        rc = lun_be_io(b, true, first, last - first + 1, tmp, flags);
    }
    pthread_rwlock_unlock(&b->rmw);
    free(tmp);
    return rc;
}

static int lun_be_flush(void *be)
{
    struct nbd_lun_backend *b = be;
    if (!lun_get_info(b->lun)->caps.sync_cache)
        return 0; /* write-through LUN: nothing to flush */
    return lun_flush(b->lun);
}

/* Zero [off, off+len): unaligned edges by writing zeroes, the aligned middle
 * by WRITE SAME / UNMAP when allowed, else by writing a zero buffer. */
static int lun_be_zero_range(struct nbd_lun_backend *b, uint64_t off, uint64_t len,
                             bool allow_unmap, bool fast)
{
    const struct lun_caps *caps = &lun_get_info(b->lun)->caps;
    bool ws = caps->write_same;
    if (fast && !(caps->write_same_unmap && allow_unmap))
        return -ENOTSUP;
    uint64_t a = ROUND_UP(off, b->bs), z = (off + len) / b->bs * b->bs;
    int rc = 0;
    if (a >= z) { /* within one or two blocks, nothing aligned */
        void *zb = calloc(1, len);
        if (!zb)
            return -ENOMEM;
        rc = lun_be_pwrite(b, zb, (uint32_t)len, off, false);
        free(zb);
        return rc;
    }
    if (a > off) {
        rc = lun_be_pwrite(b, b->zero_blk, (uint32_t)(a - off), off, false);
        if (rc < 0)
            return rc;
    }
    if (off + len > z) {
        rc = lun_be_pwrite(b, b->zero_blk, (uint32_t)(off + len - z), z, false);
        if (rc < 0)
            return rc;
    }
    uint64_t lba = a / b->bs, nb = (z - a) / b->bs;
    pthread_rwlock_rdlock(&b->rmw);
    if (ws) {
        unsigned fl = (allow_unmap && caps->write_same_unmap) ? LUN_IO_UNMAP : 0;
        while (nb && rc == 0) {
            uint32_t n = (uint32_t)MIN(nb, (uint64_t)(1u << 16));
            rc = lun_write_same(b->lun, lba, n, b->zero_blk, fl);
            if (rc == -EOPNOTSUPP)
                break;
            lba += n;
            nb -= n;
        }
    }
    if (nb && (rc == 0 || rc == -EOPNOTSUPP)) {
        rc = 0;
        uint8_t *zb = calloc(b->max_blocks, b->bs);
        if (!zb) {
            pthread_rwlock_unlock(&b->rmw);
            return -ENOMEM;
        }
        while (nb && rc == 0) {
            uint32_t n = (uint32_t)MIN(nb, (uint64_t)b->max_blocks);
            rc = lun_write(b->lun, lba, n, zb, 0);
            lba += n;
            nb -= n;
        }
        free(zb);
    }
    pthread_rwlock_unlock(&b->rmw);
    return rc;
}

static int lun_be_zero(void *be, uint64_t off, uint32_t len, bool no_hole, bool fast)
{
    return lun_be_zero_range(be, off, len, !no_hole, fast);
}

static int lun_be_trim(void *be, uint64_t off, uint32_t len)
{
    struct nbd_lun_backend *b = be;
    /* TRIM is advisory: unmap the aligned blocks where the LUN can, skip
     * the edges and do nothing on a LUN without UNMAP. */
    if (!lun_get_info(b->lun)->caps.unmap)
        return 0;
    uint64_t a = ROUND_UP(off, b->bs), z = (off + len) / b->bs * b->bs;
    if (a >= z)
        return 0;
    uint64_t lba = a / b->bs, nb = (z - a) / b->bs;
    uint32_t maxu = lun_get_info(b->lun)->max_unmap_blocks;
    if (!maxu)
        maxu = 1u << 16;
    int rc = 0;
    pthread_rwlock_rdlock(&b->rmw);
    while (nb && rc == 0) {
        uint32_t n = (uint32_t)MIN(nb, (uint64_t)maxu);
        rc = lun_unmap(b->lun, lba, n);
        lba += n;
        nb -= n;
    }
    pthread_rwlock_unlock(&b->rmw);
    return rc == -EOPNOTSUPP ? 0 : rc;
}

static int lun_be_block_status(void *be, uint64_t off, uint64_t len, uint64_t *ext_len,
                               uint32_t *flags)
{
    *ext_len = len;
    *flags = 0;
    return 0;
}

const struct nbd_export_ops nbd_lun_ops = {
    .size = lun_be_size,
    .granularity = lun_be_gran,
    .min_block = lun_be_min_block,
    .readonly = lun_be_readonly,
    .pread = lun_be_pread,
    .pwrite = lun_be_pwrite,
    .flush = lun_be_flush,
    .trim = lun_be_trim,
    .zero = lun_be_zero,
    .block_status = lun_be_block_status,
};
