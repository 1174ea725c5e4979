/* vdisk-bench: I/O through the vdisk library from N threads (one request in
 * flight per thread, so threads = queue depth).
 *
 *   vdisk-bench IMG rand|seq read|write BLOCK THREADS SECONDS
 *   vdisk-bench IMG rand|seq first BLOCK THREADS MIB
 *
 * "first" writes each block of the first MIB MiB exactly once (seq: in
 * order; rand: a shuffled order), then calls vd_flush(); the time includes
 * the flush. On a fresh thin image or a fresh delta that measures first
 * writes (grain allocation) with the cost of making them durable.
 *
 * Prints one line: "<iops> IOPS <MiB/s> MiB/s peak_rss_kib=<n>".
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"
#include "vdisk.h"

static struct vd_image *img;
static uint64_t bs, nblocks, deadline;
static int is_rand, is_write;
static uint64_t seq_next; /* atomic */
static uint64_t *order;   /* "first": block order, nblocks entries */

static void *worker(void *arg)
{
    uint64_t *ops = arg;
    unsigned seed = (unsigned)(uintptr_t)arg ^ (unsigned)now_ns();
    uint8_t *buf = aligned_alloc(4096, bs);
    memset(buf, 0x5a, bs);
    uint64_t n = 0;
    while (1) {
        uint64_t blk;
        if (order) {
            uint64_t i = __atomic_fetch_add(&seq_next, 1, __ATOMIC_RELAXED);
            if (i >= nblocks)
                break;
            blk = order[i];
            goto io;
        }
        if ((n & 63) == 0 && now_ns() > deadline)
            break;
        blk = is_rand ? (((uint64_t)rand_r(&seed) << 31) ^ (uint64_t)rand_r(&seed)) % nblocks
                      : __atomic_fetch_add(&seq_next, 1, __ATOMIC_RELAXED) % nblocks;
    io:;
        int rc = is_write ? vd_pwrite(img, buf, bs, blk * bs, 0) : vd_pread(img, buf, bs, blk * bs);
        if (rc < 0) {
            fprintf(stderr, "vdisk-bench: I/O error %d\n", rc);
            exit(1);
        }
        n++;
    }
    *ops = n;
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    log_set_program("vdisk-bench");
    if (argc != 7) {
        fprintf(stderr, "usage: vdisk-bench IMG rand|seq read|write BLOCK THREADS SECONDS\n"
                        "       vdisk-bench IMG rand|seq first BLOCK THREADS MIB\n");
        return 2;
    }
    is_rand = strcmp(argv[2], "rand") == 0;
    bool first = strcmp(argv[3], "first") == 0;
    is_write = first || strcmp(argv[3], "write") == 0;
    if (parse_size(argv[4], &bs) < 0)
        return 2;
    int threads = atoi(argv[5]);
    double secs = atof(argv[6]);
    if (vd_open(argv[1], is_write ? 0 : VD_OPEN_RDONLY, &img) < 0)
        return 1;
    nblocks = vd_size(img) / bs;
    if (first) {
        nblocks = MIN(nblocks, (uint64_t)(secs * 1048576.0) / bs);
        order = malloc(nblocks * sizeof(*order));
        if (!order)
            return 1;
        unsigned seed = 12345;
        for (uint64_t i = 0; i < nblocks; i++)
            order[i] = i;
        for (uint64_t i = nblocks; is_rand && i > 1; i--) {
            uint64_t j = (((uint64_t)rand_r(&seed) << 31) ^ (uint64_t)rand_r(&seed)) % i;
            uint64_t t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
    }
    pthread_t th[256];
    uint64_t ops[256] = {0};
    if (threads < 1 || threads > 256)
        return 2;
    uint64_t t0 = now_ns();
    deadline = t0 + (uint64_t)(secs * 1e9);
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, worker, &ops[i]);
    uint64_t total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        total += ops[i];
    }
    if (first && vd_flush(img) < 0)
        return 1;
    double el = (double)(now_ns() - t0) / 1e9;
    vd_close(img);
    free(order);
    printf("%.0f IOPS %.1f MiB/s peak_rss_kib=%" PRIu64 "\n", (double)total / el,
           (double)total * (double)bs / el / 1048576.0, peak_rss_kib());
    return 0;
}
