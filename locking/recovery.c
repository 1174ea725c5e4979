/* Recovery of a dead host: the break of its slot, in the recovery order.
 *
 * Design notes
 * ------------
 * Break of a dead host (ls_host_break), the order matters:
 *   1. mark its slot RECOVERING (by our slot and generation) with ls_cas
 *      over the exact block we judged dead (without CAW: a delta-lease
 *      write): of two hosts racing to break it, exactly one wins and
 *      recovers it; the other sees RECOVERING and waits for the slot to be
 *      cleared;
 *   2. fence: PREEMPT its reservation key (where the LUN has PR), so the
 *      target refuses its writes on all its paths even if it was only
 *      paused; 3. read the keys back: the key must be gone (fence.c);
 *   4. call the recovery hook (the file system replays the dead host's
 *      journal): only now can replay not race with its queued or retried
 *      writes. A joiner renews its mark meanwhile (its heartbeat);
 *   5. read the keys once more (a re-registration may have raced with the
 *      hook), then clear the slot with generation + 1 (ls_cas over our
 *      mark). If the paused host overwrote the mark in between, its key is
 *      preempted now and it cannot write again: mark and clear again.
 * A RECOVERING slot whose recoverer is itself gone (its slot cleared or
 * reused, or dead) is broken again the same way; a long recovery by a live
 * host is waited for. A joiner taking a dead host's slot ends the break by
 * writing its own live record instead of the cleared slot
 * (ls_host_break_to): lockspace.c's join calls down into this file, the one
 * place where the heartbeat layer uses the recovery layer.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "ls_internal.h"

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
        if ((r = ls_fence_key(ls, hb.pr_key, hb.name, slot, gen)) < 0)
            break;
        if (joiner_key && (r = ls_fence_key(ls, joiner_key, "(joiner)", slot, gen + 1)) < 0)
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
        if ((r = ls_fence_key(ls, hb.pr_key, hb.name, slot, gen)) < 0)
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

/* ---- The housekeeping thread ------------------------------------------- */

static void *recovery_thread_run(void *arg)
{
    struct lockspace *ls = arg;
    pthread_mutex_lock(&ls->lock);
    while (!ls->hk_stop) {
        pthread_mutex_unlock(&ls->lock);
        int r = lockspace_recover_dead(ls);
        if (r < 0 && r != -EAGAIN)
            log_warn("%s: lockspace at block %llu: housekeeping recovery: %s", lun_name(ls->lun),
                     (unsigned long long)ls->offset, strerror(-r));
        pthread_mutex_lock(&ls->lock);
        if (ls->hk_stop || ls->fenced)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* ls->cond waits on CLOCK_MONOTONIC */
        uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec +
                     (uint64_t)ls->to.renew_ms * 1000000ull;
        ts.tv_sec = (time_t)(t / 1000000000ull);
        ts.tv_nsec = (long)(t % 1000000000ull);
        pthread_cond_timedwait(&ls->cond, &ls->lock, &ts);
    }
    pthread_mutex_unlock(&ls->lock);
    return NULL;
}

static void recovery_thread_stop(struct lockspace *ls)
{
    pthread_mutex_lock(&ls->lock);
    bool running = ls->hk_running;
    ls->hk_stop = true;
    pthread_cond_broadcast(&ls->cond);
    pthread_mutex_unlock(&ls->lock);
    if (running)
        pthread_join(ls->hk_thread, NULL);
    pthread_mutex_lock(&ls->lock);
    ls->hk_running = false;
    pthread_mutex_unlock(&ls->lock);
}

int lockspace_start_recovery_thread(struct lockspace *ls)
{
    if (!ls->joined)
        return -EINVAL;
    pthread_mutex_lock(&ls->lock);
    if (ls->hk_running) {
        pthread_mutex_unlock(&ls->lock);
        return -EALREADY;
    }
    ls->hk_stop = false;
    ls->hk_running = true;
    ls->hk_stop_fn = recovery_thread_stop;
    pthread_mutex_unlock(&ls->lock);
    int r = pthread_create(&ls->hk_thread, NULL, recovery_thread_run, ls);
    if (r) {
        pthread_mutex_lock(&ls->lock);
        ls->hk_running = false;
        pthread_mutex_unlock(&ls->lock);
        return -r;
    }
    return 0;
}
