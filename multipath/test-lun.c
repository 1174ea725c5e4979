/* Unit tests of the LUN core over file paths: URI and argument handling,
 * range checks, sync and async I/O at 512 and 4096-byte blocks, read-only
 * opens, and compare-and-write atomicity across processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "lun.h"
#include "path.h"

/* A temp file of `size` bytes; path in `out` (PATH_MAX). */
static void make_file(char *out, size_t outlen, uint64_t size)
{
    const char *dir = getenv("TMPDIR");
    snprintf(out, outlen, "%s/test-lun-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

static struct lun *open_file(const char *path, uint32_t bs, bool ro)
{
    struct lun_options o;
    lun_options_init(&o);
    o.file_block_size = bs;
    o.read_only = ro;
    struct lun *lun = NULL;
    assert_int_equal(lun_open(path, &o, &lun), 0);
    assert_non_null(lun);
    return lun;
}

static void fill(uint8_t *b, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        b[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
}

/* ---- URIs and arguments ---------------------------------------------------- */

static void test_uri_kind_detection(void **state)
{
    assert_true(lun_uri_is_iscsi("iscsi://127.0.0.1:3260/iqn.2026-11.test:t/1"));
    assert_false(lun_uri_is_iscsi("/tmp/disk.img"));
    assert_false(lun_uri_is_iscsi("file:///tmp/disk.img"));
    assert_false(lun_uri_is_iscsi(NULL));
}

static void test_file_uri_forms_parse(void **state)
{
    char *p;
    uint32_t bs = 0;
    assert_int_equal(lun_file_uri_parse("file:///tmp/a.img", &p, &bs), 0);
    assert_string_equal(p, "/tmp/a.img");
    assert_int_equal(bs, 0);
    free(p);
    assert_int_equal(lun_file_uri_parse("file:///tmp/a.img?block_size=4096", &p, &bs), 0);
    assert_string_equal(p, "/tmp/a.img");
    assert_int_equal(bs, 4096);
    free(p);
    bs = 0;
    assert_int_equal(lun_file_uri_parse("file://localhost/x/y", &p, &bs), 0);
    assert_string_equal(p, "/x/y");
    free(p);
    /* A plain path is taken literally, '?' included. */
    assert_int_equal(lun_file_uri_parse("rel/dir/a?b", &p, &bs), 0);
    assert_string_equal(p, "rel/dir/a?b");
    assert_int_equal(bs, 0);
    free(p);
}

static void test_file_uri_bad_forms_refused(void **state)
{
    char *p = NULL;
    uint32_t bs = 0;
    log_clear_last_error();
    assert_int_equal(lun_file_uri_parse("file://otherhost/x", &p, &bs), -EINVAL);
    assert_non_null(strstr(log_last_error(), "absolute"));
    assert_int_equal(lun_file_uri_parse("file:///x?block_size=1000", &p, &bs), -EINVAL);
    assert_non_null(strstr(log_last_error(), "block size 1000 not supported"));
    assert_int_equal(lun_file_uri_parse("file:///x?block_size=abc", &p, &bs), -EINVAL);
    assert_int_equal(lun_file_uri_parse("file:///x?colour=red", &p, &bs), -EINVAL);
    assert_non_null(strstr(log_last_error(), "unknown file URI option 'colour=red'"));
    assert_int_equal(lun_file_uri_parse("", &p, &bs), -EINVAL);
    assert_null(p);
    struct lun *lun = NULL;
    assert_int_equal(lun_open("nbd://127.0.0.1/x", NULL, &lun), -EINVAL);
    assert_non_null(strstr(log_last_error(), "unsupported URI scheme"));
    assert_null(lun);
}

static void test_uri_redact_drops_password(void **state)
{
    char *s = lun_uri_redact("iscsi://alice%s3cret@10.0.0.1:3260/iqn.x:t/0");
    assert_string_equal(s, "iscsi://alice@10.0.0.1:3260/iqn.x:t/0");
    free(s);
    s = lun_uri_redact("iscsi://10.0.0.1/iqn.x:t/0");
    assert_string_equal(s, "iscsi://10.0.0.1/iqn.x:t/0");
    free(s);
    s = lun_uri_redact("/plain/path@x");
    assert_string_equal(s, "/plain/path@x");
    free(s);
    /* '/' and '@' in a CHAP password (issue 15: they defeated redaction). */
    s = lun_uri_redact("iscsi://alice%pa/ss@10.0.0.1:3260/iqn.x:t/0");
    assert_string_equal(s, "iscsi://alice@10.0.0.1:3260/iqn.x:t/0");
    free(s);
    s = lun_uri_redact("iscsi://alice%p@ss/w@rd@10.0.0.1/iqn.x:t/0");
    assert_string_equal(s, "iscsi://alice@10.0.0.1/iqn.x:t/0");
    free(s);
    s = lun_uri_redact("ISCSI://bob:s/e@c@h/iqn.x:t/1");
    assert_string_equal(s, "ISCSI://bob@h/iqn.x:t/1");
    free(s);
}

static void test_open_missing_file_is_enoent(void **state)
{
    struct lun *lun = NULL;
    log_clear_last_error();
    assert_int_equal(lun_open("/nonexistent-dir-xyz/disk.img", NULL, &lun), -ENOENT);
    assert_null(lun);
    assert_string_equal(log_last_error(),
                        "/nonexistent-dir-xyz/disk.img: No such file or directory");
}

static void test_open_refuses_file_smaller_than_one_block(void **state)
{
    char path[256];
    make_file(path, sizeof path, 1000);
    struct lun *lun = NULL;
    log_clear_last_error();
    /* 1000 bytes: not even one 4096-byte block; not a whole number of 512s. */
    char uri[300];
    snprintf(uri, sizeof uri, "file://%s?block_size=4096", path);
    assert_int_equal(lun_open(uri, NULL, &lun), -EINVAL);
    assert_non_null(strstr(log_last_error(), "1000 bytes is smaller than one 4096-byte block"));
    assert_int_equal(lun_open(path, NULL, &lun), -EINVAL);
    assert_non_null(strstr(log_last_error(), "size 1000 bytes is not a multiple of the 512-byte"));
    assert_null(lun);
    unlink(path);
    make_file(path, sizeof path, 0);
    assert_int_equal(lun_open(path, NULL, &lun), -EINVAL);
    assert_non_null(strstr(log_last_error(), "0 bytes is smaller than one 512-byte block"));
    unlink(path);
}

static void test_open_refuses_size_not_multiple_of_block(void **state)
{
    char path[256], uri[300];
    make_file(path, sizeof path, 6144);
    snprintf(uri, sizeof uri, "file://%s?block_size=4096", path);
    struct lun *lun = NULL;
    log_clear_last_error();
    assert_int_equal(lun_open(uri, NULL, &lun), -EINVAL);
    assert_non_null(strstr(log_last_error(), "not a multiple of the 4096-byte block size"));
    unlink(path);
}

static void test_open_refuses_block_size_1000(void **state)
{
    char path[256];
    make_file(path, sizeof path, 64 * 1024);
    struct lun_options o;
    lun_options_init(&o);
    o.file_block_size = 1000;
    struct lun *lun = NULL;
    log_clear_last_error();
    assert_int_equal(lun_open(path, &o, &lun), -EINVAL);
    assert_non_null(strstr(log_last_error(), "block size 1000 not supported"));
    unlink(path);
}

static void test_range_checks_refuse_past_end_and_zero_blocks(void **state)
{
    char path[256];
    make_file(path, sizeof path, 64 * 512);
    struct lun *lun = open_file(path, 512, false);
    uint8_t buf[1024] = {0};
    log_clear_last_error();
    assert_int_equal(lun_read(lun, 63, 2, buf), -EINVAL);
    assert_non_null(strstr(log_last_error(), "read of 2 blocks at lba 63 is past the end"));
    assert_int_equal(lun_read(lun, 64, 1, buf), -EINVAL);
    assert_int_equal(lun_write(lun, UINT64_MAX, 1, buf, 0), -EINVAL);
    assert_int_equal(lun_read(lun, 0, 0, buf), -EINVAL);
    assert_non_null(strstr(log_last_error(), "of 0 blocks"));
    assert_int_equal(lun_unmap(lun, 60, 5), -EINVAL);
    assert_int_equal(lun_compare_and_write(lun, 64, buf, buf, NULL), -EINVAL);
    /* The last block itself is fine. */
    assert_int_equal(lun_read(lun, 63, 1, buf), 0);
    /* lun_submit refuses at once without calling done(). */
    struct lun_io io = {
        .op = LUN_OP_READ, .lba = 64, .nblocks = 1, .buf = buf, .done = (lun_io_done_fn)abort};
    assert_int_equal(lun_submit(lun, &io), -EINVAL);
    lun_close(lun);
    unlink(path);
}

/* Multipath is supported now (multipath/test-mpath.c): a missing path
 * fails the whole open, naming it. */
static void test_multipath_open_missing_path_fails(void **state)
{
    (void)state;
    const char *uris[2] = {"/nonexistent-a", "/nonexistent-b"};
    struct lun *lun = NULL;
    assert_int_equal(lun_open_paths(uris, 2, NULL, &lun), -ENOENT);
    assert_non_null(strstr(log_last_error(), "/nonexistent-a"));
    assert_null(lun);
}

/* ---- Sync I/O ---------------------------------------------------------------- */

static void check_sync_io(uint32_t bs)
{
    char path[256];
    const uint64_t nblocks = 256;
    make_file(path, sizeof path, nblocks * bs);
    struct lun *lun = open_file(path, bs, false);
    const struct lun_info *in = lun_get_info(lun);
    assert_int_equal(in->block_size, bs);
    assert_true(in->num_blocks == nblocks);
    assert_string_equal(in->vendor, "CLUSTERF");
    assert_string_equal(in->product, "FILE LUN");
    assert_true(strncmp(in->id, "file.", 5) == 0);
    assert_true(in->caps.compare_and_write);
    assert_false(in->caps.persistent_reservations);
    assert_int_equal(lun_num_paths(lun), 1);
    assert_string_equal(lun_path_kind(lun, 0), "file");
    assert_null(lun_path_kind(lun, 1));

    size_t len = 16 * (size_t)bs;
    uint8_t *w = malloc(len + 1), *r = malloc(len + 1);
    /* Deliberately unaligned caller buffers (bounce path under O_DIRECT). */
    fill(w + 1, len, 1);
    assert_int_equal(lun_write(lun, 10, 16, w + 1, 0), 0);
    assert_int_equal(lun_read(lun, 10, 16, r + 1), 0);
    assert_memory_equal(w + 1, r + 1, len);
    /* One block, FUA, at the last lba. */
    fill(w, bs, 2);
    assert_int_equal(lun_write(lun, nblocks - 1, 1, w, LUN_IO_FUA), 0);
    assert_int_equal(lun_flush(lun), 0);
    assert_int_equal(lun_read(lun, nblocks - 1, 1, r), 0);
    assert_memory_equal(w, r, bs);
    /* The bytes land at lba * block_size in the file. */
    int fd = open(path, O_RDONLY);
    assert_true(pread(fd, r, bs, (off_t)((nblocks - 1) * bs)) == (ssize_t)bs);
    assert_memory_equal(w, r, bs);
    close(fd);
    /* Unmap reads back zeroes, neighbours untouched. */
    assert_int_equal(lun_unmap(lun, 12, 4), 0);
    assert_int_equal(lun_read(lun, 10, 16, r), 0);
    fill(w + 1, len, 1);
    assert_memory_equal(r, w + 1, 2 * (size_t)bs);
    for (size_t i = 2 * (size_t)bs; i < 6 * (size_t)bs; i++)
        assert_int_equal(r[i], 0);
    assert_memory_equal(r + 6 * (size_t)bs, w + 1 + 6 * (size_t)bs, 10 * (size_t)bs);
    /* Write same: pattern in every block; zero + UNMAP deallocates. */
    fill(w, bs, 3);
    assert_int_equal(lun_write_same(lun, 100, 40, w, 0), 0);
    uint8_t *big = malloc(40 * (size_t)bs);
    assert_int_equal(lun_read(lun, 100, 40, big), 0);
    for (int i = 0; i < 40; i++)
        assert_memory_equal(big + (size_t)i * bs, w, bs);
    memset(w, 0, bs);
    assert_int_equal(lun_write_same(lun, 100, 20, w, LUN_IO_UNMAP), 0);
    assert_int_equal(lun_read(lun, 100, 40, big), 0);
    fill(w, bs, 3);
    for (int i = 0; i < 40; i++) {
        if (i < 20) {
            for (uint32_t j = 0; j < bs; j++)
                assert_int_equal(big[(size_t)i * bs + j], 0);
        } else {
            assert_memory_equal(big + (size_t)i * bs, w, bs);
        }
    }
    free(big);
    free(w);
    free(r);
    lun_close(lun);
    unlink(path);
}

static void test_sync_io_512_byte_blocks(void **state)
{
    check_sync_io(512);
}

static void test_sync_io_4096_byte_blocks(void **state)
{
    check_sync_io(4096);
}

static void test_same_file_twice_has_same_identity(void **state)
{
    char path[256], uri[300];
    make_file(path, sizeof path, 8192);
    snprintf(uri, sizeof uri, "file://%s", path);
    struct lun *a = open_file(path, 512, false), *b = NULL;
    assert_int_equal(lun_open(uri, NULL, &b), 0);
    assert_string_equal(lun_get_info(a)->id, lun_get_info(b)->id);
    assert_string_equal(lun_name(b), uri);
    lun_close(a);
    lun_close(b);
    unlink(path);
}

static void test_read_only_open_refuses_writes(void **state)
{
    char path[256];
    make_file(path, sizeof path, 16 * 512);
    struct lun *lun = open_file(path, 512, true);
    uint8_t buf[1024] = {1};
    log_clear_last_error();
    assert_int_equal(lun_write(lun, 0, 1, buf, 0), -EROFS);
    assert_non_null(strstr(log_last_error(), "read-only"));
    assert_int_equal(lun_unmap(lun, 0, 1), -EROFS);
    assert_int_equal(lun_write_same(lun, 0, 2, buf, 0), -EROFS);
    assert_int_equal(lun_compare_and_write(lun, 0, buf, buf + 512, NULL), -EROFS);
    assert_int_equal(lun_read(lun, 0, 2, buf), 0);
    assert_int_equal(lun_flush(lun), 0);
    assert_int_equal(lun_test_unit_ready(lun), 0);
    lun_close(lun);
    unlink(path);
}

static void test_persistent_reservations_unsupported_on_files(void **state)
{
    char path[256];
    make_file(path, sizeof path, 16 * 512);
    struct lun *lun = open_file(path, 512, false);
    log_clear_last_error();
    assert_int_equal(lun_pr_register(lun, 0x1234), -EOPNOTSUPP);
    assert_non_null(strstr(log_last_error(), "persistent reservations are not supported"));
    struct lun_pr_state st;
    assert_int_equal(lun_pr_read(lun, &st), -EOPNOTSUPP);
    assert_int_equal(lun_pr_reserve(lun, 0x1234, LUN_PR_WE_ALL_REGISTRANTS), -EOPNOTSUPP);
    assert_int_equal(lun_pr_preempt(lun, 1, 2, LUN_PR_WE_ALL_REGISTRANTS, true), -EOPNOTSUPP);
    lun_close(lun);
    unlink(path);
}

static void test_deleted_file_fails_test_unit_ready(void **state)
{
    char path[256];
    make_file(path, sizeof path, 16 * 512);
    struct lun *lun = open_file(path, 512, false);
    assert_int_equal(lun_test_unit_ready(lun), 0);
    unlink(path);
    assert_int_equal(lun_test_unit_ready(lun), -ENODEV);
    lun_close(lun);
}

/* ---- Async I/O ---------------------------------------------------------------- */

struct async_state {
    pthread_mutex_t m;
    pthread_cond_t c;
    unsigned done, failed;
};

static void async_done(struct lun_io *io, int result)
{
    struct async_state *s = io->opaque;
    pthread_mutex_lock(&s->m);
    s->done++;
    if (result)
        s->failed++;
    pthread_cond_signal(&s->c);
    pthread_mutex_unlock(&s->m);
}

static void async_wait(struct async_state *s, unsigned n)
{
    pthread_mutex_lock(&s->m);
    while (s->done < n)
        pthread_cond_wait(&s->c, &s->m);
    pthread_mutex_unlock(&s->m);
}

static void test_async_io_many_in_flight(void **state)
{
    enum { N = 300, BS = 4096 };
    char path[256], uri[300];
    make_file(path, sizeof path, (uint64_t)N * BS);
    snprintf(uri, sizeof uri, "file://%s?block_size=4096", path);
    struct lun *lun = NULL;
    assert_int_equal(lun_open(uri, NULL, &lun), 0);
    assert_int_equal(lun_block_size(lun), BS);
    struct async_state s = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    struct lun_io *ios = calloc(N, sizeof *ios);
    uint8_t *data = malloc((size_t)N * BS), *back = malloc((size_t)N * BS);
    fill(data, (size_t)N * BS, 9);
    for (unsigned i = 0; i < N; i++) {
        ios[i] = (struct lun_io){.op = LUN_OP_WRITE,
                                 .lba = i,
                                 .nblocks = 1,
                                 .buf = data + (size_t)i * BS,
                                 .done = async_done,
                                 .opaque = &s};
        assert_int_equal(lun_submit(lun, &ios[i]), 0);
    }
    async_wait(&s, N);
    assert_int_equal(s.failed, 0);
    struct lun_io fl = {.op = LUN_OP_FLUSH, .done = async_done, .opaque = &s};
    assert_int_equal(lun_submit(lun, &fl), 0);
    async_wait(&s, N + 1);
    for (unsigned i = 0; i < N; i++) {
        ios[i] = (struct lun_io){.op = LUN_OP_READ,
                                 .lba = N - 1 - i,
                                 .nblocks = 1,
                                 .buf = back + (size_t)(N - 1 - i) * BS,
                                 .done = async_done,
                                 .opaque = &s};
        assert_int_equal(lun_submit(lun, &ios[i]), 0);
    }
    async_wait(&s, 2 * N + 1);
    assert_int_equal(s.failed, 0);
    assert_memory_equal(data, back, (size_t)N * BS);
    lun_close(lun);
    free(ios);
    free(data);
    free(back);
    unlink(path);
}

/* ---- Compare and write ---------------------------------------------------------- */

static void test_caw_miscompare_returns_current_block(void **state)
{
    char path[256];
    make_file(path, sizeof path, 16 * 512);
    struct lun *lun = open_file(path, 512, false);
    uint8_t zero[512] = {0}, a[512], b[512], found[512];
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    assert_int_equal(lun_compare_and_write(lun, 3, zero, a, found), 0);
    memset(found, 0x55, sizeof found);
    assert_int_equal(lun_compare_and_write(lun, 3, zero, b, found), -EILSEQ);
    assert_memory_equal(found, a, 512);
    uint8_t r[512];
    assert_int_equal(lun_read(lun, 3, 1, r), 0);
    assert_memory_equal(r, a, 512);
    assert_int_equal(lun_compare_and_write(lun, 3, a, b, NULL), 0);
    assert_int_equal(lun_read(lun, 3, 1, r), 0);
    assert_memory_equal(r, b, 512);
    lun_close(lun);
    unlink(path);
}

/* The block of the race: a counter and the winner's id, repeated through the
 * whole block so a torn block is visible. */
static void race_block_make(uint8_t *b, uint32_t bs, uint64_t counter, uint32_t who)
{
    for (uint32_t off = 0; off < bs; off += 16) {
        le64_put(b + off, counter);
        le32_put(b + off + 8, who);
        le32_put(b + off + 12, 0xC0FFEE00u ^ (uint32_t)counter);
    }
}

static bool race_block_consistent(const uint8_t *b, uint32_t bs)
{
    for (uint32_t off = 16; off < bs; off += 16)
        if (memcmp(b, b + off, 16) != 0)
            return false;
    return le32_get(b + 12) == (0xC0FFEE00u ^ (uint32_t)le64_get(b));
}

enum { RACE_PROCS = 4, RACE_ATTEMPTS = 400, RACE_LBA = 5, RACE_BLOCKS = 11 };

/* A child: RACE_ATTEMPTS read-compare-and-write increments. Reports its
 * number of successful CAWs through `out`; exits 0, or 1 on a failure
 * (torn block, unexpected error). */
static int race_child(const char *uri, uint32_t who, int out)
{
    struct lun *lun = NULL;
    if (lun_open(uri, NULL, &lun) < 0)
        return 1;
    uint32_t bs = lun_block_size(lun);
    uint8_t *cur = malloc(bs), *next = malloc(bs);
    int rc = 0;
    uint32_t wins = 0;
    if (lun_read(lun, RACE_LBA, 1, cur) < 0)
        rc = 1;
    for (int i = 0; i < RACE_ATTEMPTS && rc == 0; i++) {
        if (!race_block_consistent(cur, bs)) {
            fprintf(stderr, "race: torn block seen by %u\n", who);
            rc = 1;
            break;
        }
        race_block_make(next, bs, le64_get(cur) + 1, who);
        int r = lun_compare_and_write(lun, RACE_LBA, cur, next, cur);
        if (r == 0) {
            wins++;
            memcpy(cur, next, bs);
        } else if (r != -EILSEQ) {
            fprintf(stderr, "race: CAW failed: %d\n", r);
            rc = 1;
        }
    }
    lun_close(lun);
    free(cur);
    free(next);
    if (write(out, &wins, sizeof wins) != (ssize_t)sizeof wins)
        rc = 1;
    return rc;
}

/* A reader process: multi-block reads around the race block never show
 * it torn, and the guard blocks stay intact. */
static int race_reader(const char *uri)
{
    struct lun *lun = NULL;
    if (lun_open(uri, NULL, &lun) < 0)
        return 1;
    uint32_t bs = lun_block_size(lun);
    uint8_t *b = malloc(5 * (size_t)bs);
    int rc = 0;
    for (int i = 0; i < RACE_ATTEMPTS && rc == 0; i++) {
        if (lun_read(lun, RACE_LBA - 2, 5, b) < 0 || !race_block_consistent(b + 2 * bs, bs) ||
            b[0] != 0xA5 || b[5 * (size_t)bs - 1] != 0xA5) {
            fprintf(stderr, "race: reader saw a torn block or a damaged guard\n");
            rc = 1;
        }
    }
    free(b);
    lun_close(lun);
    return rc;
}

/* RACE_PROCS processes, each with its own lun_open of one file, increment a
 * counter in one block by CAW. No lost update: the final counter equals the
 * total number of successful CAWs; nobody ever sees a torn block; the guard
 * blocks around the test block are untouched. */
static void check_caw_race(uint32_t bs)
{
    char path[256], uri[300];
    make_file(path, sizeof path, (uint64_t)RACE_BLOCKS * bs);
    snprintf(uri, sizeof uri, "file://%s?block_size=%u", path, bs);
    struct lun *lun = NULL;
    assert_int_equal(lun_open(uri, NULL, &lun), 0);
    uint8_t *guard = malloc(bs), *b = malloc(bs);
    memset(guard, 0xA5, bs);
    for (unsigned l = 0; l < RACE_BLOCKS; l++)
        if (l != RACE_LBA)
            assert_int_equal(lun_write(lun, l, 1, guard, 0), 0);
    race_block_make(b, bs, 0, 0);
    assert_int_equal(lun_write(lun, RACE_LBA, 1, b, 0), 0);
    assert_int_equal(lun_flush(lun), 0);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pids[RACE_PROCS];
    for (unsigned i = 0; i < RACE_PROCS; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(fds[0]);
            _exit(race_child(uri, i + 1, fds[1]));
        }
    }
    pid_t reader = fork();
    assert_true(reader >= 0);
    if (reader == 0) {
        close(fds[0]);
        close(fds[1]);
        _exit(race_reader(uri));
    }
    close(fds[1]);
    uint64_t total = 0;
    int rst;
    assert_true(waitpid(reader, &rst, 0) == reader);
    assert_true(WIFEXITED(rst));
    assert_int_equal(WEXITSTATUS(rst), 0);
    for (unsigned i = 0; i < RACE_PROCS; i++) {
        int st;
        assert_true(waitpid(pids[i], &st, 0) == pids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    uint32_t w;
    unsigned reports = 0;
    while (read(fds[0], &w, sizeof w) == (ssize_t)sizeof w) {
        total += w;
        reports++;
    }
    close(fds[0]);
    assert_int_equal(reports, RACE_PROCS);
    assert_int_equal(lun_read(lun, RACE_LBA, 1, b), 0);
    assert_true(race_block_consistent(b, bs));
    assert_true(total > 0);
    assert_int_equal(le64_get(b), total);
    for (unsigned l = 0; l < RACE_BLOCKS; l++) {
        if (l == RACE_LBA)
            continue;
        assert_int_equal(lun_read(lun, l, 1, b), 0);
        assert_memory_equal(b, guard, bs);
    }
    lun_close(lun);
    free(guard);
    free(b);
    unlink(path);
}

static void test_caw_race_between_processes_no_lost_update_512(void **state)
{
    check_caw_race(512);
}

static void test_caw_race_between_processes_no_lost_update_4096(void **state)
{
    check_caw_race(4096);
}

/* The same race between threads of one process: two LUN objects on one
 * file (two "hosts" in one test process), two threads on each. */
struct race_thread {
    struct lun *lun;
    uint32_t who;
    uint32_t wins;
    int failed;
};

static void *race_thread_fn(void *p)
{
    struct race_thread *t = p;
    uint32_t bs = lun_block_size(t->lun);
    uint8_t *cur = malloc(bs), *next = malloc(bs);
    if (lun_read(t->lun, RACE_LBA, 1, cur) < 0)
        t->failed = 1;
    for (int i = 0; i < RACE_ATTEMPTS && !t->failed; i++) {
        if (!race_block_consistent(cur, bs)) {
            t->failed = 1;
            break;
        }
        race_block_make(next, bs, le64_get(cur) + 1, t->who);
        int r = lun_compare_and_write(t->lun, RACE_LBA, cur, next, cur);
        if (r == 0) {
            t->wins++;
            memcpy(cur, next, bs);
        } else if (r != -EILSEQ) {
            t->failed = 1;
        }
    }
    free(cur);
    free(next);
    return NULL;
}

static void test_caw_race_between_threads_and_luns_no_lost_update(void **state)
{
    char path[256];
    make_file(path, sizeof path, (uint64_t)RACE_BLOCKS * 512);
    struct lun *a = open_file(path, 512, false), *b = open_file(path, 512, false);
    uint8_t blk[512];
    race_block_make(blk, 512, 0, 0);
    assert_int_equal(lun_write(a, RACE_LBA, 1, blk, 0), 0);
    pthread_t th[4];
    struct race_thread t[4];
    for (unsigned i = 0; i < 4; i++) {
        t[i] = (struct race_thread){.lun = i % 2 ? b : a, .who = i + 1};
        assert_int_equal(pthread_create(&th[i], NULL, race_thread_fn, &t[i]), 0);
    }
    uint64_t total = 0;
    for (unsigned i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].failed, 0);
        total += t[i].wins;
    }
    assert_int_equal(lun_read(b, RACE_LBA, 1, blk), 0);
    assert_true(race_block_consistent(blk, 512));
    assert_int_equal(le64_get(blk), total);
    lun_close(a);
    lun_close(b);
    unlink(path);
}

/* The core groups paths by identity: two paths to one file make one LUN,
 * a path to another file is refused naming both identities. */
static void test_paths_grouped_by_identity(void **state)
{
    char p1[256], p2[256];
    make_file(p1, sizeof p1, 32 * 512);
    make_file(p2, sizeof p2, 32 * 512);
    struct lun_path *paths[2];
    struct lun *lun = NULL;
    assert_int_equal(lun_path_open_uri(p1, NULL, &paths[0]), 0);
    assert_int_equal(lun_path_open_uri(p1, NULL, &paths[1]), 0);
    assert_int_equal(lun_open_with_paths(paths, 2, NULL, &lun), 0);
    assert_int_equal(lun_num_paths(lun), 2);
    uint8_t b[512];
    memset(b, 0x3c, sizeof b);
    assert_int_equal(lun_write(lun, 1, 1, b, 0), 0);
    lun_close(lun);

    struct lun *a = open_file(p1, 512, false), *c = open_file(p2, 512, false);
    char id1[LUN_ID_MAX], id2[LUN_ID_MAX];
    strcpy(id1, lun_get_info(a)->id);
    strcpy(id2, lun_get_info(c)->id);
    lun_close(a);
    lun_close(c);
    assert_int_equal(lun_path_open_uri(p1, NULL, &paths[0]), 0);
    assert_int_equal(lun_path_open_uri(p2, NULL, &paths[1]), 0);
    log_clear_last_error();
    assert_int_equal(lun_open_with_paths(paths, 2, NULL, &lun), -EINVAL);
    assert_null(lun);
    assert_non_null(strstr(log_last_error(), id1));
    assert_non_null(strstr(log_last_error(), id2));
    assert_non_null(strstr(log_last_error(), "refusing to group"));
    unlink(p1);
    unlink(p2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_kind_detection),
        cmocka_unit_test(test_file_uri_forms_parse),
        cmocka_unit_test(test_file_uri_bad_forms_refused),
        cmocka_unit_test(test_uri_redact_drops_password),
        cmocka_unit_test(test_open_missing_file_is_enoent),
        cmocka_unit_test(test_open_refuses_file_smaller_than_one_block),
        cmocka_unit_test(test_open_refuses_size_not_multiple_of_block),
        cmocka_unit_test(test_open_refuses_block_size_1000),
        cmocka_unit_test(test_range_checks_refuse_past_end_and_zero_blocks),
        cmocka_unit_test(test_multipath_open_missing_path_fails),
        cmocka_unit_test(test_paths_grouped_by_identity),
        cmocka_unit_test(test_sync_io_512_byte_blocks),
        cmocka_unit_test(test_sync_io_4096_byte_blocks),
        cmocka_unit_test(test_same_file_twice_has_same_identity),
        cmocka_unit_test(test_read_only_open_refuses_writes),
        cmocka_unit_test(test_persistent_reservations_unsupported_on_files),
        cmocka_unit_test(test_deleted_file_fails_test_unit_ready),
        cmocka_unit_test(test_async_io_many_in_flight),
        cmocka_unit_test(test_caw_miscompare_returns_current_block),
        cmocka_unit_test(test_caw_race_between_processes_no_lost_update_512),
        cmocka_unit_test(test_caw_race_between_processes_no_lost_update_4096),
        cmocka_unit_test(test_caw_race_between_threads_and_luns_no_lost_update),
    };
    log_set_program("test-lun");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
