/* vdisk-bench: I/O through the vdisk library from N threads (one request in
 * flight per thread, so threads = queue depth).
 *
 *   vdisk-bench IMG rand|seq read|write BLOCK THREADS SECONDS
 *
 * Prints one line: "<iops> IOPS <MiB/s> MiB/s peak_rss_kib=<n>".
 */
#include <inttypes.h>
#include <pthread.h>
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

static void *worker(void *arg)
{
    uint64_t *ops = arg;
    unsigned seed = (unsigned)(uintptr_t)arg ^ (unsigned)now_ns();
    uint8_t *buf = aligned_alloc(4096, bs);
    memset(buf, 0x5a, bs);
    uint64_t n = 0;
    while (1) {
        if ((n & 63) == 0 && now_ns() > deadline)
            break;
        uint64_t blk = is_rand ? (((uint64_t)rand_r(&seed) << 31) ^ (uint64_t)rand_r(&seed)) % nblocks
                               : __atomic_fetch_add(&seq_next, 1, __ATOMIC_RELAXED) % nblocks;
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
        fprintf(stderr, "usage: vdisk-bench IMG rand|seq read|write BLOCK THREADS SECONDS\n");
        return 2;
    }
    is_rand = strcmp(argv[2], "rand") == 0;
    is_write = strcmp(argv[3], "write") == 0;
    if (parse_size(argv[4], &bs) < 0)
        return 2;
    int threads = atoi(argv[5]);
    double secs = atof(argv[6]);
    if (vd_open(argv[1], is_write ? 0 : VD_OPEN_RDONLY, &img) < 0)
        return 1;
    nblocks = vd_size(img) / bs;
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
    double el = (double)(now_ns() - t0) / 1e9;
    vd_close(img);
    printf("%.0f IOPS %.1f MiB/s peak_rss_kib=%" PRIu64 "\n", (double)total / el,
           (double)total * (double)bs / el / 1048576.0, peak_rss_kib());
    return 0;
}
