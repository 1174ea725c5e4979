/* nbd-load: a minimal NBD load generator over libnbd, for URIs fio's nbd
 * engine refuses (nbds:// with tls-psk-file= or tls-certificates=: fio
 * does not allow libnbd to read local files named in a URI).
 *
 *   nbd-load URI randread|read BS QD SECONDS
 *
 * Keeps QD reads of BS bytes in flight on one connection (random offsets
 * aligned to BS, or sequential, wrapping at the end) for SECONDS after one
 * second of warm-up, and prints "IOPS MiB/s". Never a test.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s) /* xorshift64 */
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: nbd-load URI randread|read BS QD SECONDS\n");
        return 2;
    }
    const char *uri = argv[1];
    int random = !strcmp(argv[2], "randread");
    uint64_t bs = strtoull(argv[3], NULL, 0);
    unsigned qd = (unsigned)strtoul(argv[4], NULL, 0);
    double secs = strtod(argv[5], NULL);
    if ((!random && strcmp(argv[2], "read")) || !bs || !qd || qd > 1024 || secs <= 0) {
        fprintf(stderr, "nbd-load: bad arguments\n");
        return 2;
    }
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_set_uri_allow_local_file(h, true) < 0 || nbd_connect_uri(h, uri) < 0) {
        fprintf(stderr, "nbd-load: %s\n", nbd_get_error());
        return 1;
    }
    int64_t size = nbd_get_size(h);
    if (size < (int64_t)bs) {
        fprintf(stderr, "nbd-load: export smaller than one block\n");
        return 1;
    }
    uint64_t nblocks = (uint64_t)size / bs, seq = 0, seed = 0x9e3779b97f4a7c15ULL;
    char *buf = malloc(bs * qd);
    if (!buf)
        return 1;
    double t0 = now_s(), start = t0 + 1.0, end = start + secs;
    uint64_t done = 0;
    unsigned slot = 0;
    for (;;) {
        double t = now_s();
        if (t >= end)
            break;
        while (nbd_aio_in_flight(h) < (int)qd) {
            uint64_t blk = random ? rnd(&seed) % nblocks : seq++ % nblocks;
            if (nbd_aio_pread(h, buf + (slot++ % qd) * bs, bs, blk * bs, NBD_NULL_COMPLETION, 0) <
                0) {
                fprintf(stderr, "nbd-load: %s\n", nbd_get_error());
                return 1;
            }
        }
        if (nbd_poll(h, -1) < 0) {
            fprintf(stderr, "nbd-load: %s\n", nbd_get_error());
            return 1;
        }
        int64_t c;
        while ((c = nbd_aio_peek_command_completed(h)) > 0) {
            if (nbd_aio_command_completed(h, (uint64_t)c) < 0) {
                fprintf(stderr, "nbd-load: read failed: %s\n", nbd_get_error());
                return 1;
            }
            if (now_s() >= start)
                done++;
        }
    }
    while (nbd_aio_in_flight(h) > 0)
        if (nbd_poll(h, -1) < 0)
            break;
    nbd_shutdown(h, 0);
    nbd_close(h);
    free(buf);
    printf("%.0f %.0f\n", (double)done / secs, (double)done * (double)bs / secs / 1048576.0);
    return 0;
}
