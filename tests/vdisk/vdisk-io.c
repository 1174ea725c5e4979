/* vdisk-io: drive the vdisk library from the interop tests.
 *
 *   vdisk-io write IMG MIRROR SEED COUNT   random writes / zero writes /
 *                                          discards through the library,
 *                                          mirrored into the raw file MIRROR
 *   vdisk-io compare IMG MIRROR            read IMG through the library and
 *                                          compare with MIRROR byte by byte
 *   vdisk-io child PARENT CHILD            create a thin delta of PARENT
 *   vdisk-io syncfail IMG TRIGGER          write, touch TRIGGER (syncfail-shim
 *                                          fails the next sync), then check
 *                                          that this and every later flush,
 *                                          FUA write and close fail
 *   vdisk-io mkse DESC PARENT MIRROR       make DESC an ESXi seSparse delta of
 *                                          PARENT (descriptor + DESC's stem
 *                                          "-sesparse.vmdk"), with allocated,
 *                                          zero, unmapped and unallocated
 *                                          grains and a missing grain table;
 *                                          MIRROR (what PARENT reads) gets
 *                                          what the delta reads
 *
 * Exit 0 on success, 1 on failure (with the first differing offset).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"
#include "vdisk.h"

static int do_write(const char *img_path, const char *mirror, unsigned seed, int count)
{
    struct vd_image *img;
    if (vd_open(img_path, 0, &img) < 0)
        return 1;
    int mfd = open(mirror, O_RDWR);
    if (mfd < 0) {
        perror(mirror);
        vd_close(img);
        return 1;
    }
    uint64_t size = vd_size(img);
    size_t maxlen = 300000;
    uint8_t *buf = malloc(maxlen), *zero = calloc(1, maxlen);
    int rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        uint64_t off = (uint64_t)rand_r(&seed) * 4096 % size;
        if (rand_r(&seed) % 3 == 0)
            off = off / 512 * 512 + (uint64_t)(rand_r(&seed) % 512);
        uint64_t want = (uint64_t)(rand_r(&seed) % maxlen) + 1; /* once: MIN() evaluates twice */
        size_t len = (size_t)MIN(want, size - off);
        int op = rand_r(&seed) % 10;
        if (op < 7) {
            uint8_t pat = (uint8_t)rand_r(&seed);
            for (size_t k = 0; k < len; k++)
                buf[k] = (uint8_t)(pat + k * 7 + (k >> 9));
            rc = vd_pwrite(img, buf, len, off, op == 0 ? VD_FUA : 0);
            if (rc == 0)
                rc = pwrite_full(mfd, buf, len, off);
        } else {
            if (op < 9) {
                /* a discard zeroes whole grains; pieces of grains are
                 * advisory (may keep the parent's data): keep to grains */
                uint64_t g = vd_granularity(img), a = ROUND_UP(off, g);
                uint64_t z = (off + len) / g * g;
                if (off + len == size)
                    z = off + len;
                if (a >= z)
                    continue;
                off = a;
                len = (size_t)(z - a);
            }
            rc = op < 9 ? vd_discard(img, off, len) : vd_write_zeroes(img, off, len, VD_NO_HOLE);
            if (rc == 0)
                rc = pwrite_full(mfd, zero, len, off);
        }
    }
    free(buf);
    free(zero);
    close(mfd);
    int crc = vd_close(img);
    return rc < 0 || crc < 0 ? 1 : 0;
}

static int do_compare(const char *img_path, const char *mirror)
{
    struct vd_image *img;
    if (vd_open(img_path, VD_OPEN_RDONLY, &img) < 0)
        return 1;
    int mfd = open(mirror, O_RDONLY);
    if (mfd < 0) {
        perror(mirror);
        vd_close(img);
        return 1;
    }
    size_t bs = 1 << 20;
    uint8_t *a = malloc(bs), *b = malloc(bs);
    int rc = 0;
    for (uint64_t off = 0; off < vd_size(img) && rc == 0; off += bs) {
        size_t n = (size_t)MIN(bs, vd_size(img) - off);
        if (vd_pread(img, a, n, off) < 0 || pread_full(mfd, b, n, off) < 0) {
            rc = 1;
            break;
        }
        if (memcmp(a, b, n) != 0) {
            size_t k = 0;
            while (a[k] == b[k])
                k++;
            fprintf(stderr, "vdisk-io: %s differs from %s at offset %" PRIu64 " (%02x vs %02x)\n",
                    img_path, mirror, off + k, a[k], b[k]);
            rc = 1;
        }
    }
    free(a);
    free(b);
    close(mfd);
    vd_close(img);
    return rc;
}

static int do_child(const char *parent, const char *child)
{
    struct vd_image *p;
    if (vd_open(parent, VD_OPEN_RDONLY, &p) < 0)
        return 1;
    const char *slash = strrchr(parent, '/');
    struct vd_create_opts o = {.size = vd_size(p),
                               .type = VD_TYPE_THIN,
                               .parent_hint = slash ? slash + 1 : parent,
                               .parent_cid = vd_cid(p)};
    int rc = vd_create(child, &o);
    vd_close(p);
    return rc < 0 ? 1 : 0;
}

static int syncfail_step(const char *what, int rc, bool want_fail)
{
    printf("vdisk-io: %s: %s\n", what, rc < 0 ? strerror(-rc) : "ok");
    return (rc < 0) == want_fail ? 0 : 1;
}

static int do_syncfail(const char *img_path, const char *trigger)
{
    struct vd_image *img;
    if (vd_open(img_path, 0, &img) < 0)
        return 1;
    size_t n = 65536;
    uint8_t *buf = malloc(n);
    if (!buf)
        return 1;
    memset(buf, 0x11, n);
    int bad = syncfail_step("write 0x11 at 0", vd_pwrite(img, buf, n, 0, 0), false);
    int fd = open(trigger, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(trigger);
        return 1;
    }
    close(fd);
    bad |= syncfail_step("first flush (its fdatasync fails)", vd_flush(img), true);
    bad |= syncfail_step("second flush", vd_flush(img), true);
    memset(buf, 0x22, n);
    bad |= syncfail_step("write 0x22 at 1 MiB", vd_pwrite(img, buf, n, 1 << 20, 0), false);
    bad |= syncfail_step("third flush", vd_flush(img), true);
    bad |= syncfail_step("FUA write", vd_pwrite(img, buf, n, 2 << 20, VD_FUA), true);
    bad |= syncfail_step("close", vd_close(img), true);
    free(buf);
    return bad;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The seSparse layout QEMU's reader accepts (see vdisk/vmdk_sparse.c). */
static int do_mkse(const char *desc, const char *parent, const char *mirror)
{
    struct vd_image *p;
    if (vd_open(parent, VD_OPEN_RDONLY, &p) < 0)
        return 1;
    uint64_t cap = vd_size(p) / 512, grains = (cap + 7) / 8, ngt = (grains + 4095) / 4096;
    uint32_t pcid = vd_cid(p);
    vd_close(p);
    uint64_t gd_size = (ngt * 8 + 511) / 512, gd_off = 4, gt_off = gd_off + gd_size;
    uint64_t fb_off = gt_off + ngt * 64, bm_off = fb_off + 1, gr_off = bm_off + 1;
    char ext[4096];
    const char *slash = strrchr(desc, '/');
    const char *base = slash ? slash + 1 : desc;
    size_t bl = strlen(base) > 5 ? strlen(base) - 5 : strlen(base);
    snprintf(ext, sizeof(ext), "%.*s%.*s-sesparse.vmdk", (int)(base - desc), desc, (int)bl, base);
    int fd = open(ext, O_CREAT | O_EXCL | O_RDWR, 0644), mfd = open(mirror, O_RDWR);
    if (fd < 0 || mfd < 0) {
        perror(ext);
        return 1;
    }
    uint8_t h[512] = {0};
    put64(h, 0xcafebabeull);
    put64(h + 8, 0x200000001ull);
    put64(h + 16, cap);
    put64(h + 24, 8);
    put64(h + 32, 64);
    uint64_t areas[8][2] = {
        {1, 1},      {2, 1},      {3, 1},     {gd_off, gd_size}, {gt_off, ngt * 64},
        {fb_off, 1}, {bm_off, 1}, {gr_off, 0}};
    for (int i = 0; i < 8; i++) {
        put64(h + 80 + i * 16, areas[i][0]);
        put64(h + 88 + i * 16, areas[i][1]);
    }
    int rc = pwrite_full(fd, h, 512, 0);
    uint8_t v[512] = {0};
    put64(v, 0xcafecafeull);
    if (rc == 0)
        rc = pwrite_full(fd, v, 512, 512);
    uint8_t *gd = calloc(1, gd_size * 512), *t = malloc(4096 * 8), g[4096];
    uint64_t idx = 4090; /* allocated grains cross index 4096: both halves of the encoding */
    for (uint64_t i = 0; i < ngt && rc == 0; i++) {
        if (i == 1)
            continue; /* table 1 missing: its grains read the parent */
        put64(gd + i * 8, 0x1000000000000000ull | i);
        memset(t, 0, 4096 * 8);
        for (uint64_t k = 0; k < 4096 && i * 4096 + k < grains && rc == 0; k++) {
            uint64_t gn = i * 4096 + k, off = gn * 4096, n = MIN(4096, cap * 512 - off);
            switch ((k * 13 + i) % 7) {
            case 0:
            case 4:
                put64(t + k * 8, 0x3000000000000000ull | ((idx & 0xfff) << 48) | (idx >> 12));
                memset(g, (int)(0x40 + gn % 60), sizeof(g));
                g[0] = (uint8_t)gn;
                g[1] = (uint8_t)(gn >> 8);
                rc = pwrite_full(fd, g, 4096, (gr_off + idx * 8) * 512);
                if (rc == 0)
                    rc = pwrite_full(mfd, g, n, off);
                idx++;
                break;
            case 1:
            case 2:
                put64(t + k * 8, (k % 2 ? 0x2000000000000000ull : 0x1000000000000000ull));
                memset(g, 0, sizeof(g));
                rc = pwrite_full(mfd, g, n, off);
                break;
            default:
                break; /* unallocated: the parent's bytes */
            }
        }
        if (rc == 0)
            rc = pwrite_full(fd, t, 4096 * 8, (gt_off + i * 64) * 512);
    }
    if (rc == 0)
        rc = pwrite_full(fd, gd, gd_size * 512, gd_off * 512);
    put64(h + 200, idx * 8);
    if (rc == 0)
        rc = pwrite_full(fd, h, 512, 0);
    free(gd);
    free(t);
    close(fd);
    close(mfd);
    const char *pslash = strrchr(parent, '/');
    const char *eslash = strrchr(ext, '/');
    FILE *f = rc == 0 ? fopen(desc, "wx") : NULL;
    if (!f)
        return 1;
    fprintf(f,
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=12345678\n"
            "parentCID=%08x\ncreateType=\"seSparse\"\nparentFileNameHint=\"%s\"\n"
            "# Extent description\nRW %" PRIu64 " SESPARSE \"%s\"\n\n"
            "# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n",
            pcid, pslash ? pslash + 1 : parent, cap, eslash ? eslash + 1 : ext);
    return fclose(f) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    log_set_program("vdisk-io");
    if (argc == 6 && strcmp(argv[1], "write") == 0)
        return do_write(argv[2], argv[3], (unsigned)atoi(argv[4]), atoi(argv[5]));
    if (argc == 4 && strcmp(argv[1], "compare") == 0)
        return do_compare(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "syncfail") == 0)
        return do_syncfail(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "child") == 0)
        return do_child(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "mkse") == 0)
        return do_mkse(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: vdisk-io write IMG MIRROR SEED COUNT | compare IMG MIRROR | "
                    "child PARENT CHILD | syncfail IMG TRIGGER | mkse DESC PARENT MIRROR\n");
    return 2;
}
