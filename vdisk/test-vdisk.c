/* Unit tests of the vdisk engine: raw, sparse VMDK I/O against a shadow
 * copy, racing allocations, delta chains, CID updates, resize, check, and a
 * corpus of malformed images (error text checked, file unchanged after).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk.h"
#include "test-nowait.h"
#include "vdisk_internal.h"

static char tmpdir[256];

static void quiet(enum log_level level, const char *msg, void *opaque)
{
}

static int setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-vdisk.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    log_set_sink(quiet, NULL);
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static char *tpath(const char *name)
{
    static __thread char buf[8][320];
    static __thread int k;
    char *p = buf[k++ % 8];
    snprintf(p, 320, "%s/%s", tmpdir, name);
    return p;
}

static void fill_random(uint8_t *b, size_t n, unsigned *seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(rand_r(seed) >> 7);
}

static void make_thin(const char *path, uint64_t size, const char *hint, uint32_t pcid)
{
    struct vd_create_opts o = {
        .size = size, .type = VD_TYPE_THIN, .parent_hint = hint, .parent_cid = pcid};
    unlink(path);
    assert_int_equal(vmdk_create(path, &o), 0);
}

static uint32_t image_cid(const char *path)
{
    struct vd_image *img;
    assert_int_equal(vd_open(path, VD_OPEN_RDONLY, &img), 0);
    uint32_t cid = img->desc.cid;
    vd_close(img);
    return cid;
}

/* ------------------------------------------------------- non-blocking read */

/* vd_pread_nowait answers from the page cache with the same bytes as
 * vd_pread, declines (-EAGAIN) what would wait for the disk, and vd_pread
 * then reads it: cached raw data, cold data after fadvise(DONTNEED), a
 * child's read through to its parent, holes, a compressed grain (always
 * declined), the test hook, and the range check. */
static void test_pread_nowait_serves_cached_declines_cold(void **state)
{
    const char *p = tpath("nowait.raw");
    const size_t size = 8 << 20;
    assert_int_equal(vd_create_raw(p, size), 0);
    struct vd_image *img;
    assert_int_equal(vd_open(p, VD_OPEN_RAW, &img), 0);
    uint8_t *shadow = malloc(size), *b = malloc(1 << 20);
    assert_non_null(shadow);
    assert_non_null(b);
    unsigned seed = 7;
    fill_random(shadow, size, &seed);
    assert_int_equal(vd_pwrite(img, shadow, size, 0, 0), 0);

    /* hot: just written, in the page cache */
    assert_int_equal(vd_pread_nowait(img, b, 10000, 12345), 0);
    assert_memory_equal(b, shadow + 12345, 10000);
    assert_int_equal(vd_pread_nowait(img, b, 1 << 20, size - (1 << 20)), 0);
    assert_memory_equal(b, shadow + size - (1 << 20), 1 << 20);
    assert_int_equal(vd_pread_nowait(img, b, 10, size - 5), -EINVAL);

    /* the seam (test-nowait.h) makes exactly N page-cache reads miss */
    vd_test_nowait_eagain = 2;
    assert_int_equal(vd_pread_nowait(img, b, 4096, 0), -EAGAIN);
    assert_int_equal(vd_pread_nowait(img, b, 4096, 0), -EAGAIN);
    assert_int_equal(vd_pread_nowait(img, b, 4096, 0), 0);
    assert_memory_equal(b, shadow, 4096);
    assert_int_equal(vd_test_nowait_eagain, 0);

    /* cold: written back and dropped from the page cache. Each 4 KiB probe
     * sits 512 KiB from the last (past any readahead a miss starts). A miss
     * is -EAGAIN; a hit (readahead already done) must be the right data. */
    assert_int_equal(vd_flush(img), 0);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    struct statfs sf;
    assert_int_equal(fstatfs(fd, &sf), 0);
    close(fd);
    unsigned misses = 0;
    for (uint64_t off = 4096; off + 4096 <= size; off += 512 << 10) {
        memset(b, 0xee, 4096);
        int rc = vd_pread_nowait(img, b, 4096, off);
        assert_true(rc == 0 || rc == -EAGAIN);
        if (rc == -EAGAIN) {
            misses++;
            assert_int_equal(vd_pread(img, b, 4096, off), 0);
        }
        assert_memory_equal(b, shadow + off, 4096);
        /* now cached: served without the disk */
        assert_int_equal(vd_pread_nowait(img, b, 4096, off), 0);
        assert_memory_equal(b, shadow + off, 4096);
    }
    if (sf.f_type != 0x01021994 /* TMPFS_MAGIC: everything is cached */)
        assert_true(misses > 0);

    /* a compressed grain (streamOptimized) is always declined */
    const char *sp = tpath("nowait-stream.vmdk");
    assert_int_equal(vd_stream_write(img, sp, "lsilogic", false), 0);
    vd_close(img);
    assert_int_equal(vd_open(sp, VD_OPEN_RDONLY, &img), 0);
    assert_int_equal(vd_pread_nowait(img, b, 4096, 65536), -EAGAIN);
    assert_int_equal(vd_pread(img, b, 4096, 65536), 0);
    assert_memory_equal(b, shadow + 65536, 4096);
    vd_close(img);

    /* a child reads unallocated grains from its parent, holes as zeroes */
    const char *base = tpath("nowait-base.vmdk"), *child = tpath("nowait-child.vmdk");
    make_thin(base, 4 << 20, NULL, 0);
    assert_int_equal(vd_open(base, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, shadow, 1 << 20, 0, 0), 0);
    vd_close(img);
    make_thin(child, 4 << 20, "nowait-base.vmdk", image_cid(base));
    assert_int_equal(vd_open(child, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, shadow + (2 << 20), 4096, 65536, 0), 0);
    /* the parent's pages may have been dropped by the close: warm them */
    assert_int_equal(vd_pread(img, b, 1 << 20, 0), 0);
    memset(b, 0xee, 1 << 20);
    assert_int_equal(vd_pread_nowait(img, b, 1 << 20, 0), 0);
    assert_memory_equal(b, shadow, 65536);
    assert_memory_equal(b + 65536, shadow + (2 << 20), 4096);
    assert_memory_equal(b + 65536 + 4096, shadow + 65536 + 4096, (1 << 20) - 65536 - 4096);
    memset(b, 0xee, 65536);
    assert_int_equal(vd_pread_nowait(img, b, 65536, 3 << 20), 0); /* hole everywhere */
    assert_true(vd_buf_is_zero(b, 65536));
    vd_close(img);
    free(shadow);
    free(b);
}

/* ------------------------------------------------------------------ raw */

static void test_raw_io_discard_status(void **state)
{
    const char *p = tpath("raw.img");
    assert_int_equal(vd_create_raw(p, 4 << 20), 0);
    struct vd_image *img;
    assert_int_equal(vd_open(p, VD_OPEN_RAW, &img), 0);
    assert_int_equal(vd_size(img), 4 << 20);
    uint8_t w[10000], r[10000];
    unsigned seed = 1;
    fill_random(w, sizeof(w), &seed);
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 12345, VD_FUA), 0);
    assert_int_equal(vd_pread(img, r, sizeof(r), 12345), 0);
    assert_memory_equal(w, r, sizeof(w));
    uint64_t n;
    unsigned st;
    assert_int_equal(vd_block_status(img, 12345, (4 << 20) - 12345, &n, &st), 0);
    assert_int_equal(st, 0); /* data where we wrote */
    assert_int_equal(vd_block_status(img, 1 << 20, 1 << 20, &n, &st), 0);
    assert_true(st & VD_STATUS_HOLE);
    assert_int_equal(vd_discard(img, 8192, 8192), 0);
    assert_int_equal(vd_pread(img, r, 8192, 8192), 0);
    assert_true(vd_buf_is_zero(r, 8192));
    assert_int_equal(vd_write_zeroes(img, 16384, 100, VD_NO_HOLE), 0);
    assert_int_equal(vd_pread(img, r, 100, 16384), 0);
    assert_true(vd_buf_is_zero(r, 100));
    assert_int_equal(vd_pread(img, r, 10, (4 << 20) - 5), -EINVAL);
    assert_int_equal(vd_flush(img), 0);
    assert_int_equal(vd_close(img), 0);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0); /* probe: no magic -> raw */
    assert_int_equal(vd_pwrite(img, w, 10, 0, 0), -EROFS);
    assert_int_equal(vd_granularity(img), 4096);
    vd_close(img);
}

/* --------------------------------------------------------------- sparse */

static void test_sparse_random_io_matches_shadow(void **state)
{
    const char *p = tpath("thin.vmdk");
    uint64_t size = 8 << 20;
    make_thin(p, size, NULL, 0);
    uint8_t *shadow = calloc(1, size), *buf = malloc(1 << 20);
    struct vd_image *img;
    assert_int_equal(vd_open(p, 0, &img), 0);
    assert_int_equal(vd_size(img), size);
    assert_int_equal(vd_granularity(img), 65536);
    unsigned seed = 42;
    for (int i = 0; i < 300; i++) {
        uint64_t off = (uint64_t)rand_r(&seed) % size;
        size_t len = (size_t)MIN((uint64_t)(rand_r(&seed) % 200000) + 1, size - off);
        int op = rand_r(&seed) % 10;
        if (op < 7) {
            fill_random(buf, len, &seed);
            assert_int_equal(vd_pwrite(img, buf, len, off, 0), 0);
            memcpy(shadow + off, buf, len);
        } else if (op < 9) {
            assert_int_equal(vd_discard(img, off, len), 0);
            memset(shadow + off, 0, len);
        } else {
            assert_int_equal(vd_write_zeroes(img, off, len, VD_NO_HOLE), 0);
            memset(shadow + off, 0, len);
        }
        assert_int_equal(vd_pread(img, buf, len, off), 0);
        assert_memory_equal(buf, shadow + off, len);
    }
    assert_int_equal(vd_close(img), 0);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    for (uint64_t off = 0; off < size; off += 1 << 20) {
        assert_int_equal(vd_pread(img, buf, 1 << 20, off), 0);
        assert_memory_equal(buf, shadow + off, 1 << 20);
    }
    /* block status agrees with content: every non-zero byte is in data */
    uint64_t off = 0;
    while (off < size) {
        uint64_t n;
        unsigned st;
        assert_int_equal(vd_block_status(img, off, size - off, &n, &st), 0);
        assert_true(n > 0);
        if (st & VD_STATUS_ZERO)
            assert_true(vd_buf_is_zero(shadow + off, n));
        off += n;
    }
    vd_close(img);
    struct vd_check_report r;
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    free(shadow);
    free(buf);
}

struct race_arg {
    struct vd_image *img;
    int slot;
};

static void *race_writer(void *a)
{
    struct race_arg *ra = a;
    uint8_t b[4096];
    memset(b, 0x40 + ra->slot, sizeof(b));
    for (int g = 0; g < 32; g++)
        if (vd_pwrite(ra->img, b, sizeof(b), (uint64_t)g * 65536 + (uint64_t)ra->slot * 4096, 0))
            return (void *)1;
    return NULL;
}

static void test_sparse_racing_writers_allocate_once(void **state)
{
    const char *p = tpath("race.vmdk");
    make_thin(p, 4 << 20, NULL, 0);
    struct stat st0, st1;
    assert_int_equal(stat(p, &st0), 0);
    struct vd_image *img;
    assert_int_equal(vd_open(p, 0, &img), 0);
    pthread_t th[16];
    struct race_arg ra[16];
    for (int i = 0; i < 16; i++) {
        ra[i] = (struct race_arg){img, i};
        assert_int_equal(pthread_create(&th[i], NULL, race_writer, &ra[i]), 0);
    }
    for (int i = 0; i < 16; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    uint8_t b[65536];
    for (int g = 0; g < 32; g++) {
        assert_int_equal(vd_pread(img, b, sizeof(b), (uint64_t)g * 65536), 0);
        for (int s = 0; s < 16; s++)
            assert_int_equal(b[s * 4096 + 17], 0x40 + s);
    }
    vd_close(img);
    assert_int_equal(stat(p, &st1), 0);
    assert_int_equal(st1.st_size - st0.st_size, 32 * 65536); /* each grain once */
}

/* ---------------------------------------------------------------- chain */

static void test_chain_reads_parent_and_copies_on_write(void **state)
{
    const char *base = tpath("base.vmdk"), *child = tpath("child.vmdk");
    make_thin(base, 2 << 20, NULL, 0);
    struct vd_image *img;
    uint8_t pat[65536 * 2], b[65536 * 2];
    memset(pat, 0x5a, sizeof(pat));
    assert_int_equal(vd_open(base, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, pat, sizeof(pat), 0, 0), 0);
    vd_close(img);
    make_thin(child, 2 << 20, "base.vmdk", image_cid(base));
    uint32_t base_cid = image_cid(base);
    assert_int_equal(vd_open(child, 0, &img), 0);
    assert_non_null(vd_parent(img));
    assert_true(vd_is_readonly(vd_parent(img)));
    assert_int_equal(vd_pread(img, b, sizeof(b), 0), 0);
    assert_memory_equal(b, pat, sizeof(b));
    uint64_t n;
    unsigned st;
    assert_int_equal(vd_block_status(img, 0, 2 << 20, &n, &st), 0);
    assert_int_equal(st, 0);
    assert_int_equal(n, sizeof(pat));
    memset(b, 0x11, 100);
    assert_int_equal(vd_pwrite(img, b, 100, 1000, 0), 0); /* partial grain: merge */
    assert_int_equal(vd_discard(img, 65536, 65536), 0);   /* hides parent data */
    assert_int_equal(vd_pread(img, b, sizeof(b), 0), 0);
    memset(pat + 1000, 0x11, 100);
    memset(pat + 65536, 0, 65536);
    assert_memory_equal(b, pat, sizeof(b));
    vd_close(img);
    assert_int_equal(image_cid(base), base_cid); /* parent never written */
    assert_int_equal(vd_open(base, VD_OPEN_RDONLY, &img), 0);
    assert_int_equal(vd_pread(img, b, 100, 1000), 0);
    assert_int_equal(b[0], 0x5a);
    vd_close(img);
}

/* A base full of 0x5a (2 grains) and an empty thin delta on it. */
static void make_base_and_delta(const char *base, const char *child)
{
    struct vd_image *img;
    uint8_t pat[65536 * 2];
    memset(pat, 0x5a, sizeof(pat));
    make_thin(base, 2 << 20, NULL, 0);
    assert_int_equal(vd_open(base, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, pat, sizeof(pat), 0, 0), 0);
    assert_int_equal(vd_close(img), 0);
    make_thin(child, 2 << 20, strrchr(base, '/') + 1, image_cid(base));
}

static enum vd_map_state local_state(struct vd_image *img, uint64_t off)
{
    struct vd_map m;
    assert_int_equal(vd_map_local(img, off, 512, &m), 0);
    return m.state;
}

/* issue 13 item 8: a TRIM of 4 KiB in a delta gives back what it can
 * (pieces of grains allocated here are punched) but never copies a whole
 * grain up from the parent to do it */
static void test_discard_piece_of_grain_in_delta_no_copy_up(void **state)
{
    const char *base = tpath("db.vmdk"), *child = tpath("dc.vmdk");
    make_base_and_delta(base, child);
    struct vd_image *img;
    uint8_t b[65536], w[8192];
    assert_int_equal(vd_open(child, 0, &img), 0);
    assert_int_equal(vd_discard(img, 4096, 4096), 0);
    assert_int_equal(local_state(img, 0), VD_MAP_UNALLOC); /* no copy-up */
    assert_int_equal(vd_pread(img, b, 8192, 0), 0);
    assert_int_equal(b[4096], 0x5a); /* advisory: still the parent's data */
    /* a piece of a grain allocated here is punched: reads zeroes */
    memset(w, 0x11, sizeof(w));
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 65536, 0), 0);
    assert_int_equal(local_state(img, 65536), VD_MAP_DATA);
    assert_int_equal(vd_discard(img, 65536 + 4096, 4096), 0);
    assert_int_equal(vd_pread(img, b, sizeof(b), 65536), 0);
    assert_int_equal(b[0], 0x11);
    assert_int_equal(b[4095], 0x11);
    assert_true(vd_buf_is_zero(b + 4096, 4096));
    assert_int_equal(b[8192], 0x5a);
    /* a whole grain still hides the parent */
    assert_int_equal(vd_discard(img, 0, 65536), 0);
    assert_int_equal(vd_pread(img, b, sizeof(b), 0), 0);
    assert_true(vd_buf_is_zero(b, sizeof(b)));
    assert_int_equal(vd_close(img), 0);
}

/* issue 13 item 8: FAST_ZERO is refused, with nothing changed, exactly when
 * zero data would have to be written; NO_HOLE zeroes allocated grains in
 * place */
static void test_fast_zero_refused_only_when_it_would_write(void **state)
{
    const char *base = tpath("fb.vmdk"), *child = tpath("fc.vmdk");
    make_base_and_delta(base, child);
    struct vd_image *img;
    uint8_t b[65536], w[65536];
    assert_int_equal(vd_open(child, 0, &img), 0);
    /* a piece of an unallocated grain over the parent: a copy-up: refused */
    assert_int_equal(vd_write_zeroes(img, 4096, 4096, VD_ZERO_FAST), -ENOTSUP);
    assert_int_equal(local_state(img, 0), VD_MAP_UNALLOC);
    assert_int_equal(vd_write_zeroes(img, 4096, 4096, VD_ZERO_FAST | VD_NO_HOLE), -ENOTSUP);
    assert_int_equal(local_state(img, 0), VD_MAP_UNALLOC);
    /* a whole grain without NO_HOLE: a zeroed-grain entry: fast */
    assert_int_equal(vd_write_zeroes(img, 0, 65536, VD_ZERO_FAST), 0);
    assert_int_equal(local_state(img, 0), VD_MAP_ZERO);
    /* an allocated grain, NO_HOLE: zeroed in place, stays allocated: fast */
    memset(w, 0x22, sizeof(w));
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 65536, 0), 0);
    assert_int_equal(vd_write_zeroes(img, 65536 + 512, 8192, VD_ZERO_FAST | VD_NO_HOLE), 0);
    assert_int_equal(local_state(img, 65536), VD_MAP_DATA);
    assert_int_equal(vd_pread(img, b, sizeof(b), 65536), 0);
    assert_int_equal(b[511], 0x22);
    assert_true(vd_buf_is_zero(b + 512, 8192));
    assert_int_equal(b[512 + 8192], 0x22);
    /* without FAST the same piece of an unallocated grain is written */
    assert_int_equal(vd_write_zeroes(img, 2 * 65536 + 4096, 4096, 0), 0);
    assert_int_equal(vd_pread(img, b, 4096, 2 * 65536 + 4096), 0);
    assert_true(vd_buf_is_zero(b, 4096));
    assert_int_equal(vd_close(img), 0);
}

static void test_chain_cid_mismatch_names_both_files(void **state)
{
    const char *base = tpath("b2.vmdk"), *child = tpath("c2.vmdk");
    make_thin(base, 1 << 20, NULL, 0);
    make_thin(child, 1 << 20, "b2.vmdk", image_cid(base) ^ 1);
    struct vd_image *img;
    log_clear_last_error();
    assert_int_equal(vd_open(child, VD_OPEN_RDONLY, &img), -EUCLEAN);
    assert_non_null(strstr(log_last_error(), "c2.vmdk"));
    assert_non_null(strstr(log_last_error(), "b2.vmdk"));
    assert_non_null(strstr(log_last_error(), "parentCID"));
}

static void test_chain_loop_and_missing_parent(void **state)
{
    const char *a = tpath("la.vmdk"), *b = tpath("lb.vmdk");
    make_thin(a, 1 << 20, "lb.vmdk", 1);
    make_thin(b, 1 << 20, "la.vmdk", 2);
    struct vd_image *img;
    log_clear_last_error();
    assert_int_equal(vd_open(a, VD_OPEN_RDONLY, &img), -ELOOP);
    assert_non_null(strstr(log_last_error(), "loops"));
    const char *m = tpath("orphan.vmdk");
    make_thin(m, 1 << 20, "nothere.vmdk", 3);
    assert_int_equal(vd_open(m, VD_OPEN_RDONLY, &img), -ENOENT);
    assert_non_null(strstr(log_last_error(), "nothere.vmdk"));
}

static void test_cid_changes_on_first_write(void **state)
{
    const char *p = tpath("cid.vmdk");
    make_thin(p, 1 << 20, NULL, 0);
    uint32_t c0 = image_cid(p);
    struct vd_image *img;
    assert_int_equal(vd_open(p, 0, &img), 0);
    uint8_t b[512] = {1};
    assert_int_equal(vd_pread(img, b, 512, 0), 0);
    assert_int_equal(img->desc.cid, c0); /* reads do not change it */
    assert_int_equal(vd_pwrite(img, b, 512, 0, 0), 0);
    uint32_t c1 = img->desc.cid;
    assert_int_equal(vd_pwrite(img, b, 512, 512, 0), 0);
    assert_int_equal(img->desc.cid, c1); /* once per open */
    vd_close(img);
    assert_int_not_equal(c1, c0);
    assert_int_equal(image_cid(p), c1);
}

static void test_resize_sparse_grow_and_shrink_keep_data(void **state)
{
    const char *p = tpath("rs.vmdk");
    make_thin(p, 3 << 20, NULL, 0);
    struct vd_image *img;
    uint8_t w[70000], r[70000];
    unsigned seed = 9;
    fill_random(w, sizeof(w), &seed);
    assert_int_equal(vd_open(p, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 1000000, 0), 0);
    vd_close(img);
    assert_int_equal(vd_resize(p, 100 << 20, 0), 0);
    assert_int_equal(vd_open(p, 0, &img), 0);
    assert_int_equal(vd_size(img), 100 << 20);
    assert_int_equal(vd_pread(img, r, sizeof(r), 1000000), 0);
    assert_memory_equal(w, r, sizeof(w));
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 90 << 20, 0), 0);
    vd_close(img);
    assert_int_equal(vd_resize(p, 1 << 20, 0), -EINVAL);
    assert_int_equal(vd_resize(p, 1960 * 512, VD_RESIZE_SHRINK), 0);
    assert_int_equal(vd_resize(p, 200 << 20, 0), 0);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    assert_int_equal(vd_pread(img, r, sizeof(r), 1000000), 0);
    assert_memory_equal(w, r, 3520);
    assert_true(vd_buf_is_zero(r + 3520, sizeof(r) - 3520)); /* cut tail reads zero */
    assert_int_equal(vd_pread(img, r, sizeof(r), 90 << 20), 0);
    assert_true(vd_buf_is_zero(r, sizeof(r)));
    vd_close(img);
    struct vd_check_report rep;
    assert_int_equal(vd_check(p, false, NULL, &rep), 0);
    assert_int_equal(rep.errors, 0);
}

static void test_check_repairs_redundant_table(void **state)
{
    const char *p = tpath("ck.vmdk");
    make_thin(p, 1 << 20, NULL, 0);
    struct vd_image *img;
    uint8_t b[65536];
    memset(b, 7, sizeof(b));
    assert_int_equal(vd_open(p, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, b, sizeof(b), 0, 0), 0);
    uint64_t rgt = img->ext[0].sp->rgd[0];
    vd_close(img);
    int fd = open(p, O_RDWR);
    uint8_t z[4] = {0};
    assert_int_equal(pwrite_full(fd, z, 4, rgt * 512), 0); /* lose the redundant entry */
    close(fd);
    struct vd_check_report r;
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 1);
    assert_int_equal(vd_check(p, true, NULL, &r), 0);
    assert_int_equal(r.repaired, 1);
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    /* both copies valid and different (a crash between the two writes of
     * an entry that had a value already): a crash leftover, primary wins */
    fd = open(p, O_RDWR);
    uint8_t one[4] = {1, 0, 0, 0};
    assert_int_equal(pwrite_full(fd, one, 4, rgt * 512), 0);
    close(fd);
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.repairable, 1);
    assert_int_equal(vd_check(p, true, NULL, &r), 0);
    assert_int_equal(r.repaired, 1);
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    uint8_t got[65536];
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    assert_int_equal(vd_pread(img, got, sizeof(got), 0), 0);
    vd_close(img);
    assert_memory_equal(got, b, sizeof(got));
}

/* On-disk primary and redundant grain table entries of `grain` (first grain
 * table only), read through a separate descriptor. */
static void disk_gte(const char *p, struct vd_image *img, uint64_t grain, uint32_t *v, uint32_t *rv)
{
    const struct vmdk_sparse *sp = img->ext[0].sp;
    uint64_t per = sp->h.num_gtes_per_gt;
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    uint8_t b[4];
    assert_int_equal(pread_full(fd, b, 4, (uint64_t)sp->gd[grain / per] * 512 + grain % per * 4),
                     0);
    *v = le32_get(b);
    assert_int_equal(pread_full(fd, b, 4, (uint64_t)sp->rgd[grain / per] * 512 + grain % per * 4),
                     0);
    *rv = le32_get(b);
    close(fd);
}

static void make_delta(const char *base, const char *child, uint64_t size)
{
    make_thin(base, size, NULL, 0);
    struct vd_image *img;
    uint8_t *pat = malloc(1 << 20);
    memset(pat, 0x5a, 1 << 20);
    assert_int_equal(vd_open(base, 0, &img), 0);
    for (uint64_t off = 0; off < size; off += 1 << 20)
        assert_int_equal(vd_pwrite(img, pat, 1 << 20, off, 0), 0);
    vd_close(img);
    free(pat);
    const char *slash = strrchr(base, '/');
    make_thin(child, size, slash ? slash + 1 : base, image_cid(base));
}

/* In a delta, a grain first written (it read the parent's data) gets its
 * grain table entry in memory at once and in the file only at the next
 * flush, FUA write or close; an entry written at once meanwhile (a zeroed
 * grain) is not overwritten by the flush. */
static void test_delta_new_grain_entry_waits_for_flush(void **state)
{
    const char *base = tpath("dbase.vmdk"), *p = tpath("delta.vmdk");
    make_delta(base, p, 4 << 20);
    struct vd_image *img;
    uint8_t w[4096], got[65536], want[65536];
    memset(w, 0x33, sizeof(w));
    memset(want, 0x5a, sizeof(want));
    memcpy(want + 8192, w, sizeof(w));
    uint32_t v, rv;
    assert_int_equal(vd_open(p, 0, &img), 0);
    const struct vmdk_sparse *sp = img->ext[0].sp;
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 3 * 65536 + 8192, 0), 0);
    assert_int_equal(vd_pread(img, got, sizeof(got), 3 * 65536), 0);
    assert_memory_equal(got, want, sizeof(got)); /* readers see it at once */
    assert_true(sp->gt[3] > 1);
    disk_gte(p, img, 3, &v, &rv);
    assert_int_equal(v, 0); /* the file does not, yet */
    assert_int_equal(rv, 0);
    assert_int_equal(vd_flush(img), 0);
    disk_gte(p, img, 3, &v, &rv);
    assert_int_equal(v, sp->gt[3]);
    assert_int_equal(rv, sp->gt[3]);
    /* FUA: durable with its entry when it returns */
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 5 * 65536, VD_FUA), 0);
    disk_gte(p, img, 5, &v, &rv);
    assert_true(v > 1 && v == sp->gt[5] && rv == v);
    /* a deferred entry zeroed before the flush: 1 at once, and it stays 1 */
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 9 * 65536, 0), 0);
    assert_int_equal(vd_write_zeroes(img, 9 * 65536, 65536, 0), 0);
    disk_gte(p, img, 9, &v, &rv);
    assert_int_equal(v, 1);
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 10 * 65536, 0), 0); /* same GT sector */
    assert_int_equal(vd_flush(img), 0);
    disk_gte(p, img, 9, &v, &rv);
    assert_int_equal(v, 1);
    assert_int_equal(rv, 1);
    disk_gte(p, img, 10, &v, &rv);
    assert_true(v > 1 && v == sp->gt[10] && rv == v);
    /* close writes what is left */
    assert_int_equal(vd_pwrite(img, w, sizeof(w), 7 * 65536 + 8192, 0), 0);
    assert_int_equal(vd_close(img), 0);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    assert_int_equal(vd_pread(img, got, sizeof(got), 7 * 65536), 0);
    assert_memory_equal(got, want, sizeof(got));
    vd_close(img);
    struct vd_check_report r;
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
}

struct flush_racer {
    const char *path;
    struct vd_image *img;
    int t, nt;
    int bad;
};

/* Each thread: first write into its grains, and after every other write a
 * flush, after which every grain it wrote so far has its entry in the file
 * (both tables), however the other threads' writes and flushes interleave. */
static void *flush_racer(void *a)
{
    struct flush_racer *fr = a;
    const struct vmdk_sparse *sp = fr->img->ext[0].sp;
    uint8_t w[4096];
    memset(w, fr->t + 1, sizeof(w));
    uint64_t ngrains = vd_size(fr->img) / 65536;
    uint64_t checked = (uint64_t)fr->t;
    for (uint64_t g = (uint64_t)fr->t, i = 0; g < ngrains; g += (uint64_t)fr->nt, i++) {
        if (vd_pwrite(fr->img, w, sizeof(w), g * 65536 + 4096 * (g % 16), 0) < 0) {
            fr->bad++;
            break;
        }
        if (i % 2 == 0)
            continue;
        if (vd_flush(fr->img) < 0) {
            fr->bad++;
            break;
        }
        for (; checked <= g; checked += (uint64_t)fr->nt) {
            uint32_t v, rv;
            disk_gte(fr->path, fr->img, checked, &v, &rv);
            uint32_t mem = __atomic_load_n(&sp->gt[checked], __ATOMIC_ACQUIRE);
            if (v != mem || rv != mem || mem <= 1)
                fr->bad++;
        }
    }
    return NULL;
}

static void test_delta_flush_covers_concurrent_writes(void **state)
{
    const char *base = tpath("fbase.vmdk"), *p = tpath("fdelta.vmdk");
    make_delta(base, p, 64 << 20); /* 1024 grains, two grain tables */
    struct vd_image *img;
    assert_int_equal(vd_open(p, 0, &img), 0);
    enum { NT = 6 };
    pthread_t th[NT];
    struct flush_racer fr[NT];
    for (int t = 0; t < NT; t++) {
        fr[t] = (struct flush_racer){.path = p, .img = img, .t = t, .nt = NT};
        assert_int_equal(pthread_create(&th[t], NULL, flush_racer, &fr[t]), 0);
    }
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(fr[t].bad, 0);
    }
    assert_int_equal(vd_close(img), 0);
    struct vd_check_report r;
    assert_int_equal(vd_check(p, false, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    uint8_t got[65536], want[65536];
    for (uint64_t g = 0; g < 1024; g++) {
        memset(want, 0x5a, sizeof(want));
        memset(want + 4096 * (g % 16), (int)(g % NT) + 1, 4096);
        assert_int_equal(vd_pread(img, got, sizeof(got), g * 65536), 0);
        assert_memory_equal(got, want, sizeof(got));
    }
    vd_close(img);
}

/* A writer killed with SIGKILL at random moments never leaves a grain table
 * entry pointing at unwritten data: data is written before the entry. */
static void test_kill_mid_write_never_exposes_unwritten_grain(void **state)
{
    const char *p = tpath("crash.vmdk");
    uint64_t size = 64 << 20, gb = 65536;
    make_thin(p, size, NULL, 0);
    unsigned seed = 77;
    for (int round = 0; round < 6; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct vd_image *img;
            if (vd_open(p, 0, &img) < 0)
                _exit(1);
            uint8_t *b = malloc(gb);
            unsigned s2 = (unsigned)getpid();
            for (;;) {
                uint64_t g = (uint64_t)rand_r(&s2) % (size / gb);
                memset(b, (int)(g % 250) + 1, gb);
                if (rand_r(&s2) & 1)
                    vd_pwrite(img, b, gb, g * gb, 0);
                else
                    vd_pwrite(img, b, 4096, g * gb + (uint64_t)(rand_r(&s2) % 16) * 4096, 0);
            }
        }
        usleep(2000 + (useconds_t)(rand_r(&seed) % 30000));
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        struct vd_image *img;
        assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
        uint8_t *b = malloc(gb);
        for (uint64_t g = 0; g < size / gb; g++) {
            struct vd_map m;
            assert_int_equal(vd_map_local(img, g * gb, gb, &m), 0);
            if (m.state != VD_MAP_DATA)
                continue;
            assert_int_equal(vd_pread(img, b, gb, g * gb), 0);
            bool any = false;
            for (uint64_t k = 0; k < gb; k += 4096) {
                if (vd_buf_is_zero(b + k, 4096))
                    continue;
                any = true;
                for (uint64_t i = 0; i < 4096; i++)
                    assert_int_equal(b[k + i], (g % 250) + 1);
            }
            if (!any)
                fail_msg("round %d: grain %llu allocated but never written", round,
                         (unsigned long long)g);
        }
        free(b);
        vd_close(img);
        struct vd_check_report r;
        assert_int_equal(vd_check(p, true, NULL, &r), 0);
        assert_int_equal(r.errors, r.repaired); /* at most a missing redundant entry */
    }
}

/* ------------------------------------------------------ malformed corpus */

static uint8_t *slurp(const char *p, size_t *n)
{
    struct stat st;
    if (stat(p, &st) < 0)
        return NULL;
    uint8_t *b = malloc((size_t)st.st_size + 1);
    int fd = open(p, O_RDONLY);
    assert_int_equal(pread_full(fd, b, (size_t)st.st_size, 0), 0);
    close(fd);
    *n = (size_t)st.st_size;
    return b;
}

/* Open rw must fail with `err` and a message containing `needle`, and the
 * file must be byte-identical afterwards. */
static void expect_bad(const char *p, int err, const char *needle)
{
    size_t n0, n1;
    uint8_t *before = slurp(p, &n0);
    struct vd_image *img = NULL;
    log_clear_last_error();
    int rc = vd_open(p, 0, &img);
    if (rc == 0)
        vd_close(img);
    if (rc != err || !strstr(log_last_error(), needle))
        fail_msg("%s: got %d \"%s\", expected %d with \"%s\"", p, rc, log_last_error(), err,
                 needle);
    assert_non_null(strstr(log_last_error(), "vmdk"));
    uint8_t *after = slurp(p, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
}

static void patch(const char *p, uint64_t off, const void *b, size_t n)
{
    int fd = open(p, O_RDWR);
    assert_int_equal(pwrite_full(fd, b, n, off), 0);
    close(fd);
}

static void patch32(const char *p, uint64_t off, uint32_t v)
{
    uint8_t b[4];
    le32_put(b, v);
    patch(p, off, b, 4);
}

static void patch64(const char *p, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    le64_put(b, v);
    patch(p, off, b, 8);
}

static void write_text(const char *p, const char *text)
{
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(pwrite_full(fd, text, strlen(text), 0), 0);
    close(fd);
}

static void test_malformed_headers_fail_cleanly(void **state)
{
    const char *p = tpath("bad.vmdk");
    make_thin(p, 4 << 20, NULL, 0);
    patch32(p, 4, 9);
    expect_bad(p, -EUCLEAN, "version 9");
    make_thin(p, 4 << 20, NULL, 0);
    patch64(p, 20, 3);
    expect_bad(p, -EUCLEAN, "grainSize 3");
    make_thin(p, 4 << 20, NULL, 0);
    patch64(p, 12, 0);
    expect_bad(p, -EUCLEAN, "capacity 0");
    make_thin(p, 4 << 20, NULL, 0);
    patch64(p, 12, 1ull << 60);
    expect_bad(p, -EUCLEAN, "capacity");
    make_thin(p, 4 << 20, NULL, 0);
    patch32(p, 44, 4096);
    expect_bad(p, -EUCLEAN, "numGTEsPerGT 4096");
    make_thin(p, 4 << 20, NULL, 0);
    patch64(p, 36, 1u << 30);
    expect_bad(p, -EUCLEAN, "descriptorSize");
    make_thin(p, 4 << 20, NULL, 0);
    patch64(p, 56, 1ull << 40);
    expect_bad(p, -EUCLEAN, "gdOffset");
    /* grain table entries pointing past the end and into the header */
    struct vd_image *img;
    make_thin(p, 4 << 20, NULL, 0);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    uint64_t gt = img->ext[0].sp->gd[0];
    vd_close(img);
    patch32(p, gt * 512 + 8, 0x100000);
    expect_bad(p, -EUCLEAN, "entry 2");
    patch32(p, gt * 512 + 8, 2);
    expect_bad(p, -EUCLEAN, "outside the grain area");
    /* truncated files */
    make_thin(p, 4 << 20, NULL, 0);
    assert_int_equal(truncate(p, 100), 0);
    expect_bad(p, -EUCLEAN, "truncated");
    make_thin(p, 4 << 20, NULL, 0);
    assert_int_equal(truncate(p, 2048), 0);
    expect_bad(p, -EUCLEAN, "descriptor");
    make_thin(p, 4 << 20, NULL, 0);
    assert_int_equal(truncate(p, 21 * 512 + 4), 0);
    expect_bad(p, -EUCLEAN, "grain directory");
    /* embedded descriptor damaged */
    make_thin(p, 4 << 20, NULL, 0);
    patch(p, 512, "garbage line\n", 13);
    expect_bad(p, -EUCLEAN, "line 1");
}

static void test_malformed_descriptors_fail_cleanly(void **state)
{
    const char *p = tpath("desc.vmdk");
    write_text(tpath("d-flat.vmdk"), "0123456789");
    assert_int_equal(truncate(tpath("d-flat.vmdk"), 1 << 20), 0);
    write_text(p, "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
                  "createType=\"monolithicFlat\nRW 2048 FLAT \"d-flat.vmdk\" 0\n");
    expect_bad(p, -EUCLEAN, "unterminated");
    write_text(p, "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                  "RW 2048 FLAT \"/etc/passwd\" 0\n");
    expect_bad(p, -EUCLEAN, "outside the image's folder");
    write_text(p, "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                  "RW 2048 FLAT \"../d-flat.vmdk\" 0\n");
    expect_bad(p, -EUCLEAN, "outside the image's folder");
    write_text(p, "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                  "RW 4096 FLAT \"d-flat.vmdk\" 0\n");
    expect_bad(p, -EUCLEAN, "truncated");
    write_text(p, "# Disk DescriptorFile\nversion=1\nRW 2048 FLAT \"d-flat.vmdk\" 0\n");
    expect_bad(p, -EUCLEAN, "createType");
    write_text(p, "# Disk DescriptorFile\nversion=1\nCID=xyz\ncreateType=\"monolithicFlat\"\n"
                  "RW 2048 FLAT \"d-flat.vmdk\" 0\n");
    expect_bad(p, -EUCLEAN, "CID");
    write_text(p, "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                  "RW 2048 SPARSE \"d-flat.vmdk\"\n");
    expect_bad(p, -EUCLEAN, "magic");
    write_text(p, "# Disk DescriptorFile\nversion=1\ncreateType=\"x\"\nRW 99999999999999999 "
                  "FLAT \"d-flat.vmdk\" 0\n");
    expect_bad(p, -EUCLEAN, "extent size");
    /* huge descriptor */
    size_t big = VD_MAX_DESC + 100;
    char *t = malloc(big + 1);
    memset(t, '#', big);
    memcpy(t, "# Disk DescriptorFile\n", 22);
    t[big] = 0;
    write_text(p, t);
    free(t);
    expect_bad(p, -EUCLEAN, "more than");
}

static void test_fuzz_style_header_decode_never_crashes(void **state)
{
    unsigned seed = 5;
    struct vmdk4_header_disk d;
    struct vmdk4_header h;
    for (int i = 0; i < 20000; i++) {
        fill_random((uint8_t *)&d, sizeof(d), &seed);
        le32_put(d.magic, VMDK4_MAGIC);
        int rc = vmdk4_header_decode(&d, &h, "fuzz");
        assert_true(rc == 0 || rc == -EUCLEAN);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_io_discard_status),
        cmocka_unit_test(test_pread_nowait_serves_cached_declines_cold),
        cmocka_unit_test(test_sparse_random_io_matches_shadow),
        cmocka_unit_test(test_sparse_racing_writers_allocate_once),
        cmocka_unit_test(test_chain_reads_parent_and_copies_on_write),
        cmocka_unit_test(test_chain_cid_mismatch_names_both_files),
        cmocka_unit_test(test_discard_piece_of_grain_in_delta_no_copy_up),
        cmocka_unit_test(test_fast_zero_refused_only_when_it_would_write),
        cmocka_unit_test(test_chain_loop_and_missing_parent),
        cmocka_unit_test(test_cid_changes_on_first_write),
        cmocka_unit_test(test_resize_sparse_grow_and_shrink_keep_data),
        cmocka_unit_test(test_check_repairs_redundant_table),
        cmocka_unit_test(test_delta_new_grain_entry_waits_for_flush),
        cmocka_unit_test(test_delta_flush_covers_concurrent_writes),
        cmocka_unit_test(test_kill_mid_write_never_exposes_unwritten_grain),
        cmocka_unit_test(test_malformed_headers_fail_cleanly),
        cmocka_unit_test(test_malformed_descriptors_fail_cleanly),
        cmocka_unit_test(test_fuzz_style_header_decode_never_crashes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
