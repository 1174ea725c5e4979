/* Volume benchmark: file data through the library vs the raw LUN through
 * the LUN layer, in one run, on one LUN; metadata rate; format time.
 *
 *   volume-bench LUN [DATA_MIB] [FILES]
 *
 * 1. raw LUN: sequential 1 MiB writes then reads of DATA_MIB (default
 *    2048) at byte 64 MiB, then 4 KiB random reads (20,000) over that
 *    range (the range is written once untimed first);
 * 2. the same through a volume file (formatted on the same LUN);
 * 3. create + 4 KiB write + close of FILES files (default 2000) in one
 *    directory, then an fsync: files per second;
 * prints the ratios and the peak RSS. Format time beside mkfs.ext4 is in
 * run.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "util.h"
#include "volume.h"

#define MiB (1ull << 20)

static double secs(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv)
{
    log_set_program("volume-bench");
    if (argc < 2) {
        fprintf(stderr, "usage: volume-bench LUN [DATA_MIB] [FILES]\n");
        return 2;
    }
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 0) : 2048;
    unsigned nfiles = argc > 3 ? (unsigned)atoi(argv[3]) : 2000;
    struct lun_options o;
    lun_options_init(&o);
    struct lun *lun;
    int r = lun_open(argv[1], &o, &lun);
    if (r < 0)
        return 1;
    uint32_t lbs = lun_block_size(lun);
    uint8_t *buf = aligned_alloc(4096, MiB);
    memset(buf, 0xa5, MiB);
    uint64_t base = 64 * MiB; /* raw: past the volume's first regions */
    const unsigned nrand = 20000;
    uint64_t s = 12345;

    /* 1. raw LUN (the range written once first, untimed: a file LUN then
     * has its extents, as the volume's phase will find them) */
    for (uint64_t i = 0; i < mib && r == 0; i++)
        r = lun_write(lun, (base + i * MiB) / lbs, MiB / lbs, buf, 0);
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < mib && r == 0; i++)
        r = lun_write(lun, (base + i * MiB) / lbs, MiB / lbs, buf, 0);
    if (r == 0)
        r = lun_flush(lun);
    double raw_w = (double)mib / secs(t0);
    t0 = now_ns();
    for (uint64_t i = 0; i < mib && r == 0; i++)
        r = lun_read(lun, (base + i * MiB) / lbs, MiB / lbs, buf);
    double raw_r = (double)mib / secs(t0);
    t0 = now_ns();
    for (unsigned i = 0; i < nrand && r == 0; i++)
        r = lun_read(lun, (base + (rnd(&s) % (mib * 256)) * 4096) / lbs, 4096 / lbs, buf);
    double raw_rr = nrand / secs(t0);
    if (r < 0) {
        fprintf(stderr, "raw LUN I/O failed: %s\n", strerror(-r));
        return 1;
    }

    /* 2. the volume */
    struct cfs_format_params fp = {.max_hosts = 8, .force = true};
    t0 = now_ns();
    if ((r = cfs_format(lun, &fp)) < 0)
        return 1;
    double fmt_ms = secs(t0) * 1000;
    struct cfs_volume *v;
    struct cfs_open_opts oo = {.local = true};
    if ((r = cfs_volume_open(lun, &oo, &v)) < 0)
        return 1;
    struct cfs_attr a;
    struct cfs_file *fh;
    if ((r = cfs_create(v, cfs_root(v), "data", 0644, O_RDWR, 0, 0, &a, &fh)) < 0)
        return 1;
    t0 = now_ns();
    for (uint64_t i = 0; i < mib && r >= 0; i++)
        r = (int)cfs_write(fh, buf, MiB, i * MiB);
    if (r >= 0)
        r = cfs_fsync(fh, false);
    double vol_w = (double)mib / secs(t0);
    t0 = now_ns();
    for (uint64_t i = 0; i < mib && r >= 0; i++)
        r = (int)cfs_read(fh, buf, MiB, i * MiB);
    double vol_r = (double)mib / secs(t0);
    t0 = now_ns();
    for (unsigned i = 0; i < nrand && r >= 0; i++)
        r = (int)cfs_read(fh, buf, 4096, (rnd(&s) % (mib * 256)) * 4096);
    double vol_rr = nrand / secs(t0);
    cfs_release(fh);
    if (r < 0) {
        fprintf(stderr, "volume I/O failed: %s\n", strerror(-r));
        return 1;
    }

    /* 3. metadata */
    struct cfs_attr d;
    if ((r = cfs_mkdir(v, cfs_root(v), "m", 0755, 0, 0, &d)) < 0)
        return 1;
    char name[32];
    t0 = now_ns();
    for (unsigned i = 0; i < nfiles && r >= 0; i++) {
        snprintf(name, sizeof(name), "f%u", i);
        r = cfs_create(v, d.ino, name, 0644, O_RDWR, 0, 0, &a, &fh);
        if (r < 0)
            break;
        r = (int)cfs_write(fh, buf, 4096, 0);
        cfs_release(fh);
        cfs_forget(v, a.ino, 1);
    }
    if (r >= 0)
        r = cfs_sync(v);
    double creates = nfiles / secs(t0);
    if (r < 0) {
        fprintf(stderr, "metadata phase failed: %s\n", strerror(-r));
        return 1;
    }
    cfs_volume_close(v);
    lun_close(lun);

    printf("%-34s %12s %12s %8s\n", "test", "volume", "raw LUN", "ratio");
    printf("%-34s %12.0f %12.0f %8.2f\n", "seq 1 MiB write (MiB/s)", vol_w, raw_w, vol_w / raw_w);
    printf("%-34s %12.0f %12.0f %8.2f\n", "seq 1 MiB read (MiB/s)", vol_r, raw_r, vol_r / raw_r);
    printf("%-34s %12.0f %12.0f %8.2f\n", "4 KiB random read (IOPS)", vol_rr, raw_rr,
           vol_rr / raw_rr);
    printf("%-34s %12.0f\n", "create+4K write+close (files/s)", creates);
    printf("%-34s %12.1f\n", "format (ms)", fmt_ms);
    printf("peak_rss_kib=%" PRIu64 "\n", peak_rss_kib());
    return 0;
}
