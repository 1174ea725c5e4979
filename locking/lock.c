/* Lock records: acquire, release, and the break of a dead holder.
 *
 * Design notes
 * ------------
 * Acquire: read the record, add ourselves (slot, generation) if the mode is
 * compatible, ls_cas the new record over the one we read (with CAW: 2 I/Os
 * uncontended). A miscompare means someone else changed it: read again.
 * An incompatible record is examined owner by owner, judged from our own
 * heartbeat observations (the renewal thread reads all slots every
 * renew_ms):
 *   - the owner's slot is free or has another generation: the owner is
 *     gone and was recovered (or left): drop it from the record;
 *   - the owner is dead (slot unchanged for dead_ms on our clock): break
 *     it, then drop it;
 *   - otherwise (live or still unknown): the lock is busy; wait with a
 *     randomized backoff, or return -EBUSY for a non-blocking try.
 *
 * Break of a dead host (ls_host_break), the order matters:
 *   1. mark its slot RECOVERING (by our slot and generation) with ls_cas
 *      over the exact block we judged dead: of two hosts racing to break it,
 *      exactly one wins the CAS and recovers it; the other sees RECOVERING
 *      and waits for the slot to be cleared;
 *   2. call the recovery hook (the file system replays the dead host's
 *      journal);
 *   3. fence: PREEMPT its reservation key (where the LUN has PR), so the
 *      target refuses its writes on all its paths even if it was only
 *      paused;
 *   4. clear the slot with generation + 1 (ls_cas over our mark). If the
 *      paused host overwrote the mark in between, its key is preempted now
 *      and it cannot write again: mark and clear again.
 * A RECOVERING slot whose recoverer is itself gone (its slot cleared or
 * reused, or dead) is broken again the same way; a long recovery by a live
 * host is waited for.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "lun.h"
#include "ls_internal.h"

int lock_record_format(struct lockspace *ls, uint64_t lba, const char *name)
{
    if (!ls->joined)
        return -EINVAL;
    uint8_t *cur = calloc(2, ls->bs), *buf = cur + ls->bs;
    if (!cur)
        return -ENOMEM;
    struct ls_lockrec lr = {
        .mode = LS_LOCK_FREE, .writer_slot = ls->slot, .writer_gen = ls->generation};
    snprintf(lr.name, sizeof(lr.name), "%s", name ? name : "");
    int r;
    /* Through the atomic step over what we read: a record that is held, or
     * that another host changes meanwhile, is never overwritten. */
    for (int attempt = 0; attempt < 8; attempt++) {
        if ((r = ls_read(ls, lba, 1, cur)) < 0)
            break;
        struct ls_lockrec old;
        if (le32_get(cur) == LS_MAGIC_LOCK &&
            ls_lockrec_decode(cur, &old, NULL, lba) == 0) {
            if (old.mode != LS_LOCK_FREE) {
                log_err("%s: lock record at lba %llu ('%s') is held %s by %u owner(s): not "
                        "formatted",
                        lun_name(ls->lun), (unsigned long long)lba, old.name,
                        ls_lock_mode_name(old.mode), old.nowners);
                r = -EBUSY;
                break;
            }
            lr.version = old.version + 1; /* stays unique: the CAS can tell ours apart */
        }
        memset(buf, 0, ls->bs);
        ls_lockrec_encode(buf, &lr);
        r = ls_cas(ls, lba, cur, buf, NULL);
        if (r != -EILSEQ)
            break;
    }
    free(cur);
    return r;
}

static void held_add(struct lockspace *ls, uint64_t lba, enum ls_lock_mode mode, uint64_t version)
{
    pthread_mutex_lock(&ls->lock);
    for (struct ls_held *h = ls->held; h; h = h->next)
        if (h->lba == lba) {
            pthread_mutex_unlock(&ls->lock);
            return;
        }
    struct ls_held *h = calloc(1, sizeof(*h));
    if (h) {
        h->lba = lba;
        h->mode = mode;
        h->version = version;
        h->next = ls->held;
        ls->held = h;
    }
    pthread_mutex_unlock(&ls->lock);
}

static bool held_find(struct lockspace *ls, uint64_t lba)
{
    bool found = false;
    pthread_mutex_lock(&ls->lock);
    for (struct ls_held *h = ls->held; h; h = h->next)
        if (h->lba == lba)
            found = true;
    pthread_mutex_unlock(&ls->lock);
    return found;
}

/* A waiter that gives up withdraws its exclusive-wait announcement (best
 * effort: if it fails, others drop it once we are gone). `buf`: 2 blocks. */
static void xwait_withdraw(struct lockspace *ls, uint64_t lba, uint8_t *buf)
{
    uint8_t *nw = buf + ls->bs;
    for (int attempt = 0; attempt < 4; attempt++) {
        struct ls_lockrec lr;
        if (ls_read(ls, lba, 1, buf) < 0 || ls_lockrec_decode(buf, &lr, "lock record", lba) < 0)
            return;
        if (!lr.xwait || lr.xwait_slot != ls->slot || lr.xwait_gen != ls->generation)
            return;
        lr.xwait = false;
        lr.version++;
        memset(nw, 0, ls->bs);
        ls_lockrec_encode(nw, &lr);
        if (ls_cas(ls, lba, buf, nw, NULL) != -EILSEQ)
            return;
    }
}

static void held_remove(struct lockspace *ls, uint64_t lba)
{
    pthread_mutex_lock(&ls->lock);
    for (struct ls_held **pp = &ls->held; *pp; pp = &(*pp)->next)
        if ((*pp)->lba == lba) {
            struct ls_held *h = *pp;
            *pp = h->next;
            free(h);
            break;
        }
    pthread_mutex_unlock(&ls->lock);
}

/* Which of `victim` and our own key READ KEYS lists: bit 0 victim, bit 1
 * ours; or -errno. */
static int keys_listed(struct lockspace *ls, uint64_t victim)
{
    struct lun_pr_state *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    int r = lun_pr_read(ls->lun, st);
    int bits = 0;
    for (unsigned i = 0; r == 0 && i < st->nkeys; i++) {
        if (st->keys[i] == victim)
            bits |= 1;
        if (st->keys[i] == ls->pr_key)
            bits |= 2;
    }
    free(st);
    return r < 0 ? r : bits;
}

/* The WE-AR reservation exists (take it if not: we are registered). */
static int pr_ensure_reserved(struct lockspace *ls, const char *name)
{
    struct lun_pr_state *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    int r = lun_pr_read(ls->lun, st);
    if (r == 0 && !st->reserved) {
        r = lun_pr_reserve(ls->lun, ls->pr_key, LUN_PR_WE_ALL_REGISTRANTS);
        if (r < 0 && lun_pr_read(ls->lun, st) == 0 && st->reserved &&
            st->type == LUN_PR_WE_ALL_REGISTRANTS)
            r = 0;
        if (r < 0)
            log_err("%s: cannot fence host %s: the LUN has no reservation and taking Write "
                    "Exclusive - All Registrants failed: %s",
                    lun_name(ls->lun), name, strerror(-r));
    }
    free(st);
    return r;
}

/* Fence a host being recovered: PREEMPT its reservation key, then read the
 * keys back and see it gone (a target that accepted the PREEMPT but still
 * lists the key, or a re-registration that raced with it, is not fenced).
 * No-op if the key is ours or zero, or without reservations.
 *
 * istgt (0.4): after a PREEMPT, READ KEYS lists the preemptor's own
 * registration under the PREEMPTED key (writes are right: the victim gets
 * RESERVATION CONFLICT, we do not). Preempting "again" would then remove
 * our own registration. So: victim listed but our key missing = the
 * target mislabelled us: register our key again (REGISTER AND IGNORE
 * EXISTING KEY, every path) and read again; preempt only while both are
 * listed. */
static int fence_key(struct lockspace *ls, uint64_t key, const char *name, uint32_t slot,
                     uint32_t gen)
{
    if (!ls->pr || !key || key == ls->pr_key)
        return 0;
    int r = 0;
    bool preempted = false;
    for (int attempt = 0; attempt < 4; attempt++) {
        int bits = keys_listed(ls, key);
        if (bits < 0) {
            r = bits;
            log_err("%s: cannot fence host %s (slot %u generation %u): cannot read the "
                    "registered keys: %s",
                    lun_name(ls->lun), name, slot, gen, strerror(-r));
            continue;
        }
        if (!(bits & 1)) {
            if (preempted)
                log_info("%s: fenced host %s (slot %u generation %u): key 0x%016" PRIx64
                         " preempted, no longer registered",
                         lun_name(ls->lun), name, slot, gen, key);
            /* An unregistered host is kept out only while the Write
             * Exclusive - All Registrants reservation exists (the last
             * host to leave releases it): make sure it does. */
            return pr_ensure_reserved(ls, name);
        }
        if (preempted && !(bits & 2)) {
            log_info("%s: the target lists our registration under the preempted key 0x%016" PRIx64
                     " after PREEMPT: registering our key again",
                     lun_name(ls->lun), key);
            if ((r = lun_pr_register(ls->lun, ls->pr_key)) < 0)
                log_err("%s: cannot register our key 0x%016" PRIx64 " again: %s",
                        lun_name(ls->lun), ls->pr_key, strerror(-r));
            continue;
        }
        r = lun_pr_preempt(ls->lun, ls->pr_key, key, LUN_PR_WE_ALL_REGISTRANTS,
                           lun_get_info(ls->lun)->caps.pr_preempt_abort);
        preempted = true;
        if (r < 0)
            log_err("%s: cannot fence host %s (slot %u generation %u): PREEMPT of key 0x%016" PRIx64
                    " failed: %s",
                    lun_name(ls->lun), name, slot, gen, key, strerror(-r));
    }
    log_err("%s: cannot fence host %s (slot %u generation %u): key 0x%016" PRIx64
            " still registered after PREEMPT: recovery not started",
            lun_name(ls->lun), name, slot, gen, key);
    return r < 0 ? r : -EIO;
}

int ls_host_fence(struct lockspace *ls, uint32_t slot, uint32_t gen)
{
    if (!ls->pr)
        return 0;
    struct ls_hb hb;
    pthread_mutex_lock(&ls->lock);
    int d = ls_hb_decode(ls->hb_raw + (size_t)slot * ls->bs, &hb, "heartbeat slot",
                         ls->offset + ls->hdr.hb_off + slot);
    pthread_mutex_unlock(&ls->lock);
    if (d < 0)
        return 0;
    return fence_key(ls, hb.pr_key, hb.name, slot, gen);
}

int ls_delta_write(struct lockspace *ls, uint64_t lba, const void *expect, const void *data,
                   void *found)
{
    uint8_t *cur = malloc(ls->bs);
    if (!cur)
        return -ENOMEM;
    int r = -EAGAIN;
    for (int attempt = 0; attempt < 3 && r == -EAGAIN; attempt++) {
        /* The write must not be sent later than T/2 after the read that saw
         * `expect` was ISSUED (the block may have changed right after): the
         * deadline travels with the write through the LUN layer's retries.
         * A racer's write then lands within 1.5 T of a read that preceded
         * ours, before our read-back 2.5 T after our write completed. */
        uint64_t issued = ls_now_ns();
        if ((r = ls_read(ls, lba, 1, cur)) < 0)
            break;
        bool landed = attempt > 0 && !memcmp(cur, data, ls->bs); /* a timed-out try landed */
        if (!landed && memcmp(cur, expect, ls->bs)) {
            r = -EILSEQ;
            break;
        }
        uint64_t dl = issued + (uint64_t)ls->to.io_timeout_ms * 500000ull;
        r = landed ? 0 : ls_write_dl(ls, LS_TP_DELTA, lba, 1, data, 0, dl);
        if (r == -ETIMEDOUT && lockspace_check_write(ls) == 0 && ls_now_ns() >= dl) {
            r = -EAGAIN; /* too slow to write on this view: look again */
            continue;
        }
        if (r < 0)
            break;
        usleep((useconds_t)(2500ull * ls->to.io_timeout_ms));
        if ((r = ls_read(ls, lba, 1, cur)) < 0)
            break;
        r = memcmp(cur, data, ls->bs) ? -EILSEQ : 0;
    }
    if (r == -EILSEQ && found)
        memcpy(found, cur, ls->bs);
    free(cur);
    return r;
}

/* The final step of a break on a slot we marked: `final` over our mark.
 * Nobody but us writes a slot marked by a live recoverer (the dead host is
 * fenced by now where the LUN has reservations), so without an atomic step
 * a joiner (which has no paxos dblock of its own) reads, compares and
 * writes; everyone else uses ls_cas. */
static int break_finish(struct lockspace *ls, uint64_t lba, uint8_t *cur, const void *final)
{
    if (ls->caw || !ls->claiming)
        return ls_cas(ls, lba, cur, final, cur);
    uint8_t *now = malloc(ls->bs);
    if (!now)
        return -ENOMEM;
    int r = ls_read(ls, lba, 1, now);
    if (r == 0 && memcmp(now, cur, ls->bs)) {
        memcpy(cur, now, ls->bs);
        r = -EILSEQ;
    } else if (r == 0) {
        r = ls_write_raw(ls, lba, 1, final);
    }
    free(now);
    return r;
}

int ls_host_break(struct lockspace *ls, uint32_t slot, uint32_t gen)
{
    return ls_host_break_to(ls, slot, gen, NULL);
}

int ls_host_break_to(struct lockspace *ls, uint32_t slot, uint32_t gen, const void *final)
{
    uint32_t bs = ls->bs;
    uint64_t lba = ls->offset + ls->hdr.hb_off + slot;
    uint8_t *cur = calloc(3, bs), *mark = cur + bs, *clear = cur + 2 * bs;
    if (!cur)
        return -ENOMEM;
    uint64_t joiner_key = 0; /* a dead joiner's key, from the mark we take over */
    int r = -EAGAIN;
    for (int attempt = 0; attempt < 3; attempt++) {
        struct ls_hb hb;
        pthread_mutex_lock(&ls->lock);
        memcpy(cur, ls->hb_raw + (size_t)slot * bs, bs);
        bool dead = ls->peers[slot].state == LS_HOST_DEAD;
        pthread_mutex_unlock(&ls->lock);
        if ((r = ls_hb_decode(cur, &hb, "heartbeat slot", lba)) < 0)
            break;
        if (hb.state == LS_SLOT_FREE || hb.generation != gen) {
            r = final ? -EAGAIN : 0; /* somebody recovered it already */
            break;
        }
        bool ours = hb.state == LS_SLOT_RECOVERING && hb.rec_slot == ls->slot &&
                    hb.rec_gen == ls->generation && !memcmp(hb.rec_uuid, ls->uuid, 16);
        if (!ours && hb.state == LS_SLOT_RECOVERING) {
            /* Being recovered by another host: take over only if that host
             * is itself gone (a long journal replay is not a death). A
             * joiner's mark (rec_slot = the slot itself) is its heartbeat:
             * it is gone once the mark stayed unchanged for the dead time. */
            int lv = hb.rec_slot == slot ? (dead ? 2 : 1)
                                         : ls_owner_liveness(ls, hb.rec_slot, hb.rec_gen);
            if (lv == 1) {
                r = -EAGAIN;
                break;
            }
            if (hb.rec_slot == slot)
                joiner_key = hb.rec_key;
            dead = true;
        }
        if (!ours) {
            if (!dead) {
                r = -EAGAIN; /* alive, or being recovered by a live host */
                break;
            }
            struct ls_hb m = hb;
            m.state = LS_SLOT_RECOVERING;
            m.rec_slot = ls->slot;
            m.rec_gen = ls->generation;
            memcpy(m.rec_uuid, ls->uuid, 16);
            m.rec_key = ls->claiming ? ls->pr_key : 0;
            memset(mark, 0, bs);
            ls_hb_encode(mark, &m);
            uint64_t t_mark = ls_now_ns();
            if (ls->claiming) {
                /* A joiner's writes stop at its mark + the self-fence time,
                 * as a host's stop at its last renewal + fence_ms. */
                pthread_mutex_lock(&ls->lock);
                ls->deadline_ns = t_mark + (uint64_t)ls->to.fence_ms * 1000000ull;
                pthread_mutex_unlock(&ls->lock);
            }
            /* Without COMPARE AND WRITE the mark is a delta-lease write: a
             * joiner has no paxos dblock, and joiners and joined hosts
             * must race for a dead slot on equal terms. */
            r = ls->caw ? ls_cas(ls, lba, cur, mark, cur) : ls_delta_write(ls, lba, cur, mark, cur);
            if (r == -EILSEQ) {
                /* Changed under us: it is alive, or another host won the race. */
                pthread_mutex_lock(&ls->lock);
                memcpy(ls->hb_raw + (size_t)slot * bs, cur, bs);
                pthread_mutex_unlock(&ls->lock);
                r = -EAGAIN;
                break;
            }
            if (r < 0)
                break;
            log_info("%s: host %s (slot %u generation %u) is dead: %s recovers it%s",
                     lun_name(ls->lun), hb.name, slot, gen, ls->name,
                     ls->claiming ? " to take its slot" : "");
            memcpy(cur, mark, bs);
            if (ls->claiming && !ls->caw) {
                /* The delta wait ate 2.5 T of our window: refresh the mark
                 * (nobody else writes it now), which moves our deadline. */
                m.counter++;
                memset(mark, 0, bs);
                ls_hb_encode(mark, &m);
                t_mark = ls_now_ns();
                if ((r = ls_write_raw(ls, lba, 1, mark)) < 0)
                    break;
                pthread_mutex_lock(&ls->lock);
                ls->deadline_ns = t_mark + (uint64_t)ls->to.fence_ms * 1000000ull;
                pthread_mutex_unlock(&ls->lock);
                memcpy(cur, mark, bs);
            }
            hb = m;
        }
        /* Fence BEFORE the hook: the hook replays the dead host's journal,
         * which must not race with its queued or retried writes. */
        if ((r = fence_key(ls, hb.pr_key, hb.name, slot, gen)) < 0)
            break;
        if (joiner_key && (r = fence_key(ls, joiner_key, "(joiner)", slot, gen + 1)) < 0)
            break;
        if (ls->opts.recover) {
            struct ls_host_info info = {.slot = slot,
                                        .generation = gen,
                                        .journal_lba = hb.journal_lba,
                                        .pr_key = hb.pr_key};
            memcpy(info.uuid, hb.uuid, 16);
            snprintf(info.name, sizeof(info.name), "%s", hb.name);
            /* A joiner's mark is its heartbeat: renew it while the hook
             * runs (a joined host's renewal thread runs anyway). */
            bool renew = ls->claiming && (r = ls_mark_renew_start(ls, lba, cur)) == 0;
            if (ls->claiming && !renew)
                break;
            r = ls->opts.recover(ls, &info, ls->opts.opaque);
            if (renew)
                ls_mark_renew_stop(ls, cur);
            if (r != 0) {
                log_err("%s: recovery of host %s (slot %u) failed (%d); slot left recovering",
                        lun_name(ls->lun), hb.name, slot, r);
                r = r < 0 ? r : -EIO;
                break;
            }
            if ((r = lockspace_check_write(ls)) < 0)
                break; /* fenced (or a joiner past its deadline) during the hook */
        }
        pthread_mutex_lock(&ls->lock);
        memcpy(ls->hb_raw + (size_t)slot * bs, cur, bs);
        pthread_mutex_unlock(&ls->lock);
        /* A failed take-back of a re-registration (the dead host's path
         * reconnected during the hook) shows as its key registered again. */
        if ((r = fence_key(ls, hb.pr_key, hb.name, slot, gen)) < 0)
            break;
        struct ls_hb c = {.state = LS_SLOT_FREE,
                          .slot = slot,
                          .generation = gen + 1,
                          .rec_slot = LS_NO_SLOT,
                          .io_timeout_ms = ls->hdr.io_timeout_ms};
        memset(clear, 0, bs);
        if (final)
            memcpy(clear, final, bs);
        else
            ls_hb_encode(clear, &c);
        uint64_t t_final = ls_now_ns();
        r = break_finish(ls, lba, cur, clear);
        if (r == 0) {
            pthread_mutex_lock(&ls->lock);
            memcpy(ls->hb_raw + (size_t)slot * bs, clear, bs);
            if (final) {
                ls->deadline_ns = t_final + (uint64_t)ls->to.fence_ms * 1000000ull;
                memcpy(ls->hb_mine, clear, bs);
            }
            pthread_mutex_unlock(&ls->lock);
            if (final)
                log_info("%s: host %s (slot %u) recovered; slot taken by %s at generation %u",
                         lun_name(ls->lun), hb.name, slot, ls->name, gen + 1);
            else
                log_info("%s: host %s (slot %u) recovered; slot cleared to generation %u",
                         lun_name(ls->lun), hb.name, slot, gen + 1);
            break;
        }
        if (r != -EILSEQ)
            break;
        /* The host wrote its slot between our mark and the fence. It is
         * fenced now where the LUN has reservations: mark again. Without
         * reservations it is alive: give up. */
        pthread_mutex_lock(&ls->lock);
        memcpy(ls->hb_raw + (size_t)slot * bs, cur, bs);
        pthread_mutex_unlock(&ls->lock);
        log_warn("%s: host %s (slot %u) wrote its slot while being recovered", lun_name(ls->lun),
                 hb.name, slot);
        r = -EAGAIN;
        if (!ls->pr)
            break;
    }
    free(cur);
    return r;
}

int lockspace_recover_dead(struct lockspace *ls)
{
    if (!ls->joined)
        return -EINVAL;
    int r = ls_hb_scan(ls);
    if (r < 0)
        return r;
    int n = 0;
    for (uint32_t i = 0; i < ls->hdr.max_hosts; i++) {
        if (i == ls->slot)
            continue;
        struct ls_hb hb;
        pthread_mutex_lock(&ls->lock);
        bool dead = ls->peers[i].state == LS_HOST_DEAD;
        int d = ls_hb_decode(ls->hb_raw + (size_t)i * ls->bs, &hb, "heartbeat slot",
                             ls->offset + ls->hdr.hb_off + i);
        pthread_mutex_unlock(&ls->lock);
        if (!dead || d < 0 || hb.state == LS_SLOT_FREE)
            continue;
        r = ls_host_break(ls, i, hb.generation);
        if (r == 0)
            n++;
        else if (r != -EAGAIN)
            return r;
    }
    return n;
}

static void log_busy(struct lockspace *ls, uint64_t lba, const struct ls_lockrec *lr)
{
    const struct ls_owner *o = &lr->owners[0];
    char name[LS_NAME_MAX + 1] = "?";
    const char *state = "?";
    uint64_t age = 0;
    pthread_mutex_lock(&ls->lock);
    if (o->slot < ls->hdr.max_hosts) {
        struct ls_hb hb;
        if (ls_hb_decode(ls->hb_raw + (size_t)o->slot * ls->bs, &hb, "heartbeat slot",
                         ls->offset + ls->hdr.hb_off + o->slot) == 0)
            snprintf(name, sizeof(name), "%s", hb.name);
        state = ls_host_state_name(ls->peers[o->slot].state);
        if (ls->peers[o->slot].first_seen_ns)
            age = (ls_now_ns() - ls->peers[o->slot].first_seen_ns) / 1000000;
    }
    pthread_mutex_unlock(&ls->lock);
    log_err("%s: lock '%s' at lba %llu: held %s by host %s (slot %u, heartbeat %s, last change "
            "seen %llu ms ago)%s",
            lun_name(ls->lun), lr->name, (unsigned long long)lba, ls_lock_mode_name(lr->mode), name,
            o->slot, state, (unsigned long long)age, lr->nowners > 1 ? " and others" : "");
}

int lock_acquire(struct lockspace *ls, uint64_t lba, enum ls_lock_mode mode, int timeout_ms)
{
    if (!ls->joined || mode == LS_LOCK_FREE || mode > LS_LOCK_MULTI_WRITER)
        return -EINVAL;
    uint32_t bs = ls->bs;
    uint8_t *cur = calloc(2, bs), *nw = cur + bs;
    if (!cur)
        return -ENOMEM;
    if (held_find(ls, lba)) {
        /* Locks belong to the host, not to a thread: a second acquire would
         * share one on-disk ownership and the first release would free it
         * under the second holder. Refused, whatever the mode. */
        log_err("%s: lock at lba %llu: already held by this host (%s): acquire refused "
                "(EDEADLK); release it first",
                lun_name(ls->lun), (unsigned long long)lba, ls->name);
        free(cur);
        return -EDEADLK;
    }
    uint64_t t_end = timeout_ms > 0 ? ls_now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
    bool announced = false; /* we set the record's exclusive-waiter flag */
    uint64_t version = 0;   /* the record's version once we are in */
    unsigned backoff_us = 100;
    unsigned max_backoff = ls->to.renew_ms * 250; /* renew/4 in us */
    if (max_backoff > 50000)
        max_backoff = 50000;
    int r = ls_read(ls, lba, 1, cur);
    for (;;) {
        if (r < 0)
            break;
        struct ls_lockrec lr;
        if ((r = ls_lockrec_decode(cur, &lr, "lock record", lba)) < 0)
            break;
        struct ls_lockrec want = lr;
        r = ls_lockrec_add_owner(&want, mode, ls->slot, ls->generation);
        if (r == 1) {
            r = 0; /* an earlier attempt of ours landed (its outcome was lost) */
            version = lr.version;
            break;
        }
        if (r == 0) {
            memset(nw, 0, bs);
            ls_lockrec_encode(nw, &want);
            r = ls_cas(ls, lba, cur, nw, cur);
            if (r == 0) {
                version = want.version;
                break;
            }
            if (r == -EILSEQ) {
                r = 0;
                continue; /* `cur` holds the new contents */
            }
            break;
        }
        int add = r;
        if (r != -EBUSY && r != -ENOSPC)
            break;
        if (ls_lockrec_find_owner(&lr, ls->slot, ls->generation) >= 0) {
            /* On disk in another mode, though not in our list: an earlier
             * attempt of ours landed and we reported it failed. */
            log_err("%s: lock '%s' at lba %llu: already held %s by this host (%s), cannot "
                    "take it %s",
                    lun_name(ls->lun), lr.name, (unsigned long long)lba, ls_lock_mode_name(lr.mode),
                    ls->name, ls_lock_mode_name(mode));
            r = -EDEADLK;
            break;
        }
        /* Conflict: examine the owners. Our heartbeat view may be older than
         * the record: judge "stale" or "dead" only on a fresh read. */
        bool rescanned = false;
        for (unsigned i = 0; i < lr.nowners && !rescanned; i++)
            if (ls_owner_liveness(ls, lr.owners[i].slot, lr.owners[i].gen) != 1) {
                if ((r = ls_hb_scan(ls)) < 0)
                    goto out;
                rescanned = true;
            }
        bool xw_mine = lr.xwait && lr.xwait_slot == ls->slot && lr.xwait_gen == ls->generation;
        if (lr.xwait && !xw_mine && !rescanned &&
            ls_owner_liveness(ls, lr.xwait_slot, lr.xwait_gen) != 1) {
            if ((r = ls_hb_scan(ls)) < 0)
                goto out;
        }
        struct ls_lockrec fixed = lr;
        bool changed = false;
        if (lr.xwait && !xw_mine && ls_owner_liveness(ls, lr.xwait_slot, lr.xwait_gen) != 1) {
            fixed.xwait = false; /* the announced waiter is gone or dead */
            changed = true;
        }
        for (unsigned i = 0; i < lr.nowners; i++) {
            uint32_t s = lr.owners[i].slot, g = lr.owners[i].gen;
            int lv = ls_owner_liveness(ls, s, g);
            if (lv == 2) {
                int b = ls_host_break(ls, s, g);
                if (b < 0 && b != -EAGAIN) {
                    r = b;
                    goto out;
                }
                lv = b == 0 ? 0 : 1;
            }
            if (lv == 0) {
                ls_lockrec_remove_owner(&fixed, s, g, ls->slot, ls->generation);
                changed = true;
            }
        }
        if (changed) {
            memset(nw, 0, bs);
            ls_lockrec_encode(nw, &fixed);
            r = ls_cas(ls, lba, cur, nw, cur);
            if (r == 0)
                memcpy(cur, nw, bs);
            if (r == 0 || r == -EILSEQ) {
                r = 0;
                continue;
            }
            break;
        }
        if (add == -ENOSPC) {
            log_err("%s: lock '%s' at lba %llu: already %u live owners in %s mode, the most a "
                    "record holds",
                    lun_name(ls->lun), lr.name, (unsigned long long)lba, lr.nowners,
                    ls_lock_mode_name(lr.mode));
            r = -ENOSPC;
            break;
        }
        if (timeout_ms == 0) {
            log_busy(ls, lba, &lr);
            r = -EBUSY;
            break;
        }
        if (t_end && ls_now_ns() >= t_end) {
            log_busy(ls, lba, &lr);
            r = -ETIMEDOUT;
            break;
        }
        if (mode == LS_LOCK_EXCLUSIVE && !lr.xwait && lr.nowners) {
            /* Announce our wait: new shared owners hold back until we are
             * in (or gone), so readers coming and going cannot starve us. */
            fixed.xwait = true;
            fixed.xwait_slot = ls->slot;
            fixed.xwait_gen = ls->generation;
            fixed.version++;
            memset(nw, 0, bs);
            ls_lockrec_encode(nw, &fixed);
            r = ls_cas(ls, lba, cur, nw, cur);
            if (r == 0) {
                announced = true;
                memcpy(cur, nw, bs);
                continue;
            }
            if (r == -EILSEQ) {
                r = 0;
                continue;
            }
            break;
        }
        if ((r = lockspace_check_write(ls)) < 0)
            break;
        usleep(backoff_us / 2 + (unsigned)random() % (backoff_us / 2 + 1));
        if (backoff_us < max_backoff)
            backoff_us *= 2;
        r = ls_read(ls, lba, 1, cur);
    }
out:
    if (r == 0)
        held_add(ls, lba, mode, version);
    else if (announced)
        xwait_withdraw(ls, lba, cur);
    free(cur);
    return r;
}

int lock_fence_token(struct lockspace *ls, uint64_t lba, struct ls_fence_token *out)
{
    int r = -ENOENT;
    pthread_mutex_lock(&ls->lock);
    for (struct ls_held *h = ls->held; h; h = h->next)
        if (h->lba == lba) {
            out->slot = ls->slot;
            out->generation = ls->generation;
            out->lock_version = h->version;
            r = 0;
        }
    pthread_mutex_unlock(&ls->lock);
    return r;
}

int lock_release(struct lockspace *ls, uint64_t lba)
{
    uint32_t bs = ls->bs;
    uint8_t *cur = calloc(2, bs), *nw = cur + bs;
    if (!cur)
        return -ENOMEM;
    int r = ls_read(ls, lba, 1, cur);
    while (r == 0) {
        struct ls_lockrec lr;
        if ((r = ls_lockrec_decode(cur, &lr, "lock record", lba)) < 0)
            break;
        if (ls_lockrec_remove_owner(&lr, ls->slot, ls->generation, ls->slot, ls->generation) < 0) {
            log_err("%s: lock '%s' at lba %llu: not held by host %s (slot %u generation %u): "
                    "broken by another host?",
                    lun_name(ls->lun), lr.name, (unsigned long long)lba, ls->name, ls->slot,
                    ls->generation);
            r = -ENOENT;
            break;
        }
        memset(nw, 0, bs);
        ls_lockrec_encode(nw, &lr);
        r = ls_cas(ls, lba, cur, nw, cur);
        if (r == -EILSEQ)
            r = 0;
        else
            break;
    }
    held_remove(ls, lba);
    free(cur);
    return r;
}
