/* Unit tests of the fault-injecting LUN (fault.c) over a temp file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"
#include "lun.h"
#include "util.h"

#define BS 512
#define NBLOCKS 64

struct fixture {
    char path[256];
    struct lun *lun;
    struct lun_fault *f;
};

/* Every ERR/WARN message, for checking what was logged. */
static char logbuf[8192];
static pthread_mutex_t logm = PTHREAD_MUTEX_INITIALIZER;

static void log_capture(enum log_level level, const char *msg, void *opaque)
{
    pthread_mutex_lock(&logm);
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", msg);
    pthread_mutex_unlock(&logm);
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    const char *dir = getenv("TMPDIR");
    snprintf(fx->path, sizeof fx->path, "%s/test-fault-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(fx->path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, NBLOCKS * BS), 0);
    close(fd);
    assert_int_equal(lun_open_fault(fx->path, NULL, &fx->lun, &fx->f), 0);
    assert_string_equal(lun_path_kind(fx->lun, 0), "fault");
    logbuf[0] = '\0';
    log_set_sink(log_capture, NULL);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    log_set_sink(NULL, NULL);
    lun_close(fx->lun);
    unlink(fx->path);
    free(fx);
    return 0;
}

static void pattern(uint8_t *b, unsigned seed)
{
    for (unsigned i = 0; i < BS; i++)
        b[i] = (uint8_t)(seed * 37 + i + 1);
}

/* Read block lba through a second, plain LUN on the same file: what the
 * medium holds, bypassing the fault layer. */
static void read_medium(const char *path, uint64_t lba, uint8_t *out)
{
    struct lun *plain = NULL;
    assert_int_equal(lun_open(path, NULL, &plain), 0);
    assert_int_equal(lun_read(plain, lba, 1, out), 0);
    lun_close(plain);
}

static bool is_zero(const uint8_t *b)
{
    for (unsigned i = 0; i < BS; i++)
        if (b[i])
            return false;
    return true;
}

static void test_fail_nth_write_gives_chosen_errno_and_message(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS];
    lun_fault_fail_write(fx->f, 3, false, -EIO, 0x3, 0x0C, 0x00);
    for (unsigned i = 0; i < 5; i++) {
        pattern(b, i);
        int rc = lun_write(fx->lun, i, 1, b, 0);
        assert_int_equal(rc, i == 2 ? -EIO : 0);
    }
    assert_non_null(strstr(logbuf, "injected failure of write #3 at lba 2: Input/output error "
                                   "(MEDIUM ERROR: WRITE ERROR (03/0C/00))"));
    uint8_t r[BS];
    read_medium(fx->path, 2, r);
    assert_true(is_zero(r)); /* the failed write did not reach the medium */
    read_medium(fx->path, 3, r);
    pattern(b, 3);
    assert_memory_equal(r, b, BS);
    /* Sticky: every write from the 2nd on fails. */
    lun_fault_fail_write(fx->f, 2, true, -ENOSPC, 0, 0, 0);
    assert_int_equal(lun_write(fx->lun, 10, 1, b, 0), 0);
    assert_int_equal(lun_write(fx->lun, 11, 1, b, 0), -ENOSPC);
    assert_int_equal(lun_write(fx->lun, 12, 1, b, 0), -ENOSPC);
    assert_int_equal(lun_unmap(fx->lun, 12, 1), -ENOSPC);
    lun_fault_clear(fx->f);
    assert_int_equal(lun_write(fx->lun, 12, 1, b, 0), 0);
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_true(st.injected == 4);
}

static void test_fail_nth_read_gives_chosen_errno(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS];
    lun_fault_fail_read(fx->f, 2, -ETIMEDOUT, 0, 0, 0);
    assert_int_equal(lun_read(fx->lun, 0, 1, b), 0);
    assert_int_equal(lun_read(fx->lun, 1, 1, b), -ETIMEDOUT);
    assert_non_null(strstr(logbuf, "injected failure of read #2 at lba 1: Connection timed out"));
    assert_int_equal(lun_read(fx->lun, 1, 1, b), 0);
}

static void test_unit_attention_is_retried_on_the_same_path(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS], r[BS];
    pattern(b, 7);
    /* POWER ON OCCURRED: the core retries, the caller never sees it. */
    lun_fault_fail_write(fx->f, 1, false, -EAGAIN, 0x6, 0x29, 0x00);
    assert_int_equal(lun_write(fx->lun, 5, 1, b, 0), 0);
    read_medium(fx->path, 5, r);
    assert_memory_equal(r, b, BS);
    /* RESERVATIONS PREEMPTED is final: fenced. */
    lun_fault_fail_write(fx->f, 1, false, -EBADE, 0x6, 0x2A, 0x03);
    assert_int_equal(lun_write(fx->lun, 5, 1, b, 0), -EBADE);
    assert_non_null(strstr(logbuf, "RESERVATIONS PREEMPTED (06/2A/03) (fail-up)"));
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_true(st.writes == 3 && st.injected == 2);
}

static void test_power_cut_loses_later_writes_keeps_earlier(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS], r[BS];
    lun_fault_power_cut(fx->f, 3);
    for (unsigned i = 0; i < 6; i++) {
        pattern(b, 100 + i);
        assert_int_equal(lun_write(fx->lun, i, 1, b, 0), 0); /* all "succeed" */
    }
    assert_int_equal(lun_flush(fx->lun), 0);
    assert_true(lun_fault_power_is_cut(fx->f));
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_true(st.dropped == 3 && st.issued_writes == 3);
    assert_int_equal(lun_fault_restart(fx->f), 0);
    assert_false(lun_fault_power_is_cut(fx->f));
    for (unsigned i = 0; i < 6; i++) {
        assert_int_equal(lun_read(fx->lun, i, 1, r), 0);
        pattern(b, 100 + i);
        if (i < 3)
            assert_memory_equal(r, b, BS);
        else
            assert_true(is_zero(r));
    }
    /* Powered on again: writes persist. */
    assert_int_equal(lun_write(fx->lun, 4, 1, b, 0), 0);
    read_medium(fx->path, 4, r);
    assert_memory_equal(r, b, BS);
}

static void test_reorder_holds_writes_until_flush(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS], r[BS];
    lun_fault_set_reorder(fx->f, 8);
    for (unsigned i = 0; i < 3; i++) {
        pattern(b, 200 + i);
        assert_int_equal(lun_write(fx->lun, 20 + i, 1, b, 0), 0);
    }
    /* Acknowledged but still held: the medium has nothing yet. */
    for (unsigned i = 0; i < 3; i++) {
        read_medium(fx->path, 20 + i, r);
        assert_true(is_zero(r));
    }
    assert_int_equal(lun_flush(fx->lun), 0);
    for (unsigned i = 0; i < 3; i++) {
        read_medium(fx->path, 20 + i, r);
        pattern(b, 200 + i);
        assert_memory_equal(r, b, BS);
    }
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_true(st.held == 3);
    assert_true(st.reordered == 2); /* issued 22, 21, 20 */
    /* A read through the fault LUN sees held writes (it drains first). */
    pattern(b, 250);
    assert_int_equal(lun_write(fx->lun, 30, 1, b, 0), 0);
    assert_int_equal(lun_read(fx->lun, 30, 1, r), 0);
    assert_memory_equal(r, b, BS);
}

static void test_reorder_then_power_cut_keeps_newest_writes(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS], r[BS];
    lun_fault_set_reorder(fx->f, 4);
    lun_fault_power_cut(fx->f, 2);
    for (unsigned i = 0; i < 4; i++) {
        pattern(b, 300 + i);
        assert_int_equal(lun_write(fx->lun, 40 + i, 1, b, 0), 0);
    }
    /* The 4th write filled the cache: issued 43, 42 (persisted), then 41,
     * 40 (dropped by the power cut): an older write lost, newer ones kept. */
    assert_int_equal(lun_fault_restart(fx->f), 0);
    lun_fault_set_reorder(fx->f, 0);
    for (unsigned i = 0; i < 4; i++) {
        read_medium(fx->path, 40 + i, r);
        pattern(b, 300 + i);
        if (i >= 2)
            assert_memory_equal(r, b, BS);
        else
            assert_true(is_zero(r));
    }
}

static void test_delay_slows_every_io(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS];
    lun_fault_set_delay(fx->f, 60);
    uint64_t t0 = now_ns();
    assert_int_equal(lun_read(fx->lun, 0, 1, b), 0);
    assert_int_equal(lun_write(fx->lun, 0, 1, b, 0), 0);
    uint64_t t1 = now_ns();
    assert_true(t1 - t0 >= 120ull * 1000 * 1000);
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_true(st.delayed == 2 && st.reads == 1 && st.writes == 1);
    lun_fault_set_delay(fx->f, 0);
}

struct writer_arg {
    struct lun *lun;
    unsigned id;
};

static void *writer(void *p)
{
    struct writer_arg *a = p;
    uint8_t b[BS];
    for (unsigned i = 0; i < 16; i++) {
        pattern(b, a->id * 16 + i);
        if (lun_write(a->lun, a->id * 16 + i, 1, b, 0) < 0)
            return (void *)1;
    }
    return NULL;
}

static void test_concurrent_writers_with_reorder_lose_nothing(void **state)
{
    struct fixture *fx = *state;
    lun_fault_set_reorder(fx->f, 3);
    lun_fault_set_delay(fx->f, 1);
    pthread_t t[4];
    struct writer_arg a[4];
    for (unsigned i = 0; i < 4; i++) {
        a[i] = (struct writer_arg){fx->lun, i};
        assert_int_equal(pthread_create(&t[i], NULL, writer, &a[i]), 0);
    }
    for (unsigned i = 0; i < 4; i++) {
        void *rv;
        pthread_join(t[i], &rv);
        assert_null(rv);
    }
    assert_int_equal(lun_flush(fx->lun), 0);
    uint8_t b[BS], r[BS];
    for (unsigned l = 0; l < 64; l++) {
        read_medium(fx->path, l, r);
        pattern(b, l);
        assert_memory_equal(r, b, BS);
    }
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_true(st.writes == 64 && st.issued_writes == 64 && st.held == 64);
}

static void test_core_splits_commands_at_max_transfer(void **state)
{
    struct fixture *fx = *state;
    struct lun *lun = NULL;
    struct lun_fault *f = NULL;
    assert_int_equal(lun_open_fault_max_transfer(fx->path, NULL, 3, &lun, &f), 0);
    assert_int_equal(lun_get_info(lun)->max_transfer_blocks, 3);
    uint8_t w[10 * BS], r[10 * BS];
    for (unsigned i = 0; i < 10; i++)
        pattern(w + i * BS, 400 + i);
    assert_int_equal(lun_write(lun, 50, 10, w, 0), 0);
    assert_int_equal(lun_read(lun, 50, 10, r), 0);
    assert_memory_equal(w, r, sizeof w);
    struct lun_fault_stats st;
    lun_fault_get_stats(f, &st);
    assert_true(st.writes == 4 && st.reads == 4); /* 3 + 3 + 3 + 1 */
    /* A failing piece fails the whole command; later pieces are not sent. */
    lun_fault_fail_write(f, 2, false, -EIO, 0x3, 0x0C, 0x00);
    assert_int_equal(lun_write(lun, 50, 10, w, 0), -EIO);
    lun_fault_get_stats(f, &st);
    assert_true(st.writes == 6);
    /* Write same and unmap are split too. */
    assert_int_equal(lun_write_same(lun, 50, 7, w, 0), 0);
    assert_int_equal(lun_unmap(lun, 50, 7), 0);
    lun_fault_get_stats(f, &st);
    assert_true(st.write_sames == 3 && st.unmaps == 3);
    lun_close(lun);
}

/* ---- Deadlines and self-fencing (issue 10 item 3) ---------------------- */

static void test_deadline_passed_write_is_never_dispatched(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS];
    pattern(b, 77);
    uint64_t past = lun_now_ns() - 1;
    assert_int_equal(lun_write_dl(fx->lun, 3, 1, b, 0, past), -ETIMEDOUT);
    assert_int_equal(lun_read_dl(fx->lun, 3, 1, b, past), -ETIMEDOUT);
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_int_equal(st.writes, 0); /* nothing reached the path */
    assert_int_equal(st.reads, 0);
    assert_non_null(strstr(logbuf, "deadline passed"));
    /* A future deadline is no obstacle. */
    pattern(b, 78);
    assert_int_equal(lun_write_dl(fx->lun, 3, 1, b, 0, lun_now_ns() + 5000000000ull), 0);
}

/* A write whose first try fails with a retryable sense after its deadline
 * (the path answered late) is not retried: -ETIMEDOUT, one command sent. */
static void test_retry_after_deadline_is_not_dispatched(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS], r[BS];
    lun_fault_set_delay(fx->f, 150);
    /* UNIT ATTENTION 29/00 (power on): retried on the same path. */
    lun_fault_fail_write(fx->f, 1, false, -EIO, 0x6, 0x29, 0x00);
    pattern(b, 91);
    assert_int_equal(lun_write_dl(fx->lun, 5, 1, b, 0, lun_now_ns() + 50000000ull), -ETIMEDOUT);
    lun_fault_set_delay(fx->f, 0);
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_int_equal(st.writes, 1);
    assert_int_equal(st.issued_writes, 0);
    read_medium(fx->path, 5, r);
    assert_true(is_zero(r));
    /* Without a deadline the same failure is retried invisibly. */
    lun_fault_fail_write(fx->f, 1, false, -EIO, 0x6, 0x29, 0x00);
    assert_int_equal(lun_write(fx->lun, 5, 1, b, 0), 0);
    read_medium(fx->path, 5, r);
    assert_memory_equal(r, b, BS);
}

static void test_fence_self_refuses_writes_until_register(void **state)
{
    struct fixture *fx = *state;
    uint8_t b[BS], r[BS];
    pattern(b, 5);
    memset(r, 0, sizeof r);
    assert_false(lun_is_fenced(fx->lun));
    lun_fence_self(fx->lun);
    assert_true(lun_is_fenced(fx->lun));
    assert_int_equal(lun_write(fx->lun, 9, 1, b, 0), -EBADE);
    assert_int_equal(lun_write_same(fx->lun, 9, 2, b, 0), -EBADE);
    assert_int_equal(lun_compare_and_write(fx->lun, 9, r, b, NULL), -EBADE);
    assert_int_equal(lun_read(fx->lun, 9, 1, r), 0); /* reads go on */
    assert_true(is_zero(r));
    struct lun_fault_stats st;
    lun_fault_get_stats(fx->f, &st);
    assert_int_equal(st.writes + st.write_sames + st.compare_and_writes, 0);
    assert_non_null(strstr(logbuf, "fenced itself"));
    /* Rejoining (a file LUN has no reservations) lifts it. */
    assert_int_equal(lun_pr_register(fx->lun, 0x1234), -EOPNOTSUPP);
    assert_false(lun_is_fenced(fx->lun));
    assert_int_equal(lun_write(fx->lun, 9, 1, b, 0), 0);
}

static void test_max_io_time_follows_options(void **state)
{
    struct fixture *fx = *state;
    /* One plain path, defaults: 11 tries (10 back-offs of 10 ms doubling
     * to 1 s fit in 5 s) x 5000 ms, + 5 s of back-offs + 5 s for the abort. */
    assert_int_equal(lun_max_io_time_ms(fx->lun), 65000);
    struct lun_options o;
    lun_options_init(&o);
    o.timeout_ms = 1000;
    o.multipath = true;
    o.queue_ms = 2000;
    struct lun *l2;
    struct lun_fault *f2;
    assert_int_equal(lun_open_fault(fx->path, &o, &l2, &f2), 0);
    /* Two stints of (1 + 6) x 1 s + 1 s + 1 s around a 2 s queue (6
     * back-offs fit in 1 s: 10..320 ms). */
    assert_int_equal(lun_max_io_time_ms(l2), 9000 + 2000 + 9000);
    lun_close(l2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fail_nth_write_gives_chosen_errno_and_message, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fail_nth_read_gives_chosen_errno, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unit_attention_is_retried_on_the_same_path, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_power_cut_loses_later_writes_keeps_earlier, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reorder_holds_writes_until_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reorder_then_power_cut_keeps_newest_writes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_delay_slows_every_io, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers_with_reorder_lose_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_core_splits_commands_at_max_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_passed_write_is_never_dispatched, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_retry_after_deadline_is_not_dispatched, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fence_self_refuses_writes_until_register, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_max_io_time_follows_options, setup, teardown),
    };
    log_set_program("test-fault");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
