/* The LUN core: one struct lun over one or more paths (see lun.h, path.h),
 * and the multipath engine: path states, selection, failover, the path
 * checker, reconnects, queueing while all paths are down.
 *
 * Design notes
 * ------------
 * - One I/O path. Every command, synchronous or not, goes through
 *   lun_submit(); the synchronous calls (lun_read, lun_write, ...) are a
 *   lun_io on the caller's stack plus a small waiter (mutex + condition
 *   variable) that the completion signals. So retries, splitting and
 *   failover live in one place.
 *
 * - Completion wrapper. Before a lun_io goes to a path, the core saves the
 *   caller's done() in io->priv[0], the LUN in priv[1] and its own per-I/O
 *   state in priv[2] (retries on the same path, path index, when the I/O
 *   was first queued, dispatch time for the latency histogram), and
 *   installs lun_io_done(). That function classifies the result (sense.h):
 *   RETRY_SAME resubmits on the same path (bounded by LUN_RETRY_SAME_MAX),
 *   FAIL_UP completes to the caller, FAILOVER fails the path and re-issues
 *   the I/O elsewhere (multipath) or completes to the caller (one plain
 *   path). priv[3..5] belong to the path while it holds the I/O; while the
 *   core queues it (no usable path, or waiting for a teardown) priv[3] is
 *   the queue link and priv[4] the teardown barrier.
 *
 * - Multipath engine (used with two or more paths, or opts->multipath; a
 *   LUN opened through one path without it behaves as a plain path:
 *   failures go straight to the caller, nothing is queued or reconnected).
 *
 *   Path state machine (per slot, all under lun->lock):
 *
 *        UP --(I/O or TUR fails over, TUR hangs > check_timeout)--> FAILED
 *        FAILED --(monitor: ops->abort, or all commands back)--> TORN DOWN
 *        TORN DOWN --(checker, after the flap hold: reopen the URI, probe,
 *                     same identity, TUR, re-register PR key, ask the
 *                     register check)--> UP
 *
 *   UP paths are shown ACTIVE or STANDBY depending on the policy. A path
 *   that failed flap_count times within flap_window_ms is held for
 *   flap_hold_ms before the checker may bring it back (hysteresis).
 *
 *   Selection (mp_select_locked): fixed = the preferred path when up, else
 *   like mru; mru = stay on `cur` while it is up; round-robin = advance
 *   `cur` every rr_ios I/Os, except that an I/O submitted from a completion
 *   callback stays on the completing path while that path has at most
 *   rr_ios more commands in flight than the least busy one (no bounce
 *   between loop threads); service-time = the up path with the fewest
 *   bytes in flight (plus 4 KiB per command), ties broken by rotation; an
 *   I/O submitted from a completion callback stays on the completing path
 *   (its loop thread, no cross-thread wakeup) unless that path carries
 *   more than MP_ST_LOCAL_SLACK beyond the least loaded one.
 *
 *   Open: with several URIs, a path unreachable at open time (failover-
 *   class error) becomes a FAILED, TORN DOWN slot that its checker keeps
 *   opening; configuration errors still fail the open.
 *
 *   Late and returning paths: every new session (reconnect, or a path that
 *   answers for the first time) is probed, must have the LUN's identity
 *   and geometry and every capability the LUN advertises (unless the probe
 *   could not tell: caps_unknown), before TUR / re-registration bring it
 *   UP; otherwise it stays failed, retried on the back-off schedule. The
 *   probe of each path is kept (lun_path_get_info).
 *
 *   Detection: a failing I/O or TUR, the TUR watchdog, and paths that find
 *   themselves dead (path.h set_report: iSCSI NOP-Out pings unanswered)
 *   all end in mp_path_fail_locked.
 *
 *   Stale writes. A modifying command that failed over on path P is not
 *   re-issued before P's session has been torn down (ops->abort: the
 *   connection is closed and every command of the session is back), so a
 *   stale copy can never land after the newer one. The I/O waits in the
 *   queue with a barrier (P, P's teardown generation at failure); the
 *   monitor tears P down and bumps the generation. Reads fail over at once.
 *
 *   All paths down. I/Os wait in the LUN's queue; each one fails with -EIO
 *   queue_ms after it was first queued (kept in priv[2] across re-issues,
 *   so flapping cannot keep an I/O forever). A returning path drains the
 *   queue in order.
 *
 *   Threads: one checker per path (TEST UNIT READY every
 *   check_interval_ms on up paths; reconnect of failed, torn-down ones) and
 *   one monitor per LUN (teardowns, the TUR watchdog, queue expiry and
 *   draining). The checker of a path is the only thread that replaces or
 *   closes that path's lun_path; it does so only when no thread is inside
 *   the path (slot->submitting == 0) and nothing is in flight there.
 *
 *   Fencing: see lun_set_register_check() in lun.h.
 *
 * - Splitting. A command longer than the target's maximum transfer length is
 *   split into a chain of child commands issued one after the other (a
 *   struct lun_split owns the child lun_io); the parent completes when the
 *   last child does or at the first failure.
 *
 * - Range checks happen before anything reaches a path, with a message that
 *   names the LUN, the command, the range and the capacity.
 *
 * Locking: lun->lock protects the slots' dynamic state, the queue, cur, the
 * PR key and fenced flag (see struct lun). The per-I/O counters are atomics
 * so a completion takes no lock; a dispatch takes lun->lock once (a plain
 * single path, which is never failed or replaced: not at all). The core never holds lun->lock
 * while calling into a path (paths complete I/O on their own threads, which
 * take lun->lock in lun_io_done). Paths have their own locks.
 */
#include "lun.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "path.h"
#include "sense.h"
#include "util.h"

#define LUN_MAX_PATHS 32
#define LUN_RETRY_SAME_MAX 5
#define MP_FLAP_RING 16
#define MP_MONITOR_TICK_MS 20
#define MP_REOPEN_MIN_MS 500

_Static_assert(sizeof(uintptr_t) >= 8, "priv[2] packs 64 bits of per-I/O state");

struct lun;

/* One path of a LUN and its engine state. */
struct mp_slot {
    struct lun *lun;            /* immutable */
    unsigned idx;               /* immutable */
    char *uri;                  /* immutable: reopen URI (password kept), NULL = cannot reopen */
    uint64_t isid_seed;         /* immutable: the slot's iSCSI ISID, the same at every reconnect */
    char *name;                 /* immutable: the path's name (URI without password) */
    const char *kind;           /* immutable: "iscsi", "file", ... */
    pthread_t checker;          /* immutable once started */
    bool checker_started;       /* immutable once started */
    struct lun_path *p;         /* protected by lun->lock; replaced only by the checker */
    bool failed;                /* protected by lun->lock */
    bool torn_down;             /* protected by lun->lock: failed session aborted / drained */
    bool aborting;              /* protected by lun->lock: the checker is in ops->abort */
    bool teardown_waiting;      /* protected by lun->lock: abort said "not yet" (logged once) */
    uint64_t reinstate_next_ns; /* checker thread only: next reinstatement attempt */
    unsigned gen;               /* protected by lun->lock: teardown generation */
    /* Atomics: incremented only under lun->lock (together with the path
     * choice), decremented anywhere; so a reader holding lun->lock that
     * sees 0 knows no thread is about to use the path. */
    _Atomic unsigned submitting;    /* threads inside the path */
    _Atomic unsigned inflight;      /* commands issued on the path, not yet completed */
    _Atomic uint64_t inflight_cost; /* bytes + 4 KiB per command in flight */
    struct {                        /* atomics, updated without lun->lock */
        _Atomic uint64_t reads, writes, others, read_bytes, write_bytes, errors;
        _Atomic uint64_t lat_hist[LUN_LAT_BUCKETS];
    } ctr;
    uint64_t tur_started_ns;          /* protected by lun->lock: 0 = no TUR outstanding */
    _Atomic uint32_t answered_us;     /* last command completion on the path (us since
                                         epoch, mod 2^32): written without a lock */
    uint64_t hold_until_ns;           /* protected by lun->lock: flap hysteresis */
    uint64_t state_since_ns;          /* protected by lun->lock */
    uint64_t next_reopen_ns;          /* checker thread only */
    unsigned reopen_fails;            /* checker thread only: back-off 0.5, 1, 2, 4 s */
    uint64_t fail_ring[MP_FLAP_RING]; /* protected by lun->lock: recent failure times */
    unsigned fail_pos;                /* protected by lun->lock */
    struct lun_path_stats st;         /* protected by lun->lock: failures, last_error */
    struct lun_info pinfo;            /* protected by lun->lock: the path's last probe */
    bool have_pinfo;                  /* protected by lun->lock */
    uint64_t ping_base, miss_base;    /* protected by lun->lock: pings of closed sessions */
};

struct lun {
    pthread_mutex_t lock;    /* lock order: lun->lock, then nothing (never held in paths) */
    pthread_cond_t cond;     /* with lock: wakes the monitor and the checkers */
    char *name;              /* immutable after open */
    struct lun_info info;    /* immutable after open */
    struct lun_options opts; /* immutable; host/initiator point at the copies below */
    char *host_name, *initiator_name; /* immutable: for reopening paths */
    bool mp;                          /* immutable: the multipath engine is on */
    enum lun_policy policy;           /* immutable, resolved (never DEFAULT) */
    uint64_t epoch_ns;                /* immutable: time origin of priv[2] stamps */
    unsigned npaths;                  /* immutable after open */
    struct mp_slot slots[LUN_MAX_PATHS];
    unsigned cur;                   /* protected by lock: current path (mru, fixed, rr) */
    unsigned rr_count, st_next;     /* protected by lock */
    struct lun_io *q_head, *q_tail; /* protected by lock: I/Os waiting for a path */
    struct lun_io *retry_head;      /* protected by lock: I/Os waiting out a back-off
                                       (priv[3] link, priv[4] due, ns since epoch) */
    unsigned nqueued;               /* protected by lock */
    bool stopping;                  /* protected by lock */
    unsigned pdl_paths;             /* protected by lock: bit i: path i said LUN gone */
    bool pr_registered;             /* protected by lock: lun_pr_register(key != 0) succeeded */
    uint64_t pr_key;                /* protected by lock */
    unsigned pr_gen;                /* protected by lock: +1 when lun_pr_register starts and
                                       when it ends (odd: one is running) */
    bool fenced;                    /* protected by lock */
    _Atomic bool self_fenced;       /* lun_fence_self(); cleared by lun_pr_register(key != 0) */
    lun_register_check_fn check_fn; /* protected by lock */
    void *check_opaque;             /* protected by lock */
    int reinstates;                 /* protected by lock: target reinstates sessions? -1 unknown */
    pthread_t monitor;              /* immutable once started */
    bool monitor_started;           /* immutable once started */
};

void lun_options_init(struct lun_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->timeout_ms = 5000;
    opts->connect_timeout_ms = 5000;
    opts->file_block_size = 0; /* 0 = the URI's or 512 */
    opts->policy = LUN_POLICY_DEFAULT;
}

/* lun_uri_is_iscsi() lives in iscsi.c. */

char *lun_uri_redact(const char *uri)
{
    char *s = strdup(uri);
    if (!s)
        return NULL;
    char *scheme = strstr(s, "://");
    if (!scheme)
        return s;
    char *auth = scheme + 3;
    size_t authlen = strcspn(auth, "/");
    char *at;
    if (strncasecmp(s, "iscsi://", 8) == 0) {
        /* A CHAP password may hold '/' and '@': the user part ends at the
         * last '@' of the URI (no '@' can follow it in a portal, a target
         * IQN or a LUN number). */
        at = strrchr(auth, '@');
    } else {
        at = memrchr(auth, '@', authlen);
    }
    if (!at)
        return s;
    /* userinfo is auth..at; libiscsi separates the password with '%', RFC
     * 3986 with ':'. Drop from the separator up to (not including) '@'. */
    size_t ulen = (size_t)(at - auth);
    char *sep = memchr(auth, '%', ulen);
    if (!sep)
        sep = memchr(auth, ':', ulen);
    if (sep)
        memmove(sep, at, strlen(at) + 1);
    return s;
}

int lun_path_open_uri(const char *uri, const struct lun_options *opts, struct lun_path **out)
{
    return lun_path_open_uri_isid(uri, opts, 0, out);
}

int lun_path_open_uri_isid(const char *uri, const struct lun_options *opts, uint64_t isid_seed,
                           struct lun_path **out)
{
    *out = NULL;
    if (!uri || !*uri) {
        log_err("empty LUN URI");
        return -EINVAL;
    }
    if (lun_uri_is_iscsi(uri))
        return lun_path_open_iscsi_isid(uri, opts, isid_seed, out);
    const char *colon = strstr(uri, "://");
    if (colon && strncasecmp(uri, "file://", 7) != 0 && !memchr(uri, '/', (size_t)(colon - uri))) {
        char *name = lun_uri_redact(uri);
        log_err("%s: unsupported URI scheme (use iscsi://, file:// or a path)", name ? name : "?");
        free(name);
        return -EINVAL;
    }
    return lun_path_open_file(uri, opts, out);
}

void lun_path_close(struct lun_path *p)
{
    if (p)
        p->ops->close(p);
}

/* ---- Open / close ------------------------------------------------------- */

/* The capabilities in `need` that `have` lacks (and that were not left
 * `unknown` by the probe), as "A, B" in buf; their number. */
static unsigned lun_caps_missing(const struct lun_caps *have, const struct lun_caps *unknown,
                                 const struct lun_caps *need, char *buf, size_t len)
{
    static const struct {
        size_t off;
        const char *name;
    } t[] = {
        {offsetof(struct lun_caps, compare_and_write), "COMPARE AND WRITE"},
        {offsetof(struct lun_caps, persistent_reservations), "PERSISTENT RESERVE"},
        {offsetof(struct lun_caps, pr_we_all_registrants), "PR type 7 (WE-AR)"},
        {offsetof(struct lun_caps, pr_preempt_abort), "PREEMPT AND ABORT"},
        {offsetof(struct lun_caps, unmap), "UNMAP"},
        {offsetof(struct lun_caps, write_same), "WRITE SAME"},
        {offsetof(struct lun_caps, write_same_unmap), "WRITE SAME with UNMAP"},
        {offsetof(struct lun_caps, sync_cache), "SYNCHRONIZE CACHE"},
        {offsetof(struct lun_caps, fua), "FUA"},
    };
    unsigned n = 0;
    size_t used = 0;
    buf[0] = 0;
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        bool h = *(const bool *)((const char *)have + t[k].off);
        bool w = *(const bool *)((const char *)need + t[k].off);
        bool u = *(const bool *)((const char *)unknown + t[k].off);
        if (w && !h && !u) {
            int m = snprintf(buf + used, len - used, "%s%s", n ? ", " : "", t[k].name);
            if (m > 0 && (size_t)m < len - used)
                used += (size_t)m;
            n++;
        }
    }
    return n;
}

static void lun_caps_and(struct lun_caps *a, const struct lun_caps *b)
{
    a->compare_and_write &= b->compare_and_write;
    a->persistent_reservations &= b->persistent_reservations;
    a->pr_we_all_registrants &= b->pr_we_all_registrants;
    a->pr_preempt_abort &= b->pr_preempt_abort;
    a->unmap &= b->unmap;
    a->write_same &= b->write_same;
    a->write_same_unmap &= b->write_same_unmap;
    a->sync_cache &= b->sync_cache;
    a->fua &= b->fua;
}

/* ---- small helpers ------------------------------------------------------- */

static const char *lun_op_name(enum lun_op op)
{
    switch (op) {
    case LUN_OP_READ:
        return "read";
    case LUN_OP_WRITE:
        return "write";
    case LUN_OP_FLUSH:
        return "flush";
    case LUN_OP_UNMAP:
        return "unmap";
    case LUN_OP_WRITE_SAME:
        return "write-same";
    case LUN_OP_COMPARE_AND_WRITE:
        return "compare-and-write";
    }
    return "?";
}

static bool lun_op_modifies(enum lun_op op)
{
    return op == LUN_OP_WRITE || op == LUN_OP_UNMAP || op == LUN_OP_WRITE_SAME ||
           op == LUN_OP_COMPARE_AND_WRITE;
}

static uint64_t lun_io_bytes(const struct lun *lun, const struct lun_io *io)
{
    if (io->op == LUN_OP_READ || io->op == LUN_OP_WRITE)
        return (uint64_t)io->nblocks * lun->info.block_size;
    if (io->op == LUN_OP_COMPARE_AND_WRITE)
        return lun->info.block_size;
    return 0;
}

static uint64_t lun_io_cost(const struct lun *lun, const struct lun_io *io)
{
    return lun_io_bytes(lun, io) + 4096;
}

const char *lun_path_state_name(enum lun_path_state s)
{
    switch (s) {
    case LUN_PATH_ACTIVE:
        return "active";
    case LUN_PATH_STANDBY:
        return "standby";
    case LUN_PATH_FAILED:
        return "failed";
    }
    return "?";
}

const char *lun_policy_name(enum lun_policy p)
{
    switch (p) {
    case LUN_POLICY_DEFAULT:
        return "default";
    case LUN_POLICY_FIXED:
        return "fixed";
    case LUN_POLICY_MRU:
        return "mru";
    case LUN_POLICY_ROUND_ROBIN:
        return "round-robin";
    case LUN_POLICY_SERVICE_TIME:
        return "service-time";
    }
    return "?";
}

int lun_policy_parse(const char *s, enum lun_policy *out)
{
    static const struct {
        const char *name;
        enum lun_policy p;
    } t[] = {
        {"fixed", LUN_POLICY_FIXED},
        {"mru", LUN_POLICY_MRU},
        {"round-robin", LUN_POLICY_ROUND_ROBIN},
        {"rr", LUN_POLICY_ROUND_ROBIN},
        {"service-time", LUN_POLICY_SERVICE_TIME},
        {"st", LUN_POLICY_SERVICE_TIME},
        {"default", LUN_POLICY_DEFAULT},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (s && strcasecmp(s, t[i].name) == 0) {
            *out = t[i].p;
            return 0;
        }
    }
    log_err("unknown path selection policy '%s' (fixed, mru, round-robin, service-time)",
            s ? s : "");
    return -EINVAL;
}

uint64_t lun_lat_percentile(const uint64_t hist[LUN_LAT_BUCKETS], double q)
{
    uint64_t total = 0;
    for (unsigned b = 0; b < LUN_LAT_BUCKETS; b++)
        total += hist[b];
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total + 0.999999);
    if (want == 0)
        want = 1;
    uint64_t acc = 0;
    for (unsigned b = 0; b < LUN_LAT_BUCKETS; b++) {
        acc += hist[b];
        if (acc >= want)
            return (uint64_t)1 << b;
    }
    return (uint64_t)1 << (LUN_LAT_BUCKETS - 1);
}

static unsigned lun_lat_bucket(uint64_t us)
{
    unsigned b = 0;
    while (us && b < LUN_LAT_BUCKETS - 1) {
        us >>= 1;
        b++;
    }
    return b;
}

/* priv[2]: bits 0-7 retries on the same path, 8-15 path index, 16-31 time
 * first queued (100 ms units since epoch, +1; 0 = never), 32-63 dispatch
 * time (microseconds since epoch, modulo 2^32). */
#define LUN_PRIV_RETRIES(v) ((unsigned)((v)&0xFF))
#define LUN_PRIV_PATH(v) ((unsigned)(((v) >> 8) & 0xFF))
#define LUN_PRIV_QUEUED(v) ((unsigned)(((v) >> 16) & 0xFFFF))
#define LUN_PRIV_DISPATCH(v) ((uint32_t)((v) >> 32))
#define LUN_PRIV_MAKE(retries, path, queued, disp)                                                 \
    ((uintptr_t)(retries) | ((uintptr_t)(path) << 8) | ((uintptr_t)(queued) << 16) |               \
     ((uintptr_t)(disp) << 32))

static uint64_t lun_since_epoch_ns(const struct lun *lun)
{
    return now_ns() - lun->epoch_ns;
}

uint64_t lun_now_ns(void)
{
    return boottime_ns();
}

/* Has io's deadline passed? (No clock read without a deadline.) */
static bool lun_io_late(const struct lun_io *io)
{
    return io->deadline_ns && boottime_ns() >= io->deadline_ns;
}

/* May io go to a path now? 0, -ETIMEDOUT (its deadline has passed) or
 * -EBADE (a write after lun_fence_self). Checked at every dispatch: the
 * first, retries on the same path, failovers and queue drains. */
static int lun_io_gate(const struct lun *lun, const struct lun_io *io)
{
    if (lun_op_modifies(io->op) && lun->self_fenced)
        return -EBADE;
    if (lun_io_late(io))
        return -ETIMEDOUT;
    return 0;
}

/* Say why the gate stopped io (`when`: "before dispatch", "before a retry",
 * ...). */
static void lun_io_gate_log(const struct lun *lun, const struct lun_io *io, int rc,
                            const char *when)
{
    if (rc == -EBADE)
        log_err("%s: %s of %u blocks at lba %llu refused %s: this host has fenced itself",
                lun->name, lun_op_name(io->op), io->nblocks, (unsigned long long)io->lba, when);
    else
        log_err("%s: %s of %u blocks at lba %llu: deadline passed %s (%llu ms ago)", lun->name,
                lun_op_name(io->op), io->nblocks, (unsigned long long)io->lba, when,
                (unsigned long long)((boottime_ns() - io->deadline_ns) / 1000000));
}

/* ---- Open / close ------------------------------------------------------- */

static void *mp_monitor_thread(void *arg);
static void *mp_checker_thread(void *arg);
static void mp_path_report(void *opaque, struct lun_path *p, const char *why);

static int lun_open_engine(struct lun_path **paths, char **uris, const uint64_t *seeds, unsigned n,
                           const struct lun_options *opts, struct lun **out)
{
    struct lun_options defaults;
    int rc;
    *out = NULL;
    if (!opts) {
        lun_options_init(&defaults);
        opts = &defaults;
    }
    if (n == 0 || n > LUN_MAX_PATHS) {
        log_err("a LUN needs 1 to %d paths (got %u)", LUN_MAX_PATHS, n);
        rc = -EINVAL;
        goto fail_paths;
    }
    struct lun *lun = calloc(1, sizeof *lun);
    if (!lun) {
        rc = -ENOMEM;
        goto fail_paths;
    }
    pthread_mutex_init(&lun->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&lun->cond, &ca);
    pthread_condattr_destroy(&ca);
    lun->epoch_ns = now_ns();
    lun->reinstates = -1;
    lun->opts = *opts;
    lun->host_name = opts->host_name ? strdup(opts->host_name) : NULL;
    lun->initiator_name = opts->initiator_name ? strdup(opts->initiator_name) : NULL;
    lun->opts.host_name = lun->host_name;
    lun->opts.initiator_name = lun->initiator_name;
    struct lun_options *o = &lun->opts;
    if (!o->rr_ios)
        o->rr_ios = 1;
    if (!o->queue_ms)
        o->queue_ms = 60000;
    if (o->queue_ms > 6000000)
        o->queue_ms = 6000000; /* the 16-bit 100 ms stamp in priv[2] */
    if (!o->check_interval_ms)
        o->check_interval_ms = 250;
    if (!o->check_timeout_ms)
        o->check_timeout_ms = 1000;
    if (!o->flap_count)
        o->flap_count = 3;
    if (o->flap_count > MP_FLAP_RING)
        o->flap_count = MP_FLAP_RING;
    if (!o->flap_window_ms)
        o->flap_window_ms = 30000;
    if (!o->flap_hold_ms)
        o->flap_hold_ms = 5000;
    if (!o->nop_interval_ms)
        o->nop_interval_ms = 1000;
    if (!o->nop_max_missed)
        o->nop_max_missed = 2;
    lun->policy = o->policy == LUN_POLICY_DEFAULT ? LUN_POLICY_SERVICE_TIME : o->policy;
    if ((unsigned)lun->policy > LUN_POLICY_SERVICE_TIME) {
        log_err("unknown path selection policy %d", (int)lun->policy);
        lun->policy = LUN_POLICY_SERVICE_TIME;
    }
    if (o->preferred_path >= n)
        o->preferred_path = 0;
    lun->cur = lun->policy == LUN_POLICY_FIXED ? o->preferred_path : 0;
    lun->mp = n > 1 || o->multipath;
    /* paths[i] may be NULL (lun_open_paths: portal unreachable at open,
     * with other paths up): the slot starts failed and torn down, and its
     * checker keeps trying to open it. */
    int ref = -1;
    for (unsigned i = 0; i < n; i++) {
        struct mp_slot *s = &lun->slots[lun->npaths++];
        s->lun = lun;
        s->idx = i;
        s->p = paths[i];
        s->uri = uris ? uris[i] : NULL;
        s->isid_seed = seeds ? seeds[i] : 0;
        if (uris)
            uris[i] = NULL;
        s->state_since_ns = now_ns();
        if (paths[i]) {
            s->kind = paths[i]->ops->kind;
            s->name = strdup(paths[i]->name);
            if (ref < 0)
                ref = (int)i;
        } else {
            s->kind = lun_uri_is_iscsi(s->uri) ? "iscsi" : "file";
            s->name = s->uri ? lun_uri_redact(s->uri) : NULL;
            s->failed = s->torn_down = true;
            s->st.failures = 1;
            snprintf(s->st.last_error, sizeof s->st.last_error,
                     "not reachable when the LUN was "
                     "opened");
        }
    }
    for (unsigned i = 0; i < n; i++) {
        if (!lun->slots[i].name || ref < 0) {
            rc = ref < 0 ? -EINVAL : -ENOMEM;
            goto fail;
        }
    }
    if (lun->policy == LUN_POLICY_FIXED ? !paths[lun->cur] : !paths[0])
        lun->cur = (unsigned)ref;
    const char *refname = paths[ref]->name;
    for (unsigned i = (unsigned)ref; i < n; i++) {
        if (!paths[i])
            continue;
        struct lun_info pi;
        memset(&pi, 0, sizeof pi);
        rc = paths[i]->ops->probe(paths[i], &pi);
        if (rc < 0)
            goto fail;
        if (pi.block_size < 512 || (pi.block_size & (pi.block_size - 1)) || pi.num_blocks == 0) {
            log_err("%s: unusable geometry: block size %u, %llu blocks", paths[i]->name,
                    pi.block_size, (unsigned long long)pi.num_blocks);
            rc = -EINVAL;
            goto fail;
        }
        if (pi.physical_block_size < pi.block_size)
            pi.physical_block_size = pi.block_size;
        lun->slots[i].pinfo = pi;
        lun->slots[i].have_pinfo = true;
        if ((int)i == ref) {
            lun->info = pi;
            continue;
        }
        if (strcmp(pi.id, lun->info.id) != 0) {
            log_err("%s: path reaches LUN %s, but %s reaches LUN %s: refusing to group them",
                    paths[i]->name, pi.id, refname, lun->info.id);
            rc = -EINVAL;
            goto fail;
        }
        if (pi.block_size != lun->info.block_size || pi.num_blocks != lun->info.num_blocks) {
            log_err("%s: path reports %llu blocks of %u bytes, %s reports %llu of %u",
                    paths[i]->name, (unsigned long long)pi.num_blocks, pi.block_size, refname,
                    (unsigned long long)lun->info.num_blocks, lun->info.block_size);
            rc = -EINVAL;
            goto fail;
        }
        lun_caps_and(&lun->info.caps, &pi.caps);
        if (pi.max_transfer_blocks && (!lun->info.max_transfer_blocks ||
                                       pi.max_transfer_blocks < lun->info.max_transfer_blocks))
            lun->info.max_transfer_blocks = pi.max_transfer_blocks;
    }
    lun->name = strdup(refname);
    if (!lun->name) {
        rc = -ENOMEM;
        goto fail;
    }
    /* The monitor also runs the back-off retries of a plain path. */
    rc = -pthread_create(&lun->monitor, NULL, mp_monitor_thread, lun);
    if (rc < 0) {
        log_err("%s: cannot start the LUN monitor thread: %s", lun->name, strerror(-rc));
        goto fail;
    }
    lun->monitor_started = true;
    if (lun->mp) {
        for (unsigned i = 0; i < n; i++) {
            if (paths[i] && paths[i]->ops->set_report)
                paths[i]->ops->set_report(paths[i], mp_path_report, &lun->slots[i]);
            rc = -pthread_create(&lun->slots[i].checker, NULL, mp_checker_thread, &lun->slots[i]);
            if (rc < 0) {
                log_err("%s: cannot start the path checker thread: %s", lun->name, strerror(-rc));
                goto fail;
            }
            lun->slots[i].checker_started = true;
        }
    }
    *out = lun;
    return 0;

fail:
    lun_close(lun);
    return rc;
fail_paths:
    for (unsigned i = 0; i < n; i++)
        lun_path_close(paths[i]);
    return rc;
}

int lun_open_with_paths(struct lun_path **paths, unsigned n, const struct lun_options *opts,
                        struct lun **out)
{
    return lun_open_engine(paths, NULL, NULL, n, opts, out);
}

int lun_open(const char *uri, const struct lun_options *opts, struct lun **out)
{
    const char *uris[1] = {uri};
    return lun_open_paths(uris, 1, opts, out);
}

int lun_open_paths(const char *const *uris, unsigned n, const struct lun_options *opts,
                   struct lun **out)
{
    *out = NULL;
    if (n == 0) {
        log_err("no path given for the LUN");
        return -EINVAL;
    }
    if (n > LUN_MAX_PATHS) {
        log_err("%s: a LUN takes at most %d paths (got %u)", uris[0], LUN_MAX_PATHS, n);
        return -EINVAL;
    }
    struct lun_path *paths[LUN_MAX_PATHS];
    char *copies[LUN_MAX_PATHS];
    uint64_t seeds[LUN_MAX_PATHS];
    int rc = 0, first_err = 0;
    /* One ISID per path slot, kept across its reconnects: this process,
     * this open, this slot. */
    static _Atomic uint64_t opens;
    uint64_t base = ((uint64_t)getpid() << 32) ^ (++opens << 8) ^ boottime_ns();
    unsigned opened = 0, up = 0;
    for (; opened < n; opened++) {
        copies[opened] = strdup(uris[opened] ? uris[opened] : "");
        if (!copies[opened]) {
            rc = -ENOMEM;
            break;
        }
        seeds[opened] = ((base + opened) << 1) | 1; /* never 0, distinct per slot */
        rc = lun_path_open_uri_isid(uris[opened], opts, seeds[opened], &paths[opened]);
        /* With several paths, a portal that cannot be reached now is a
         * failed path, not a failed open (the checker keeps trying it);
         * configuration errors (bad URI, no such target, CHAP) still fail. */
        if (rc < 0 && n > 1 && lun_result_classify(rc, 0, 0, 0) == LUN_SENSE_FAILOVER) {
            paths[opened] = NULL;
            if (!first_err)
                first_err = rc;
            rc = 0;
            continue;
        }
        if (rc < 0) {
            free(copies[opened]);
            break;
        }
        up++;
    }
    if (rc == 0 && up == 0) {
        rc = first_err;
        opened = n;
        for (unsigned i = 0; i < n; i++) {
            free(copies[i]);
            copies[i] = NULL;
        }
        return rc;
    }
    if (rc < 0) {
        for (unsigned i = 0; i < opened; i++) {
            lun_path_close(paths[i]);
            free(copies[i]);
        }
        return rc;
    }
    rc = lun_open_engine(paths, copies, seeds, n, opts, out);
    for (unsigned i = 0; i < n; i++)
        free(copies[i]); /* those not taken over (NULL when taken) */
    return rc;
}

static void lun_io_finish(struct lun_io *io, int result);
static unsigned mp_backoff_ms(unsigned retries);

void lun_close(struct lun *lun)
{
    if (!lun)
        return;
    pthread_mutex_lock(&lun->lock);
    lun->stopping = true;
    pthread_cond_broadcast(&lun->cond);
    pthread_mutex_unlock(&lun->lock);
    if (lun->monitor_started)
        pthread_join(lun->monitor, NULL);
    for (unsigned i = 0; i < lun->npaths; i++)
        if (lun->slots[i].checker_started)
            pthread_join(lun->slots[i].checker, NULL);
    /* Nothing can drain the queue any more. */
    pthread_mutex_lock(&lun->lock);
    struct lun_io *q = lun->q_head;
    lun->q_head = lun->q_tail = NULL;
    lun->nqueued = 0;
    struct lun_io *rq = lun->retry_head;
    lun->retry_head = NULL;
    pthread_mutex_unlock(&lun->lock);
    while (q) {
        struct lun_io *next = q->priv[3];
        log_err("%s: %s at lba %llu failed: LUN closed while waiting for a path", lun->name,
                lun_op_name(q->op), (unsigned long long)q->lba);
        lun_io_finish(q, -EIO);
        q = next;
    }
    while (rq) {
        struct lun_io *next = rq->priv[3];
        log_err("%s: %s at lba %llu failed: LUN closed while waiting to retry", lun->name,
                lun_op_name(rq->op), (unsigned long long)rq->lba);
        lun_io_finish(rq, -EIO);
        rq = next;
    }
    for (unsigned i = 0; i < lun->npaths; i++) {
        lun_path_close(lun->slots[i].p);
        free(lun->slots[i].uri);
        free(lun->slots[i].name);
    }
    pthread_cond_destroy(&lun->cond);
    pthread_mutex_destroy(&lun->lock);
    free(lun->host_name);
    free(lun->initiator_name);
    free(lun->name);
    free(lun);
}

const struct lun_info *lun_get_info(const struct lun *lun)
{
    return &lun->info;
}

const char *lun_name(const struct lun *lun)
{
    return lun->name;
}

unsigned lun_num_paths(const struct lun *lun)
{
    return lun->npaths;
}

const char *lun_path_kind(const struct lun *lun, unsigned i)
{
    return i < lun->npaths ? lun->slots[i].kind : NULL;
}

const char *lun_path_name(const struct lun *lun, unsigned i)
{
    return i < lun->npaths ? lun->slots[i].name : NULL;
}

enum lun_policy lun_get_policy(const struct lun *lun)
{
    return lun->policy;
}

bool lun_is_multipath(const struct lun *lun)
{
    return lun->mp;
}

unsigned lun_queued_ios(struct lun *lun)
{
    pthread_mutex_lock(&lun->lock);
    unsigned n = lun->nqueued;
    pthread_mutex_unlock(&lun->lock);
    return n;
}

void lun_set_register_check(struct lun *lun, lun_register_check_fn fn, void *opaque)
{
    pthread_mutex_lock(&lun->lock);
    lun->check_fn = fn;
    lun->check_opaque = opaque;
    pthread_mutex_unlock(&lun->lock);
}

bool lun_is_fenced(struct lun *lun)
{
    pthread_mutex_lock(&lun->lock);
    bool f = lun->fenced || lun->self_fenced;
    pthread_mutex_unlock(&lun->lock);
    return f;
}

void lun_fence_self(struct lun *lun)
{
    /* From here on the gate (lun_io_gate) stops every write at its next
     * dispatch, retry, failover or queue drain. Writes waiting in the
     * queue fail now. */
    pthread_mutex_lock(&lun->lock);
    bool first = !lun->self_fenced;
    lun->self_fenced = true;
    struct lun_io *fail = NULL, **fail_tail = &fail;
    struct lun_io *keep = NULL, *keep_tail = NULL, *q = lun->q_head;
    unsigned nfail = 0;
    while (q) {
        struct lun_io *next = q->priv[3];
        q->priv[3] = NULL;
        if (lun_op_modifies(q->op)) {
            *fail_tail = q;
            fail_tail = (struct lun_io **)&q->priv[3];
            nfail++;
        } else {
            if (keep_tail)
                keep_tail->priv[3] = q;
            else
                keep = q;
            keep_tail = q;
        }
        q = next;
    }
    lun->q_head = keep;
    lun->q_tail = keep_tail;
    lun->nqueued -= nfail;
    for (struct lun_io **pp = &lun->retry_head; *pp;) {
        struct lun_io *io = *pp;
        if (lun_op_modifies(io->op)) {
            *pp = io->priv[3];
            io->priv[3] = NULL;
            *fail_tail = io;
            fail_tail = (struct lun_io **)&io->priv[3];
            nfail++;
        } else {
            pp = (struct lun_io **)&io->priv[3];
        }
    }
    struct lun_path *abort_on[LUN_MAX_PATHS];
    unsigned nabort = 0;
    for (unsigned i = 0; i < lun->npaths; i++) {
        struct mp_slot *s = &lun->slots[i];
        if (s->p && s->p->ops->abort_writes && s->inflight) {
            s->submitting++; /* keeps the path open */
            abort_on[nabort++] = s->p;
        }
    }
    pthread_mutex_unlock(&lun->lock);
    if (first)
        log_err("%s: this host fenced itself: %u queued write(s) fail, no write reaches the LUN "
                "until it registers again",
                lun->name, nfail);
    while (fail) {
        struct lun_io *next = fail->priv[3];
        fail->sense_key = fail->asc = fail->ascq = 0;
        lun_io_finish(fail, -EBADE);
        fail = next;
    }
    /* Writes in flight: ask the paths to abort them (iSCSI: ABORT TASK);
     * whatever comes back failed is stopped by the gate, not retried. */
    for (unsigned k = 0; k < nabort; k++) {
        abort_on[k]->ops->abort_writes(abort_on[k]);
        pthread_mutex_lock(&lun->lock);
        for (unsigned i = 0; i < lun->npaths; i++)
            if (lun->slots[i].p == abort_on[k]) {
                lun->slots[i].submitting--;
                break;
            }
        pthread_mutex_unlock(&lun->lock);
    }
}

unsigned lun_max_io_time_ms(const struct lun *lun)
{
    /* A write without a deadline, on one path ("a stint"): its tries share
     * one retry counter, so there are at most 1 + max(LUN_RETRY_SAME_MAX,
     * the back-off retries whose delays fit in timeout_ms) of them, each
     * bounded by the command timeout; plus the back-offs themselves (at most
     * timeout_ms); plus, once a command timed out, one more timeout to
     * learn that the target dropped it (ABORT TASK SET). With the engine it
     * then waits in the queue at most queue_ms from the moment it first
     * failed over, and the last dispatch from there is another stint. */
    uint64_t t = lun->opts.timeout_ms ? lun->opts.timeout_ms : 5000;
    unsigned later = 0;
    for (uint64_t spent = 0; later < 250 && spent + mp_backoff_ms(later) <= t; later++)
        spent += mp_backoff_ms(later);
    unsigned tries = 1 + (later > LUN_RETRY_SAME_MAX ? later : LUN_RETRY_SAME_MAX);
    uint64_t stint = (uint64_t)tries * t + t + t;
    uint64_t total = stint;
    if (lun->mp)
        total += (uint64_t)lun->opts.queue_ms + stint;
    return total > UINT32_MAX ? UINT32_MAX : (unsigned)total;
}

/* ---- Path states and selection (lun->lock held) ------------------------ */

static bool mp_usable(const struct lun *lun, unsigned i)
{
    return !lun->slots[i].failed && lun->slots[i].p;
}

static enum lun_path_state mp_state_locked(const struct lun *lun, unsigned i)
{
    if (!mp_usable(lun, i))
        return LUN_PATH_FAILED;
    if (lun->policy == LUN_POLICY_ROUND_ROBIN || lun->policy == LUN_POLICY_SERVICE_TIME)
        return LUN_PATH_ACTIVE;
    return i == lun->cur ? LUN_PATH_ACTIVE : LUN_PATH_STANDBY;
}

/* The path whose completion this thread is running (set by lun_io_done
 * around the caller's done()): an I/O submitted from there can go to that
 * path's loop thread directly, without a cross-thread wakeup. */
static __thread struct lun *mp_tls_lun;
static __thread int mp_tls_path = -1;

#define MP_ST_LOCAL_SLACK (128u * 1024)

/* The path for the next I/O, or -1 if none is up. Plain single paths
 * always return the only path (it is never marked failed). */
static int mp_select_locked(struct lun *lun)
{
    unsigned n = lun->npaths;
    switch (lun->policy) {
    case LUN_POLICY_FIXED:
        if (mp_usable(lun, lun->opts.preferred_path)) {
            lun->cur = lun->opts.preferred_path;
            return (int)lun->cur;
        }
        break;
    case LUN_POLICY_ROUND_ROBIN:
        /* Locality: an I/O submitted from a completion callback stays on
         * the completing path (its loop thread, no cross-thread wakeup)
         * while that path has at most rr_ios more commands in flight than
         * the least busy up path. The queue keeps the even spread it was
         * given (or regains it: an overloaded path hands over); rotating
         * every I/O instead bounced each resubmission to the other loop
         * thread (an eventfd write and a wakeup per I/O). */
        if (mp_tls_lun == lun && mp_tls_path >= 0 && mp_usable(lun, (unsigned)mp_tls_path)) {
            unsigned least = UINT32_MAX;
            for (unsigned i = 0; i < n; i++)
                if (mp_usable(lun, i) && lun->slots[i].inflight < least)
                    least = lun->slots[i].inflight;
            if (lun->slots[mp_tls_path].inflight <= least + lun->opts.rr_ios)
                return mp_tls_path;
        }
        if (lun->rr_count >= lun->opts.rr_ios || !mp_usable(lun, lun->cur)) {
            lun->rr_count = 0;
            for (unsigned k = 1; k <= n; k++) {
                unsigned i = (lun->cur + k) % n;
                if (mp_usable(lun, i)) {
                    lun->cur = i;
                    lun->rr_count = 1;
                    return (int)i;
                }
            }
            return -1;
        }
        lun->rr_count++;
        return (int)lun->cur;
    case LUN_POLICY_SERVICE_TIME: {
        int best = -1;
        for (unsigned k = 0; k < n; k++) {
            unsigned i = (lun->st_next + k) % n;
            if (mp_usable(lun, i) &&
                (best < 0 || lun->slots[i].inflight_cost < lun->slots[best].inflight_cost))
                best = (int)i;
        }
        /* Stay on the completing path's thread unless it carries clearly
         * more than the least loaded path. */
        if (best >= 0 && mp_tls_lun == lun && mp_tls_path >= 0 && mp_tls_path != best &&
            mp_usable(lun, (unsigned)mp_tls_path) &&
            lun->slots[mp_tls_path].inflight_cost <=
                lun->slots[best].inflight_cost + MP_ST_LOCAL_SLACK)
            return mp_tls_path;
        if (best >= 0) {
            lun->st_next = ((unsigned)best + 1) % n;
            lun->cur = (unsigned)best;
        }
        return best;
    }
    default:
        break;
    }
    if (mp_usable(lun, lun->cur))
        return (int)lun->cur;
    for (unsigned k = 1; k <= n; k++) {
        unsigned i = (lun->cur + k) % n;
        if (mp_usable(lun, i)) {
            lun->cur = i;
            return (int)i;
        }
    }
    return -1;
}

static unsigned mp_paths_up_locked(const struct lun *lun)
{
    unsigned up = 0;
    for (unsigned i = 0; i < lun->npaths; i++)
        up += mp_usable(lun, i);
    return up;
}

/* Mark path i failed (lun->lock held). Idempotent. */
static void mp_path_fail_locked(struct lun *lun, unsigned i, const char *why)
{
    struct mp_slot *s = &lun->slots[i];
    if (!lun->mp || s->failed || lun->stopping)
        return;
    uint64_t now = now_ns();
    s->failed = true;
    s->torn_down = false;
    s->state_since_ns = now;
    s->st.failures++;
    snprintf(s->st.last_error, sizeof s->st.last_error, "%s", why);
    s->fail_ring[s->fail_pos++ % MP_FLAP_RING] = now;
    unsigned recent = 0;
    for (unsigned k = 0; k < MP_FLAP_RING; k++)
        if (s->fail_ring[k] &&
            now - s->fail_ring[k] <= (uint64_t)lun->opts.flap_window_ms * 1000000)
            recent++;
    bool hold = recent >= lun->opts.flap_count;
    if (hold)
        s->hold_until_ns = now + (uint64_t)lun->opts.flap_hold_ms * 1000000;
    log_err("%s: path %s failed: %s; %u of %u paths up%s", lun->name, s->name, why,
            mp_paths_up_locked(lun), lun->npaths, hold ? " (flapping: held back)" : "");
    pthread_cond_broadcast(&lun->cond);
}

/* A path found dead by itself (path.h set_report; the path's thread). */
static void mp_path_report(void *opaque, struct lun_path *p, const char *why)
{
    struct mp_slot *s = opaque;
    struct lun *lun = s->lun;
    pthread_mutex_lock(&lun->lock);
    if (s->p == p)
        mp_path_fail_locked(lun, s->idx, why);
    pthread_mutex_unlock(&lun->lock);
}

int lun_path_get_info(struct lun *lun, unsigned i, struct lun_info *out)
{
    if (i >= lun->npaths)
        return -EINVAL;
    pthread_mutex_lock(&lun->lock);
    bool have = lun->slots[i].have_pinfo;
    if (have)
        *out = lun->slots[i].pinfo;
    pthread_mutex_unlock(&lun->lock);
    return have ? 0 : -ENOENT;
}

int lun_path_get_stats(struct lun *lun, unsigned i, struct lun_path_stats *out)
{
    if (i >= lun->npaths)
        return -EINVAL;
    pthread_mutex_lock(&lun->lock);
    struct mp_slot *s = &lun->slots[i];
    /* The current session's ping counters: read outside lun->lock, with
     * the path pinned (submitting) so its checker cannot close it. */
    struct lun_path *pp = s->p && s->p->ops->ping_stats ? s->p : NULL;
    if (pp)
        s->submitting++;
    pthread_mutex_unlock(&lun->lock);
    uint64_t pings = 0, misses = 0;
    if (pp) {
        pp->ops->ping_stats(pp, &pings, &misses);
        s->submitting--;
    }
    pthread_mutex_lock(&lun->lock);
    *out = s->st;
    out->pings = s->ping_base + pings;
    out->nop_misses = s->miss_base + misses;
    out->reads = s->ctr.reads;
    out->writes = s->ctr.writes;
    out->others = s->ctr.others;
    out->read_bytes = s->ctr.read_bytes;
    out->write_bytes = s->ctr.write_bytes;
    out->errors = s->ctr.errors;
    for (unsigned b = 0; b < LUN_LAT_BUCKETS; b++)
        out->lat_hist[b] = s->ctr.lat_hist[b];
    out->state = mp_state_locked(lun, i);
    uint64_t now = now_ns();
    out->held = s->failed && s->hold_until_ns > now;
    out->inflight = s->inflight;
    out->state_age_ms = (now - s->state_since_ns) / 1000000;
    pthread_mutex_unlock(&lun->lock);
    return 0;
}

/* ---- Range checks ---------------------------------------------------------- */

static int lun_io_check(struct lun *lun, const struct lun_io *io)
{
    const struct lun_info *in = &lun->info;
    if (!io->done) {
        log_err("%s: %s submitted without a completion callback", lun->name, lun_op_name(io->op));
        return -EINVAL;
    }
    if ((unsigned)io->op > LUN_OP_COMPARE_AND_WRITE) {
        log_err("%s: unknown I/O operation %d", lun->name, (int)io->op);
        return -EINVAL;
    }
    if (lun_op_modifies(io->op) && lun->opts.read_only) {
        log_err("%s: %s at lba %llu refused: LUN opened read-only", lun->name, lun_op_name(io->op),
                (unsigned long long)io->lba);
        return -EROFS;
    }
    if (io->op == LUN_OP_FLUSH)
        return 0;
    if (io->nblocks == 0) {
        log_err("%s: %s at lba %llu of 0 blocks", lun->name, lun_op_name(io->op),
                (unsigned long long)io->lba);
        return -EINVAL;
    }
    if (io->lba >= in->num_blocks || io->nblocks > in->num_blocks - io->lba) {
        log_err("%s: %s of %u blocks at lba %llu is past the end of the LUN (%llu blocks of %u "
                "bytes)",
                lun->name, lun_op_name(io->op), io->nblocks, (unsigned long long)io->lba,
                (unsigned long long)in->num_blocks, in->block_size);
        return -EINVAL;
    }
    if (io->op != LUN_OP_UNMAP && !io->buf) {
        log_err("%s: %s at lba %llu without a buffer", lun->name, lun_op_name(io->op),
                (unsigned long long)io->lba);
        return -EINVAL;
    }
    switch (io->op) {
    case LUN_OP_COMPARE_AND_WRITE:
        if (io->nblocks != 1) {
            log_err("%s: compare-and-write of %u blocks at lba %llu: only one block is supported",
                    lun->name, io->nblocks, (unsigned long long)io->lba);
            return -EINVAL;
        }
        if (!in->caps.compare_and_write) {
            log_err("%s: the LUN does not support COMPARE AND WRITE", lun->name);
            return -EOPNOTSUPP;
        }
        break;
    case LUN_OP_UNMAP:
        if (!in->caps.unmap) {
            log_err("%s: the LUN does not support UNMAP", lun->name);
            return -EOPNOTSUPP;
        }
        break;
    case LUN_OP_WRITE_SAME:
        if (!in->caps.write_same) {
            log_err("%s: the LUN does not support WRITE SAME", lun->name);
            return -EOPNOTSUPP;
        }
        break;
    default:
        break;
    }
    return 0;
}

/* ---- Asynchronous core -------------------------------------------------- */

static void lun_io_done(struct lun_io *io, int result);
static void mp_failover(struct lun *lun, struct lun_io *io, unsigned pidx, int result,
                        const char *why);

static void lun_io_finish(struct lun_io *io, int result)
{
    io->done = (lun_io_done_fn)io->priv[0];
    io->done(io, result);
}

/* Put io on the LUN's queue (lun->lock held). barrier: 0, or
 * (path + 1) << 32 | generation the path must get past first. */
static void mp_queue_locked(struct lun *lun, struct lun_io *io, uintptr_t barrier)
{
    uintptr_t st = (uintptr_t)io->priv[2];
    if (LUN_PRIV_QUEUED(st) == 0) {
        unsigned q = (unsigned)((lun_since_epoch_ns(lun) / 100000000) % 0xFFFF) + 1;
        st = (st & ~((uintptr_t)0xFFFF << 16)) | ((uintptr_t)q << 16);
        io->priv[2] = (void *)st;
    }
    io->priv[3] = NULL;
    io->priv[4] = (void *)barrier;
    if (lun->q_tail)
        lun->q_tail->priv[3] = io;
    else
        lun->q_head = io;
    lun->q_tail = io;
    lun->nqueued++;
    pthread_cond_broadcast(&lun->cond);
}

/* Has io waited in the queue longer than queue_ms since it was first queued? */
static bool mp_queue_expired(const struct lun *lun, const struct lun_io *io)
{
    unsigned q = LUN_PRIV_QUEUED((uintptr_t)io->priv[2]);
    if (!q)
        return false;
    unsigned now = (unsigned)((lun_since_epoch_ns(lun) / 100000000) % 0xFFFF) + 1;
    unsigned waited = (now + 0xFFFF - q) % 0xFFFF; /* 100 ms units */
    return (uint64_t)waited * 100 >= lun->opts.queue_ms;
}

/* A LUN of one plain path (no engine): its path is never failed, replaced
 * or closed before lun_close, so no lock is needed to choose it. */
static int mp_dispatch_plain(struct lun *lun, struct lun_io *io, unsigned retries)
{
    struct mp_slot *s = &lun->slots[0];
    uint64_t cost = lun_io_cost(lun, io);
    s->inflight++;
    s->inflight_cost += cost;
    uint32_t disp = (uint32_t)(lun_since_epoch_ns(lun) / 1000);
    io->priv[2] = (void *)LUN_PRIV_MAKE(retries, 0u, 0u, disp);
    io->done = lun_io_done;
    io->sense_key = io->asc = io->ascq = 0;
    int rc = s->p->ops->submit(s->p, io);
    if (rc < 0) {
        s->inflight--;
        s->inflight_cost -= cost;
        s->ctr.errors++;
    }
    return rc;
}

/* Issue io on a path: `pin` (retry on the same path) or the policy's
 * choice; queue it if no path is up (multipath). Returns 0, or for a plain
 * single path the path's refusal (-errno, done not called). */
static int mp_dispatch(struct lun *lun, struct lun_io *io, unsigned retries, int pin)
{
    int gate = lun_io_gate(lun, io);
    if (gate < 0) {
        lun_io_gate_log(lun, io, gate, retries ? "before a retry" : "before dispatch");
        io->sense_key = io->asc = io->ascq = 0;
        lun_io_finish(io, gate);
        return 0;
    }
    if (!lun->mp)
        return mp_dispatch_plain(lun, io, retries);
    pthread_mutex_lock(&lun->lock);
    int i = -1;
    if (lun->stopping)
        i = -1;
    else if (pin >= 0 && mp_usable(lun, (unsigned)pin))
        i = pin;
    else
        i = mp_select_locked(lun);
    if (i < 0) {
        if (lun->stopping) {
            pthread_mutex_unlock(&lun->lock);
            io->sense_key = io->asc = io->ascq = 0;
            lun_io_finish(io, -EIO);
            return 0;
        }
        if (lun->npaths < 32 && lun->pdl_paths == (1u << lun->npaths) - 1) {
            /* Every path said the LUN is gone (05/25/00): not "all paths
             * down", nothing to wait for. */
            pthread_mutex_unlock(&lun->lock);
            log_err("%s: %s at lba %llu: the LUN is gone on every path (05/25/00)", lun->name,
                    lun_op_name(io->op), (unsigned long long)io->lba);
            io->sense_key = LUN_SK_ILLEGAL_REQUEST;
            io->asc = 0x25;
            io->ascq = 0;
            lun_io_finish(io, -ENODEV);
            return 0;
        }
        mp_queue_locked(lun, io, 0);
        pthread_mutex_unlock(&lun->lock);
        return 0;
    }
    struct mp_slot *s = &lun->slots[i];
    uint64_t cost = lun_io_cost(lun, io);
    if (lun->mp)
        s->submitting++; /* a plain path is never closed under us */
    s->inflight++;
    s->inflight_cost += cost;
    struct lun_path *p = s->p;
    pthread_mutex_unlock(&lun->lock);

    uintptr_t st = (uintptr_t)io->priv[2];
    uint32_t disp = (uint32_t)(lun_since_epoch_ns(lun) / 1000);
    io->priv[2] = (void *)LUN_PRIV_MAKE(retries, (unsigned)i, LUN_PRIV_QUEUED(st), disp);
    io->done = lun_io_done;
    io->sense_key = io->asc = io->ascq = 0;
    int rc = p->ops->submit(p, io);

    if (lun->mp)
        s->submitting--;
    if (rc < 0) {
        s->inflight--;
        s->inflight_cost -= cost;
        s->ctr.errors++;
    }
    if (rc == 0)
        return 0;
    if (!lun->mp)
        return rc;
    enum lun_sense_class cls = lun_result_classify(rc, 0, 0, 0);
    if (cls == LUN_SENSE_FAIL_UP) {
        lun_io_finish(io, rc);
        return 0;
    }
    char why[96];
    snprintf(why, sizeof why, "%s refused: %s", lun_op_name(io->op), strerror(-rc));
    mp_failover(lun, io, (unsigned)i, rc, why);
    return 0;
}

/* A failover-class failure of io on path pidx (multipath). */
static void mp_failover(struct lun *lun, struct lun_io *io, unsigned pidx, int result,
                        const char *why)
{
    (void)result;
    pthread_mutex_lock(&lun->lock);
    struct mp_slot *s = &lun->slots[pidx];
    mp_path_fail_locked(lun, pidx, why); /* the error was counted by the caller */
    if (lun->stopping) {
        pthread_mutex_unlock(&lun->lock);
        io->sense_key = io->asc = io->ascq = 0;
        lun_io_finish(io, -EIO);
        return;
    }
    int gate = lun_io_gate(lun, io);
    if (gate < 0) {
        /* Not re-issued, not queued: past its deadline, or fenced. */
        pthread_mutex_unlock(&lun->lock);
        lun_io_gate_log(lun, io, gate, "before failover");
        io->sense_key = io->asc = io->ascq = 0;
        lun_io_finish(io, gate);
        return;
    }
    if (lun_op_modifies(io->op) || io->op == LUN_OP_FLUSH) {
        if (!s->torn_down) {
            /* Not before the old session is gone: a stale copy must not
             * land after the re-issued one. */
            mp_queue_locked(lun, io, ((uintptr_t)(pidx + 1) << 32) | s->gen);
            pthread_mutex_unlock(&lun->lock);
            return;
        }
    }
    pthread_mutex_unlock(&lun->lock);
    io->sense_key = io->asc = io->ascq = 0;
    mp_dispatch(lun, io, 0, -1);
}

static unsigned mp_backoff_ms(unsigned retries)
{
    return retries < 7 ? 10u << retries : 1000u;
}

/* Retry io on path pidx in `ms` (the monitor dispatches it). */
static void mp_retry_later(struct lun *lun, struct lun_io *io, unsigned retries, unsigned pidx,
                           unsigned ms)
{
    uintptr_t st = (uintptr_t)io->priv[2];
    io->priv[2] = (void *)LUN_PRIV_MAKE(retries, pidx, LUN_PRIV_QUEUED(st), 0u);
    io->priv[4] = (void *)(uintptr_t)(lun_since_epoch_ns(lun) + (uint64_t)ms * 1000000);
    pthread_mutex_lock(&lun->lock);
    io->priv[3] = lun->retry_head;
    lun->retry_head = io;
    pthread_cond_broadcast(&lun->cond); /* a plain LUN's monitor sleeps until now */
    pthread_mutex_unlock(&lun->lock);
}

/* Dispatch the back-off retries that are due (monitor). */
static void mp_retry_run(struct lun *lun)
{
    uint64_t now = lun_since_epoch_ns(lun);
    struct lun_io *due = NULL;
    pthread_mutex_lock(&lun->lock);
    for (struct lun_io **pp = &lun->retry_head; *pp;) {
        struct lun_io *io = *pp;
        if ((uint64_t)(uintptr_t)io->priv[4] <= now || lun->stopping) {
            *pp = io->priv[3];
            io->priv[3] = due;
            due = io;
        } else {
            pp = (struct lun_io **)&io->priv[3];
        }
    }
    pthread_mutex_unlock(&lun->lock);
    while (due) {
        struct lun_io *next = due->priv[3];
        uintptr_t st = (uintptr_t)due->priv[2];
        due->priv[3] = due->priv[4] = NULL;
        int rc = mp_dispatch(lun, due, LUN_PRIV_RETRIES(st), (int)LUN_PRIV_PATH(st));
        if (rc < 0) /* a plain path refused it */
            lun_io_finish(due, rc);
        due = next;
    }
}

static void lun_io_done(struct lun_io *io, int result)
{
    struct lun *lun = io->priv[1];
    uintptr_t st = (uintptr_t)io->priv[2];
    unsigned retries = LUN_PRIV_RETRIES(st), pidx = LUN_PRIV_PATH(st);
    uint32_t now_us = (uint32_t)(lun_since_epoch_ns(lun) / 1000);
    uint32_t lat = now_us - LUN_PRIV_DISPATCH(st);

    /* No lock on the hot path: counters are atomics. */
    struct mp_slot *s = &lun->slots[pidx];
    s->answered_us = now_us; /* the path is alive (the TUR watchdog asks) */
    s->inflight--;
    s->inflight_cost -= lun_io_cost(lun, io);
    s->ctr.lat_hist[lun_lat_bucket(lat)]++;
    if (io->op == LUN_OP_READ)
        s->ctr.reads++;
    else if (io->op == LUN_OP_WRITE)
        s->ctr.writes++;
    else
        s->ctr.others++;
    if (result >= 0) {
        if (io->op == LUN_OP_READ)
            s->ctr.read_bytes += lun_io_bytes(lun, io);
        else if (lun_op_modifies(io->op))
            s->ctr.write_bytes += lun_io_bytes(lun, io);
    } else if (result != -EILSEQ) {
        s->ctr.errors++;
    }

    if (result >= 0) {
        struct lun *saved_lun = mp_tls_lun;
        int saved_path = mp_tls_path;
        mp_tls_lun = lun;
        mp_tls_path = (int)pidx;
        lun_io_finish(io, 0);
        mp_tls_lun = saved_lun;
        mp_tls_path = saved_path;
        return;
    }
    enum lun_sense_class cls = lun_result_classify(result, io->sense_key, io->asc, io->ascq);
    char sbuf[LUN_SENSE_STR_MAX] = "no sense";
    if (io->sense_key || io->asc || io->ascq)
        lun_sense_str(io->sense_key, io->asc, io->ascq, sbuf, sizeof sbuf);
    const char *pname = s->name;
    if (cls == LUN_SENSE_RETRY_LATER) {
        /* Busy or not ready for now: back off on the same path (10 ms,
         * doubling to 1 s), until the I/O's deadline (the gate stops it),
         * or without one while the back-offs add up to at most timeout_ms. */
        unsigned delay = mp_backoff_ms(retries);
        uint64_t spent = 0;
        for (unsigned k = 0; k < retries; k++)
            spent += mp_backoff_ms(k);
        if (retries < 250 && (io->deadline_ns || spent + delay <= lun->opts.timeout_ms)) {
            log_debug("%s: %s at lba %llu: %s, retrying on %s in %u ms (%u)", lun->name,
                      lun_op_name(io->op), (unsigned long long)io->lba, sbuf, pname, delay,
                      retries + 1);
            mp_retry_later(lun, io, retries + 1, pidx, delay);
            return;
        }
        log_err("%s: %s at lba %llu: %s for %llu ms on %s, giving up", lun->name,
                lun_op_name(io->op), (unsigned long long)io->lba, sbuf, (unsigned long long)spent,
                pname);
    }
    if (result == -ENODEV && lun->mp) {
        /* Permanent device loss reported by one path: that path's death,
         * unless every path says so (then the LUN's). */
        pthread_mutex_lock(&lun->lock);
        lun->pdl_paths |= 1u << pidx;
        bool all = true;
        for (unsigned k = 0; k < lun->npaths; k++)
            if (!(lun->pdl_paths & (1u << k)))
                all = false;
        pthread_mutex_unlock(&lun->lock);
        if (!all) {
            char why[160];
            snprintf(why, sizeof why, "%s at lba %llu: %s (LUN gone on this path)",
                     lun_op_name(io->op), (unsigned long long)io->lba, sbuf);
            mp_failover(lun, io, pidx, result, why);
            return;
        }
    }
    if (cls == LUN_SENSE_RETRY_SAME && retries < LUN_RETRY_SAME_MAX) {
        log_debug("%s: %s at lba %llu: %s, retrying on %s (%u)", lun->name, lun_op_name(io->op),
                  (unsigned long long)io->lba, sbuf, pname, retries + 1);
        int rc = mp_dispatch(lun, io, retries + 1, (int)pidx);
        if (rc == 0)
            return;
        result = rc;
    }
    if (cls == LUN_SENSE_FAILOVER && lun->mp && result == -ETIMEDOUT && lun_io_late(io) &&
        (uint64_t)lat < (uint64_t)lun->opts.timeout_ms * 1000) {
        /* The command's timeout was cut short by the I/O's deadline: the
         * path did nothing wrong, and the I/O is over. */
        log_err("%s: %s of %u blocks at lba %llu on %s: deadline passed after %u ms in flight",
                lun->name, lun_op_name(io->op), io->nblocks, (unsigned long long)io->lba, pname,
                lat / 1000);
        lun_io_finish(io, -ETIMEDOUT);
        return;
    }
    if (cls == LUN_SENSE_FAILOVER && lun->mp) {
        char why[160];
        snprintf(why, sizeof why, "%s at lba %llu: %s%s%s", lun_op_name(io->op),
                 (unsigned long long)io->lba, strerror(-result),
                 io->sense_key || io->asc || io->ascq ? ", " : "",
                 io->sense_key || io->asc || io->ascq ? sbuf : "");
        mp_failover(lun, io, pidx, result, why);
        return;
    }
    if (result == -EBADE) {
        pthread_mutex_lock(&lun->lock);
        bool newly = lun->pr_registered && !lun->fenced;
        if (newly)
            lun->fenced = true;
        pthread_mutex_unlock(&lun->lock);
        if (newly)
            log_err("%s: this host is fenced: %s of %u blocks at lba %llu refused on %s (%s); "
                    "paths will not re-register the reservation key",
                    lun->name, lun_op_name(io->op), io->nblocks, (unsigned long long)io->lba, pname,
                    io->sense_key ? sbuf : "RESERVATION CONFLICT");
    }
    if (result != -EILSEQ && (io->sense_key || io->asc || io->ascq))
        log_err("%s: %s of %u blocks at lba %llu failed on %s: %s (%s)", lun->name,
                lun_op_name(io->op), io->nblocks, (unsigned long long)io->lba, pname, sbuf,
                lun_sense_class_name(cls));
    lun_io_finish(io, result);
}

static int lun_io_dispatch(struct lun *lun, struct lun_io *io)
{
    io->priv[0] = (void *)io->done;
    io->priv[1] = lun;
    io->priv[2] = NULL;
    int rc = mp_dispatch(lun, io, 0, -1);
    if (rc < 0)
        io->done = (lun_io_done_fn)io->priv[0];
    return rc;
}

/* ---- The monitor: teardowns, TUR watchdog, the queue -------------------- */

static void mp_queue_run(struct lun *lun)
{
    struct lun_io *fail = NULL, **fail_tail = &fail;
    struct lun_io *go = NULL, **go_tail = &go;
    pthread_mutex_lock(&lun->lock);
    struct lun_io *q = lun->q_head;
    lun->q_head = lun->q_tail = NULL;
    lun->nqueued = 0;
    struct lun_io *keep = NULL, *keep_tail = NULL;
    unsigned nkeep = 0;
    bool any_up = mp_paths_up_locked(lun) > 0;
    while (q) {
        struct lun_io *next = q->priv[3];
        q->priv[3] = NULL;
        uintptr_t b = (uintptr_t)q->priv[4];
        bool blocked = false;
        if (b) {
            unsigned bi = (unsigned)(b >> 32) - 1, bg = (unsigned)(b & 0xFFFFFFFFu);
            if (bi < lun->npaths && lun->slots[bi].gen == bg)
                blocked = true;
            else
                q->priv[4] = NULL;
        }
        int gate = lun_io_gate(lun, q);
        if (gate < 0) {
            /* Past its deadline or fenced: fails now, barrier or not. */
            q->priv[4] = (void *)(intptr_t)gate;
            *fail_tail = q;
            fail_tail = (struct lun_io **)&q->priv[3];
        } else if (mp_queue_expired(lun, q) || lun->stopping) {
            q->priv[4] = NULL;
            *fail_tail = q;
            fail_tail = (struct lun_io **)&q->priv[3];
        } else if (!blocked && any_up) {
            *go_tail = q;
            go_tail = (struct lun_io **)&q->priv[3];
        } else {
            if (keep_tail)
                keep_tail->priv[3] = q;
            else
                keep = q;
            keep_tail = q;
            nkeep++;
        }
        q = next;
    }
    if (keep) {
        keep_tail->priv[3] = lun->q_head; /* anything queued meanwhile goes after */
        if (!lun->q_head)
            lun->q_tail = keep_tail;
        lun->q_head = keep;
        lun->nqueued += nkeep;
    }
    pthread_mutex_unlock(&lun->lock);
    while (fail) {
        struct lun_io *next = fail->priv[3];
        int gate = (int)(intptr_t)fail->priv[4];
        if (gate < 0)
            lun_io_gate_log(lun, fail, gate, "while queued");
        else
            log_err("%s: %s of %u blocks at lba %llu failed: no path to the LUN for %u ms (all "
                    "paths down)",
                    lun->name, lun_op_name(fail->op), fail->nblocks, (unsigned long long)fail->lba,
                    lun->opts.queue_ms);
        fail->sense_key = fail->asc = fail->ascq = 0;
        lun_io_finish(fail, gate < 0 ? gate : -EIO);
        fail = next;
    }
    while (go) {
        struct lun_io *next = go->priv[3];
        mp_dispatch(lun, go, 0, -1);
        go = next;
    }
}

static void mp_cond_wait_ms(struct lun *lun, unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    pthread_cond_timedwait(&lun->cond, &lun->lock, &ts);
}

static void mp_path_teardown(struct lun *lun, unsigned i, unsigned wait_ms);

static void *mp_monitor_thread(void *arg)
{
    struct lun *lun = arg;
    pthread_mutex_lock(&lun->lock);
    while (!lun->stopping) {
        uint64_t now = now_ns();
        for (unsigned i = 0; i < lun->npaths; i++) {
            struct mp_slot *s = &lun->slots[i];
            uint64_t limit = (uint64_t)lun->opts.check_timeout_ms * 1000000;
            /* A TEST UNIT READY stuck behind a deep queue on a loaded
             * machine is not a dead path while the path keeps answering
             * commands: only fail it once it answered nothing for the
             * whole check_timeout_ms either. */
            uint32_t since_us = (uint32_t)((now - lun->epoch_ns) / 1000) - (uint32_t)s->answered_us;
            bool answering = (uint64_t)since_us * 1000 < limit;
            if (!s->failed && s->tur_started_ns && now - s->tur_started_ns > limit && !answering) {
                char why[96];
                snprintf(why, sizeof why, "TEST UNIT READY not answered in %u ms",
                         lun->opts.check_timeout_ms);
                mp_path_fail_locked(lun, i, why);
            }
            if (!s->failed || s->torn_down || s->aborting)
                continue;
            if (s->p && s->p->ops->abort) {
                /* Its checker tears it down (mp_path_teardown), unless the
                 * checker is stuck in a TEST UNIT READY on the dead link:
                 * then start the teardown from here, without waiting (it
                 * releases the TUR). */
                if (s->tur_started_ns)
                    mp_path_teardown(lun, i, 0);
                continue;
            } else if (s->inflight == 0 && s->submitting == 0) {
                s->torn_down = true;
                s->gen++;
                pthread_cond_broadcast(&lun->cond);
            }
        }
        bool work = lun->q_head != NULL, retries = lun->retry_head != NULL;
        pthread_mutex_unlock(&lun->lock);
        if (work)
            mp_queue_run(lun);
        if (retries)
            mp_retry_run(lun);
        pthread_mutex_lock(&lun->lock);
        /* A plain path has nothing to watch but back-off retries: no
         * 20 ms tick while there are none (woken by mp_retry_later). */
        if (!lun->stopping)
            mp_cond_wait_ms(lun, lun->mp || lun->retry_head ? MP_MONITOR_TICK_MS : 60000);
    }
    pthread_mutex_unlock(&lun->lock);
    return NULL;
}

/* ---- The checker: TEST UNIT READY, reconnect --------------------------- */

static int mp_tur(struct lun_path *p)
{
    int rc = 0;
    for (int k = 0; k < 5; k++) {
        rc = p->ops->test_unit_ready(p);
        enum lun_sense_class c = lun_result_classify(rc, 0, 0, 0);
        if (rc >= 0 || (c != LUN_SENSE_RETRY_SAME && c != LUN_SENSE_RETRY_LATER))
            break;
        if (c == LUN_SENSE_RETRY_LATER)
            usleep(50000); /* becoming ready, busy: not a dead path */
    }
    return rc;
}

/* Tear failed path i's session down (checker thread, lun->lock held;
 * dropped while the path works). Its writes that failed over wait in the
 * queue behind the barrier (i, gen) until the path says nothing of the old
 * session can still land (ops->abort returns 0): then the generation moves
 * and they are re-issued. A silent link keeps them waiting (the path
 * keeps trying to confirm); reads were re-issued at once. */
static void mp_path_teardown(struct lun *lun, unsigned i, unsigned wait_ms)
{
    struct mp_slot *s = &lun->slots[i];
    struct lun_path *p = s->p;
    s->aborting = true;
    s->submitting++; /* keeps p alive */
    pthread_mutex_unlock(&lun->lock);
    int rc = p->ops->abort(p, wait_ms);
    pthread_mutex_lock(&lun->lock);
    s->submitting--;
    s->aborting = false;
    if (rc == 0) {
        s->torn_down = true;
        s->gen++;
        log_debug("%s: path %s torn down", lun->name, s->name);
        pthread_cond_broadcast(&lun->cond); /* queued writes may go now */
    } else if (!s->teardown_waiting) {
        s->teardown_waiting = true;
        log_err("%s: path %s: cannot yet tell whether the target dropped the commands of the "
                "failed session; its writes are held until it can",
                lun->name, s->name);
    }
    if (rc == 0)
        s->teardown_waiting = false;
}

/* Does the target reinstate sessions (RFC 7143), judged through `uri`:
 * two logins with one ISID, then a TEST UNIT READY on the first. 1 yes,
 * 0 no, -errno cannot tell. Checker thread, no lock. */
static int mp_probe_reinstatement(struct lun *lun, const char *uri)
{
    uint64_t seed = (boottime_ns() << 1) | 1;
    struct lun_path *a = NULL, *b = NULL;
    int rc = lun_path_open_uri_isid(uri, &lun->opts, seed, &a);
    if (rc == 0)
        rc = lun_path_open_uri_isid(uri, &lun->opts, seed, &b);
    if (rc == 0) {
        int t = a->ops->test_unit_ready(a);
        rc = (t == -ENOTCONN || t == -ECONNRESET || t == -EPIPE) ? 1 : 0;
    }
    lun_path_close(b);
    lun_path_close(a);
    return rc;
}

/* A failed path whose teardown cannot be confirmed (a silent link): if
 * the target reinstates sessions, log in with the path's ISID through the
 * portal of a path that is up. The target then closes the old session and
 * drops its tasks, so its writes may be re-issued now instead of when the
 * link comes back. Checker thread, no lock held. */
static void mp_try_reinstate(struct lun *lun, unsigned i)
{
    struct mp_slot *s = &lun->slots[i];
    uint64_t now = now_ns();
    if (!s->isid_seed || now < s->reinstate_next_ns)
        return;
    s->reinstate_next_ns = now + 1000000000ull;
    const char *via = NULL;
    pthread_mutex_lock(&lun->lock);
    int known = lun->reinstates;
    /* Another portal: preferably one whose path is up; a failed one may
     * still take logins (its target may be stuck behind the frozen
     * session, which the reinstatement ends). */
    for (int pass = 0; pass < 2 && !via; pass++)
        for (unsigned k = 0; k < lun->npaths && !via; k++) {
            struct mp_slot *o = &lun->slots[k];
            if (k != i && (pass || mp_usable(lun, k)) && o->uri && lun_uri_is_iscsi(o->uri))
                via = o->uri; /* immutable string */
        }
    pthread_mutex_unlock(&lun->lock);
    if (!via || known == 0 || !lun_uri_is_iscsi(s->uri))
        return;
    if (known < 0) {
        int r = mp_probe_reinstatement(lun, via);
        if (r < 0) {
            log_err("%s: cannot tell whether the target reinstates sessions: %s", lun->name,
                    strerror(-r));
            return;
        }
        pthread_mutex_lock(&lun->lock);
        lun->reinstates = r;
        pthread_mutex_unlock(&lun->lock);
        log_info("%s: the target %s sessions (two logins with one ISID)", lun->name,
                 r ? "reinstates" : "does not reinstate");
        if (!r)
            return;
    }
    struct lun_path *tmp = NULL;
    if (lun_path_open_uri_isid(via, &lun->opts, s->isid_seed, &tmp) < 0)
        return;
    lun_path_close(tmp);
    pthread_mutex_lock(&lun->lock);
    struct lun_path *p = s->failed && !s->torn_down ? s->p : NULL;
    if (p)
        s->submitting++;
    pthread_mutex_unlock(&lun->lock);
    if (!p)
        return;
    log_err("%s: path %s: logged in with its ISID through another portal: the target "
            "reinstated (ended) the old session, its writes can be re-issued",
            lun->name, s->name);
    if (p->ops->reinstated)
        p->ops->reinstated(p);
    pthread_mutex_lock(&lun->lock);
    s->submitting--;
    pthread_mutex_unlock(&lun->lock);
}

/* Bring failed, torn-down path i back (checker thread). 0 when it is up. */
static int mp_path_recover(struct lun *lun, unsigned i)
{
    struct mp_slot *s = &lun->slots[i];
    int rc;
    if (s->uri) {
        uint64_t now = now_ns();
        if (now < s->next_reopen_ns)
            return -EAGAIN;
        unsigned shift = s->reopen_fails < 3 ? s->reopen_fails : 3;
        s->next_reopen_ns = now + ((uint64_t)MP_REOPEN_MIN_MS << shift) * 1000000;
        pthread_mutex_lock(&lun->lock);
        if (s->submitting || s->inflight) {
            pthread_mutex_unlock(&lun->lock);
            return -EBUSY;
        }
        struct lun_path *old = s->p;
        s->p = NULL;
        pthread_mutex_unlock(&lun->lock);
        if (old && old->ops->ping_stats) {
            uint64_t a = 0, m = 0;
            old->ops->ping_stats(old, &a, &m);
            pthread_mutex_lock(&lun->lock);
            s->ping_base += a;
            s->miss_base += m;
            pthread_mutex_unlock(&lun->lock);
        }
        lun_path_close(old);
        struct lun_path *np = NULL;
        rc = lun_path_open_uri_isid(s->uri, &lun->opts, s->isid_seed, &np);
        if (rc < 0) {
            s->reopen_fails++;
            return rc;
        }
        struct lun_info pi;
        memset(&pi, 0, sizeof pi);
        rc = np->ops->probe(np, &pi);
        char why[160], miss[128];
        why[0] = 0;
        if (rc == 0) {
            if (pi.physical_block_size < pi.block_size)
                pi.physical_block_size = pi.block_size;
            pthread_mutex_lock(&lun->lock);
            s->pinfo = pi;
            s->have_pinfo = true;
            pthread_mutex_unlock(&lun->lock);
        }
        /* A path that returns (or answers for the first time) is a new
         * session: it must be the same LUN, same geometry, and able to do
         * everything the LUN already promised its users. */
        if (rc == 0 && (strcmp(pi.id, lun->info.id) != 0 || pi.num_blocks != lun->info.num_blocks ||
                        pi.block_size != lun->info.block_size)) {
            log_err("%s: path %s now reaches LUN %s (%llu blocks of %u), not %s: keeping it "
                    "failed",
                    lun->name, np->name, pi.id, (unsigned long long)pi.num_blocks, pi.block_size,
                    lun->info.id);
            snprintf(why, sizeof why, "reaches LUN %.64s, not %.64s", pi.id, lun->info.id);
            rc = -EINVAL;
        } else if (rc == 0 && lun_caps_missing(&pi.caps, &pi.caps_unknown, &lun->info.caps, miss,
                                               sizeof miss)) {
            log_err("%s: path %s lacks %s, which the LUN's other paths have: keeping it failed",
                    lun->name, np->name, miss);
            snprintf(why, sizeof why, "lacks %s", miss);
            rc = -EOPNOTSUPP;
        }
        if (rc < 0) {
            if (why[0]) {
                pthread_mutex_lock(&lun->lock);
                snprintf(s->st.last_error, sizeof s->st.last_error, "%s", why);
                pthread_mutex_unlock(&lun->lock);
            }
            s->reopen_fails++; /* back off: it answers, but is not ours */
            lun_path_close(np);
            return rc;
        }
        if (np->ops->set_report)
            np->ops->set_report(np, mp_path_report, s);
        pthread_mutex_lock(&lun->lock);
        s->p = np;
        pthread_mutex_unlock(&lun->lock);
    }
    pthread_mutex_lock(&lun->lock);
    struct lun_path *p = s->p;
    if (!p) {
        pthread_mutex_unlock(&lun->lock);
        return -ENOTCONN;
    }
    s->submitting++;
    pthread_mutex_unlock(&lun->lock);

    rc = mp_tur(p);
    /* Register (and check) with the key the LUN has now; if the owner
     * called lun_pr_register meanwhile (it skips this path, which is not
     * up yet), do it again with the new key before the path comes up:
     * otherwise it would come up unregistered and its first write would
     * look like a fence. */
    for (unsigned round = 0; rc == 0; round++) {
        pthread_mutex_lock(&lun->lock);
        bool reg = lun->pr_registered && !lun->fenced;
        uint64_t key = lun->pr_key;
        unsigned pr_gen = lun->pr_gen;
        lun_register_check_fn fn = lun->check_fn;
        void *opaque = lun->check_opaque;
        pthread_mutex_unlock(&lun->lock);
        if (pr_gen & 1) { /* a lun_pr_register is running: let it finish */
            usleep(10000);
            continue;
        }
        if (rc == 0 && reg) {
            rc = p->ops->pr_out(p, LUN_PR_ACT_REGISTER_IGNORE, 0, key, LUN_PR_NONE);
            bool fenced_now = false;
            if (rc == -EBADE) {
                fenced_now = true;
                rc = 0;
            } else if (rc == 0 && fn) {
                int c = fn(opaque);
                if (c == 0) {
                    fenced_now = true;
                    /* Take back the registration we just made. */
                    (void)p->ops->pr_out(p, LUN_PR_ACT_REGISTER_IGNORE, 0, 0, LUN_PR_NONE);
                } else if (c < 0) {
                    rc = c;
                }
            }
            if (fenced_now) {
                pthread_mutex_lock(&lun->lock);
                lun->fenced = true;
                pthread_mutex_unlock(&lun->lock);
                log_err("%s: this host is fenced (the register check on path %s says our heartbeat "
                        "generation was taken over): the path carries no writes of ours",
                        lun->name, p->name);
            }
        }
        pthread_mutex_lock(&lun->lock);
        bool again = rc == 0 && lun->pr_gen != pr_gen && round < 100 && !lun->stopping;
        pthread_mutex_unlock(&lun->lock);
        if (!again)
            break;
    }
    if (rc < 0)
        s->reopen_fails++; /* logs in but is not usable: keep backing off */
    pthread_mutex_lock(&lun->lock);
    s->submitting--;
    if (rc == 0 && !lun->stopping) {
        s->reopen_fails = 0;
        lun->pdl_paths &= ~(1u << i);
        s->failed = false;
        s->torn_down = false;
        s->hold_until_ns = 0;
        s->state_since_ns = now_ns();
        log_info("%s: path %s is back; %u of %u paths up", lun->name, p->name,
                 mp_paths_up_locked(lun), lun->npaths);
        pthread_cond_broadcast(&lun->cond);
    }
    pthread_mutex_unlock(&lun->lock);
    return rc;
}

static void *mp_checker_thread(void *arg)
{
    struct mp_slot *s = arg;
    struct lun *lun = s->lun;
    unsigned i = s->idx;
    pthread_mutex_lock(&lun->lock);
    /* An up path was just checked by its open (TEST UNIT READY there). */
    uint64_t next = now_ns() + (uint64_t)lun->opts.check_interval_ms * 1000000;
    while (!lun->stopping) {
        uint64_t now = now_ns();
        if (s->failed && !s->torn_down && !s->aborting && s->p && s->p->ops->abort) {
            mp_path_teardown(lun, i, 250);
            if (s->failed && !s->torn_down && s->teardown_waiting && s->p &&
                s->p->ops->reinstated) {
                pthread_mutex_unlock(&lun->lock);
                mp_try_reinstate(lun, i);
                pthread_mutex_lock(&lun->lock);
            }
            continue;
        }
        /* Up paths are checked every check_interval_ms; a torn-down path
         * that can be reopened is retried on its own back-off schedule
         * (next_reopen_ns), whatever the TUR interval. */
        bool reopen = s->failed && s->torn_down && s->uri;
        uint64_t due = next;
        if (reopen)
            due = s->next_reopen_ns > s->hold_until_ns ? s->next_reopen_ns : s->hold_until_ns;
        if (now < due) {
            mp_cond_wait_ms(lun, (unsigned)MIN((due - now + 999999) / 1000000, 60000u));
            continue;
        }
        if (!reopen)
            next = now + (uint64_t)lun->opts.check_interval_ms * 1000000;
        if (!s->failed && s->p) {
            struct lun_path *p = s->p;
            s->submitting++;
            s->tur_started_ns = now;
            pthread_mutex_unlock(&lun->lock);
            int rc = mp_tur(p);
            pthread_mutex_lock(&lun->lock);
            s->submitting--;
            s->tur_started_ns = 0;
            if (rc == -ENODEV) {
                /* 05/25/00 on this path: the LUN is gone here (PDL on one
                 * path is that path's death; on all, the LUN's). */
                lun->pdl_paths |= 1u << i;
                mp_path_fail_locked(lun, i,
                                    "TEST UNIT READY: logical unit not supported on this path "
                                    "(05/25/00)");
            } else if (rc < 0 && lun_result_classify(rc, 0, 0, 0) == LUN_SENSE_FAILOVER) {
                char why[96];
                snprintf(why, sizeof why, "TEST UNIT READY: %s", strerror(-rc));
                mp_path_fail_locked(lun, i, why);
            }
        } else if (s->failed && s->torn_down && now >= s->hold_until_ns) {
            pthread_mutex_unlock(&lun->lock);
            mp_path_recover(lun, i);
            pthread_mutex_lock(&lun->lock);
        }
    }
    pthread_mutex_unlock(&lun->lock);
    return NULL;
}

/* A command longer than max_transfer_blocks: children issued in sequence. */
struct lun_split {
    struct lun_io child;
    struct lun_io *parent;
    struct lun *lun;
    uint32_t done_blocks; /* blocks completed before the current child */
};

static void lun_split_prepare(struct lun_split *s)
{
    struct lun_io *pa = s->parent;
    uint32_t max = s->lun->info.max_transfer_blocks;
    uint32_t left = pa->nblocks - s->done_blocks;
    memset(&s->child, 0, sizeof s->child);
    s->child.op = pa->op;
    s->child.lba = pa->lba + s->done_blocks;
    s->child.nblocks = left < max ? left : max;
    s->child.flags = pa->flags;
    s->child.deadline_ns = pa->deadline_ns;
    s->child.opaque = s;
    if (pa->buf && pa->op != LUN_OP_WRITE_SAME)
        s->child.buf = (uint8_t *)pa->buf + (size_t)s->done_blocks * s->lun->info.block_size;
    else
        s->child.buf = pa->buf;
}

static void lun_split_child_done(struct lun_io *child, int result)
{
    struct lun_split *s = child->opaque;
    struct lun_io *pa = s->parent;
    if (result == 0) {
        s->done_blocks += child->nblocks;
        if (s->done_blocks < pa->nblocks) {
            lun_split_prepare(s);
            s->child.done = lun_split_child_done;
            result = lun_io_dispatch(s->lun, &s->child);
            if (result == 0)
                return;
        }
    }
    pa->sense_key = child->sense_key;
    pa->asc = child->asc;
    pa->ascq = child->ascq;
    free(s);
    pa->done(pa, result);
}

int lun_submit(struct lun *lun, struct lun_io *io)
{
    int rc = lun_io_check(lun, io);
    if (rc < 0)
        return rc;
    rc = lun_io_gate(lun, io);
    if (rc < 0) {
        lun_io_gate_log(lun, io, rc, "at submission");
        return rc;
    }
    io->sense_key = io->asc = io->ascq = 0;
    uint32_t max = lun->info.max_transfer_blocks;
    if (max && io->nblocks > max &&
        (io->op == LUN_OP_READ || io->op == LUN_OP_WRITE || io->op == LUN_OP_WRITE_SAME ||
         io->op == LUN_OP_UNMAP)) {
        struct lun_split *s = calloc(1, sizeof *s);
        if (!s)
            return -ENOMEM;
        s->parent = io;
        s->lun = lun;
        lun_split_prepare(s);
        s->child.done = lun_split_child_done;
        rc = lun_io_dispatch(lun, &s->child);
        if (rc < 0)
            free(s);
        return rc;
    }
    return lun_io_dispatch(lun, io);
}

/* ---- Synchronous calls -------------------------------------------------- */

struct lun_waiter {
    pthread_mutex_t m;
    pthread_cond_t c;
    bool done;
    int result;
};

static void lun_waiter_done(struct lun_io *io, int result)
{
    struct lun_waiter *w = io->opaque;
    pthread_mutex_lock(&w->m);
    w->result = result;
    w->done = true;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

static int lun_sync(struct lun *lun, enum lun_op op, uint64_t lba, uint32_t nblocks, void *buf,
                    unsigned flags, uint64_t deadline_ns)
{
    struct lun_waiter w = {.done = false, .result = 0};
    pthread_mutex_init(&w.m, NULL);
    pthread_cond_init(&w.c, NULL);
    struct lun_io io = {
        .op = op,
        .lba = lba,
        .nblocks = nblocks,
        .buf = buf,
        .flags = flags,
        .deadline_ns = deadline_ns,
        .done = lun_waiter_done,
        .opaque = &w,
    };
    int rc = lun_submit(lun, &io);
    if (rc == 0) {
        pthread_mutex_lock(&w.m);
        while (!w.done)
            pthread_cond_wait(&w.c, &w.m);
        pthread_mutex_unlock(&w.m);
        rc = w.result;
    }
    pthread_cond_destroy(&w.c);
    pthread_mutex_destroy(&w.m);
    return rc;
}

int lun_read_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, void *buf, uint64_t deadline_ns)
{
    return lun_sync(lun, LUN_OP_READ, lba, nblocks, buf, 0, deadline_ns);
}

int lun_write_dl(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags,
                 uint64_t deadline_ns)
{
    return lun_sync(lun, LUN_OP_WRITE, lba, nblocks, (void *)buf, flags, deadline_ns);
}

int lun_read(struct lun *lun, uint64_t lba, uint32_t nblocks, void *buf)
{
    return lun_sync(lun, LUN_OP_READ, lba, nblocks, buf, 0, 0);
}

int lun_write(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags)
{
    return lun_sync(lun, LUN_OP_WRITE, lba, nblocks, (void *)buf, flags, 0);
}

int lun_flush(struct lun *lun)
{
    return lun_sync(lun, LUN_OP_FLUSH, 0, 0, NULL, 0, 0);
}

int lun_unmap(struct lun *lun, uint64_t lba, uint32_t nblocks)
{
    return lun_sync(lun, LUN_OP_UNMAP, lba, nblocks, NULL, 0, 0);
}

int lun_write_same(struct lun *lun, uint64_t lba, uint32_t nblocks, const void *block,
                   unsigned flags)
{
    return lun_sync(lun, LUN_OP_WRITE_SAME, lba, nblocks, (void *)block, flags, 0);
}

int lun_compare_and_write(struct lun *lun, uint64_t lba, const void *expect, const void *data,
                          void *found)
{
    return lun_compare_and_write_dl(lun, lba, expect, data, found, 0);
}

int lun_compare_and_write_dl(struct lun *lun, uint64_t lba, const void *expect, const void *data,
                             void *found, uint64_t deadline_ns)
{
    uint32_t bs = lun->info.block_size;
    if (!expect || !data) {
        log_err("%s: compare-and-write at lba %llu without expect/data", lun->name,
                (unsigned long long)lba);
        return -EINVAL;
    }
    uint8_t *buf = malloc(2 * (size_t)bs);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, expect, bs);
    memcpy(buf + bs, data, bs);
    int rc = lun_sync(lun, LUN_OP_COMPARE_AND_WRITE, lba, 1, buf, 0, deadline_ns);
    if (rc == -EILSEQ && found)
        memcpy(found, buf, bs);
    free(buf);
    return rc;
}

/* A path for a synchronous command (TUR, PR): the policy's choice, with a
 * reference that keeps its checker from closing it. -EIO if none is up. */
static int mp_path_get(struct lun *lun, unsigned *idx, struct lun_path **p)
{
    pthread_mutex_lock(&lun->lock);
    int i = lun->mp ? mp_select_locked(lun) : 0;
    if (i < 0) {
        pthread_mutex_unlock(&lun->lock);
        log_err("%s: no path to the LUN is up", lun->name);
        return -EIO;
    }
    lun->slots[i].submitting++;
    *p = lun->slots[i].p;
    *idx = (unsigned)i;
    pthread_mutex_unlock(&lun->lock);
    return 0;
}

/* Drop the reference; a failover-class result fails the path. Returns true
 * if the caller should try another path. */
static bool mp_path_put(struct lun *lun, unsigned idx, int rc, const char *what)
{
    pthread_mutex_lock(&lun->lock);
    lun->slots[idx].submitting--;
    bool again = false;
    if (rc < 0 && lun->mp && lun_result_classify(rc, 0, 0, 0) == LUN_SENSE_FAILOVER) {
        char why[96];
        snprintf(why, sizeof why, "%s: %s", what, strerror(-rc));
        mp_path_fail_locked(lun, idx, why);
        again = true;
    }
    pthread_mutex_unlock(&lun->lock);
    return again;
}

int lun_test_unit_ready(struct lun *lun)
{
    int rc = -EIO;
    for (unsigned t = 0; t < lun->npaths; t++) {
        unsigned i;
        struct lun_path *p;
        rc = mp_path_get(lun, &i, &p);
        if (rc < 0)
            return rc;
        rc = p->ops->test_unit_ready(p);
        if (!mp_path_put(lun, i, rc, "TEST UNIT READY"))
            break;
    }
    return rc;
}

/* ---- Persistent reservations -------------------------------------------- */

static int lun_pr_out_current(struct lun *lun, enum lun_pr_action action, uint64_t key,
                              uint64_t sa_key, enum lun_pr_type type)
{
    /* PR commands are allowed on a read-only open: they write no data. */
    int rc = -EIO;
    for (unsigned t = 0; t < lun->npaths; t++) {
        unsigned i;
        struct lun_path *p;
        rc = mp_path_get(lun, &i, &p);
        if (rc < 0)
            return rc;
        rc = p->ops->pr_out(p, action, key, sa_key, type);
        if (!mp_path_put(lun, i, rc, "PERSISTENT RESERVE OUT"))
            break;
    }
    return rc;
}

static int lun_pr_register_paths(struct lun *lun, uint64_t key);

int lun_pr_register(struct lun *lun, uint64_t key)
{
    /* pr_gen odd while this runs: a path coming back meanwhile (which this
     * loop skips) registers again with the new key (mp_path_recover). */
    pthread_mutex_lock(&lun->lock);
    lun->pr_gen++;
    pthread_mutex_unlock(&lun->lock);
    int rc = lun_pr_register_paths(lun, key);
    pthread_mutex_lock(&lun->lock);
    lun->pr_gen++;
    pthread_mutex_unlock(&lun->lock);
    return rc;
}

static int lun_pr_register_paths(struct lun *lun, uint64_t key)
{
    /* Every I_T nexus registers: a reservation of type 7 then covers all
     * our paths, and a PREEMPT of our key fences all of them. Paths that are
     * down register when they come back (mp_path_recover). */
    int rc = 0;
    unsigned ok = 0;
    for (unsigned i = 0; i < lun->npaths; i++) {
        pthread_mutex_lock(&lun->lock);
        struct mp_slot *s = &lun->slots[i];
        struct lun_path *p = mp_usable(lun, i) ? s->p : NULL;
        if (p)
            s->submitting++;
        pthread_mutex_unlock(&lun->lock);
        if (!p)
            continue;
        int r = p->ops->pr_out(p, LUN_PR_ACT_REGISTER_IGNORE, 0, key, LUN_PR_NONE);
        if (mp_path_put(lun, i, r, "PERSISTENT RESERVE OUT REGISTER"))
            continue;
        if (r == -EOPNOTSUPP && key != 0) {
            /* No reservations (a file LUN): rejoining still lifts our own
             * fence. */
            lun->self_fenced = false;
        }
        if (r < 0)
            return r;
        ok++;
    }
    if (ok == 0) {
        log_err("%s: cannot register the reservation key: no path to the LUN is up", lun->name);
        return -EIO;
    }
    pthread_mutex_lock(&lun->lock);
    lun->pr_key = key;
    lun->pr_registered = key != 0;
    if (key != 0) {
        lun->fenced = false;
        lun->self_fenced = false;
    }
    pthread_mutex_unlock(&lun->lock);
    return rc;
}

int lun_pr_reserve(struct lun *lun, uint64_t key, enum lun_pr_type type)
{
    return lun_pr_out_current(lun, LUN_PR_ACT_RESERVE, key, 0, type);
}

int lun_pr_release(struct lun *lun, uint64_t key, enum lun_pr_type type)
{
    return lun_pr_out_current(lun, LUN_PR_ACT_RELEASE, key, 0, type);
}

int lun_pr_preempt(struct lun *lun, uint64_t key, uint64_t victim, enum lun_pr_type type,
                   bool abort)
{
    if (abort && !lun->info.caps.pr_preempt_abort) {
        log_err("%s: PREEMPT AND ABORT is not supported by the LUN", lun->name);
        return -EOPNOTSUPP;
    }
    return lun_pr_out_current(lun, abort ? LUN_PR_ACT_PREEMPT_ABORT : LUN_PR_ACT_PREEMPT, key,
                              victim, type);
}

int lun_pr_clear(struct lun *lun, uint64_t key)
{
    return lun_pr_out_current(lun, LUN_PR_ACT_CLEAR, key, 0, LUN_PR_NONE);
}

int lun_pr_read(struct lun *lun, struct lun_pr_state *out)
{
    int rc = -EIO;
    for (unsigned t = 0; t < lun->npaths; t++) {
        unsigned i;
        struct lun_path *p;
        memset(out, 0, sizeof *out);
        rc = mp_path_get(lun, &i, &p);
        if (rc < 0)
            return rc;
        rc = p->ops->pr_in(p, out);
        if (!mp_path_put(lun, i, rc, "PERSISTENT RESERVE IN"))
            break;
    }
    return rc;
}
