/* NBD export backend over a raw LUN (lun.h), as qemu-nbd serves an
 * iscsi:// URL.
 *
 * Design notes
 * ------------
 * NBD is byte-addressed, the LUN block-addressed.
 *
 * Asynchronous path (ops->submit, the hot path). Aligned READ and WRITE and
 * FLUSH are started with lun_submit from the connection's reader thread;
 * the LUN's completion (the iSCSI session's loop thread, a file worker)
 * calls the core's done, which queues the reply and tries one non-blocking
 * send. No NBD worker thread waits for the LUN, so a request costs no
 * thread switch beyond the loop thread's own, and requests queued by the
 * multipath engine while every path is down (up to queue_ms) hold no
 * worker: other exports of the server keep their workers. A request longer
 * than one command (1 MiB or the LUN's max transfer) is issued as a chain
 * of commands, the next submitted from the previous one's completion.
 *
 * Synchronous path (worker threads): unaligned I/O, TRIM, WRITE_ZEROES,
 * and whatever submit declines (-EAGAIN). An unaligned write becomes a
 * read-modify-write of its first and last blocks; to keep it atomic against
 * other writers of the same blocks, every aligned write (either path),
 * zero and unmap holds the gate shared and a read-modify-write holds it
 * exclusively. The gate is a counter, not a pthread rwlock, because an
 * asynchronous write enters it on the reader thread and leaves it on the
 * completion thread. Writers are preferred: while a read-modify-write
 * waits or runs, submit declines aligned writes, which then wait on a
 * worker (unaligned writes are rare: every VMM sends the preferred block
 * size we advertise, LUN block size or more). Reads take no lock: a
 * concurrent write may be seen or not, as on any disk. Zeroing uses WRITE
 * SAME (with UNMAP unless NO_HOLE) where the LUN has it, else writes of a
 * zero buffer. A LUN knows nothing of allocation, so block status reports
 * the whole range as data.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lun.h"
#include "protocol.h"
#include "backend-lun.h"
#include "util.h"

#define LUN_BE_CHUNK (1u << 20) /* split big requests into 1 MiB commands */

struct nbd_lun_backend {
    struct lun *lun;
    uint32_t bs;
    uint64_t size;
    uint32_t max_blocks; /* per command */
    bool readonly;
    void *zero_blk; /* one zeroed block, read-only after creation */
    /* The write gate (see the design notes). gate_lock is a leaf lock. */
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    unsigned shared;       /* aligned writes / zero / unmap running; protected by gate_lock */
    bool excl;             /* a read-modify-write running; protected by gate_lock */
    unsigned excl_waiting; /* read-modify-writes waiting; protected by gate_lock */
};

/* Per-request state of the asynchronous path, in nbd_aio.be_data. */
struct lun_be_aio {
    struct lun_io io;
    struct nbd_lun_backend *b;
    uint64_t left; /* blocks still to issue after the current command */
    bool shared;   /* holds the gate shared */
};
_Static_assert(sizeof(struct lun_be_aio) <= NBD_AIO_BE_DATA, "lun_be_aio does not fit be_data");

/* Enter the gate shared. wait=false: return false instead of waiting
 * (a read-modify-write runs or waits). */
static bool gate_shared_enter(struct nbd_lun_backend *b, bool wait)
{
    pthread_mutex_lock(&b->gate_lock);
    while (b->excl || b->excl_waiting) {
        if (!wait) {
            pthread_mutex_unlock(&b->gate_lock);
            return false;
        }
        pthread_cond_wait(&b->gate_cond, &b->gate_lock);
    }
    b->shared++;
    pthread_mutex_unlock(&b->gate_lock);
    return true;
}

/* Leave the gate (any thread; never blocks for long). */
static void gate_shared_exit(struct nbd_lun_backend *b)
{
    pthread_mutex_lock(&b->gate_lock);
    if (--b->shared == 0 && b->excl_waiting)
        pthread_cond_broadcast(&b->gate_cond);
    pthread_mutex_unlock(&b->gate_lock);
}

static void gate_excl_enter(struct nbd_lun_backend *b)
{
    pthread_mutex_lock(&b->gate_lock);
    b->excl_waiting++;
    while (b->excl || b->shared)
        pthread_cond_wait(&b->gate_cond, &b->gate_lock);
    b->excl_waiting--;
    b->excl = true;
    pthread_mutex_unlock(&b->gate_lock);
}

static void gate_excl_exit(struct nbd_lun_backend *b)
{
    pthread_mutex_lock(&b->gate_lock);
    b->excl = false;
    pthread_cond_broadcast(&b->gate_cond);
    pthread_mutex_unlock(&b->gate_lock);
}

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
    pthread_mutex_init(&b->gate_lock, NULL);
    pthread_cond_init(&b->gate_cond, NULL);
    *out = b;
    return 0;
}

void nbd_lun_backend_free(struct nbd_lun_backend *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->gate_lock);
    pthread_cond_destroy(&b->gate_cond);
    free(b->zero_blk);
    free(b);
}

static uint64_t lun_be_size(void *be)
{
    return ((struct nbd_lun_backend *)be)->size;
}
static uint32_t lun_be_gran(void *be)
{
    return ((struct nbd_lun_backend *)be)->bs;
}
static uint32_t lun_be_min_block(void *be)
{
    return 1;
}
static bool lun_be_readonly(void *be)
{
    return ((struct nbd_lun_backend *)be)->readonly;
}

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
        gate_shared_enter(b, true);
        rc = lun_be_io(b, true, first, len / b->bs, (void *)buf, flags);
        gate_shared_exit(b);
        return rc;
    }
    size_t blen = (size_t)(last - first + 1) * b->bs;
    uint8_t *tmp = malloc(blen);
    if (!tmp)
        return -ENOMEM;
    gate_excl_enter(b);
    /* read only the edge blocks; the middle is overwritten entirely */
    rc = lun_be_io(b, false, first, 1, tmp, 0);
    if (rc == 0 && last != first)
        rc = lun_be_io(b, false, last, 1, tmp + blen - b->bs, 0);
    if (rc == 0) {
        memcpy(tmp + (off - first * b->bs), buf, len);
        rc = lun_be_io(b, true, first, last - first + 1, tmp, flags);
    }
    gate_excl_exit(b);
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
    gate_shared_enter(b, true);
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
            gate_shared_exit(b);
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
    gate_shared_exit(b);
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
    gate_shared_enter(b, true);
    while (nb && rc == 0) {
        uint32_t n = (uint32_t)MIN(nb, (uint64_t)maxu);
        rc = lun_unmap(b->lun, lba, n);
        lba += n;
        nb -= n;
    }
    gate_shared_exit(b);
    return rc == -EOPNOTSUPP ? 0 : rc;
}

static int lun_be_block_status(void *be, uint64_t off, uint64_t len, uint64_t *ext_len,
                               uint32_t *flags)
{
    *ext_len = len;
    *flags = 0;
    return 0;
}

/* Completion of one command of an asynchronous request (LUN thread). */
static void lun_be_aio_done(struct lun_io *io, int result)
{
    struct nbd_aio *a = io->opaque;
    struct lun_be_aio *la = (struct lun_be_aio *)a->be_data;
    struct nbd_lun_backend *b = la->b;
    if (result == 0 && la->left) { /* next command of a long request */
        io->lba += io->nblocks;
        io->buf = (uint8_t *)io->buf + (size_t)io->nblocks * b->bs;
        io->nblocks = (uint32_t)MIN(la->left, (uint64_t)b->max_blocks);
        la->left -= io->nblocks;
        result = lun_submit(b->lun, io);
        if (result == 0)
            return;
    }
    if (la->shared)
        gate_shared_exit(b);
    a->done(a, result);
}

static int lun_be_submit(void *be, struct nbd_aio *a)
{
    struct nbd_lun_backend *b = be;
    struct lun_be_aio *la = (struct lun_be_aio *)a->be_data;
    memset(la, 0, sizeof(*la));
    la->b = b;
    la->io.done = lun_be_aio_done;
    la->io.opaque = a;
    switch (a->type) {
    case NBD_CMD_FLUSH:
        if (!lun_get_info(b->lun)->caps.sync_cache) {
            a->done(a, 0); /* write-through LUN: nothing to flush */
            return 0;
        }
        la->io.op = LUN_OP_FLUSH;
        break;
    case NBD_CMD_READ:
    case NBD_CMD_WRITE: {
        if (a->off % b->bs || a->len % b->bs)
            return -EAGAIN; /* bounce buffer / read-modify-write: worker */
        uint64_t nblocks = a->len / b->bs;
        la->io.op = a->type == NBD_CMD_READ ? LUN_OP_READ : LUN_OP_WRITE;
        la->io.lba = a->off / b->bs;
        la->io.nblocks = (uint32_t)MIN(nblocks, (uint64_t)b->max_blocks);
        la->left = nblocks - la->io.nblocks;
        la->io.buf = a->buf;
        if (a->type == NBD_CMD_WRITE) {
            la->io.flags = a->fua ? LUN_IO_FUA : 0;
            if (!gate_shared_enter(b, false))
                return -EAGAIN; /* a read-modify-write runs or waits */
            la->shared = true;
        }
        break;
    }
    default:
        return -EAGAIN;
    }
    int rc = lun_submit(b->lun, &la->io);
    if (rc < 0 && la->shared)
        gate_shared_exit(b);
    return rc;
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
    .submit = lun_be_submit,
};
