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
 * Dead owners are recovered first (recovery.c); owners whose slot is free
 * (at a generation >= theirs) or holds a greater generation are dropped.
 * An exclusive waiter announces itself in the record (xwait) so that new
 * shared owners hold back; it withdraws the announcement when it gives up.
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
        if (le32_get(cur) == LS_MAGIC_LOCK && ls_lockrec_decode(cur, &old, NULL, lba) == 0) {
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

/* The owner's slot is marked RECOVERING (our cached view). */
static bool owner_recovering(struct lockspace *ls, uint32_t slot, uint32_t gen)
{
    if (slot >= ls->hdr.max_hosts)
        return false;
    struct ls_hb hb;
    pthread_mutex_lock(&ls->lock);
    bool rec = ls_hb_decode(ls->hb_raw + (size_t)slot * ls->bs, &hb, NULL, 0) == 0 &&
               hb.state == LS_SLOT_RECOVERING && hb.generation == gen;
    pthread_mutex_unlock(&ls->lock);
    return rec;
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
        bool changed = false, inprogress = false;
        pthread_mutex_lock(&ls->lock);
        bool hk = ls->hk_running;
        pthread_mutex_unlock(&ls->lock);
        if (lr.xwait && !xw_mine && ls_owner_liveness(ls, lr.xwait_slot, lr.xwait_gen) != 1) {
            fixed.xwait = false; /* the announced waiter is gone or dead */
            changed = true;
        }
        for (unsigned i = 0; i < lr.nowners; i++) {
            uint32_t s = lr.owners[i].slot, g = lr.owners[i].gen;
            int lv = ls_owner_liveness(ls, s, g);
            if (hk && (lv == 2 || owner_recovering(ls, s, g))) {
                inprogress = true; /* the housekeeping thread recovers it */
                lv = 1;
            } else if (lv == 2) {
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
            r = inprogress ? -EINPROGRESS : -EBUSY;
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
