/* Integration checks of a LUN reached over iSCSI (tgtd on loopback), driven
 * by the tests/lun scripts through the public lun.h API.
 *
 *   test-iscsi-lun open URI [timeout_ms]   open only; print the error (exit 1)
 *   test-iscsi-lun caps URI BLOCK_SIZE     capabilities as probed on tgt
 *   test-iscsi-lun rw URI                  whole-LUN write/verify, async, flush, unmap
 *   test-iscsi-lun pr URI                  persistent reservations and fencing
 *   test-iscsi-lun stall URI TGTD_PID      SIGSTOP the target: I/O fails with
 *                                          -ETIMEDOUT within the timeout
 *   test-iscsi-lun lost URI TGTD_PID       SIGKILL the target: I/O fails with -ENOTCONN
 *   test-iscsi-lun ua URI CMD              run CMD (which makes the target raise a
 *                                          UNIT ATTENTION, e.g. a LUN added), then
 *                                          READ KEYS, REGISTER, TEST UNIT READY succeed
 *   test-iscsi-lun caw URI [URI2]          COMPARE AND WRITE on a target that has it
 *                                          (istgt): match, miscompare (found = current),
 *                                          through one or both paths, with a deadline
 *
 * Every failed check prints "FAIL: ..." and the program exits 1.
 */
#include "log.h"
#include "lun.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL: %s:%d: ", __FILE__, __LINE__);                                           \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static struct lun *open_or_die(const char *uri, const char *initiator)
{
    struct lun_options o;
    lun_options_init(&o);
    o.initiator_name = initiator;
    struct lun *l = NULL;
    int rc = lun_open(uri, &o, &l);
    if (rc < 0) {
        printf("FAIL: lun_open %s as %s: %s (%s)\n", uri, initiator ? initiator : "default",
               strerror(-rc), log_last_error());
        exit(1);
    }
    return l;
}

/* ---- open ---------------------------------------------------------------- */

static int cmd_open(const char *uri, unsigned timeout_ms)
{
    struct lun_options o;
    lun_options_init(&o);
    if (timeout_ms)
        o.timeout_ms = o.connect_timeout_ms = timeout_ms;
    struct lun *l = NULL;
    uint64_t t0 = now_ns();
    int rc = lun_open(uri, &o, &l);
    double ms = (double)(now_ns() - t0) / 1e6;
    if (rc == 0) {
        printf("opened %s in %.1f ms\n", lun_name(l), ms);
        lun_close(l);
        return 0;
    }
    printf("errno=%s (%d) after %.1f ms\nmessage=%s\n", strerror(-rc), -rc, ms, log_last_error());
    return 1;
}

/* ---- caps ---------------------------------------------------------------- */

static int cmd_caps(const char *uri, uint32_t want_bs)
{
    struct lun *l = open_or_die(uri, NULL);
    const struct lun_info *i = lun_get_info(l);
    printf("vendor=%s product=%s id=%s serial=%s bs=%u pbs=%u blocks=%" PRIu64 "\n", i->vendor,
           i->product, i->id, i->serial, i->block_size, i->physical_block_size, i->num_blocks);
    printf("caw=%d pr=%d pr_we_ar=%d pr_preempt_abort=%d unmap=%d ws=%d ws_unmap=%d sync=%d "
           "fua=%d\n",
           i->caps.compare_and_write, i->caps.persistent_reservations,
           i->caps.pr_we_all_registrants, i->caps.pr_preempt_abort, i->caps.unmap,
           i->caps.write_same, i->caps.write_same_unmap, i->caps.sync_cache, i->caps.fua);
    CHECK(i->block_size == want_bs, "block size %u, expected %u", i->block_size, want_bs);
    CHECK(strcmp(i->vendor, "IET") == 0, "vendor '%s', expected IET (tgt)", i->vendor);
    CHECK(strncmp(i->id, "naa.", 4) == 0, "identity '%s' is not an NAA designator", i->id);
    CHECK(i->serial[0] != 0, "no unit serial number");
    CHECK(!i->caps.compare_and_write, "tgt has no COMPARE AND WRITE but caps say it has");
    CHECK(i->caps.persistent_reservations, "persistent reservations not detected");
    CHECK(i->caps.pr_we_all_registrants, "WE-AR reservation type not detected");
    CHECK(i->caps.sync_cache, "SYNCHRONIZE CACHE not detected");

    uint8_t *a = calloc(1, i->block_size), *b = calloc(1, i->block_size);
    log_clear_last_error();
    uint64_t t0 = now_ns();
    int rc = lun_compare_and_write(l, 0, a, b, NULL);
    uint64_t us = (now_ns() - t0) / 1000;
    CHECK(rc == -EOPNOTSUPP, "compare_and_write returned %d, expected -EOPNOTSUPP", rc);
    CHECK(strstr(log_last_error(), "COMPARE AND WRITE") != NULL,
          "no message naming COMPARE AND WRITE: '%s'", log_last_error());
    CHECK(us < 100000, "compare_and_write took %" PRIu64 " us to refuse", us);
    printf("caw: rc=%d message=%s\n", rc, log_last_error());

    /* More sessions with the same (default) initiator name, through both
     * portals and twice through the same one: none may reinstate (kill)
     * another's session, so all keep working. */
    struct lun *l2 = open_or_die(uri, NULL);
    char uri2[1024];
    snprintf(uri2, sizeof(uri2), "%s", uri);
    char *ip1 = strstr(uri2, "127.0.0.1");
    if (ip1)
        ip1[8] = '2';
    struct lun *l3 = open_or_die(uri2, NULL);
    CHECK(lun_read(l, 0, 1, a) == 0, "first session after two more logins: %s", log_last_error());
    CHECK(lun_read(l2, 0, 1, a) == 0, "second session: %s", log_last_error());
    CHECK(lun_read(l3, 0, 1, a) == 0, "session through %s: %s", uri2, log_last_error());
    CHECK(strcmp(lun_get_info(l3)->id, i->id) == 0, "identity differs through %s", uri2);
    lun_close(l3);
    lun_close(l2);
    free(a);
    free(b);
    lun_close(l);
    return failures ? 1 : 0;
}

/* ---- rw -------------------------------------------------------------------- */

struct async_ctx {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned inflight;
    unsigned max_inflight_seen;
    int first_error;
    unsigned completed;
};

struct slot {
    struct lun_io io;
    struct async_ctx *ctx;
    uint8_t *buf;
    bool busy;
};

static void slot_done(struct lun_io *io, int result)
{
    struct slot *s = io->opaque;
    struct async_ctx *c = s->ctx;
    pthread_mutex_lock(&c->lock);
    if (result < 0 && c->first_error == 0)
        c->first_error = result;
    c->inflight--;
    c->completed++;
    s->busy = false;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void fill_block(uint8_t *p, uint32_t bs, uint64_t lba, uint64_t gen)
{
    uint64_t *w = (uint64_t *)p;
    for (uint32_t k = 0; k < bs / 8; k++)
        w[k] = (lba * 0x9E3779B97F4A7C15ULL) ^ (gen + k);
    w[0] = lba;
    w[1] = gen;
}

static bool check_block(const uint8_t *p, uint32_t bs, uint64_t lba, uint64_t gen)
{
    const uint64_t *w = (const uint64_t *)p;
    if (w[0] != lba || w[1] != gen)
        return false;
    for (uint32_t k = 2; k < bs / 8; k++)
        if (w[k] != ((lba * 0x9E3779B97F4A7C15ULL) ^ (gen + k)))
            return false;
    return true;
}

/* Write (or read and verify) the whole LUN with `qd` I/Os of `chunk`
 * blocks in flight. Returns the number of bad blocks (or -errno). */
static int64_t whole_lun(struct lun *l, bool write, uint32_t chunk, unsigned qd, uint64_t gen,
                         unsigned *max_seen)
{
    const struct lun_info *i = lun_get_info(l);
    uint32_t bs = i->block_size;
    struct async_ctx c = {.first_error = 0};
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    struct slot *slots = calloc(qd, sizeof(*slots));
    for (unsigned k = 0; k < qd; k++) {
        slots[k].buf = malloc((size_t)chunk * bs);
        slots[k].ctx = &c;
    }
    int64_t bad = 0;
    uint64_t next = 0, total = i->num_blocks;
    pthread_mutex_lock(&c.lock);
    while (next < total || c.inflight > 0) {
        /* Verify finished reads, refill free slots. */
        for (unsigned k = 0; k < qd; k++) {
            struct slot *s = &slots[k];
            if (s->busy)
                continue;
            if (!write && s->io.nblocks) {
                for (uint32_t b = 0; b < s->io.nblocks; b++)
                    if (!check_block(s->buf + (size_t)b * bs, bs, s->io.lba + b, gen)) {
                        if (bad < 5)
                            printf("FAIL: block %" PRIu64 " does not hold its pattern\n",
                                   s->io.lba + b);
                        bad++;
                    }
                s->io.nblocks = 0;
            }
            if (next >= total || c.first_error)
                continue;
            uint32_t n = (uint32_t)MIN((uint64_t)chunk, total - next);
            memset(&s->io, 0, sizeof(s->io));
            s->io.op = write ? LUN_OP_WRITE : LUN_OP_READ;
            s->io.lba = next;
            s->io.nblocks = n;
            s->io.buf = s->buf;
            s->io.done = slot_done;
            s->io.opaque = s;
            if (write)
                for (uint32_t b = 0; b < n; b++)
                    fill_block(s->buf + (size_t)b * bs, bs, next + b, gen);
            s->busy = true;
            c.inflight++;
            if (c.inflight > c.max_inflight_seen)
                c.max_inflight_seen = c.inflight;
            pthread_mutex_unlock(&c.lock);
            int rc = lun_submit(l, &s->io);
            pthread_mutex_lock(&c.lock);
            if (rc < 0) {
                s->busy = false;
                s->io.nblocks = 0;
                c.inflight--;
                if (!c.first_error)
                    c.first_error = rc;
            }
            next += n;
        }
        if (c.inflight > 0)
            pthread_cond_wait(&c.cond, &c.lock);
        else if (c.first_error)
            break;
    }
    pthread_mutex_unlock(&c.lock);
    /* Verify the last reads. */
    for (unsigned k = 0; k < qd && !write; k++) {
        struct slot *s = &slots[k];
        for (uint32_t b = 0; b < s->io.nblocks; b++)
            if (!check_block(s->buf + (size_t)b * bs, bs, s->io.lba + b, gen))
                bad++;
    }
    for (unsigned k = 0; k < qd; k++)
        free(slots[k].buf);
    free(slots);
    pthread_mutex_destroy(&c.lock);
    pthread_cond_destroy(&c.cond);
    if (max_seen)
        *max_seen = c.max_inflight_seen;
    return c.first_error ? c.first_error : bad;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (p[k])
            return false;
    return true;
}

static int cmd_rw(const char *uri)
{
    struct lun *l = open_or_die(uri, NULL);
    const struct lun_info *i = lun_get_info(l);
    uint32_t bs = i->block_size;
    uint64_t bytes = i->num_blocks * bs;
    printf("LUN %s: %" PRIu64 " blocks of %u bytes (%" PRIu64 " MiB)\n", lun_name(l), i->num_blocks,
           bs, bytes >> 20);
    uint32_t chunk = (uint32_t)(256 * 1024 / bs);
    unsigned seen = 0;

    uint64_t t0 = now_ns();
    int64_t r = whole_lun(l, true, chunk, 32, 1, &seen);
    double s = (double)(now_ns() - t0) / 1e9;
    CHECK(r == 0, "whole-LUN write: %" PRId64, r);
    CHECK(seen >= 16, "only %u I/Os were in flight at once", seen);
    printf("write: %.1f MiB/s, up to %u in flight\n", (double)bytes / 1048576.0 / s, seen);
    CHECK(lun_flush(l) == 0, "flush failed: %s", log_last_error());

    t0 = now_ns();
    r = whole_lun(l, false, chunk, 32, 1, &seen);
    s = (double)(now_ns() - t0) / 1e9;
    CHECK(r == 0, "whole-LUN verify: %" PRId64 " bad blocks / error", r);
    printf("read+verify: %.1f MiB/s\n", (double)bytes / 1048576.0 / s);

    /* Odd-sized synchronous I/O at the very end of the LUN, and past it. */
    uint8_t *buf = malloc((size_t)bs * 7);
    uint64_t last = i->num_blocks - 7;
    for (uint32_t b = 0; b < 7; b++)
        fill_block(buf + (size_t)b * bs, bs, last + b, 2);
    CHECK(lun_write(l, last, 7, buf, LUN_IO_FUA) == 0, "FUA write of the last 7 blocks");
    memset(buf, 0, (size_t)bs * 7);
    CHECK(lun_read(l, last, 7, buf) == 0, "read of the last 7 blocks");
    for (uint32_t b = 0; b < 7; b++)
        CHECK(check_block(buf + (size_t)b * bs, bs, last + b, 2), "last block %u", b);
    CHECK(lun_read(l, i->num_blocks - 1, 2, buf) == -EINVAL, "read past the end not refused");

    if (i->caps.unmap) {
        uint64_t lba = 1024;
        CHECK(lun_unmap(l, lba, 256) == 0, "unmap: %s", log_last_error());
        uint8_t *z = malloc((size_t)bs * 256);
        CHECK(lun_read(l, lba, 256, z) == 0, "read after unmap");
        CHECK(all_zero(z, (size_t)bs * 256), "unmapped blocks do not read as zeroes (LBPRZ)");
        CHECK(lun_read(l, lba + 256, 1, z) == 0 && check_block(z, bs, lba + 256, 1),
              "block after the unmapped range was damaged");
        free(z);
        printf("unmap: ok\n");
    } else {
        printf("unmap: not supported by this LUN\n");
    }
    if (i->caps.write_same) {
        uint8_t *one = malloc(bs), *back = malloc((size_t)bs * 16);
        memset(one, 0xA5, bs);
        CHECK(lun_write_same(l, 4096, 16, one, 0) == 0, "write same: %s", log_last_error());
        CHECK(lun_read(l, 4096, 16, back) == 0, "read after write same");
        for (uint32_t b = 0; b < 16; b++)
            CHECK(memcmp(back + (size_t)b * bs, one, bs) == 0, "write same block %u", b);
        free(one);
        free(back);
        printf("write same: ok\n");
    }
    CHECK(lun_test_unit_ready(l) == 0, "TEST UNIT READY");
    free(buf);
    lun_close(l);
    return failures ? 1 : 0;
}

/* ---- pr -------------------------------------------------------------------- */

static const uint64_t KEY_A = 0xA11CE00000000001ULL, KEY_B = 0xB0B0000000000002ULL;

struct sync_w {
    pthread_mutex_t m;
    pthread_cond_t c;
    bool done;
    int rc;
};

static void sync_w_done(struct lun_io *d, int rc)
{
    struct sync_w *w = d->opaque;
    pthread_mutex_lock(&w->m);
    w->rc = rc;
    w->done = true;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

/* Write one block filled with v, asynchronously so the sense of a failure
 * can be seen in *out_io. */
static int write_one(struct lun *l, uint64_t lba, uint8_t v, struct lun_io *out_io)
{
    struct sync_w w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    uint32_t bs = lun_block_size(l);
    uint8_t *buf = malloc(bs);
    memset(buf, v, bs);
    struct lun_io io = {.op = LUN_OP_WRITE, .lba = lba, .nblocks = 1, .buf = buf};
    io.opaque = &w;
    io.done = sync_w_done;
    int rc = lun_submit(l, &io);
    if (rc == 0) {
        pthread_mutex_lock(&w.m);
        while (!w.done)
            pthread_cond_wait(&w.c, &w.m);
        rc = w.rc;
        pthread_mutex_unlock(&w.m);
    }
    if (out_io)
        *out_io = io;
    free(buf);
    return rc;
}

static int cmd_pr(const char *uri)
{
    struct lun *a = open_or_die(uri, "iqn.2026-11.org.clusterfs.test:host-a");
    struct lun *b = open_or_die(uri, "iqn.2026-11.org.clusterfs.test:host-b");
    struct lun *c = open_or_die(uri, "iqn.2026-11.org.clusterfs.test:host-c");
    uint32_t bs = lun_block_size(a);
    uint8_t *buf = malloc(bs);
    struct lun_pr_state st;
    struct lun_io io;
    int rc;

    /* Start clean whatever an earlier run left. */
    lun_pr_register(a, KEY_A);
    lun_pr_clear(a, KEY_A);

    CHECK(lun_pr_register(a, KEY_A) == 0, "register A: %s", log_last_error());
    CHECK(lun_pr_register(b, KEY_B) == 0, "register B: %s", log_last_error());
    CHECK(lun_pr_read(a, &st) == 0, "read keys");
    CHECK(st.nkeys == 2, "%u keys registered, expected 2", st.nkeys);
    CHECK(!st.reserved, "reserved before anyone reserved");
    CHECK(lun_pr_reserve(a, KEY_A, LUN_PR_WE_ALL_REGISTRANTS) == 0, "reserve WE-AR: %s",
          log_last_error());
    CHECK(lun_pr_read(b, &st) == 0 && st.reserved && st.type == LUN_PR_WE_ALL_REGISTRANTS,
          "B does not see the WE-AR reservation (reserved=%d type=%d)", st.reserved, st.type);
    printf("generation %u, %u keys, reserved type %d\n", st.generation, st.nkeys, st.type);

    /* All registrants write; an unregistered initiator may not. */
    CHECK(write_one(a, 10, 0xAA, NULL) == 0, "A write under WE-AR: %s", log_last_error());
    CHECK(write_one(b, 11, 0xBB, NULL) == 0, "B write under WE-AR: %s", log_last_error());
    rc = write_one(c, 12, 0xCC, &io);
    CHECK(rc == -EBADE, "unregistered C write returned %d, expected -EBADE", rc);
    printf("unregistered write: rc=%d (%s) sense %02x/%02x/%02x\n", rc, strerror(-rc), io.sense_key,
           io.asc, io.ascq);
    CHECK(lun_read(c, 10, 1, buf) == 0 && buf[0] == 0xAA, "unregistered C read under WE-AR");

    /* Fence B: A preempts B's key. */
    CHECK(lun_pr_preempt(a, KEY_A, KEY_B, LUN_PR_WE_ALL_REGISTRANTS, false) == 0, "preempt B: %s",
          log_last_error());
    CHECK(lun_pr_read(a, &st) == 0 && st.nkeys == 1 && st.keys[0] == KEY_A,
          "after preempt: %u keys", st.nkeys);
    rc = write_one(b, 11, 0xB2, &io);
    printf("fenced write 1: rc=%d (%s) sense %02x/%02x/%02x\n", rc, strerror(-rc), io.sense_key,
           io.asc, io.ascq);
    CHECK(rc == -EBADE, "fenced B write returned %d, expected -EBADE", rc);
    rc = write_one(b, 11, 0xB3, &io);
    printf("fenced write 2: rc=%d (%s) sense %02x/%02x/%02x\n", rc, strerror(-rc), io.sense_key,
           io.asc, io.ascq);
    CHECK(rc == -EBADE, "second fenced B write returned %d, expected -EBADE", rc);
    CHECK(lun_read(b, 11, 1, buf) == 0, "fenced B read: %s", log_last_error());
    CHECK(buf[0] == 0xBB, "fenced B's writes reached the disk (byte %02x)", buf[0]);
    CHECK(write_one(a, 10, 0xA2, NULL) == 0, "A write after preempt: %s", log_last_error());

    /* PREEMPT AND ABORT: tgt lacks it (not listed by REPORT SUPPORTED
     * OPERATION CODES, refused with 05/24/00); where it is claimed, it must work. */
    {
        CHECK(lun_pr_register(b, KEY_B) == 0, "re-register B");
        bool claimed = lun_get_info(a)->caps.pr_preempt_abort;
        rc = lun_pr_preempt(a, KEY_A, KEY_B, LUN_PR_WE_ALL_REGISTRANTS, true);
        printf("preempt-and-abort (caps %d): rc=%d (%s)\n", claimed, rc,
               rc ? log_last_error() : "ok");
        CHECK(claimed ? rc == 0 : rc == -EOPNOTSUPP, "preempt-and-abort returned %d (caps %d)", rc,
              claimed);
        rc = write_one(b, 11, 0xB4, &io);
        printf("after preempt-and-abort, B write: rc=%d sense %02x/%02x/%02x\n", rc, io.sense_key,
               io.asc, io.ascq);
    }

    /* Release and clear: everyone writes again. */
    CHECK(lun_pr_release(a, KEY_A, LUN_PR_WE_ALL_REGISTRANTS) == 0, "release: %s",
          log_last_error());
    CHECK(lun_pr_clear(a, KEY_A) == 0, "clear: %s", log_last_error());
    CHECK(lun_pr_read(a, &st) == 0 && st.nkeys == 0 && !st.reserved, "after clear");
    for (int k = 0; k < 3; k++) { /* UNIT ATTENTIONs after CLEAR are retried by the core */
        rc = write_one(c, 12, 0xC2, &io);
        if (rc == 0)
            break;
    }
    CHECK(rc == 0, "C write after clear: %d", rc);

    free(buf);
    lun_close(a);
    lun_close(b);
    lun_close(c);
    return failures ? 1 : 0;
}

/* ---- target stalls or dies -------------------------------------------------- */

static int cmd_target_fault(const char *uri, pid_t tgtd, bool kill_it)
{
    struct lun_options o;
    lun_options_init(&o);
    o.timeout_ms = 1500;
    struct lun *l = NULL;
    int rc = lun_open(uri, &o, &l);
    if (rc < 0) {
        printf("FAIL: open: %s\n", log_last_error());
        return 1;
    }
    CHECK(write_one(l, 1, 0x11, NULL) == 0, "write before the fault");
    CHECK(kill(tgtd, kill_it ? SIGKILL : SIGSTOP) == 0, "cannot signal tgtd %d", (int)tgtd);
    log_clear_last_error();
    uint64_t t0 = now_ns();
    rc = write_one(l, 1, 0x22, NULL);
    double ms = (double)(now_ns() - t0) / 1e6;
    printf("%s: write rc=%d (%s) after %.0f ms; message=%s\n", kill_it ? "killed" : "stalled", rc,
           strerror(-rc), ms, log_last_error());
    if (kill_it) {
        CHECK(rc == -ENOTCONN, "write to a dead target returned %d, expected -ENOTCONN", rc);
        CHECK(ms < 1500, "dead target noticed only after %.0f ms", ms);
        rc = write_one(l, 2, 0x33, NULL);
        CHECK(rc == -ENOTCONN, "second write to a dead target returned %d", rc);
    } else {
        CHECK(rc == -ETIMEDOUT, "write to a stalled target returned %d, expected -ETIMEDOUT", rc);
        CHECK(ms >= 1400 && ms < 3000, "timeout fired after %.0f ms (timeout 1500)", ms);
        kill(tgtd, SIGCONT);
    }
    t0 = now_ns();
    lun_close(l);
    ms = (double)(now_ns() - t0) / 1e6;
    CHECK(ms < 2500, "close took %.0f ms", ms);
    return failures ? 1 : 0;
}

/* ---- ua ------------------------------------------------------------------ */

static int cmd_ua(const char *uri, const char *cmd)
{
    struct lun *l = open_or_die(uri, NULL);
    struct lun_pr_state *st = calloc(1, sizeof *st);
    CHECK(lun_pr_read(l, st) == 0, "READ KEYS before: %s", log_last_error());
    /* Each step after its own unit attention (REPORTED LUNS DATA HAS
     * CHANGED on tgt when a LUN is added or removed). */
    CHECK(system(cmd) == 0, "command failed: %s", cmd);
    int rc = lun_pr_read(l, st);
    CHECK(rc == 0, "READ KEYS after a unit attention: %d (%s)", rc, log_last_error());
    CHECK(system(cmd) == 0, "command failed: %s", cmd);
    rc = lun_pr_register(l, 0x5A5A0001ULL);
    CHECK(rc == 0, "REGISTER after a unit attention: %d (%s)", rc, log_last_error());
    CHECK(system(cmd) == 0, "command failed: %s", cmd);
    rc = lun_test_unit_ready(l);
    CHECK(rc == 0, "TEST UNIT READY after a unit attention: %d (%s)", rc, log_last_error());
    lun_pr_register(l, 0);
    free(st);
    lun_close(l);
    printf("ua: READ KEYS, REGISTER, TEST UNIT READY after unit attentions: %s\n",
           failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}

/* ---- caw ----------------------------------------------------------------- */

static void caw_fill(uint8_t *b, uint32_t bs, unsigned v)
{
    for (uint32_t k = 0; k < bs; k++)
        b[k] = (uint8_t)(v * 31 + k * 7);
}

static int cmd_caw(const char *uri, const char *uri2)
{
    struct lun_options o;
    lun_options_init(&o);
    struct lun *l = NULL;
    const char *uris[2] = {uri, uri2};
    int rc = lun_open_paths(uris, uri2 ? 2 : 1, &o, &l);
    if (rc < 0) {
        printf("FAIL: open %s: %s (%s)\n", uri, strerror(-rc), log_last_error());
        return 1;
    }
    const struct lun_info *i = lun_get_info(l);
    uint32_t bs = i->block_size;
    CHECK(i->caps.compare_and_write, "COMPARE AND WRITE not detected (vendor %s)", i->vendor);
    uint8_t *a = malloc(bs), *b = malloc(bs), *c = malloc(bs), *f = malloc(bs), *r = malloc(bs);
    caw_fill(a, bs, 1);
    caw_fill(b, bs, 2);
    caw_fill(c, bs, 3);
    /* Over several blocks, so both paths carry some (service-time alternates). */
    for (uint64_t lba = 8; lba < 16; lba++) {
        if (lba & 1) /* shift the rotation: CAWs on both paths */
            CHECK(lun_read(l, lba, 1, r) == 0, "read lba %" PRIu64, lba);
        CHECK(lun_write(l, lba, 1, a, 0) == 0, "write lba %" PRIu64 ": %s", lba, log_last_error());
        rc = lun_compare_and_write(l, lba, a, b, f);
        CHECK(rc == 0, "CAW a->b at lba %" PRIu64 " returned %d (%s)", lba, rc, log_last_error());
        CHECK(lun_read(l, lba, 1, r) == 0 && memcmp(r, b, bs) == 0,
              "lba %" PRIu64 " does not hold b after a matching CAW", lba);
        memset(f, 0, bs);
        rc = lun_compare_and_write(l, lba, a, c, f);
        CHECK(rc == -EILSEQ,
              "CAW with a stale expect at lba %" PRIu64 " returned %d, expected "
              "-EILSEQ (miscompare)",
              lba, rc);
        CHECK(memcmp(f, b, bs) == 0,
              "miscompare at lba %" PRIu64 " did not return the current "
              "block",
              lba);
        CHECK(lun_read(l, lba, 1, r) == 0 && memcmp(r, b, bs) == 0,
              "lba %" PRIu64 " changed by a miscompared CAW", lba);
        rc = lun_compare_and_write_dl(l, lba, b, a, NULL, lun_now_ns() + 5000000000ull);
        CHECK(rc == 0, "CAW b->a with a deadline at lba %" PRIu64 " returned %d", lba, rc);
        rc = lun_compare_and_write_dl(l, lba, a, b, NULL, lun_now_ns() - 1);
        CHECK(rc == -ETIMEDOUT, "CAW past its deadline returned %d, expected -ETIMEDOUT", rc);
    }
    for (unsigned k = 0; k < lun_num_paths(l); k++) {
        struct lun_path_stats st;
        lun_path_get_stats(l, k, &st);
        printf("path %u: others=%" PRIu64 " errors=%" PRIu64 "\n", k, st.others, st.errors);
        CHECK(st.others > 0, "path %u carried no CAW", k);
    }
    printf("caw: bs=%u paths=%u ok\n", bs, lun_num_paths(l));
    free(a);
    free(b);
    free(c);
    free(f);
    free(r);
    lun_close(l);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    log_set_program("test-iscsi-lun");
    if (argc < 3) {
        fprintf(stderr, "usage: %s open|caps|rw|pr URI [arg]\n", argv[0]);
        return 2;
    }
    const char *cmd = argv[1], *uri = argv[2];
    if (strcmp(cmd, "open") == 0)
        return cmd_open(uri, argc > 3 ? (unsigned)atoi(argv[3]) : 0);
    if (strcmp(cmd, "caps") == 0)
        return cmd_caps(uri, argc > 3 ? (uint32_t)atoi(argv[3]) : 512);
    if (strcmp(cmd, "rw") == 0)
        return cmd_rw(uri);
    if (strcmp(cmd, "pr") == 0)
        return cmd_pr(uri);
    if (strcmp(cmd, "ua") == 0 && argc > 3)
        return cmd_ua(uri, argv[3]);
    if (strcmp(cmd, "caw") == 0)
        return cmd_caw(uri, argc > 3 ? argv[3] : NULL);
    if ((strcmp(cmd, "stall") == 0 || strcmp(cmd, "lost") == 0) && argc > 3)
        return cmd_target_fault(uri, (pid_t)atoi(argv[3]), strcmp(cmd, "lost") == 0);
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
