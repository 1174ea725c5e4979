/* The lockspace object: format, open, join (slot claim), the renewal
 * thread, self-fencing, leave, status.
 *
 * Design notes
 * ------------
 * Layout (in blocks from the lockspace start; H = max_hosts, L = max_locks):
 *   0            header
 *   1 .. H       heartbeat slots, one per host
 *   H+1          paxos leader  } the "mutex" of the fallback atomic step
 *   H+2 .. 2H+1  paxos dblocks } (one dblock per host slot), see paxos.c
 *   2H+2 ..      L lock records
 *
 * Renewal (one thread per lockspace, every renew_ms): read the whole
 * heartbeat region in one I/O (updating the liveness of every peer, see
 * liveness.c), check that our own slot is still ours (same state, uuid and
 * generation: a breaker marks it RECOVERING or clears it with generation+1),
 * then, if the self-fence deadline has not passed, write our slot with
 * counter+1. Only the owner writes its slot with plain writes; claiming a
 * slot and marking/clearing a dead host's slot go through the atomic step.
 * A successful renewal whose write was issued at t moves the deadline to
 * t + fence_ms.
 *
 * Self-fence: once the deadline passes, or a write is refused with
 * RESERVATION CONFLICT (our PR key was preempted), or our slot is no longer
 * ours, the lockspace is fenced for good: every write through it (and
 * through lockspace_check_write / ls_write) fails with -EIO, the reason is
 * logged and the fenced callback runs once. Only lockspace_leave/close
 * remain; a new join gets a new slot or generation.
 *
 * Fencing by reservations: where every path supports PR with type 7, join
 * registers a random key on every path (lun_pr_register), takes the Write
 * Exclusive - All Registrants reservation if nobody holds it, and records
 * the key in its slot; a breaker preempts that key (lock.c). A host never
 * registers again after it was preempted: fenced is final.
 *
 * Locking: ls->lock protects the fields marked in ls_internal.h; it is never
 * held across I/O except the short copy of the heartbeat region. Lock order:
 * ls->mutex_lock (paxos) before ls->lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "ls_internal.h"

static uint64_t ms_ns(uint32_t ms)
{
    return (uint64_t)ms * 1000000ull;
}

/* ---- Format ----------------------------------------------------------------- */

static void fill_params(const struct ls_format_params *p, uint32_t *io, uint32_t *h, uint32_t *l)
{
    *io = p && p->io_timeout_ms ? p->io_timeout_ms : LS_DEFAULT_IO_TIMEOUT_MS;
    *h = p && p->max_hosts ? p->max_hosts : LS_DEFAULT_HOSTS;
    *l = p && p->max_locks ? p->max_locks : LS_DEFAULT_LOCKS;
}

uint64_t lockspace_size_blocks(const struct ls_format_params *p)
{
    uint32_t io, h, l;
    fill_params(p, &io, &h, &l);
    return 2 + 2 * (uint64_t)h + l;
}

static int write_blocks(struct lun *lun, uint64_t lba, uint32_t n, const void *buf)
{
    int r = lun_write(lun, lba, n, buf, 0);
    if (r < 0)
        log_err("%s: cannot write lockspace blocks %llu..%llu: %s", lun_name(lun),
                (unsigned long long)lba, (unsigned long long)(lba + n - 1), strerror(-r));
    return r;
}

int lockspace_format(struct lun *lun, uint64_t offset, const struct ls_format_params *p)
{
    uint32_t io, H, L;
    fill_params(p, &io, &H, &L);
    struct ls_timeouts to;
    if (ls_timeouts_derive(io, &to) < 0 || H < LS_MAX_HOSTS_MIN || H > LS_MAX_HOSTS_MAX ||
        L > 1000000) {
        log_err("%s: bad lockspace parameters (io_timeout %u ms, %u hosts, %u locks)",
                lun_name(lun), io, H, L);
        return -EINVAL;
    }
    const struct lun_info *info = lun_get_info(lun);
    uint32_t bs = info->block_size;
    uint64_t total = lockspace_size_blocks(p);
    enum ls_atomic_method method = p ? p->atomic : LS_ATOMIC_AUTO;
    if (method == LS_ATOMIC_AUTO)
        method = info->caps.compare_and_write ? LS_ATOMIC_CAW : LS_ATOMIC_PAXOS;
    if (method == LS_ATOMIC_CAW && !info->caps.compare_and_write) {
        log_err("%s: cannot lay a lockspace using COMPARE AND WRITE: the LUN does not support it",
                lun_name(lun));
        return -EOPNOTSUPP;
    }
    if (method != LS_ATOMIC_CAW && method != LS_ATOMIC_PAXOS)
        return -EINVAL;
    if (offset + total > info->num_blocks) {
        log_err("%s: lockspace of %llu blocks at %llu does not fit (%llu blocks)", lun_name(lun),
                (unsigned long long)total, (unsigned long long)offset,
                (unsigned long long)info->num_blocks);
        return -ENOSPC;
    }
    struct ls_header h = {
        .block_size = bs,
        .io_timeout_ms = io,
        .max_hosts = H,
        .max_locks = L,
        .hb_off = 1,
        .paxos_off = 1 + (uint64_t)H,
        .locks_off = 2 + 2 * (uint64_t)H,
        .total_blocks = total,
        .atomic = method,
    };
    if (getrandom(h.uuid, 16, 0) != 16)
        return -errno;
    const uint32_t chunk = 256;
    uint8_t *buf = calloc(chunk, bs);
    if (!buf)
        return -ENOMEM;
    int r;
    /* A reservation left by the hosts of an earlier lockspace (killed, or
     * leaving together) refuses unregistered writers: register a key of our
     * own for the format, and release the reservation after it if nobody
     * else is registered. */
    uint64_t key = 0;
    if (info->caps.persistent_reservations) {
        struct lun_pr_state *st = calloc(1, sizeof(*st));
        if (st && lun_pr_read(lun, st) == 0 && st->reserved) {
            while (!key)
                if (getrandom(&key, sizeof(key), 0) != sizeof(key))
                    break;
            if (key && lun_pr_register(lun, key) < 0)
                key = 0;
        }
        free(st);
    }
    /* Heartbeat slots. */
    for (uint32_t i = 0; i < H; i += chunk) {
        uint32_t n = H - i < chunk ? H - i : chunk;
        memset(buf, 0, (size_t)n * bs);
        for (uint32_t k = 0; k < n; k++) {
            struct ls_hb hb = {
                .state = LS_SLOT_FREE, .slot = i + k, .rec_slot = LS_NO_SLOT, .io_timeout_ms = io};
            ls_hb_encode(buf + (size_t)k * bs, &hb);
        }
        if ((r = write_blocks(lun, offset + h.hb_off + i, n, buf)) < 0)
            goto out;
    }
    /* Paxos leader + dblocks. */
    for (uint32_t i = 0; i < H + 1; i += chunk) {
        uint32_t n = H + 1 - i < chunk ? H + 1 - i : chunk;
        memset(buf, 0, (size_t)n * bs);
        for (uint32_t k = 0; k < n; k++) {
            if (i + k == 0) {
                struct ls_leader ld = {.owner_slot = LS_NO_SLOT};
                ls_leader_encode(buf, &ld);
            } else {
                struct ls_dblock d = {.inp_slot = LS_NO_SLOT};
                ls_dblock_encode(buf + (size_t)k * bs, &d);
            }
        }
        if ((r = write_blocks(lun, offset + h.paxos_off + i, n, buf)) < 0)
            goto out;
    }
    /* Lock records. */
    for (uint32_t i = 0; i < L; i += chunk) {
        uint32_t n = L - i < chunk ? L - i : chunk;
        memset(buf, 0, (size_t)n * bs);
        for (uint32_t k = 0; k < n; k++) {
            struct ls_lockrec lr = {.mode = LS_LOCK_FREE, .writer_slot = LS_NO_SLOT};
            snprintf(lr.name, sizeof(lr.name), "lock%u", i + k);
            ls_lockrec_encode(buf + (size_t)k * bs, &lr);
        }
        if ((r = write_blocks(lun, offset + h.locks_off + i, n, buf)) < 0)
            goto out;
    }
    /* Header last: a half-formatted lockspace does not open. */
    memset(buf, 0, bs);
    ls_header_encode(buf, &h);
    if ((r = write_blocks(lun, offset, 1, buf)) < 0)
        goto out;
    r = lun_flush(lun);
    if (r == -EOPNOTSUPP)
        r = 0;
out:
    if (key) {
        struct lun_pr_state *st = calloc(1, sizeof(*st));
        if (st && lun_pr_read(lun, st) == 0 && st->reserved) {
            bool others = false;
            for (unsigned i = 0; i < st->nkeys; i++)
                if (st->keys[i] != key)
                    others = true;
            if (!others)
                lun_pr_release(lun, key, st->type);
        }
        free(st);
        lun_pr_register(lun, 0);
    }
    free(buf);
    return r;
}

/* ---- Open ------------------------------------------------------------------- */

int lockspace_open(struct lun *lun, uint64_t offset, const struct ls_open_opts *o,
                   struct lockspace **out)
{
    struct ls_open_opts dflt = {0};
    if (!o)
        o = &dflt;
    const struct lun_info *info = lun_get_info(lun);
    uint32_t bs = info->block_size;
    uint8_t *buf = calloc(1, bs);
    if (!buf)
        return -ENOMEM;
    int r = lun_read(lun, offset, 1, buf);
    if (r < 0) {
        log_err("%s: cannot read the lockspace header at block %llu: %s", lun_name(lun),
                (unsigned long long)offset, strerror(-r));
        free(buf);
        return r;
    }
    struct ls_header h;
    r = ls_header_decode(buf, &h, "lockspace header", offset);
    free(buf);
    if (r < 0)
        return r;
    if (h.block_size != bs) {
        log_err("%s: lockspace at block %llu was formatted with %u-byte blocks, the LUN has %u",
                lun_name(lun), (unsigned long long)offset, h.block_size, bs);
        return -EINVAL;
    }
    if ((o->io_timeout_ms && o->io_timeout_ms != h.io_timeout_ms) ||
        (o->max_hosts && o->max_hosts != h.max_hosts)) {
        log_err("%s: lockspace at block %llu: mount parameters differ from the on-disk ones "
                "(io_timeout %u ms vs %u ms on disk, max hosts %u vs %u): refused",
                lun_name(lun), (unsigned long long)offset, o->io_timeout_ms, h.io_timeout_ms,
                o->max_hosts, h.max_hosts);
        return -EINVAL;
    }
    if (offset + h.total_blocks > info->num_blocks) {
        log_err("%s: lockspace at block %llu: %llu blocks do not fit the LUN", lun_name(lun),
                (unsigned long long)offset, (unsigned long long)h.total_blocks);
        return -EUCLEAN;
    }
    if (h.atomic == LS_ATOMIC_CAW && (!info->caps.compare_and_write || o->force_paxos)) {
        /* Hosts using COMPARE AND WRITE and hosts using the paxos mutex do
         * not exclude each other: one method per lockspace. */
        log_err("%s: lockspace at block %llu uses COMPARE AND WRITE (recorded at format time) "
                "and this host %s: refusing to join",
                lun_name(lun), (unsigned long long)offset,
                o->force_paxos ? "was told to use the paxos fallback"
                               : "cannot use it (a path of the LUN does not support it)");
        return -EOPNOTSUPP;
    }
    struct lockspace *ls = calloc(1, sizeof(*ls));
    if (!ls)
        return -ENOMEM;
    ls->caw = h.atomic == LS_ATOMIC_CAW;
    ls->lun = lun;
    ls->offset = offset;
    ls->bs = bs;
    ls->hdr = h;
    ls->opts = *o;
    ls_timeouts_derive(h.io_timeout_ms, &ls->to);
    if (o->host_name)
        snprintf(ls->name, sizeof(ls->name), "%s", o->host_name);
    else if (gethostname(ls->name, sizeof(ls->name) - 1) < 0)
        snprintf(ls->name, sizeof(ls->name), "host");
    ls->opts.host_name = NULL;
    if (o->host_uuid)
        memcpy(ls->uuid, o->host_uuid, 16);
    else if (getrandom(ls->uuid, 16, 0) != 16)
        memset(ls->uuid, 0x5a, 16);
    ls->opts.host_uuid = NULL;
    ls->pr =
        info->caps.persistent_reservations && info->caps.pr_we_all_registrants && !o->no_fencing;
    ls->slot = LS_NO_SLOT;
    pthread_mutex_init(&ls->lock, NULL);
    pthread_mutex_init(&ls->mutex_lock, NULL);
    pthread_condattr_t ca; /* timed waits on CLOCK_MONOTONIC, like every deadline here */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ls->cond, &ca);
    pthread_condattr_destroy(&ca);
    ls->hb_raw = calloc(h.max_hosts, bs);
    ls->hb_mine = calloc(2, bs); /* last written, last tried */
    ls->peers = calloc(h.max_hosts, sizeof(*ls->peers));
    if (!ls->hb_raw || !ls->peers || !ls->hb_mine) {
        lockspace_close(ls);
        return -ENOMEM;
    }
    *out = ls;
    return 0;
}

const struct ls_timeouts *lockspace_timeouts(const struct lockspace *ls)
{
    return &ls->to;
}
uint32_t lockspace_slot(const struct lockspace *ls)
{
    return ls->slot;
}
uint32_t lockspace_generation(const struct lockspace *ls)
{
    return ls->generation;
}
uint64_t lockspace_pr_key(const struct lockspace *ls)
{
    return ls->pr_key;
}
bool lockspace_uses_caw(const struct lockspace *ls)
{
    return ls->caw;
}
bool lockspace_has_pr_fencing(const struct lockspace *ls)
{
    return ls->pr;
}
uint64_t lockspace_lock_lba(const struct lockspace *ls, uint32_t index)
{
    return ls->offset + ls->hdr.locks_off + index;
}
uint64_t lockspace_io_count(const struct lockspace *ls)
{
    return __atomic_load_n(&ls->nio, __ATOMIC_RELAXED);
}

/* ---- Renewal thread ------------------------------------------------------------ */

static void my_slot(struct lockspace *ls, struct ls_hb *hb)
{
    memset(hb, 0, sizeof(*hb));
    hb->state = LS_SLOT_LIVE;
    hb->slot = ls->slot;
    hb->generation = ls->generation;
    hb->counter = ls->counter;
    hb->pr_key = ls->pr_key;
    hb->io_timeout_ms = ls->hdr.io_timeout_ms;
    hb->rec_slot = LS_NO_SLOT;
    hb->journal_lba = ls->opts.journal_lba;
    memcpy(hb->uuid, ls->uuid, 16);
    snprintf(hb->name, sizeof(hb->name), "%s", ls->name);
}

static void renew_write(struct lockspace *ls);

/* One renewal: read all, check ours, write ours. */
static void renew_once(struct lockspace *ls)
{
    if (ls_hb_scan(ls) == 0) {
        pthread_mutex_lock(&ls->lock);
        struct ls_hb hb;
        int d = ls_hb_decode(ls->hb_raw + (size_t)ls->slot * ls->bs, &hb, "own heartbeat slot",
                             ls->offset + ls->hdr.hb_off + ls->slot);
        if (!ls->fenced && (d < 0 || hb.state != LS_SLOT_LIVE || hb.generation != ls->generation ||
                            memcmp(hb.uuid, ls->uuid, 16))) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "our slot %u now reads state %u generation %u (we are generation %u): "
                     "another host recovered us; drop all cached state",
                     ls->slot, d < 0 ? 99u : hb.state, d < 0 ? 0u : hb.generation, ls->generation);
            ls_fence_locked(ls, LS_FENCE_SLOT_LOST, msg);
        }
        pthread_mutex_unlock(&ls->lock);
    }
    renew_write(ls);
}

/* Write our heartbeat block with counter + 1 (if not fenced and before the
 * deadline): our slot once joined, or a joiner's mark while its recovery
 * hook runs. The write must never land over a breaker's mark: with CAW it
 * is a COMPARE AND WRITE expecting the block we wrote last (a miscompare
 * means the slot is no longer ours); without CAW it was checked by the scan
 * just before and carries the self-fence deadline, which expires before
 * anyone may mark us (dead >= fence + in-flight + margin). On success the
 * deadline moves to the write's issue time + fence_ms. */
static void renew_write(struct lockspace *ls)
{
    pthread_mutex_lock(&ls->lock);
    if (ls->fenced || ls_write_gate_locked(ls, NULL) < 0) {
        pthread_mutex_unlock(&ls->lock);
        return;
    }
    struct ls_hb hb;
    bool mark = ls->renewing_mark;
    uint64_t lba;
    if (mark) {
        ls_hb_decode(ls->hb_mine, &hb, "our mark", ls->mark_lba);
        hb.counter++;
        lba = ls->mark_lba;
    } else {
        ls->counter++;
        my_slot(ls, &hb);
        lba = ls->offset + ls->hdr.hb_off + ls->slot;
    }
    pthread_mutex_unlock(&ls->lock);

    uint8_t *buf = calloc(2, ls->bs), *found = buf + ls->bs;
    if (!buf)
        return;
    ls_hb_encode(buf, &hb);
    uint64_t issued = ls_now_ns();
    int r;
    if (ls->caw) {
        r = ls_caw_dl(ls, LS_TP_RENEW, lba, ls->hb_mine, buf, found, 0);
        if (r == -EILSEQ && !memcmp(found, ls->hb_mine + ls->bs, ls->bs)) {
            /* Our previous renewal landed although its CAW reported a
             * failure: go on from it. */
            memcpy(ls->hb_mine, found, ls->bs);
            r = ls_caw_dl(ls, LS_TP_RENEW, lba, ls->hb_mine, buf, found, 0);
        }
    } else {
        r = ls_write_dl(ls, LS_TP_RENEW, lba, 1, buf, 0, 0);
    }
    pthread_mutex_lock(&ls->lock);
    if (r == 0) {
        uint64_t d = issued + ms_ns(ls->to.fence_ms);
        if (d > ls->deadline_ns)
            ls->deadline_ns = d;
        memcpy(ls->hb_mine, buf, ls->bs);
        if (!mark)
            memcpy(ls->hb_raw + (size_t)ls->slot * ls->bs, buf, ls->bs);
    } else if (r == -EILSEQ) {
        char msg[200];
        struct ls_hb f;
        int d = ls_hb_decode(found, &f, "heartbeat slot", lba);
        snprintf(msg, sizeof(msg),
                 "renewal of %s at lba %llu miscompared: it now reads state %u generation %u "
                 "(we are generation %u): another host recovered us; drop all cached state",
                 mark ? "our mark" : "our slot", (unsigned long long)lba, d < 0 ? 99u : f.state,
                 d < 0 ? 0u : f.generation, ls->generation);
        if (mark) {
            ls->fenced = true; /* a joiner: its claim is lost */
            log_err("%s: host %s: %s", lun_name(ls->lun), ls->name, msg);
        } else {
            ls_fence_locked(ls, LS_FENCE_SLOT_LOST, msg);
        }
    } else if (!ls->fenced) {
        /* Outcome unknown (timeout, transport): remember what we tried. */
        memcpy(ls->hb_mine + ls->bs, buf, ls->bs);
        log_warn("%s: host %s: heartbeat renewal at lba %llu failed: %s (self-fence in %lld ms)",
                 lun_name(ls->lun), ls->name, (unsigned long long)lba, strerror(-r),
                 (long long)((int64_t)(ls->deadline_ns - ls_now_ns()) / 1000000));
    }
    pthread_mutex_unlock(&ls->lock);
    free(buf);
}

static void *renew_thread(void *arg)
{
    struct lockspace *ls = arg;
    uint64_t next = ls_now_ns(); /* renew at once: a delta claim took 2.5 T */
    pthread_mutex_lock(&ls->lock);
    while (!ls->stop) {
        uint64_t now = ls_now_ns();
        if (now < next) {
            /* Wake early enough to fence at the deadline even if I/O hangs elsewhere. */
            uint64_t until = next;
            if (!ls->fenced && ls->deadline_ns && ls->deadline_ns < until)
                until = ls->deadline_ns;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t wake = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec +
                            (until > now ? until - now : 0);
            ts.tv_sec = (time_t)(wake / 1000000000ull);
            ts.tv_nsec = (long)(wake % 1000000000ull);
            pthread_cond_timedwait(&ls->cond, &ls->lock, &ts);
            if (!ls->fenced && ls->deadline_ns && ls_now_ns() >= ls->deadline_ns)
                ls_write_gate_locked(ls, NULL);
            continue;
        }
        next = now + ms_ns(ls->to.renew_ms);
        bool mark = ls->renewing_mark;
        pthread_mutex_unlock(&ls->lock);
        if (mark)
            renew_write(ls); /* a joiner's mark: nothing to scan */
        else
            renew_once(ls);
        pthread_mutex_lock(&ls->lock);
    }
    pthread_mutex_unlock(&ls->lock);
    return NULL;
}

/* A joiner renews its mark (its heartbeat while it recovers a dead slot)
 * from the renewal thread while the recovery hook runs. */
int ls_mark_renew_start(struct lockspace *ls, uint64_t lba, const void *mark)
{
    pthread_mutex_lock(&ls->lock);
    memcpy(ls->hb_mine, mark, ls->bs);
    ls->mark_lba = lba;
    ls->renewing_mark = true;
    ls->stop = false;
    pthread_mutex_unlock(&ls->lock);
    int r = pthread_create(&ls->thread, NULL, renew_thread, ls);
    if (r) {
        ls->renewing_mark = false;
        return -r;
    }
    ls->thread_running = true;
    return 0;
}

static void stop_thread(struct lockspace *ls);

void ls_mark_renew_stop(struct lockspace *ls, void *mark)
{
    stop_thread(ls);
    pthread_mutex_lock(&ls->lock);
    ls->renewing_mark = false;
    memcpy(mark, ls->hb_mine, ls->bs);
    pthread_mutex_unlock(&ls->lock);
}

/* ---- Join / leave ---------------------------------------------------------------- */

/* The LUN engine's register check (lun_set_register_check): a path that
 * reconnects re-registers our key, then asks whether our heartbeat
 * generation is still ours. Answered from the lockspace's own state, not by
 * a read: on a single-path LUN a read would wait for the very path being
 * recovered. The answer is still sound: a host that another host has broken
 * is, by the safety inequality, past its own self-fence deadline (or its
 * renewal thread has already seen its slot taken), so it answers 0 and the
 * engine takes the registration back. */
static int pr_register_check(void *opaque)
{
    struct lockspace *ls = opaque;
    pthread_mutex_lock(&ls->lock);
    int ok = ls_write_gate_locked(ls, NULL) == 0;
    if (ok && ls->slot != LS_NO_SLOT) {
        struct ls_hb hb;
        if (ls_hb_decode(ls->hb_raw + (size_t)ls->slot * ls->bs, &hb, "own heartbeat slot",
                         ls->offset + ls->hdr.hb_off + ls->slot) < 0 ||
            hb.generation != ls->generation || hb.state != LS_SLOT_LIVE)
            ok = 0;
    }
    pthread_mutex_unlock(&ls->lock);
    return ok;
}

/* Leaving: if ours are the only registrations, release the WE-AR
 * reservation, so it does not outlive every registrant (it would then
 * refuse every unregistered writer: `clusterfs locks init`, hosts without
 * fencing). A host joining meanwhile finds no reservation and takes it; a
 * breaker makes sure one exists before it recovers anybody. */
static void pr_release_if_last(struct lockspace *ls)
{
    struct lun_pr_state *st = calloc(1, sizeof(*st));
    if (!st)
        return;
    if (lun_pr_read(ls->lun, st) == 0 && st->reserved) {
        bool others = false;
        for (unsigned i = 0; i < st->nkeys; i++)
            if (st->keys[i] != ls->pr_key)
                others = true;
        if (!others && st->nkeys)
            lun_pr_release(ls->lun, ls->pr_key, st->type);
    }
    free(st);
}

static int pr_join(struct lockspace *ls)
{
    uint64_t key = 0;
    while (!key)
        if (getrandom(&key, sizeof(key), 0) != sizeof(key))
            return -errno;
    int r = lun_pr_register(ls->lun, key);
    if (r < 0) {
        log_err("%s: host %s: cannot register reservation key 0x%016" PRIx64 ": %s",
                lun_name(ls->lun), ls->name, key, strerror(-r));
        return r;
    }
    ls->pr_key = key;
    lun_set_register_check(ls->lun, pr_register_check, ls);
    struct lun_pr_state *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    r = lun_pr_read(ls->lun, st);
    /* Probe what the target did: our key must be listed (once per path).
     * A target that does not list it would make every later read-back of
     * a preempted key meaningless: refuse, saying so. */
    unsigned mine = 0;
    for (unsigned i = 0; r == 0 && i < st->nkeys; i++)
        if (st->keys[i] == key)
            mine++;
    if (r == 0 && mine == 0) {
        log_err("%s: host %s: the target does not list our reservation key 0x%016" PRIx64
                " after REGISTER (READ KEYS shows %u other key(s)): fencing cannot be "
                "checked, refusing to join",
                lun_name(ls->lun), ls->name, key, st->nkeys);
        r = -EPROTO;
    } else if (r == 0 && !st->reserved) {
        r = lun_pr_reserve(ls->lun, key, LUN_PR_WE_ALL_REGISTRANTS);
        if (r < 0 && lun_pr_read(ls->lun, st) == 0 && st->reserved &&
            st->type == LUN_PR_WE_ALL_REGISTRANTS)
            r = 0; /* somebody else reserved it meanwhile */
    } else if (r == 0 && st->type != LUN_PR_WE_ALL_REGISTRANTS) {
        log_err("%s: the LUN holds a reservation of type %d, not Write Exclusive - All "
                "Registrants: refusing to join",
                lun_name(ls->lun), st->type);
        r = -EBUSY;
    }
    free(st);
    if (r < 0)
        log_err("%s: host %s: cannot take the WE-AR reservation: %s", lun_name(ls->lun), ls->name,
                strerror(-r));
    return r;
}

static int claim_slot_caw(struct lockspace *ls)
{
    uint32_t H = ls->hdr.max_hosts;
    uint8_t *mine = calloc(2, ls->bs), *cur = mine + ls->bs;
    if (!mine)
        return -ENOMEM;
    int r = -ENOSPC;
    for (uint32_t i = 0; i < H; i++) {
        struct ls_hb hb;
        pthread_mutex_lock(&ls->lock);
        memcpy(cur, ls->hb_raw + (size_t)i * ls->bs, ls->bs);
        pthread_mutex_unlock(&ls->lock);
        if (ls_hb_decode(cur, &hb, "heartbeat slot", ls->offset + ls->hdr.hb_off + i) < 0 ||
            hb.state != LS_SLOT_FREE)
            continue;
        ls->slot = i;
        ls->generation = hb.generation + 1;
        ls->counter = 1;
        struct ls_hb me;
        my_slot(ls, &me);
        memset(mine, 0, ls->bs);
        ls_hb_encode(mine, &me);
        uint64_t issued = ls_now_ns();
        r = ls_cas(ls, ls->offset + ls->hdr.hb_off + i, cur, mine, NULL);
        if (r == 0) {
            pthread_mutex_lock(&ls->lock);
            ls->deadline_ns = issued + ms_ns(ls->to.fence_ms);
            memcpy(ls->hb_raw + (size_t)i * ls->bs, mine, ls->bs);
            memcpy(ls->hb_mine, mine, ls->bs);
            pthread_mutex_unlock(&ls->lock);
            break;
        }
        ls->slot = LS_NO_SLOT;
        if (r != -EILSEQ)
            break;
        r = -ENOSPC;
    }
    free(mine);
    return r;
}

/* Without an atomic step (paxos needs a slot): sanlock's delta-lease claim.
 * Write our claim within io_timeout of the read that saw the slot free,
 * wait 2*io_timeout + margin, read it back: only the last writer among
 * racing claimers still finds its own claim. */
static int claim_slot_delta(struct lockspace *ls)
{
    uint32_t H = ls->hdr.max_hosts;
    uint8_t *mine = calloc(2, ls->bs), *cur = mine + ls->bs;
    if (!mine)
        return -ENOMEM;
    int r = -ENOSPC;
    for (uint32_t i = 0; i < H; i++) {
        struct ls_hb hb;
        pthread_mutex_lock(&ls->lock);
        memcpy(cur, ls->hb_raw + (size_t)i * ls->bs, ls->bs);
        uint64_t seen = ls->hb_read_start_ns; /* the read's issue: the slot may have
                                                 changed right after it started */
        pthread_mutex_unlock(&ls->lock);
        if (ls_hb_decode(cur, &hb, "heartbeat slot", ls->offset + ls->hdr.hb_off + i) < 0 ||
            hb.state != LS_SLOT_FREE)
            continue;
        if (ls_now_ns() - seen > ms_ns(ls->to.io_timeout_ms) / 2) {
            /* Our view is too old to write on it: look again. */
            if ((r = ls_hb_scan(ls)) < 0)
                break;
            i--;
            continue;
        }
        ls->slot = i;
        ls->generation = hb.generation + 1;
        ls->counter = 1;
        struct ls_hb me;
        my_slot(ls, &me);
        memset(mine, 0, ls->bs);
        ls_hb_encode(mine, &me);
        uint64_t lba = ls->offset + ls->hdr.hb_off + i;
        uint64_t issued = ls_now_ns();
        /* Not dispatched after read issue + T/2, even if delayed or retried
         * in the LUN layer: the claim wait below relies on it. */
        r = ls_write_dl(ls, LS_TP_DELTA, lba, 1, mine, 0, seen + ms_ns(ls->to.io_timeout_ms) / 2);
        if (r == -ETIMEDOUT) {
            ls->slot = LS_NO_SLOT;
            if ((r = ls_hb_scan(ls)) < 0)
                break;
            i--;
            continue;
        }
        if (r < 0)
            break;
        usleep((useconds_t)(2500ull * ls->to.io_timeout_ms));
        r = ls_read(ls, lba, 1, cur);
        if (r < 0)
            break;
        if (!memcmp(cur, mine, ls->bs)) {
            pthread_mutex_lock(&ls->lock);
            ls->deadline_ns = issued + ms_ns(ls->to.fence_ms);
            memcpy(ls->hb_raw + (size_t)i * ls->bs, mine, ls->bs);
            memcpy(ls->hb_mine, mine, ls->bs);
            pthread_mutex_unlock(&ls->lock);
            r = 0;
            break;
        }
        ls->slot = LS_NO_SLOT;
        r = -ENOSPC;
    }
    free(mine);
    return r;
}

/* No free slot: watch the slots for the dead time (a new observer starts
 * every peer as unknown), then recover a dead host and take its slot in the
 * step that clears it (ls_host_break_to). Gives up with -ENOSPC as soon as
 * every slot was seen live, or after dead + 2 renewals with a count of what
 * it saw. A slot that frees up meanwhile is claimed as a free one. */
static int claim_slot_dead(struct lockspace *ls, bool *freed)
{
    uint32_t H = ls->hdr.max_hosts;
    uint64_t t_start = ls_now_ns();
    uint64_t t_end = t_start + ms_ns(ls->to.dead_ms + 2 * ls->to.renew_ms);
    uint8_t *final = calloc(1, ls->bs);
    if (!final)
        return -ENOMEM;
    /* Racing joiners start at different slots. */
    uint32_t start = 0;
    if (getrandom(&start, sizeof(start), 0) != sizeof(start))
        start = (uint32_t)getpid();
    int r = 0;
    bool extended = false;
    *freed = false;
    for (;;) {
        unsigned live = 0, corrupt = 0, recovering = 0, unknown = 0, dead = 0;
        for (uint32_t k = 0; k < H && !*freed; k++) {
            uint32_t i = (start + k) % H;
            struct ls_hb hb;
            pthread_mutex_lock(&ls->lock);
            enum ls_host_state st = ls->peers[i].state;
            int d = ls_hb_decode(ls->hb_raw + (size_t)i * ls->bs, &hb, "heartbeat slot",
                                 ls->offset + ls->hdr.hb_off + i);
            pthread_mutex_unlock(&ls->lock);
            if (d < 0 || st == LS_HOST_CORRUPT) {
                corrupt++; /* never free, never dead */
                continue;
            }
            if (hb.state == LS_SLOT_FREE) {
                *freed = true;
                break;
            }
            if (st == LS_HOST_LIVE)
                live++;
            else if (st == LS_HOST_RECOVERING)
                recovering++;
            else if (st != LS_HOST_DEAD)
                unknown++;
            if (st != LS_HOST_DEAD)
                continue;
            dead++;
            /* Our identity in the slot: generation + 1, as a claim. */
            ls->slot = i;
            ls->generation = hb.generation + 1;
            ls->counter = 1;
            struct ls_hb me;
            my_slot(ls, &me);
            memset(final, 0, ls->bs);
            ls_hb_encode(final, &me);
            pthread_mutex_lock(&ls->lock);
            ls->claiming = true;
            pthread_mutex_unlock(&ls->lock);
            r = ls_host_break_to(ls, i, hb.generation, final);
            pthread_mutex_lock(&ls->lock);
            ls->claiming = false;
            pthread_mutex_unlock(&ls->lock);
            if (r == 0)
                goto out;
            ls->slot = LS_NO_SLOT;
            ls->generation = 0;
            if (r != -EAGAIN)
                goto out;
            r = 0; /* lost the race or it came back: look at the others */
            if (!extended) {
                /* Give the winner time to finish: its writes stop at its
                 * mark + fence_ms; then we see its slot live (or being
                 * recovered, if it died on the way). Once. */
                extended = true;
                uint64_t t = ls_now_ns() + ms_ns(ls->to.fence_ms + ls->to.renew_ms);
                if (t > t_end)
                    t_end = t;
            }
        }
        if (*freed) {
            r = -EAGAIN;
            break;
        }
        if (live == H) {
            log_err("%s: lockspace at block %llu: no heartbeat slot for host %s: all %u slots "
                    "live",
                    lun_name(ls->lun), (unsigned long long)ls->offset, ls->name, H);
            r = -ENOSPC;
            break;
        }
        if (ls_now_ns() >= t_end && recovering && !extended) {
            /* A slot being recovered (by a joiner that will take it, or a
             * host that will free it): wait for the end of that recovery
             * once, as after a lost race. */
            extended = true;
            t_end = ls_now_ns() + ms_ns(ls->to.fence_ms + ls->to.renew_ms);
        }
        if (ls_now_ns() >= t_end) {
            log_err("%s: lockspace at block %llu: no heartbeat slot for host %s after %u ms: "
                    "%u live, %u unknown, %u being recovered, %u corrupt, %u dead but not "
                    "taken, of %u slots",
                    lun_name(ls->lun), (unsigned long long)ls->offset, ls->name,
                    (unsigned)((ls_now_ns() - t_start) / 1000000), live, unknown, recovering,
                    corrupt, dead, H);
            r = -ENOSPC;
            break;
        }
        usleep((useconds_t)ls->to.renew_ms * 1000);
        if ((r = ls_hb_scan(ls)) < 0)
            break;
    }
out:
    free(final);
    return r;
}

int lockspace_join(struct lockspace *ls)
{
    if (ls->joined)
        return -EALREADY;
    int r;
    if (ls->pr && (r = pr_join(ls)) < 0)
        return r;
    if (!ls->pr && lun_get_info(ls->lun)->caps.persistent_reservations) {
        /* Without a key of our own we cannot write under a reservation
         * (another host's, or one left behind): say so now, not at the
         * first write. */
        struct lun_pr_state *st = calloc(1, sizeof(*st));
        if (!st)
            return -ENOMEM;
        r = lun_pr_read(ls->lun, st);
        bool reserved = r == 0 && st->reserved;
        int type = st->type;
        free(st);
        if (reserved) {
            log_err("%s: lockspace at block %llu: host %s joins without fencing (no reservation "
                    "key) but the LUN holds a reservation of type %d: its writes would be "
                    "refused (RESERVATION CONFLICT); join with fencing",
                    lun_name(ls->lun), (unsigned long long)ls->offset, ls->name, type);
            return -EBUSY;
        }
    }
    if ((r = ls_hb_scan(ls)) < 0)
        return r;
    /* Free slots first (no wait, no recovery in the mount path), then dead
     * hosts' slots; a slot freed while we watched is claimed as a free one. */
    int round;
    for (round = 0; round < 8; round++) {
        r = ls->caw ? claim_slot_caw(ls) : claim_slot_delta(ls);
        if (r != -ENOSPC)
            break;
        bool freed;
        r = claim_slot_dead(ls, &freed);
        if (!freed)
            break;
        if ((r = ls_hb_scan(ls)) < 0)
            break;
        r = -ENOSPC;
    }
    if (round == 8)
        log_err("%s: lockspace at block %llu: no heartbeat slot for host %s: freed slots "
                "kept being taken by other hosts",
                lun_name(ls->lun), (unsigned long long)ls->offset, ls->name);
    if (r < 0) {
        if (ls->pr_key) {
            lun_set_register_check(ls->lun, NULL, NULL);
            lun_pr_register(ls->lun, 0);
        }
        ls->pr_key = 0;
        return r;
    }
    pthread_mutex_lock(&ls->lock);
    ls->joined = true;
    ls->stop = false;
    pthread_mutex_unlock(&ls->lock);
    /* A first renewal now: the claim (2.5 T ago without CAW) must not eat
     * the self-fence window before the thread gets going. */
    renew_write(ls);
    r = pthread_create(&ls->thread, NULL, renew_thread, ls);
    if (r) {
        ls->joined = false;
        return -r;
    }
    ls->thread_running = true;
    log_info("%s: host %s joined lockspace at block %llu: slot %u generation %u (%s)",
             lun_name(ls->lun), ls->name, (unsigned long long)ls->offset, ls->slot, ls->generation,
             ls->caw ? "compare-and-write" : "paxos fallback");
    if (!ls->pr)
        log_warn("%s: lockspace at block %llu: host %s: NO FENCING: %s; a dead or paused host "
                 "is not cut off the LUN, safety rests on timing alone (self-fence deadline "
                 "and the deadline every lock-guarded write carries)",
                 lun_name(ls->lun), (unsigned long long)ls->offset, ls->name,
                 ls->opts.no_fencing ? "fencing disabled by the caller (no_fencing)"
                                     : "the LUN has no persistent reservations (type 7)");
    return 0;
}

static void stop_thread(struct lockspace *ls)
{
    if (!ls->thread_running)
        return;
    pthread_mutex_lock(&ls->lock);
    ls->stop = true;
    pthread_cond_broadcast(&ls->cond);
    pthread_mutex_unlock(&ls->lock);
    pthread_join(ls->thread, NULL);
    ls->thread_running = false;
}

int lockspace_leave(struct lockspace *ls)
{
    if (ls->hk_stop_fn)
        ls->hk_stop_fn(ls); /* the housekeeping thread (recovery.c), first */
    if (!ls->joined)
        return 0;
    int rc = 0;
    while (ls->held) {
        int r = lock_release(ls, ls->held->lba); /* drops it from the list, always */
        if (r < 0 && rc == 0)
            rc = r;
    }
    stop_thread(ls);
    if (lockspace_check_write(ls) == 0) {
        /* Free the slot, keeping the generation (the next claimer bumps it). */
        uint8_t *buf = calloc(1, ls->bs);
        if (buf) {
            struct ls_hb hb = {.state = LS_SLOT_FREE,
                               .slot = ls->slot,
                               .generation = ls->generation,
                               .rec_slot = LS_NO_SLOT,
                               .io_timeout_ms = ls->hdr.io_timeout_ms};
            ls_hb_encode(buf, &hb);
            int r = ls_write_raw(ls, ls->offset + ls->hdr.hb_off + ls->slot, 1, buf);
            if (r < 0 && rc == 0)
                rc = r;
            free(buf);
        }
    }
    if (ls->pr_key) {
        lun_set_register_check(ls->lun, NULL, NULL);
        if (!ls->fenced) {
            pr_release_if_last(ls);
            lun_pr_register(ls->lun, 0);
        }
    }
    ls->pr_key = 0;
    ls->joined = false;
    return rc;
}

void lockspace_abandon(struct lockspace *ls)
{
    if (ls->hk_stop_fn)
        ls->hk_stop_fn(ls);
    stop_thread(ls);
    pthread_mutex_lock(&ls->lock);
    ls->fenced = true; /* silently: a dead process writes nothing */
    pthread_mutex_unlock(&ls->lock);
}

void lockspace_close(struct lockspace *ls)
{
    if (!ls)
        return;
    if (ls->hk_stop_fn)
        ls->hk_stop_fn(ls);
    stop_thread(ls);
    if (ls->pr_key)
        lun_set_register_check(ls->lun, NULL, NULL);
    while (ls->held) {
        struct ls_held *h = ls->held;
        ls->held = h->next;
        free(h);
    }
    free(ls->hb_raw);
    free(ls->hb_mine);
    free(ls->peers);
    pthread_mutex_destroy(&ls->lock);
    pthread_mutex_destroy(&ls->mutex_lock);
    pthread_cond_destroy(&ls->cond);
    free(ls);
}

/* ---- Status -------------------------------------------------------------------- */

int lockspace_status(struct lockspace *ls, unsigned samples, struct ls_status *st)
{
    memset(st, 0, sizeof(*st));
    st->timeouts = ls->to;
    st->max_hosts = ls->hdr.max_hosts;
    st->max_locks = ls->hdr.max_locks;
    st->block_size = ls->bs;
    st->caw = ls->caw;
    st->pr_fencing = ls->pr;
    if (samples == 0)
        samples = 1;
    int r = 0;
    uint64_t t_end = ls_now_ns() + ms_ns(ls->to.dead_ms + 2 * ls->to.renew_ms);
    for (unsigned s = 0; s < samples; s++) {
        if (s)
            usleep((useconds_t)ls->to.renew_ms * 1000);
        if ((r = ls_hb_scan(ls)) < 0)
            return r;
        if (samples != LS_STATUS_SETTLE)
            continue;
        bool unknown = false;
        pthread_mutex_lock(&ls->lock);
        for (uint32_t i = 0; i < ls->hdr.max_hosts; i++)
            if (ls->peers[i].state == LS_HOST_UNKNOWN ||
                (ls->peers[i].state == LS_HOST_RECOVERING && !ls->peers[i].first_seen_ns))
                unknown = true;
        pthread_mutex_unlock(&ls->lock);
        if (!unknown || ls_now_ns() >= t_end)
            break;
    }
    uint32_t H = ls->hdr.max_hosts, L = ls->hdr.max_locks;
    st->hosts = calloc(H, sizeof(*st->hosts));
    st->locks = calloc(L ? L : 1, sizeof(*st->locks));
    uint8_t *buf = calloc(L ? L : 1, ls->bs);
    if (!st->hosts || !st->locks || !buf) {
        free(buf);
        ls_status_free(st);
        return -ENOMEM;
    }
    uint64_t now = ls_now_ns();
    pthread_mutex_lock(&ls->lock);
    for (uint32_t i = 0; i < H; i++) {
        struct ls_hb hb;
        const struct ls_peer *p = &ls->peers[i];
        int d = ls_hb_decode(ls->hb_raw + (size_t)i * ls->bs, &hb, "heartbeat slot",
                             ls->offset + ls->hdr.hb_off + i);
        if (d == 0 && hb.state == LS_SLOT_FREE)
            continue;
        struct ls_status_host *sh = &st->hosts[st->nhosts++];
        sh->info.slot = i;
        sh->state = p->state;
        if (d == 0) {
            sh->info.generation = hb.generation;
            snprintf(sh->info.name, sizeof(sh->info.name), "%s", hb.name);
            memcpy(sh->info.uuid, hb.uuid, 16);
            sh->info.journal_lba = hb.journal_lba;
            sh->counter = hb.counter;
            sh->age_ms =
                p->first_seen_ns && now > p->first_seen_ns ? (now - p->first_seen_ns) / 1000000 : 0;
        }
        sh->changed = p->changed;
        sh->self = ls->joined && i == ls->slot;
        if (sh->self)
            sh->state = ls->fenced ? LS_HOST_DEAD : LS_HOST_LIVE;
    }
    pthread_mutex_unlock(&ls->lock);
    if (L) {
        r = ls_read(ls, ls->offset + ls->hdr.locks_off, L, buf);
        if (r < 0) {
            free(buf);
            ls_status_free(st);
            return r;
        }
    }
    for (uint32_t i = 0; i < L; i++) {
        struct ls_lockrec lr;
        int d = ls_lockrec_decode(buf + (size_t)i * ls->bs, &lr, "lock record",
                                  ls->offset + ls->hdr.locks_off + i);
        if (d == 0 && lr.mode == LS_LOCK_FREE)
            continue;
        struct ls_status_lock *sl = &st->locks[st->nlocks++];
        sl->index = i;
        sl->lba = ls->offset + ls->hdr.locks_off + i;
        sl->error = d;
        if (d == 0) {
            snprintf(sl->name, sizeof(sl->name), "%s", lr.name);
            sl->mode = lr.mode;
            sl->version = lr.version;
            sl->nowners = lr.nowners;
            for (unsigned k = 0; k < lr.nowners; k++) {
                sl->owner_slot[k] = lr.owners[k].slot;
                sl->owner_gen[k] = lr.owners[k].gen;
            }
        }
    }
    free(buf);
    return 0;
}

void ls_status_free(struct ls_status *st)
{
    free(st->hosts);
    free(st->locks);
    st->hosts = NULL;
    st->locks = NULL;
}
