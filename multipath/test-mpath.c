/* Unit tests of the multipath engine (lun.c) over two test paths to one
 * file. A test path ("tpath") wraps a file path and can be cut (commands
 * fail with -ENOTCONN, as after a lost session), made to time out
 * (-ETIMEDOUT, the command may still be "on the wire" until the path is
 * aborted), or answer writes with RESERVATION CONFLICT; it emulates PR
 * registration so re-registration and the register check can be seen.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "path.h"
#include "util.h"

#define BS 512
#define NBLOCKS 4096

/* T_FREEZE: a frozen link that keeps the target's session: commands are
 * held (not applied), TEST UNIT READY times out, and abort cannot confirm
 * (-EINPROGRESS) until tp_thaw() applies the held writes to the medium
 * (late, as the target would) and completes them with -ENOTCONN. */
enum tmode { T_UP, T_CUT, T_TIMEOUT, T_CONFLICT, T_HANG, T_FREEZE };

struct tpath {
    struct lun_path base;
    struct lun_path *inner;
    _Atomic int mode;
    _Atomic unsigned submitted, writes, aborts, tur;
    _Atomic bool aborted_since_timeout; /* set by abort, cleared when a write times out */
    _Atomic unsigned stale_violations;  /* a timed-out write re-issued on the peer too early */
    _Atomic uint64_t reg_key;           /* emulated PR registration of this I_T nexus */
    _Atomic unsigned registers;
    struct tpath *peer;
    _Atomic uint64_t timed_out_lba; /* lba of the last write that timed out, +1 */
    /* Any sense on this path: the next s_count commands (-1: all) fail with
     * s_err and the sense triple; with s_tur, TEST UNIT READY too. */
    _Atomic int s_count, s_err;
    _Atomic uint8_t s_key, s_asc, s_ascq;
    _Atomic bool s_tur;
    /* tur_gate: TEST UNIT READY waits (tur_waiting counts) until cleared. */
    _Atomic bool tur_gate;
    _Atomic unsigned tur_waiting;
    /* T_HANG: a silently dead link. Commands and TUR never answer until
     * the path is aborted. */
    pthread_mutex_t hm;
    pthread_cond_t hc;
    struct lun_io *held[64];
    unsigned nheld;
    unsigned abort_gen;
};

static void tp_inner_done(struct lun_io *io, int result);

static int tp_probe(struct lun_path *p, struct lun_info *info)
{
    struct tpath *t = p->priv;
    return t->inner->ops->probe(t->inner, info);
}

/* The inner file path completes into the tpath's own wrapper: the core's
 * done is kept in priv[5] (file.c uses priv[3]). */
static bool tp_sense_take(struct tpath *t)
{
    int c = t->s_count;
    while (c != 0) {
        if (c < 0 || atomic_compare_exchange_weak(&t->s_count, &c, c - 1))
            return true;
    }
    return false;
}

static void tp_sense(struct tpath *t, int n, int err, uint8_t key, uint8_t asc, uint8_t ascq,
                     bool tur)
{
    t->s_err = err;
    t->s_key = key;
    t->s_asc = asc;
    t->s_ascq = ascq;
    t->s_tur = tur;
    t->s_count = n;
}

static int tp_submit(struct lun_path *p, struct lun_io *io)
{
    struct tpath *t = p->priv;
    t->submitted++;
    int mode = t->mode;
    if (tp_sense_take(t)) {
        if (io->op == LUN_OP_WRITE)
            t->writes++;
        io->sense_key = t->s_key;
        io->asc = t->s_asc;
        io->ascq = t->s_ascq;
        io->done(io, t->s_err);
        return 0;
    }
    if (io->op == LUN_OP_WRITE) {
        t->writes++;
        /* A write the peer timed out on must not arrive here before the
         * peer's session was torn down. */
        if (t->peer && t->peer->timed_out_lba == io->lba + 1 && !t->peer->aborted_since_timeout)
            t->stale_violations++;
    }
    if (mode == T_CUT) {
        io->done(io, -ENOTCONN);
        return 0;
    }
    if (mode == T_TIMEOUT) {
        if (io->op == LUN_OP_WRITE) {
            t->timed_out_lba = io->lba + 1;
            t->aborted_since_timeout = false;
        }
        io->done(io, -ETIMEDOUT);
        return 0;
    }
    if (mode == T_HANG || mode == T_FREEZE) {
        pthread_mutex_lock(&t->hm);
        assert_true(t->nheld < 64);
        t->held[t->nheld++] = io;
        pthread_mutex_unlock(&t->hm);
        return 0;
    }
    if (mode == T_CONFLICT && io->op == LUN_OP_WRITE) {
        io->done(io, -EBADE);
        return 0;
    }
    io->priv[5] = (void *)io->done;

    io->done = tp_inner_done;
    int rc = t->inner->ops->submit(t->inner, io);
    if (rc < 0)
        io->done = (lun_io_done_fn)io->priv[5];
    return rc;
}

static void tp_inner_done(struct lun_io *io, int result)
{
    io->done = (lun_io_done_fn)io->priv[5];
    io->done(io, result);
}

static int tp_pr_out(struct lun_path *p, enum lun_pr_action action, uint64_t key, uint64_t sa_key,
                     enum lun_pr_type type)
{
    (void)key;
    (void)type;
    struct tpath *t = p->priv;
    if (t->mode == T_CUT)
        return -ENOTCONN;
    if (action != LUN_PR_ACT_REGISTER_IGNORE)
        return -EOPNOTSUPP;
    t->reg_key = sa_key;
    t->registers++;
    return 0;
}

static int tp_pr_in(struct lun_path *p, struct lun_pr_state *out)
{
    (void)p;
    (void)out;
    return -EOPNOTSUPP;
}

static int tp_tur(struct lun_path *p)
{
    struct tpath *t = p->priv;
    t->tur++;
    int mode = t->mode;
    if (t->s_tur && t->s_count)
        return t->s_err;
    if (mode == T_FREEZE)
        return -ETIMEDOUT;
    if (t->tur_gate) {
        t->tur_waiting++;
        while (t->tur_gate)
            usleep(1000);
    }
    if (mode == T_CUT)
        return -ENOTCONN;
    /* T_TIMEOUT: TEST UNIT READY still answers (only data commands time
     * out), so the path fails by its writes, not by the checker. */
    if (mode == T_HANG) {
        pthread_mutex_lock(&t->hm);
        unsigned g = t->abort_gen;
        while (t->abort_gen == g && t->mode == T_HANG)
            pthread_cond_wait(&t->hc, &t->hm);
        pthread_mutex_unlock(&t->hm);
        return -ENOTCONN;
    }
    return t->inner->ops->test_unit_ready(t->inner);
}

static int tp_abort(struct lun_path *p, unsigned wait_ms)
{
    (void)wait_ms;
    struct tpath *t = p->priv;
    t->aborts++;
    if (t->mode == T_FREEZE)
        return -EINPROGRESS; /* cannot tell what the target will still do */
    t->aborted_since_timeout = true;
    pthread_mutex_lock(&t->hm);
    unsigned n = t->nheld;
    struct lun_io *h[64];
    memcpy(h, t->held, n * sizeof h[0]);
    t->nheld = 0;
    t->abort_gen++;
    pthread_cond_broadcast(&t->hc);
    pthread_mutex_unlock(&t->hm);
    for (unsigned i = 0; i < n; i++)
        h[i]->done(h[i], -ENOTCONN);
    return 0;
}

/* The frozen link comes back: the target executes the held writes now
 * (after whatever the LUN did meanwhile), then the session's teardown is
 * confirmed: they complete with -ENOTCONN. */
static void tp_thaw(struct tpath *t, const char *file)
{
    pthread_mutex_lock(&t->hm);
    unsigned n = t->nheld;
    struct lun_io *h[64];
    memcpy(h, t->held, n * sizeof h[0]);
    t->nheld = 0;
    pthread_mutex_unlock(&t->hm);
    int fd = open(file, O_WRONLY);
    assert_true(fd >= 0);
    for (unsigned i = 0; i < n; i++)
        if (h[i]->op == LUN_OP_WRITE)
            assert_int_equal(
                pwrite(fd, h[i]->buf, (size_t)h[i]->nblocks * BS, (off_t)(h[i]->lba * BS)),
                (ssize_t)h[i]->nblocks * BS);
    close(fd);
    t->mode = T_UP;
    for (unsigned i = 0; i < n; i++)
        h[i]->done(h[i], -ENOTCONN);
}

static void tp_close(struct lun_path *p)
{
    struct tpath *t = p->priv;
    lun_path_close(t->inner);
    pthread_mutex_destroy(&t->hm);
    pthread_cond_destroy(&t->hc);
    free(t->base.name);
    free(t);
}

static const struct lun_path_ops tp_ops = {
    .kind = "test",
    .probe = tp_probe,
    .submit = tp_submit,
    .pr_out = tp_pr_out,
    .pr_in = tp_pr_in,
    .test_unit_ready = tp_tur,
    .close = tp_close,
    .abort = tp_abort,
};

struct fixture {
    char file[256];
    struct lun *lun;
    struct tpath *tp[2];
};

static void fixture_open(struct fixture *fx, struct lun_options *o)
{
    const char *dir = getenv("TMPDIR");
    snprintf(fx->file, sizeof fx->file, "%s/test-mpath-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(fx->file);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)NBLOCKS * BS), 0);
    close(fd);
    struct lun_path *paths[2];
    for (int i = 0; i < 2; i++) {
        struct tpath *t = calloc(1, sizeof *t);
        assert_non_null(t);
        pthread_mutex_init(&t->hm, NULL);
        pthread_cond_init(&t->hc, NULL);
        assert_int_equal(lun_path_open_file(fx->file, o, &t->inner), 0);
        char name[300];
        snprintf(name, sizeof name, "test%d:%s", i, fx->file);
        t->base.name = strdup(name);
        t->base.ops = &tp_ops;
        t->base.priv = t;
        fx->tp[i] = t;
        paths[i] = &t->base;
    }
    fx->tp[0]->peer = fx->tp[1];
    fx->tp[1]->peer = fx->tp[0];
    assert_int_equal(lun_open_with_paths(paths, 2, o, &fx->lun), 0);
}

static void fixture_close(struct fixture *fx)
{
    lun_close(fx->lun);
    unlink(fx->file);
}

static void opts_fast(struct lun_options *o, enum lun_policy pol)
{
    lun_options_init(o);
    o->policy = pol;
    o->check_interval_ms = 20;
    o->check_timeout_ms = 3000; /* no false alarms on a loaded machine */
    o->flap_count = 100;        /* no hysteresis unless a test wants it */
    o->flap_hold_ms = 100;
    o->queue_ms = 5000;
}

static void fill(uint8_t *b, uint64_t lba, uint32_t stamp)
{
    for (unsigned i = 0; i < BS; i += 12) {
        uint64_t v = lba;
        memcpy(b + i, &v, 8 < BS - i ? 8 : BS - i);
        if (i + 8 < BS)
            memcpy(b + i + 8, &stamp, 4 < BS - i - 8 ? 4 : BS - i - 8);
    }
}

static enum lun_path_state state_of(struct lun *lun, unsigned i)
{
    struct lun_path_stats st;
    assert_int_equal(lun_path_get_stats(lun, i, &st), 0);
    return st.state;
}

static bool wait_state(struct lun *lun, unsigned i, enum lun_path_state want, unsigned ms)
{
    for (unsigned t = 0; t < ms; t += 5) {
        if (state_of(lun, i) == want)
            return true;
        usleep(5000);
    }
    return state_of(lun, i) == want;
}

/* Every ERR/WARN message (the engine logs from its own threads). */
static char logbuf[65536];
static pthread_mutex_t logm = PTHREAD_MUTEX_INITIALIZER;

static void log_capture(enum log_level level, const char *msg, void *opaque)
{
    (void)level;
    (void)opaque;
    pthread_mutex_lock(&logm);
    size_t n = strlen(logbuf);
    if (n + strlen(msg) + 2 >= sizeof logbuf)
        n = 0; /* keep the latest */
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", msg);
    pthread_mutex_unlock(&logm);
}

static bool logged(const char *what)
{
    pthread_mutex_lock(&logm);
    bool f = strstr(logbuf, what) != NULL;
    pthread_mutex_unlock(&logm);
    return f;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_round_robin_uses_both_paths(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    o.rr_ios = 1;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS];
    for (unsigned i = 0; i < 200; i++) {
        fill(b, i, 1);
        assert_int_equal(lun_write(fx.lun, i, 1, b, 0), 0);
    }
    struct lun_path_stats s0, s1;
    assert_int_equal(lun_path_get_stats(fx.lun, 0, &s0), 0);
    assert_int_equal(lun_path_get_stats(fx.lun, 1, &s1), 0);
    assert_int_equal(s0.writes + s1.writes, 200);
    assert_int_equal(s0.writes, 100);
    assert_int_equal(s1.writes, 100);
    assert_int_equal(s0.write_bytes, 100 * BS);
    assert_int_equal(s0.state, LUN_PATH_ACTIVE);
    assert_int_equal(s1.state, LUN_PATH_ACTIVE);
    assert_true(lun_lat_percentile(s0.lat_hist, 0.5) > 0);
    assert_int_equal(fx.tp[0]->writes, 100);
    assert_int_equal(fx.tp[1]->writes, 100);
    fixture_close(&fx);
}

static void test_round_robin_switches_every_n_ios(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    o.rr_ios = 10;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS];
    fill(b, 0, 0);
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(lun_write(fx.lun, i, 1, b, 0), 0);
    /* 10 I/Os went to one path, then the next 10 to the other. */
    unsigned first = fx.tp[0]->writes == 10 ? 0 : 1;
    assert_int_equal(fx.tp[first]->writes, 10);
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(lun_write(fx.lun, i, 1, b, 0), 0);
    assert_int_equal(fx.tp[0]->writes, 10);
    assert_int_equal(fx.tp[1]->writes, 10);
    fixture_close(&fx);
}

/* A chain of writes, each submitted from the previous one's completion
 * callback (how a caller keeps a queue full). */
struct chain {
    struct lun_io io;
    struct lun *lun;
    unsigned left;
    pthread_mutex_t *m;
    pthread_cond_t *c;
    unsigned *running;
    _Atomic bool *stop; /* NULL: run `left` more writes */
    int result;
    uint8_t buf[BS];
};

static void chain_done(struct lun_io *io, int result)
{
    struct chain *ch = io->opaque;
    if (result == 0 && ch->left > 0 && !(ch->stop && *ch->stop)) {
        ch->left--;
        int rc = lun_submit(ch->lun, &ch->io);
        if (rc == 0)
            return;
        result = rc;
    }
    pthread_mutex_lock(ch->m);
    ch->result = result;
    (*ch->running)--;
    pthread_cond_signal(ch->c);
    pthread_mutex_unlock(ch->m);
}

/* Round-robin, resubmission from completion callbacks: each chain stays on
 * the path it started on (no bounce to the other path's thread) because
 * the queue is spread evenly; the spread is the one the first round got
 * (chains 0 and 2 on one path, chain 1 on the other), not a rotation of
 * every I/O (which would give each path half of all writes). */
static void test_round_robin_resubmission_stays_on_completing_path(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    o.rr_ios = 1;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    enum { NCHAIN = 3, PER = 40 };
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    unsigned running = NCHAIN;
    struct chain ch[NCHAIN];
    memset(ch, 0, sizeof ch);
    for (unsigned k = 0; k < NCHAIN; k++) {
        ch[k].lun = fx.lun;
        ch[k].left = PER - 1;
        ch[k].m = &m;
        ch[k].c = &c;
        ch[k].running = &running;
        fill(ch[k].buf, k, 1);
        ch[k].io = (struct lun_io){.op = LUN_OP_WRITE,
                                   .lba = k,
                                   .nblocks = 1,
                                   .buf = ch[k].buf,
                                   .done = chain_done,
                                   .opaque = &ch[k]};
    }
    /* Submitted from here, so the plain rotation applies: 0, 1, 0. */
    for (unsigned k = 0; k < NCHAIN; k++)
        assert_int_equal(lun_submit(fx.lun, &ch[k].io), 0);
    pthread_mutex_lock(&m);
    while (running > 0)
        pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    for (unsigned k = 0; k < NCHAIN; k++)
        assert_int_equal(ch[k].result, 0);
    unsigned w0 = fx.tp[0]->writes, w1 = fx.tp[1]->writes;
    assert_int_equal(w0 + w1, NCHAIN * PER);
    /* Which path took two chains depends on where the rotation stood. */
    assert_true((w0 == 2 * PER && w1 == PER) || (w0 == PER && w1 == 2 * PER));
    fixture_close(&fx);
}

/* Round-robin locality does not pin the queue: after a path failed (every
 * chain moved to the survivor) and came back, resubmissions from the
 * survivor's callbacks hand work over to it (the survivor has more than
 * rr_ios commands beyond the least busy path), so both carry writes again. */
static void test_round_robin_returning_path_gets_resubmissions(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    o.rr_ios = 1;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    enum { NCHAIN = 8 };
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    unsigned running = NCHAIN;
    _Atomic bool stop = false;
    struct chain ch[NCHAIN];
    memset(ch, 0, sizeof ch);
    for (unsigned k = 0; k < NCHAIN; k++) {
        ch[k].lun = fx.lun;
        ch[k].left = UINT32_MAX;
        ch[k].m = &m;
        ch[k].c = &c;
        ch[k].running = &running;
        ch[k].stop = &stop;
        fill(ch[k].buf, k, 2);
        ch[k].io = (struct lun_io){.op = LUN_OP_WRITE,
                                   .lba = k,
                                   .nblocks = 1,
                                   .buf = ch[k].buf,
                                   .done = chain_done,
                                   .opaque = &ch[k]};
    }
    for (unsigned k = 0; k < NCHAIN; k++)
        assert_int_equal(lun_submit(fx.lun, &ch[k].io), 0);
    fx.tp[1]->mode = T_CUT;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_FAILED, 5000));
    /* Every chain now runs on path 0. */
    unsigned w0 = fx.tp[0]->writes;
    for (unsigned t = 0; t < 5000 && fx.tp[0]->writes < w0 + 200; t += 5)
        usleep(5000);
    assert_true(fx.tp[0]->writes >= w0 + 200);
    fx.tp[1]->mode = T_UP;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_ACTIVE, 5000));
    unsigned w1 = fx.tp[1]->writes;
    for (unsigned t = 0; t < 5000 && fx.tp[1]->writes < w1 + 200; t += 5)
        usleep(5000);
    assert_true(fx.tp[1]->writes >= w1 + 200);
    stop = true;
    pthread_mutex_lock(&m);
    while (running > 0)
        pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    for (unsigned k = 0; k < NCHAIN; k++)
        assert_int_equal(ch[k].result, 0);
    fixture_close(&fx);
}

struct stream {
    struct lun *lun;
    _Atomic bool stop;
    _Atomic unsigned errors, done;
    uint32_t stamp;
};

/* Sequential writes of block i, each read back and compared at once. */
static void *stream_thread(void *arg)
{
    struct stream *st = arg;
    uint8_t w[BS * 4], r[BS * 4];
    for (uint64_t i = 0; !st->stop; i = (i + 4) % NBLOCKS) {
        for (unsigned k = 0; k < 4; k++)
            fill(w + k * BS, i + k, st->stamp);
        if (lun_write(st->lun, i, 4, w, 0) != 0 || lun_read(st->lun, i, 4, r) != 0 ||
            memcmp(w, r, sizeof w) != 0)
            st->errors++;
        st->done++;
    }
    return NULL;
}

/* Did the stream complete more I/Os within ms? */
static bool wait_progress(struct stream *st, unsigned ms)
{
    unsigned d = st->done;
    for (unsigned t = 0; t < ms; t += 10) {
        usleep(10000);
        if (st->done > d + 5)
            return true;
    }
    return false;
}

static void test_cut_path_midstream_no_errors_and_failback_fixed(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    o.preferred_path = 0;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_ACTIVE);
    assert_int_equal(state_of(fx.lun, 1), LUN_PATH_STANDBY);
    struct stream st = {.lun = fx.lun, .stamp = 7};
    pthread_t th;
    pthread_create(&th, NULL, stream_thread, &st);
    usleep(100000);
    fx.tp[0]->mode = T_CUT;
    assert_true(wait_progress(&st, 5000)); /* I/O kept flowing */
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_FAILED);
    assert_int_equal(state_of(fx.lun, 1), LUN_PATH_ACTIVE);
    struct lun_path_stats s0;
    lun_path_get_stats(fx.lun, 0, &s0);
    assert_true(s0.failures >= 1);
    assert_true(s0.last_error[0] != 0);
    unsigned w1 = fx.tp[1]->writes;
    fx.tp[0]->mode = T_UP;
    assert_true(wait_state(fx.lun, 0, LUN_PATH_ACTIVE, 5000)); /* fixed: fail back */
    usleep(100000);
    assert_int_equal(state_of(fx.lun, 1), LUN_PATH_STANDBY);
    unsigned w0 = fx.tp[0]->writes;
    for (int k = 0; k < 500 && fx.tp[0]->writes <= w0; k++)
        usleep(10000);
    assert_true(fx.tp[0]->writes > w0);
    (void)w1;
    st.stop = true;
    pthread_join(th, NULL);
    assert_int_equal(st.errors, 0);
    assert_true(fx.tp[0]->aborts >= 1);
    /* Every block written by the stream verifies. */
    uint8_t b[BS], e[BS];
    unsigned n = st.done * 4 < NBLOCKS ? st.done * 4 : NBLOCKS;
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(lun_read(fx.lun, i, 1, b), 0);
        fill(e, i, 7);
        assert_memory_equal(b, e, BS);
    }
    fixture_close(&fx);
}

/* A silently dead link: nothing answers, no error ever comes back. The TUR
 * watchdog fails the path after check_timeout_ms, the abort returns the
 * stuck commands, and they are re-issued on the other path: the caller sees
 * no error and a stall well under 2 s (defaults: 250 ms checks, 1 s). */
static void test_silently_dead_path_detected_by_checker(void **state)
{
    (void)state;
    struct lun_options o;
    lun_options_init(&o);
    o.policy = LUN_POLICY_ROUND_ROBIN;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    struct stream st = {.lun = fx.lun, .stamp = 11};
    pthread_t th;
    pthread_create(&th, NULL, stream_thread, &st);
    usleep(200000);
    uint64_t t0 = now_ns();
    fx.tp[0]->mode = T_HANG;
    assert_true(wait_state(fx.lun, 0, LUN_PATH_FAILED, 8000));
    uint64_t ms = (now_ns() - t0) / 1000000;
    print_message("silent path death detected after %llu ms\n", (unsigned long long)ms);
    assert_true(ms < 8000);                /* ~1.25 s on an idle machine; not a benchmark */
    assert_true(wait_progress(&st, 5000)); /* flowing on path 1 */
    struct lun_path_stats s0;
    lun_path_get_stats(fx.lun, 0, &s0);
    assert_non_null(strstr(s0.last_error, "TEST UNIT READY"));
    assert_true(fx.tp[0]->aborts >= 1);
    st.stop = true;
    pthread_join(th, NULL);
    assert_int_equal(st.errors, 0);
    fx.tp[0]->mode = T_UP;
    pthread_mutex_lock(&fx.tp[0]->hm);
    pthread_cond_broadcast(&fx.tp[0]->hc);
    pthread_mutex_unlock(&fx.tp[0]->hm);
    fixture_close(&fx);
}

static void test_mru_stays_on_the_path_it_moved_to(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_MRU);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS];
    fill(b, 0, 0);
    assert_int_equal(lun_write(fx.lun, 0, 1, b, 0), 0);
    assert_int_equal(fx.tp[0]->writes, 1);
    fx.tp[0]->mode = T_CUT;
    assert_int_equal(lun_write(fx.lun, 0, 1, b, 0), 0);
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_FAILED);
    fx.tp[0]->mode = T_UP;
    assert_true(wait_state(fx.lun, 0, LUN_PATH_STANDBY, 5000));
    unsigned w0 = fx.tp[0]->writes;
    for (int i = 0; i < 20; i++)
        assert_int_equal(lun_write(fx.lun, 0, 1, b, 0), 0);
    assert_int_equal(fx.tp[0]->writes, w0); /* stayed on path 1 */
    assert_int_equal(state_of(fx.lun, 1), LUN_PATH_ACTIVE);
    fixture_close(&fx);
}

static void test_timed_out_write_not_reissued_before_teardown(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS], r[BS];
    fx.tp[0]->mode = T_TIMEOUT;
    for (unsigned i = 0; i < 20; i++) {
        fill(b, i, 3);
        assert_int_equal(lun_write(fx.lun, i, 1, b, 0), 0);
        assert_int_equal(lun_read(fx.lun, i, 1, r), 0);
        assert_memory_equal(b, r, BS);
        if (i == 5)
            fx.tp[0]->mode = T_UP; /* comes back; fixed fails back later */
        usleep(10000);
    }
    assert_true(fx.tp[0]->aborts >= 1);
    assert_int_equal(fx.tp[1]->stale_violations, 0);
    assert_int_equal(fx.tp[0]->stale_violations, 0);
    fixture_close(&fx);
}

static void test_flapping_path_is_held_back(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    o.flap_count = 3;
    o.flap_window_ms = 10000;
    o.flap_hold_ms = 3000;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    struct stream st = {.lun = fx.lun, .stamp = 9};
    pthread_t th;
    pthread_create(&th, NULL, stream_thread, &st);
    for (int k = 0; k < 3; k++) {
        fx.tp[0]->mode = T_CUT;
        assert_true(wait_state(fx.lun, 0, LUN_PATH_FAILED, 5000));
        fx.tp[0]->mode = T_UP;
        if (k < 2)
            assert_true(wait_state(fx.lun, 0, LUN_PATH_ACTIVE, 5000));
    }
    /* Third failure within the window: held for ~3 s although healthy. */
    usleep(200000);
    struct lun_path_stats s0;
    lun_path_get_stats(fx.lun, 0, &s0);
    assert_int_equal(s0.state, LUN_PATH_FAILED);
    assert_true(s0.held);
    assert_int_equal(s0.failures, 3);
    assert_true(wait_state(fx.lun, 0, LUN_PATH_ACTIVE, 10000));
    st.stop = true;
    pthread_join(th, NULL);
    assert_int_equal(st.errors, 0);
    fixture_close(&fx);
}

struct async_one {
    pthread_mutex_t m;
    pthread_cond_t c;
    bool done;
    int result;
};

static void async_done(struct lun_io *io, int result)
{
    struct async_one *a = io->opaque;
    pthread_mutex_lock(&a->m);
    a->done = true;
    a->result = result;
    pthread_cond_signal(&a->c);
    pthread_mutex_unlock(&a->m);
}

static void test_all_paths_down_shorter_than_queue_time_resumes(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_SERVICE_TIME);
    o.queue_ms = 3000;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    fx.tp[0]->mode = T_CUT;
    fx.tp[1]->mode = T_CUT;
    uint8_t b[BS * 8], r[BS * 8];
    for (unsigned k = 0; k < 8; k++)
        fill(b + k * BS, 100 + k, 5);
    struct async_one a = {.done = false};
    pthread_mutex_init(&a.m, NULL);
    pthread_cond_init(&a.c, NULL);
    struct lun_io io = {
        .op = LUN_OP_WRITE, .lba = 100, .nblocks = 8, .buf = b, .done = async_done, .opaque = &a};
    assert_int_equal(lun_submit(fx.lun, &io), 0);
    usleep(400000);
    pthread_mutex_lock(&a.m);
    assert_false(a.done);
    pthread_mutex_unlock(&a.m);
    assert_int_equal(lun_queued_ios(fx.lun), 1);
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_FAILED);
    assert_int_equal(state_of(fx.lun, 1), LUN_PATH_FAILED);
    fx.tp[1]->mode = T_UP;
    pthread_mutex_lock(&a.m);
    while (!a.done)
        pthread_cond_wait(&a.c, &a.m);
    pthread_mutex_unlock(&a.m);
    assert_int_equal(a.result, 0);
    assert_int_equal(lun_read(fx.lun, 100, 8, r), 0);
    assert_memory_equal(b, r, sizeof b);
    pthread_cond_destroy(&a.c);
    pthread_mutex_destroy(&a.m);
    fixture_close(&fx);
}

static void test_all_paths_down_longer_than_queue_time_fails_eio(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    o.queue_ms = 400;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    fx.tp[0]->mode = T_CUT;
    fx.tp[1]->mode = T_CUT;
    uint8_t b[BS];
    fill(b, 1, 1);
    uint64_t t0 = now_ns();
    assert_int_equal(lun_write(fx.lun, 1, 1, b, 0), -EIO);
    uint64_t ms = (now_ns() - t0) / 1000000;
    assert_true(ms >= 300);
    assert_true(ms < 10000); /* 400 ms + a monitor tick; generous for loaded CI */
    assert_true(logged("all paths down"));
    assert_int_equal(lun_read(fx.lun, 1, 1, b), -EIO);
    assert_int_equal(lun_queued_ios(fx.lun), 0);
    fixture_close(&fx);
}

/* Wait up to ms for an async I/O to complete; true if it did. */
static bool async_wait(struct async_one *a, unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&a->m);
    while (!a->done && pthread_cond_timedwait(&a->c, &a->m, &ts) == 0)
        ;
    bool d = a->done;
    pthread_mutex_unlock(&a->m);
    return d;
}

/* All paths down, a write with a deadline waits in the queue: at its
 * deadline it fails with -ETIMEDOUT and is never drained to a path that
 * comes back later (issue 10 item 3). */
static void test_queued_write_fails_at_deadline_not_drained(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_SERVICE_TIME);
    o.queue_ms = 60000;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    fx.tp[0]->mode = T_CUT;
    fx.tp[1]->mode = T_CUT;
    uint8_t b[BS], r[BS];
    fill(b, 7, 41);
    struct async_one a = {.done = false};
    pthread_mutex_init(&a.m, NULL);
    pthread_cond_init(&a.c, NULL);
    struct lun_io io = {.op = LUN_OP_WRITE,
                        .lba = 7,
                        .nblocks = 1,
                        .buf = b,
                        .done = async_done,
                        .opaque = &a,
                        .deadline_ns = lun_now_ns() + 300000000ull};
    assert_int_equal(lun_submit(fx.lun, &io), 0);
    /* Fails by itself at the deadline, with no path back (the old code
     * kept it queued for queue_ms = 60 s). */
    assert_true(async_wait(&a, 5000));
    assert_int_equal(a.result, -ETIMEDOUT);
    assert_true(logged("deadline passed"));
    assert_int_equal(lun_queued_ios(fx.lun), 0);
    unsigned w1 = fx.tp[1]->writes;
    fx.tp[1]->mode = T_UP;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_ACTIVE, 5000));
    usleep(100000); /* a few monitor ticks: nothing left to drain */
    assert_int_equal(fx.tp[1]->writes, w1);
    assert_int_equal(lun_read(fx.lun, 7, 1, r), 0);
    uint8_t zero[BS] = {0};
    assert_memory_equal(r, zero, BS);
    pthread_cond_destroy(&a.c);
    pthread_mutex_destroy(&a.m);
    fixture_close(&fx);
}

/* lun_fence_self: queued writes fail at once with -EBADE, a queued read
 * stays queued and completes when a path returns; later writes fail at
 * submission until lun_pr_register. */
static void test_fence_self_fails_queued_writes_keeps_reads(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    o.queue_ms = 60000;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    fx.tp[0]->mode = T_CUT;
    fx.tp[1]->mode = T_CUT;
    uint8_t b[BS], r[BS];
    fill(b, 9, 42);
    struct async_one w = {.done = false}, rd = {.done = false};
    pthread_mutex_init(&w.m, NULL);
    pthread_cond_init(&w.c, NULL);
    pthread_mutex_init(&rd.m, NULL);
    pthread_cond_init(&rd.c, NULL);
    struct lun_io wio = {
        .op = LUN_OP_WRITE, .lba = 9, .nblocks = 1, .buf = b, .done = async_done, .opaque = &w};
    struct lun_io rio = {
        .op = LUN_OP_READ, .lba = 9, .nblocks = 1, .buf = r, .done = async_done, .opaque = &rd};
    assert_int_equal(lun_submit(fx.lun, &wio), 0);
    assert_int_equal(lun_submit(fx.lun, &rio), 0);
    for (int k = 0; k < 500 && lun_queued_ios(fx.lun) < 2; k++)
        usleep(10000);
    assert_int_equal(lun_queued_ios(fx.lun), 2);
    lun_fence_self(fx.lun);
    assert_true(async_wait(&w, 2000));
    assert_int_equal(w.result, -EBADE);
    assert_true(lun_is_fenced(fx.lun));
    assert_int_equal(lun_queued_ios(fx.lun), 1);
    assert_false(async_wait(&rd, 50));
    assert_int_equal(lun_write(fx.lun, 10, 1, b, 0), -EBADE);
    unsigned w0 = fx.tp[0]->writes + fx.tp[1]->writes;
    fx.tp[1]->mode = T_UP;
    assert_true(async_wait(&rd, 5000));
    assert_int_equal(rd.result, 0);
    uint8_t zero[BS] = {0};
    assert_memory_equal(r, zero, BS);
    assert_int_equal(fx.tp[0]->writes + fx.tp[1]->writes, w0);
    /* Rejoin: the key is registered again and writes flow. */
    assert_int_equal(lun_pr_register(fx.lun, 0xABC), 0);
    assert_false(lun_is_fenced(fx.lun));
    assert_int_equal(lun_write(fx.lun, 9, 1, b, 0), 0);
    pthread_cond_destroy(&w.c);
    pthread_mutex_destroy(&w.m);
    pthread_cond_destroy(&rd.c);
    pthread_mutex_destroy(&rd.m);
    fixture_close(&fx);
}

/* ---- Real targets' errors (issue 15 item 3, 4, 5) --------------------- */

/* BUSY / TASK SET FULL: retried on the same path after a back-off (10 ms
 * doubling), not 5 times at once and then an error; the path stays up and
 * nothing goes to the other path. */
static void test_busy_is_retried_with_backoff_on_the_same_path(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS], r[BS];
    fill(b, 3, 77);
    tp_sense(fx.tp[0], 7, -EBUSY, 0, 0, 0, false); /* BUSY status: no sense */
    uint64_t t0 = now_ns();
    assert_int_equal(lun_write(fx.lun, 3, 1, b, 0), 0);
    uint64_t ms = (now_ns() - t0) / 1000000;
    assert_true(ms >= 1200); /* 10+20+...+640 ms of back-off, not 7 tries at once */
    assert_int_equal(fx.tp[0]->writes, 8);
    assert_int_equal(fx.tp[1]->writes, 0);
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_ACTIVE);
    assert_int_equal(lun_read(fx.lun, 3, 1, r), 0);
    assert_memory_equal(b, r, BS);
    /* NOT READY 04/0A (ALUA transition) is transient too. */
    tp_sense(fx.tp[0], 3, -EBUSY, 0x2, 0x04, 0x0A, false);
    assert_int_equal(lun_write(fx.lun, 3, 1, b, 0), 0);
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_ACTIVE);
    fixture_close(&fx);
}

/* A BUSY that never ends stops at the I/O's deadline. */
static void test_busy_retries_stop_at_the_deadline(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS];
    fill(b, 4, 1);
    tp_sense(fx.tp[0], -1, -EBUSY, 0, 0, 0, false);
    assert_int_equal(lun_write_dl(fx.lun, 4, 1, b, 0, lun_now_ns() + 300000000ull), -ETIMEDOUT);
    assert_int_equal(fx.tp[1]->writes, 0);
    tp_sense(fx.tp[0], 0, 0, 0, 0, 0, false);
    fixture_close(&fx);
}

/* TASK ABORTED / ABORTED COMMAND (another host's LOGICAL UNIT RESET): the
 * command is retried where it was, the path is not failed. */
static void test_task_aborted_is_retried_without_failing_the_path(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS];
    fill(b, 5, 1);
    tp_sense(fx.tp[0], 2, -ECANCELED, 0, 0, 0, false); /* TASK ABORTED status */
    assert_int_equal(lun_write(fx.lun, 5, 1, b, 0), 0);
    tp_sense(fx.tp[0], 1, -ECANCELED, 0xB, 0x00, 0x00, false); /* ABORTED COMMAND */
    assert_int_equal(lun_write(fx.lun, 5, 1, b, 0), 0);
    struct lun_path_stats st;
    lun_path_get_stats(fx.lun, 0, &st);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.state, LUN_PATH_ACTIVE);
    assert_int_equal(fx.tp[1]->writes, 0);
    assert_int_equal(fx.tp[0]->aborts, 0);
    fixture_close(&fx);
}

/* 05/25/00 on one path only: that path is failed (by I/O and by its TEST
 * UNIT READY) and the I/O goes on through the other; on every path the
 * LUN is gone: -ENODEV. */
static void test_pdl_on_one_path_fails_that_path_only(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_ROUND_ROBIN);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t b[BS];
    tp_sense(fx.tp[0], -1, -ENODEV, 0x5, 0x25, 0x00, true);
    for (unsigned i = 0; i < 20; i++) {
        fill(b, i, 9);
        assert_int_equal(lun_write(fx.lun, i, 1, b, 0), 0);
    }
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_FAILED);
    struct lun_path_stats st;
    lun_path_get_stats(fx.lun, 0, &st);
    assert_non_null(strstr(st.last_error, "05/25/00"));
    assert_int_equal(state_of(fx.lun, 1), LUN_PATH_ACTIVE);
    /* Now the other path too: the LUN is gone, at once (not queued). */
    tp_sense(fx.tp[1], -1, -ENODEV, 0x5, 0x25, 0x00, true);
    uint64_t t0 = now_ns();
    assert_int_equal(lun_write(fx.lun, 1, 1, b, 0), -ENODEV);
    assert_true((now_ns() - t0) / 1000000 < o.queue_ms);
    /* Both paths failed by it: new I/O fails at once, it is not queued
     * as if all paths were down. */
    assert_true(wait_state(fx.lun, 1, LUN_PATH_FAILED, 5000));
    t0 = now_ns();
    assert_int_equal(lun_write(fx.lun, 2, 1, b, 0), -ENODEV);
    assert_true((now_ns() - t0) / 1000000 < o.queue_ms);
    assert_int_equal(lun_queued_ios(fx.lun), 0);
    fixture_close(&fx);
}

/* PREEMPT raises 2A/05 REGISTRATIONS PREEMPTED (SPC-4): fenced, -EBADE,
 * not retried until it succeeds. */
static void test_registrations_preempted_fences(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    assert_int_equal(lun_pr_register(fx.lun, 0x42), 0);
    uint8_t b[BS];
    fill(b, 6, 1);
    tp_sense(fx.tp[0], 1, -EBADE, 0x6, 0x2A, 0x05, false); /* iscsi.c: sense -> -EBADE */
    assert_int_equal(lun_write(fx.lun, 6, 1, b, 0), -EBADE);
    assert_true(lun_is_fenced(fx.lun));
    fixture_close(&fx);
}

/* The owner registers its key while a path is coming back (after its
 * login, before it is up): the path must come up registered with that key,
 * not unregistered (its first write would then look like a fence). */
static void test_register_during_recovery_registers_the_returning_path(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    fx.tp[1]->mode = T_CUT;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_FAILED, 5000));
    fx.tp[1]->tur_gate = true;
    fx.tp[1]->mode = T_UP;
    for (int k = 0; k < 1000 && fx.tp[1]->tur_waiting == 0; k++)
        usleep(5000);
    assert_true(fx.tp[1]->tur_waiting > 0); /* its recovery is in TEST UNIT READY */
    assert_int_equal(lun_pr_register(fx.lun, 0x77), 0);
    assert_int_equal(fx.tp[0]->reg_key, 0x77);
    assert_int_equal(fx.tp[1]->reg_key, 0); /* not up: skipped */
    fx.tp[1]->tur_gate = false;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_STANDBY, 5000));
    assert_int_equal(fx.tp[1]->reg_key, 0x77);
    fixture_close(&fx);
}

/* Abort before re-issue (issue 15 item 1, 6): a write in flight on a
 * frozen path that still holds the target's session is not re-issued
 * elsewhere while the path cannot confirm its teardown; writes to other
 * blocks go on through the other path; when the link comes back the
 * target applies the held (stale) write, only then is it re-issued, and a
 * newer write after it wins. */
static void test_frozen_path_write_held_until_teardown_confirmed(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    uint8_t v1[BS], v2[BS], v3[BS], r[BS];
    fill(v1, 10, 1);
    fill(v2, 10, 2);
    fill(v3, 10, 3);
    assert_int_equal(lun_write(fx.lun, 10, 1, v1, 0), 0);
    fx.tp[0]->mode = T_FREEZE;
    struct async_one a = {.done = false};
    pthread_mutex_init(&a.m, NULL);
    pthread_cond_init(&a.c, NULL);
    struct lun_io io = {
        .op = LUN_OP_WRITE, .lba = 10, .nblocks = 1, .buf = v2, .done = async_done, .opaque = &a};
    assert_int_equal(lun_submit(fx.lun, &io), 0);
    assert_true(wait_state(fx.lun, 0, LUN_PATH_FAILED, 5000));
    for (int k = 0; k < 500 && fx.tp[0]->aborts < 3; k++)
        usleep(2000);
    assert_true(fx.tp[0]->aborts >= 3); /* asked again and again: "not yet" */
    /* Other blocks go on through path 1. */
    uint8_t w[BS];
    fill(w, 20, 1);
    unsigned w1 = fx.tp[1]->writes;
    assert_int_equal(lun_write(fx.lun, 20, 1, w, 0), 0);
    assert_int_equal(fx.tp[1]->writes, w1 + 1);
    /* The held write was not re-issued, and is not done. */
    unsigned total = fx.tp[0]->writes + fx.tp[1]->writes;
    assert_false(async_wait(&a, 50));
    assert_int_equal(fx.tp[1]->writes, w1 + 1);
    assert_int_equal(fx.tp[0]->writes + fx.tp[1]->writes, total);
    /* Thaw: the target applies v2 now; then it may be re-issued (on
     * either path: path 0 comes back at once and is preferred). */
    tp_thaw(fx.tp[0], fx.file);
    assert_true(async_wait(&a, 5000));
    assert_int_equal(a.result, 0);
    assert_int_equal(fx.tp[0]->writes + fx.tp[1]->writes, total + 1); /* once, after the thaw */
    assert_int_equal(lun_write(fx.lun, 10, 1, v3, 0), 0);
    assert_int_equal(lun_read(fx.lun, 10, 1, r), 0);
    assert_memory_equal(r, v3, BS);
    pthread_cond_destroy(&a.c);
    pthread_mutex_destroy(&a.m);
    fixture_close(&fx);
}

/* The TUR watchdog does not fail a path whose TEST UNIT READY is slow (a
 * deep queue on a loaded machine) while the path keeps answering I/O
 * (issue 15 item 4); a path that answers nothing is still failed. */
static void test_slow_tur_on_a_busy_answering_path_is_not_failed(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    o.check_timeout_ms = 1000;
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    struct stream st = {.lun = fx.lun, .stamp = 4};
    pthread_t th;
    pthread_create(&th, NULL, stream_thread, &st);
    fx.tp[0]->tur_gate = true; /* its TEST UNIT READY hangs ... */
    usleep(3000000);           /* ... 3 times the watchdog's limit, I/O flowing */
    struct lun_path_stats s0;
    lun_path_get_stats(fx.lun, 0, &s0);
    assert_int_equal(s0.failures, 0);
    assert_int_equal(s0.state, LUN_PATH_ACTIVE);
    st.stop = true;
    pthread_join(th, NULL);
    assert_int_equal(st.errors, 0);
    /* Idle now: nothing answers, the hung TUR fails the path. */
    assert_true(wait_state(fx.lun, 0, LUN_PATH_FAILED, 5000));
    fx.tp[0]->tur_gate = false;
    fixture_close(&fx);
}

static void test_flush_and_reads_fail_over_too(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_SERVICE_TIME);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    fx.tp[1]->mode = T_CUT;
    uint8_t b[BS];
    for (int i = 0; i < 10; i++) {
        assert_int_equal(lun_read(fx.lun, 0, 1, b), 0);
        assert_int_equal(lun_flush(fx.lun), 0);
    }
    assert_int_equal(lun_test_unit_ready(fx.lun), 0);
    fixture_close(&fx);
}

static int check_result;
static _Atomic unsigned check_calls;
static int register_check(void *opaque)
{
    (void)opaque;
    check_calls++;
    return check_result;
}

static void test_reconnect_reregisters_key_after_check(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    lun_set_register_check(fx.lun, register_check, NULL);
    check_result = 1;
    check_calls = 0;
    assert_int_equal(lun_pr_register(fx.lun, 0xabc), 0);
    assert_int_equal(fx.tp[0]->reg_key, 0xabc);
    assert_int_equal(fx.tp[1]->reg_key, 0xabc);
    /* The path reconnects with a fresh nexus: emulate the lost registration. */
    fx.tp[1]->mode = T_CUT;
    assert_int_equal(lun_test_unit_ready(fx.lun), 0);
    assert_true(wait_state(fx.lun, 1, LUN_PATH_FAILED, 5000));
    fx.tp[1]->reg_key = 0;
    fx.tp[1]->mode = T_UP;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_STANDBY, 5000));
    assert_int_equal(fx.tp[1]->reg_key, 0xabc);
    assert_true(check_calls >= 1);
    assert_false(lun_is_fenced(fx.lun));

    /* Now the heartbeat generation was taken over: register, check says
     * no, the registration is taken back and the host reports fenced. */
    check_result = 0;
    fx.tp[1]->mode = T_CUT;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_FAILED, 5000));
    fx.tp[1]->reg_key = 0;
    fx.tp[1]->mode = T_UP;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_STANDBY, 5000));
    assert_true(lun_is_fenced(fx.lun));
    assert_int_equal(fx.tp[1]->reg_key, 0);
    fixture_close(&fx);
}

static void test_reservation_conflict_reports_fenced_and_stops_reregistering(void **state)
{
    (void)state;
    struct lun_options o;
    opts_fast(&o, LUN_POLICY_FIXED);
    struct fixture fx = {0};
    fixture_open(&fx, &o);
    check_result = 1;
    lun_set_register_check(fx.lun, register_check, NULL);
    assert_int_equal(lun_pr_register(fx.lun, 0x55), 0);
    fx.tp[0]->mode = T_CONFLICT;
    uint8_t b[BS];
    fill(b, 0, 0);
    assert_int_equal(lun_write(fx.lun, 0, 1, b, 0), -EBADE); /* failed up, not over */
    assert_true(lun_is_fenced(fx.lun));
    assert_non_null(strstr(log_last_error(), "fenced"));
    assert_int_equal(state_of(fx.lun, 0), LUN_PATH_ACTIVE);
    unsigned regs = fx.tp[1]->registers;
    fx.tp[1]->mode = T_CUT;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_FAILED, 5000));
    fx.tp[1]->reg_key = 0;
    fx.tp[1]->mode = T_UP;
    assert_true(wait_state(fx.lun, 1, LUN_PATH_STANDBY, 5000));
    assert_int_equal(fx.tp[1]->registers, regs); /* fenced: no re-registration */
    assert_int_equal(fx.tp[1]->reg_key, 0);
    fixture_close(&fx);
}

static void test_policy_names_parse(void **state)
{
    (void)state;
    enum lun_policy p;
    assert_int_equal(lun_policy_parse("rr", &p), 0);
    assert_int_equal(p, LUN_POLICY_ROUND_ROBIN);
    assert_int_equal(lun_policy_parse("service-time", &p), 0);
    assert_int_equal(p, LUN_POLICY_SERVICE_TIME);
    assert_int_equal(lun_policy_parse("bogus", &p), -EINVAL);
    assert_non_null(strstr(log_last_error(), "bogus"));
    uint64_t h[LUN_LAT_BUCKETS] = {0};
    assert_int_equal(lun_lat_percentile(h, 0.5), 0);
    h[3] = 90;
    h[10] = 10;
    assert_int_equal(lun_lat_percentile(h, 0.5), 8);
    assert_int_equal(lun_lat_percentile(h, 0.99), 1024);
}

int main(void)
{
    log_set_level(LOG_LVL_WARN);
    log_set_sink(log_capture, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_names_parse),
        cmocka_unit_test(test_round_robin_uses_both_paths),
        cmocka_unit_test(test_round_robin_switches_every_n_ios),
        cmocka_unit_test(test_round_robin_resubmission_stays_on_completing_path),
        cmocka_unit_test(test_round_robin_returning_path_gets_resubmissions),
        cmocka_unit_test(test_cut_path_midstream_no_errors_and_failback_fixed),
        cmocka_unit_test(test_mru_stays_on_the_path_it_moved_to),
        cmocka_unit_test(test_silently_dead_path_detected_by_checker),
        cmocka_unit_test(test_timed_out_write_not_reissued_before_teardown),
        cmocka_unit_test(test_flapping_path_is_held_back),
        cmocka_unit_test(test_all_paths_down_shorter_than_queue_time_resumes),
        cmocka_unit_test(test_all_paths_down_longer_than_queue_time_fails_eio),
        cmocka_unit_test(test_queued_write_fails_at_deadline_not_drained),
        cmocka_unit_test(test_fence_self_fails_queued_writes_keeps_reads),
        cmocka_unit_test(test_busy_is_retried_with_backoff_on_the_same_path),
        cmocka_unit_test(test_busy_retries_stop_at_the_deadline),
        cmocka_unit_test(test_task_aborted_is_retried_without_failing_the_path),
        cmocka_unit_test(test_pdl_on_one_path_fails_that_path_only),
        cmocka_unit_test(test_registrations_preempted_fences),
        cmocka_unit_test(test_register_during_recovery_registers_the_returning_path),
        cmocka_unit_test(test_frozen_path_write_held_until_teardown_confirmed),
        cmocka_unit_test(test_slow_tur_on_a_busy_answering_path_is_not_failed),
        cmocka_unit_test(test_flush_and_reads_fail_over_too),
        cmocka_unit_test(test_reconnect_reregisters_key_after_check),
        cmocka_unit_test(test_reservation_conflict_reports_fenced_and_stops_reregistering),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
