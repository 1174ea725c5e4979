/* mpath-stream: a steady, verified write stream through a multipath LUN,
 * for the multipath integration tests and bench/failover.
 *
 *   mpath-stream [OPTIONS] URI...
 *     --seconds S     run this long (default 10)
 *     --bs BYTES      bytes per write (default 65536; a multiple of the block size)
 *     --qd N          writes in flight (default 1)
 *     --region BYTES  cycle over the first BYTES of the LUN (default 16 MiB)
 *     --policy P      fixed, mru, round-robin, service-time
 *     --preferred I   fixed: preferred path index
 *     --rr-ios N      round-robin: switch every N I/Os
 *     --queue-ms MS   all-paths-down queue time
 *     --state FILE    rewrite FILE every 50 ms: "index state failures writes" per path
 *     --expect-eio    success = the stream ended with EIO (all paths down too long)
 *     --no-verify     skip the final read-back
 *     --check-timeout-ms MS  fail a path whose TEST UNIT READY hangs this long
 *     --stop-file FILE  stop early once FILE exists
 *     --timeout-ms MS   per-command timeout (lun_options.timeout_ms)
 *     --verify-wait-file FILE  after the stream stopped, verify only once FILE
 *                     exists, and --settle-ms later (a frozen path thawed: would
 *                     a stale write land now?)
 *     --settle-ms MS  (default 1500)
 *
 * Every write carries (lba, pass) in each block; at the end every block of
 * the region is read back and compared with the last pass written there.
 * Prints "ops= errors= eio= max_stall_ms= mib_s= cpu_us_per_op= csw_per_op= verify=" (CPU
 * time and context switches of the process per write) and per-path
 * counters. Exit 0 on success, 1 on any error or mismatch.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "util.h"

struct slot {
    struct lun_io io;
    struct stream *s;
    uint8_t *buf;
    uint64_t chunk;
    uint64_t t0;
};

struct stream {
    struct lun *lun;
    uint32_t bs, chunk_blocks;
    uint64_t nchunks, next_chunk, pass;
    uint32_t *stamp; /* per chunk: pass of the last acknowledged write */
    uint8_t *busy;   /* per chunk: a write is in flight (never two at once) */
    uint64_t end_ns;
    pthread_mutex_t m;
    pthread_cond_t c;
    unsigned inflight;
    uint64_t ops, errors, eio, max_stall_ns, bytes;
    bool stop;
};

static void fill(uint8_t *b, uint32_t bs, uint64_t lba, uint32_t nblocks, uint32_t pass)
{
    for (uint32_t k = 0; k < nblocks; k++) {
        uint8_t *p = b + (size_t)k * bs;
        for (uint32_t o = 0; o + 16 <= bs; o += 16) {
            uint64_t l = lba + k;
            memcpy(p + o, &l, 8);
            memcpy(p + o + 8, &pass, 4);
            memcpy(p + o + 12, &o, 4);
        }
    }
}

static void issue(struct slot *sl);

static void slot_done(struct lun_io *io, int result)
{
    struct slot *sl = io->opaque;
    struct stream *s = sl->s;
    uint64_t now = now_ns();
    pthread_mutex_lock(&s->m);
    s->busy[sl->chunk] = 0;
    uint64_t lat = now - sl->t0;
    if (lat > s->max_stall_ns)
        s->max_stall_ns = lat;
    s->ops++;
    if (result == 0) {
        uint32_t pass;
        memcpy(&pass, sl->buf + 8, 4);
        s->stamp[sl->chunk] = pass;
        s->bytes += (uint64_t)s->chunk_blocks * s->bs;
    } else {
        if (result == -EIO)
            s->eio++;
        else
            s->errors++;
        if (s->errors + s->eio <= 5)
            fprintf(stderr, "mpath-stream: write of chunk %llu failed: %s\n",
                    (unsigned long long)sl->chunk, strerror(-result));
        s->stop = true;
    }
    bool again = !s->stop && now < s->end_ns;
    if (!again) {
        s->inflight--;
        pthread_cond_signal(&s->c);
        pthread_mutex_unlock(&s->m);
        return;
    }
    pthread_mutex_unlock(&s->m);
    issue(sl);
}

static void issue(struct slot *sl)
{
    struct stream *s = sl->s;
    pthread_mutex_lock(&s->m);
    do {
        sl->chunk = s->next_chunk;
        if (++s->next_chunk == s->nchunks) {
            s->next_chunk = 0;
            s->pass++;
        }
    } while (s->busy[sl->chunk]);
    s->busy[sl->chunk] = 1;
    uint32_t pass = (uint32_t)s->pass + 1;
    pthread_mutex_unlock(&s->m);
    uint64_t lba = sl->chunk * s->chunk_blocks;
    fill(sl->buf, s->bs, lba, s->chunk_blocks, pass);
    memset(&sl->io, 0, sizeof sl->io);
    sl->io.op = LUN_OP_WRITE;
    sl->io.lba = lba;
    sl->io.nblocks = s->chunk_blocks;
    sl->io.buf = sl->buf;
    sl->io.done = slot_done;
    sl->io.opaque = sl;
    sl->t0 = now_ns();
    int rc = lun_submit(s->lun, &sl->io);
    if (rc < 0)
        slot_done(&sl->io, rc);
}

static void write_state(struct lun *lun, const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    for (unsigned i = 0; i < lun_num_paths(lun); i++) {
        struct lun_path_stats st;
        lun_path_get_stats(lun, i, &st);
        fprintf(f, "%u %s %llu %llu\n", i, lun_path_state_name(st.state),
                (unsigned long long)st.failures, (unsigned long long)st.writes);
    }
    fclose(f);
    rename(tmp, path);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"seconds", required_argument, NULL, 's'},
        {"bs", required_argument, NULL, 'b'},
        {"qd", required_argument, NULL, 'q'},
        {"region", required_argument, NULL, 'r'},
        {"policy", required_argument, NULL, 'p'},
        {"preferred", required_argument, NULL, 'P'},
        {"rr-ios", required_argument, NULL, 'R'},
        {"queue-ms", required_argument, NULL, 'Q'},
        {"state", required_argument, NULL, 'S'},
        {"expect-eio", no_argument, NULL, 'E'},
        {"no-verify", no_argument, NULL, 'N'},
        {"check-timeout-ms", required_argument, NULL, 'T'},
        {"stop-file", required_argument, NULL, 'F'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"verify-wait-file", required_argument, NULL, 'W'},
        {"settle-ms", required_argument, NULL, 'L'},
        {NULL, 0, NULL, 0},
    };
    log_set_program("mpath-stream");
    struct lun_options o;
    lun_options_init(&o);
    double seconds = 10;
    uint64_t bsz = 65536, region = 16 << 20;
    unsigned qd = 1;
    const char *state = NULL, *stop_file = NULL, *verify_wait = NULL;
    unsigned settle_ms = 1500;
    bool expect_eio = false, verify = true;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            seconds = atof(optarg);
            break;
        case 'b':
            if (parse_size(optarg, &bsz) < 0)
                return 2;
            break;
        case 'q':
            qd = (unsigned)atoi(optarg);
            break;
        case 'r':
            if (parse_size(optarg, &region) < 0)
                return 2;
            break;
        case 'p':
            if (lun_policy_parse(optarg, &o.policy) < 0)
                return 2;
            break;
        case 'P':
            o.preferred_path = (unsigned)atoi(optarg);
            break;
        case 'R':
            o.rr_ios = (unsigned)atoi(optarg);
            break;
        case 'Q':
            o.queue_ms = (unsigned)atoi(optarg);
            break;
        case 'S':
            state = optarg;
            break;
        case 'E':
            expect_eio = true;
            break;
        case 'N':
            verify = false;
            break;
        case 'T':
            o.check_timeout_ms = (unsigned)atoi(optarg);
            break;
        case 'F':
            stop_file = optarg;
            break;
        case 't':
            o.timeout_ms = (unsigned)atoi(optarg);
            break;
        case 'W':
            verify_wait = optarg;
            break;
        case 'L':
            settle_ms = (unsigned)atoi(optarg);
            break;
        default:
            return 2;
        }
    }
    if (optind >= argc || qd == 0 || qd > 256)
        return 2;
    o.multipath = true;
    struct lun *lun;
    int rc =
        lun_open_paths((const char *const *)argv + optind, (unsigned)(argc - optind), &o, &lun);
    if (rc < 0) {
        fprintf(stderr, "mpath-stream: open: %s\n", strerror(-rc));
        return 1;
    }
    struct stream s = {.lun = lun};
    pthread_mutex_init(&s.m, NULL);
    pthread_cond_init(&s.c, NULL);
    s.bs = lun_block_size(lun);
    s.chunk_blocks = (uint32_t)(bsz / s.bs);
    if (s.chunk_blocks == 0)
        s.chunk_blocks = 1;
    uint64_t lun_bytes = lun_get_info(lun)->num_blocks * s.bs;
    if (region > lun_bytes)
        region = lun_bytes;
    s.nchunks = region / ((uint64_t)s.chunk_blocks * s.bs);
    if (s.nchunks < 2 * (uint64_t)qd)
        qd = (unsigned)(s.nchunks / 2 ? s.nchunks / 2 : 1);
    s.stamp = calloc(s.nchunks, sizeof *s.stamp);
    s.busy = calloc(s.nchunks, 1);
    struct slot *slots = calloc(qd, sizeof *slots);
    uint64_t t0 = now_ns();
    s.end_ns = t0 + (uint64_t)(seconds * 1e9);
    s.inflight = qd;
    for (unsigned i = 0; i < qd; i++) {
        slots[i].s = &s;
        slots[i].buf = malloc((size_t)s.chunk_blocks * s.bs);
    }
    for (unsigned i = 0; i < qd; i++)
        issue(&slots[i]);
    pthread_mutex_lock(&s.m);
    while (s.inflight > 0) {
        pthread_mutex_unlock(&s.m);
        if (state)
            write_state(lun, state);
        usleep(50000);
        pthread_mutex_lock(&s.m);
        if (stop_file && access(stop_file, F_OK) == 0)
            s.end_ns = now_ns();
    }
    pthread_mutex_unlock(&s.m);
    double secs = (double)(now_ns() - t0) / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_us = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    if (state)
        write_state(lun, state);

    uint64_t bad = 0;
    if (verify && !expect_eio && verify_wait) {
        fprintf(stderr, "mpath-stream: stopped after %llu writes; waiting for %s\n",
                (unsigned long long)s.ops, verify_wait);
        while (access(verify_wait, F_OK) != 0)
            usleep(20000);
        usleep(settle_ms * 1000u);
    }
    if (verify && !expect_eio) {
        uint8_t *r = malloc((size_t)s.chunk_blocks * s.bs),
                *e = malloc((size_t)s.chunk_blocks * s.bs);
        for (uint64_t ch = 0; ch < s.nchunks; ch++) {
            if (!s.stamp[ch])
                continue;
            uint64_t lba = ch * s.chunk_blocks;
            rc = lun_read(lun, lba, s.chunk_blocks, r);
            fill(e, s.bs, lba, s.chunk_blocks, s.stamp[ch]);
            if (rc < 0 || memcmp(r, e, (size_t)s.chunk_blocks * s.bs) != 0) {
                if (bad++ < 5)
                    fprintf(stderr, "mpath-stream: chunk %llu (lba %llu) does not verify (%s)\n",
                            (unsigned long long)ch, (unsigned long long)lba,
                            rc < 0 ? strerror(-rc) : "data differs");
            }
        }
        free(r);
        free(e);
    }
    double csw = (double)(ru.ru_nvcsw + ru.ru_nivcsw); /* all threads: sleeps and wakeups */
    printf("ops=%llu errors=%llu eio=%llu max_stall_ms=%.1f mib_s=%.1f cpu_us_per_op=%.2f "
           "csw_per_op=%.3f verify=%s peak_rss_kib=%llu\n",
           (unsigned long long)s.ops, (unsigned long long)s.errors, (unsigned long long)s.eio,
           (double)s.max_stall_ns / 1e6, (double)s.bytes / secs / 1048576.0,
           s.ops ? cpu_us / (double)s.ops : 0.0, s.ops ? csw / (double)s.ops : 0.0,
           !verify || expect_eio ? "skipped"
           : bad                 ? "FAILED"
                                 : "ok",
           (unsigned long long)peak_rss_kib());
    for (unsigned i = 0; i < lun_num_paths(lun); i++) {
        struct lun_path_stats st;
        lun_path_get_stats(lun, i, &st);
        printf("path %u %s state=%s writes=%llu failures=%llu errors=%llu\n", i,
               lun_path_name(lun, i), lun_path_state_name(st.state), (unsigned long long)st.writes,
               (unsigned long long)st.failures, (unsigned long long)st.errors);
    }
    lun_close(lun);
    for (unsigned i = 0; i < qd; i++)
        free(slots[i].buf);
    free(slots);
    free(s.stamp);
    free(s.busy);
    if (expect_eio)
        return s.eio > 0 && s.errors == 0 ? 0 : 1;
    return s.errors == 0 && s.eio == 0 && bad == 0 ? 0 : 1;
}
