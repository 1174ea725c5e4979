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
#include "vdisk_internal.h"

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
                               .parent_cid = p->desc.cid};
    int rc = vmdk_create(child, &o);
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
    fprintf(stderr, "usage: vdisk-io write IMG MIRROR SEED COUNT | compare IMG MIRROR | "
                    "child PARENT CHILD\n");
    return 2;
}
