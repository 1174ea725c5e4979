/* LUN benchmark: a fixed queue depth of reads or writes for a fixed time.
 *
 *   lun-bench [--raw] URI read|write|randread|randwrite BLOCK_BYTES QUEUE_DEPTH SECONDS
 *
 * Default: through our LUN layer (lun_open + async lun_submit; the next I/O
 * is submitted from the completion callback). --raw: the same workload with
 * libiscsi's async API alone on one thread (no LUN layer), in the style of
 * libiscsi's iscsi-perf, as the peer our layer is measured against (data
 * lands in the caller's buffer in both, as our layer does).
 *
 * Prints one line: "mode=... iops=... mib_s=... cpu_us_per_io=... csw_per_io=...
 * peak_rss_kib=..." (CPU time and context switches of this process per I/O).
 */
#include "lun.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

struct bench {
    bool write, random;
    uint32_t bs;       /* logical block size */
    uint32_t nblocks;  /* per I/O */
    uint64_t capacity; /* blocks */
    pthread_mutex_t lock;
    uint64_t next_lba; /* protected by lock: sequential cursor */
    uint64_t rng;      /* protected by lock */
    atomic_bool stop;
    atomic_uint_fast64_t done;
    atomic_uint inflight;
    atomic_int error;
};

static uint64_t bench_next_lba(struct bench *b)
{
    uint64_t slots = b->capacity / b->nblocks, lba;
    pthread_mutex_lock(&b->lock);
    if (b->random) {
        b->rng ^= b->rng << 13;
        b->rng ^= b->rng >> 7;
        b->rng ^= b->rng << 17;
        lba = (b->rng % slots) * b->nblocks;
    } else {
        lba = b->next_lba;
        b->next_lba += b->nblocks;
        if (b->next_lba + b->nblocks > b->capacity)
            b->next_lba = 0;
    }
    pthread_mutex_unlock(&b->lock);
    return lba;
}

/* ---- through the LUN layer ---------------------------------------------- */

struct slot {
    struct lun_io io;
    struct bench *b;
    struct lun *lun;
};

static void slot_submit(struct slot *s);

static void slot_done(struct lun_io *io, int result)
{
    struct slot *s = io->opaque;
    struct bench *b = s->b;
    if (result < 0) {
        atomic_store(&b->error, result);
        atomic_store(&b->stop, true);
    } else {
        atomic_fetch_add(&b->done, 1);
    }
    if (atomic_load(&b->stop)) {
        atomic_fetch_sub(&b->inflight, 1);
        return;
    }
    slot_submit(s);
}

static void slot_submit(struct slot *s)
{
    struct bench *b = s->b;
    s->io.op = b->write ? LUN_OP_WRITE : LUN_OP_READ;
    s->io.lba = bench_next_lba(b);
    s->io.nblocks = b->nblocks;
    s->io.flags = 0;
    s->io.done = slot_done;
    s->io.opaque = s;
    int rc = lun_submit(s->lun, &s->io);
    if (rc < 0) {
        atomic_store(&b->error, rc);
        atomic_store(&b->stop, true);
        atomic_fetch_sub(&b->inflight, 1);
    }
}

static int run_lun(const char *uri, struct bench *b, uint32_t bytes, unsigned qd, double secs,
                   double *elapsed)
{
    struct lun_options o;
    lun_options_init(&o);
    o.timeout_ms = 30000;
    struct lun *l;
    int rc = lun_open(uri, &o, &l);
    if (rc < 0)
        return rc;
    b->bs = lun_block_size(l);
    b->nblocks = bytes / b->bs;
    b->capacity = lun_get_info(l)->num_blocks;
    struct slot *slots = calloc(qd, sizeof(*slots));
    uint8_t *mem = aligned_alloc(4096, (size_t)qd * bytes);
    memset(mem, 0x5A, (size_t)qd * bytes);
    atomic_store(&b->inflight, qd);
    uint64_t t0 = now_ns();
    /* The first round is submitted from here; after that, from callbacks
     * (the cursor is then only touched by the path's thread). */
    for (unsigned k = 0; k < qd; k++) {
        slots[k].b = b;
        slots[k].lun = l;
        slots[k].io.buf = mem + (size_t)k * bytes;
    }
    for (unsigned k = 0; k < qd; k++)
        slot_submit(&slots[k]);
    while ((double)(now_ns() - t0) / 1e9 < secs && !atomic_load(&b->stop))
        usleep(10000);
    uint64_t n = atomic_load(&b->done);
    *elapsed = (double)(now_ns() - t0) / 1e9;
    atomic_store(&b->stop, true);
    while (atomic_load(&b->inflight) > 0)
        usleep(1000);
    atomic_store(&b->done, n);
    lun_close(l);
    free(slots);
    free(mem);
    return atomic_load(&b->error);
}

/* ---- libiscsi alone --------------------------------------------------------- */

struct raw_slot {
    struct bench *b;
    struct iscsi_context *iscsi;
    int lun;
    uint8_t *buf;
};

static void raw_submit(struct raw_slot *s);

static void raw_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    struct raw_slot *s = opaque;
    struct bench *b = s->b;
    scsi_free_scsi_task(command_data);
    if (status != SCSI_STATUS_GOOD) {
        atomic_store(&b->error, -EIO);
        atomic_store(&b->stop, true);
    } else {
        atomic_fetch_add(&b->done, 1);
    }
    if (atomic_load(&b->stop)) {
        atomic_fetch_sub(&b->inflight, 1);
        return;
    }
    raw_submit(s);
}

static void raw_submit(struct raw_slot *s)
{
    struct bench *b = s->b;
    uint64_t lba = bench_next_lba(b);
    uint32_t len = b->nblocks * b->bs;
    struct scsi_task *t;
    if (b->write) {
        t = iscsi_write16_task(s->iscsi, s->lun, lba, s->buf, len, (int)b->bs, 0, 0, 0, 0, 0,
                               raw_cb, s);
    } else {
        t = scsi_cdb_read16(lba, len, (int)b->bs, 0, 0, 0, 0, 0);
        if (t) {
            scsi_task_add_data_in_buffer(t, (int)len, s->buf);
            if (iscsi_scsi_command_async(s->iscsi, s->lun, t, raw_cb, NULL, s) != 0) {
                scsi_free_scsi_task(t);
                t = NULL;
            }
        }
    }
    if (!t) {
        atomic_store(&b->error, -EIO);
        atomic_store(&b->stop, true);
        atomic_fetch_sub(&b->inflight, 1);
    }
}

static int run_raw(const char *uri, struct bench *b, uint32_t bytes, unsigned qd, double secs,
                   double *elapsed)
{
    struct iscsi_context *iscsi = iscsi_create_context("iqn.2026-11.org.clusterfs:bench-raw");
    struct iscsi_url *url = iscsi_parse_full_url(iscsi, uri);
    if (!url) {
        fprintf(stderr, "bad URI: %s\n", iscsi_get_error(iscsi));
        return -EINVAL;
    }
    iscsi_set_targetname(iscsi, url->target);
    iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    int lun = url->lun;
    if (iscsi_full_connect_sync(iscsi, url->portal, lun) != 0) {
        fprintf(stderr, "login: %s\n", iscsi_get_error(iscsi));
        iscsi_destroy_url(url);
        iscsi_destroy_context(iscsi);
        return -ECONNREFUSED;
    }
    iscsi_destroy_url(url);
    struct scsi_task *t = iscsi_readcapacity16_sync(iscsi, lun);
    struct scsi_readcapacity16 *rc16 = t ? scsi_datain_unmarshall(t) : NULL;
    if (!rc16) {
        fprintf(stderr, "READ CAPACITY(16) failed\n");
        return -EIO;
    }
    b->bs = rc16->block_length;
    b->capacity = rc16->returned_lba + 1;
    b->nblocks = bytes / b->bs;
    scsi_free_scsi_task(t);

    struct raw_slot *slots = calloc(qd, sizeof(*slots));
    uint8_t *mem = aligned_alloc(4096, (size_t)qd * bytes);
    memset(mem, 0x5A, (size_t)qd * bytes);
    atomic_store(&b->inflight, qd);
    uint64_t t0 = now_ns();
    for (unsigned k = 0; k < qd; k++) {
        slots[k] = (struct raw_slot){b, iscsi, lun, mem + (size_t)k * bytes};
        raw_submit(&slots[k]);
    }
    uint64_t n = 0;
    bool counted = false;
    while (atomic_load(&b->inflight) > 0) {
        if (!counted && ((double)(now_ns() - t0) / 1e9 >= secs || atomic_load(&b->stop))) {
            n = atomic_load(&b->done);
            *elapsed = (double)(now_ns() - t0) / 1e9;
            counted = true;
            atomic_store(&b->stop, true);
        }
        struct pollfd pfd = {.fd = iscsi_get_fd(iscsi), .events = (short)iscsi_which_events(iscsi)};
        if (poll(&pfd, 1, 100) < 0)
            break;
        if (iscsi_service(iscsi, pfd.revents) < 0) {
            fprintf(stderr, "iscsi_service: %s\n", iscsi_get_error(iscsi));
            break;
        }
    }
    atomic_store(&b->done, n);
    iscsi_logout_sync(iscsi);
    iscsi_destroy_context(iscsi);
    free(slots);
    free(mem);
    return atomic_load(&b->error);
}

int main(int argc, char **argv)
{
    bool raw = false;
    if (argc > 1 && strcmp(argv[1], "--raw") == 0) {
        raw = true;
        argv++;
        argc--;
    }
    if (argc != 6) {
        fprintf(
            stderr,
            "usage: lun-bench [--raw] URI read|write|randread|randwrite BLOCK_BYTES QD SECONDS\n");
        return 2;
    }
    struct bench b = {.rng = 0x9E3779B97F4A7C15ULL, .lock = PTHREAD_MUTEX_INITIALIZER};
    const char *mode = argv[2];
    b.write = strstr(mode, "write") != NULL;
    b.random = strncmp(mode, "rand", 4) == 0;
    uint64_t bytes;
    if (parse_size(argv[3], &bytes) < 0 || bytes == 0 || bytes % 512) {
        fprintf(stderr, "bad block size %s\n", argv[3]);
        return 2;
    }
    unsigned qd = (unsigned)atoi(argv[4]);
    double secs = atof(argv[5]);
    double elapsed = 0;
    int rc = raw ? run_raw(argv[1], &b, (uint32_t)bytes, qd, secs, &elapsed)
                 : run_lun(argv[1], &b, (uint32_t)bytes, qd, secs, &elapsed);
    if (rc < 0) {
        fprintf(stderr, "lun-bench: %s\n", strerror(-rc));
        return 1;
    }
    uint64_t n = atomic_load(&b.done);
    double iops = (double)n / elapsed;
    /* CPU time of this process per I/O: less sensitive to a busy machine
     * than IOPS (includes open/probe/close, negligible over the run). */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_us = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    /* Context switches per I/O (all threads): how often a thread slept
     * and was woken, i.e. how well completions are batched per wakeup. */
    double csw = (double)(ru.ru_nvcsw + ru.ru_nivcsw);
    printf("mode=%s engine=%s bs=%" PRIu64 " qd=%u iops=%.0f mib_s=%.1f cpu_us_per_io=%.2f "
           "csw_per_io=%.3f peak_rss_kib=%" PRIu64 "\n",
           mode, raw ? "libiscsi" : "lun", bytes, qd, iops, iops * (double)bytes / 1048576.0,
           n ? cpu_us / (double)n : 0.0, n ? csw / (double)n : 0.0, peak_rss_kib());
    return 0;
}
