/* Fuzz target for the VMDK header and descriptor parsers and the open path.
 *
 * LLVMFuzzerTestOneInput() is libFuzzer-compatible (build with clang
 * -fsanitize=fuzzer -DVD_FUZZ_LIBFUZZER). Without libFuzzer, main() below is
 * a standalone driver: it runs the files named on the command line, or, with
 * no arguments, FUZZ_ITERS (default 20000) mutations of a built-in seed
 * corpus (a real monolithicSparse image, a delta, text descriptors). A crash,
 * a sanitizer report or a leak fails the unit test that runs it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk.h"
#include "vdisk_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[128];
static long fuzz_opened, fuzz_desc_ok;

static void fuzz_quiet(enum log_level level, const char *msg, void *opaque)
{
}

static void fuzz_init(void)
{
    if (fuzz_dir[0])
        return;
    /* tmpfs when there is one: 20000 small files are written */
    snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz-vmdk.XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(fuzz_dir))
        abort();
    log_set_sink(fuzz_quiet, NULL);
    /* a flat extent and a parent for descriptors that name them */
    char p[256];
    snprintf(p, sizeof(p), "%s/f-flat.vmdk", fuzz_dir);
    int fd = open(p, O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
        abort();
    close(fd);
    snprintf(p, sizeof(p), "%s/parent.vmdk", fuzz_dir);
    struct vd_create_opts o = {.size = 1 << 20};
    vmdk_create(p, &o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size >= sizeof(struct vmdk4_header_disk)) {
        struct vmdk4_header_disk d;
        struct vmdk4_header h;
        memcpy(&d, data, sizeof(d));
        vmdk4_header_decode(&d, &h, "fuzz");
    }
    struct vmdk_desc desc;
    if (vmdk_desc_parse((const char *)data, size, &desc, "fuzz") == 0) {
        fuzz_desc_ok++;
        char *t = vmdk_desc_emit(&desc);
        struct vmdk_desc again;
        if (t && vmdk_desc_parse(t, strlen(t), &again, "fuzz-emit") != 0)
            abort(); /* what we emit we must parse */
        if (t)
            vmdk_desc_free(&again);
        free(t);
        vmdk_desc_free(&desc);
    }
    char p[256];
    snprintf(p, sizeof(p), "%s/input.vmdk", fuzz_dir);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        abort();
    if (size && pwrite_full(fd, data, size, 0) < 0)
        abort();
    close(fd);
    struct vd_image *img;
    if (vd_open(p, VD_OPEN_RDONLY, &img) == 0) {
        fuzz_opened++;
        uint8_t buf[4096];
        uint64_t sz = vd_size(img);
        vd_pread(img, buf, (size_t)MIN(sz, sizeof(buf)), 0);
        if (sz > sizeof(buf))
            vd_pread(img, buf, sizeof(buf), sz - sizeof(buf));
        uint64_t off = 0;
        for (int i = 0; i < 64 && off < sz; i++) {
            uint64_t n;
            unsigned st;
            if (vd_block_status(img, off, sz - off, &n, &st) < 0)
                break;
            off += n;
        }
        vd_close(img);
    }
    return 0;
}

#ifndef VD_FUZZ_LIBFUZZER
static uint8_t *fuzz_slurp(const char *path, size_t *n)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return NULL;
    uint8_t *b = malloc((size_t)st.st_size + 1);
    if (b && pread_full(fd, b, (size_t)st.st_size, 0) < 0) {
        free(b);
        b = NULL;
    }
    close(fd);
    *n = (size_t)st.st_size;
    return b;
}

static const uint32_t interesting[] = {
    0,   1,   2,   3,          7,           8,           127,         128,
    511, 512, 513, 0x7fffffff, 0x80000000u, 0xffffffffu, 0xfffffffeu, 0x564d444b};

int main(int argc, char **argv)
{
    fuzz_init();
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            size_t n;
            uint8_t *b = fuzz_slurp(argv[i], &n);
            if (b)
                LLVMFuzzerTestOneInput(b, n);
            free(b);
        }
        goto out;
    }
    /* seed corpus */
    struct {
        uint8_t *b;
        size_t n;
    } seeds[6];
    char p[256];
    snprintf(p, sizeof(p), "%s/seed0.vmdk", fuzz_dir);
    struct vd_create_opts o = {.size = 3 << 20};
    if (vmdk_create(p, &o) < 0)
        return 1;
    struct vd_image *img;
    if (vd_open(p, 0, &img) == 0) {
        uint8_t blk[4096];
        memset(blk, 0xab, sizeof(blk));
        vd_pwrite(img, blk, sizeof(blk), 70000, 0);
        vd_write_zeroes(img, 1 << 20, 65536, 0);
        vd_close(img);
    }
    seeds[0].b = fuzz_slurp(p, &seeds[0].n);
    snprintf(p, sizeof(p), "%s/seed1.vmdk", fuzz_dir);
    o.parent_hint = "parent.vmdk";
    o.parent_cid = 0x12345678;
    o.size = 1 << 20;
    vmdk_create(p, &o);
    seeds[1].b = fuzz_slurp(p, &seeds[1].n);
    const char *t2 = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                     "createType=\"monolithicFlat\"\n\n# Extent description\n"
                     "RW 1024 FLAT \"f-flat.vmdk\" 0\nRW 100 ZERO\nRDONLY 512 FLAT "
                     "\"f-flat.vmdk\" 1024\n\n#DDB\nddb.adapterType = \"ide\"\n";
    seeds[2].b = (uint8_t *)strdup(t2);
    seeds[2].n = strlen(t2);
    const char *t3 = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=2\n"
                     "createType=\"monolithicSparse\"\nparentFileNameHint=\"parent.vmdk\"\n"
                     "RW 2048 SPARSE \"seed0.vmdk\"\n";
    seeds[3].b = (uint8_t *)strdup(t3);
    seeds[3].n = strlen(t3);
    /* an ESX COWD extent: 2048 sectors, 512-byte grains, one grain table */
    seeds[4].n = (5 + 32 + 4) * 512;
    seeds[4].b = calloc(1, seeds[4].n);
    if (seeds[4].b) {
        uint8_t *c = seeds[4].b;
        memcpy(c, "COWD", 4);
        uint32_t hdr[9] = {1, 3, 2048, 1, 4, 1, 41, 0, 0};
        for (int k = 0; k < 9; k++)
            le32_put(c + 4 + 4 * k, hdr[k]);
        le32_put(c + 4 * 512, 5);       /* GD[0] -> GT at sector 5 */
        le32_put(c + 5 * 512, 37);      /* grain 0 */
        le32_put(c + 5 * 512 + 40, 38); /* grain 10 */
        memset(c + 37 * 512, 0xcd, 1024);
    }
    /* a streamOptimized image (compressed grains, footer) made from seed0 */
    seeds[5].b = NULL;
    snprintf(p, sizeof(p), "%s/seed0.vmdk", fuzz_dir);
    if (vd_open(p, VD_OPEN_RDONLY, &img) == 0) {
        snprintf(p, sizeof(p), "%s/seed5.vmdk", fuzz_dir);
        if (vd_stream_write(img, p, NULL, false) == 0)
            seeds[5].b = fuzz_slurp(p, &seeds[5].n);
        vd_close(img);
    }
    const char *it = getenv("FUZZ_ITERS");
    long iters = it ? atol(it) : 20000;
    unsigned seed = 1234;
    for (long i = 0; i < iters; i++) {
        int s = rand_r(&seed) % 6;
        if (!seeds[s].b)
            continue;
        size_t n = seeds[s].n;
        uint8_t *b = malloc(n + 64);
        memcpy(b, seeds[s].b, n);
        int muts = 1 + rand_r(&seed) % 6;
        for (int m = 0; m < muts; m++) {
            int kind = rand_r(&seed) % 6;
            /* mutate mostly the header/descriptor area, sometimes the tables */
            size_t lim = (rand_r(&seed) % 4) ? MIN(n, (size_t)12288) : n;
            if (lim == 0)
                break;
            size_t at = (size_t)rand_r(&seed) % lim;
            if (kind == 0)
                b[at] ^= (uint8_t)(1u << (rand_r(&seed) % 8));
            else if (kind == 1)
                b[at] = (uint8_t)rand_r(&seed);
            else if (kind == 2 && at + 4 <= n) {
                uint32_t v = interesting[rand_r(&seed) % 16];
                memcpy(b + at, &v, 4);
            } else if (kind == 3 && at + 8 <= n) {
                uint64_t v = (uint64_t)interesting[rand_r(&seed) % 16] << (rand_r(&seed) % 40);
                memcpy(b + at, &v, 8);
            } else if (kind == 4)
                n = at; /* truncate */
            else if (kind == 5 && at + 2 <= n)
                memcpy(b + at, (rand_r(&seed) & 1) ? "\"\n" : "..", 2);
        }
        LLVMFuzzerTestOneInput(b, n);
        free(b);
    }
    for (int s = 0; s < 6; s++)
        free(seeds[s].b);
    printf("fuzz-vmdk: %ld inputs (%ld opened, %ld descriptors parsed), no crash\n", iters,
           fuzz_opened, fuzz_desc_ok);
out : {
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", fuzz_dir);
    if (system(cmd) != 0)
        rc = 1;
}
    return rc;
}
#endif
