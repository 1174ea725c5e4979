/* The paxos mutex: the atomic step on LUNs without COMPARE AND WRITE.
 *
 * Design notes
 * ------------
 * Disk Paxos (Gafni & Lamport) over one disk, as sanlock's paxos leases:
 * a leader block and one dblock per heartbeat slot, written only by that
 * slot's owner. Each acquisition of the mutex is a new paxos instance
 * (lver); the value decided for an instance is the owner (slot,
 * generation). A ballot for instance lver with ballot number mbal (unique:
 * round << 16 | slot+1):
 *   phase 1: write our dblock {lver, mbal, bal, inp}; read all dblocks;
 *            abort if one has the same lver and a larger mbal, or a larger
 *            lver; adopt the inp of the largest bal of this lver, else ours.
 *   phase 2: write {lver, mbal, bal = mbal, inp}; read all; same aborts.
 *            Otherwise inp is decided for lver.
 * The winner writes the leader {lver, owner, held}, does its read-compare-
 * write, then writes the leader {lver, owner, free}. Losers never write the
 * leader (a late "held" from a loser could overwrite the owner's "free").
 * A contender that sees dblocks of an instance beyond the leader runs a
 * ballot on it to learn its value (the winner may have died before writing
 * the leader). A holder whose host is dead (liveness.c) or whose slot was
 * cleared is taken over with the next instance, after preempting its key
 * where the LUN has reservations. Every host reads all dblocks in one I/O
 * (H+1 blocks).
 *
 * Cost per mutex acquire without contention: read region + 2 x (write
 * dblock + read region) + write leader = 6 I/Os; release: 1.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "ls_internal.h"

struct region {
    struct ls_leader leader;
    struct ls_dblock *d; /* max_hosts */
    uint64_t bad_lba;    /* region_read -EAGAIN: the block that did not decode */
    int bad_err;         /* ... and why */
};

/* Read the leader and every dblock in one I/O. A block that does not
 * decode is most likely torn: read while its owner was writing it (the
 * target does not make a 512-byte write atomic against a concurrent
 * multi-block read). -EAGAIN then: the caller retries the ballot; it
 * reports corruption only when the same block stays bad for dead_ms. */
static int region_read(struct lockspace *ls, uint8_t *buf, struct region *rg)
{
    uint32_t H = ls->hdr.max_hosts;
    uint64_t base = ls->offset + ls->hdr.paxos_off;
    int r = ls_read(ls, base, H + 1, buf);
    if (r < 0)
        return r;
    rg->bad_lba = 0;
    r = ls_leader_decode(buf, &rg->leader, NULL, base);
    for (uint32_t i = 0; r == 0 && i < H; i++)
        if ((r = ls_dblock_decode(buf + (size_t)(i + 1) * ls->bs, &rg->d[i], NULL, base + 1 + i)) <
            0)
            rg->bad_lba = base + 1 + i;
    if (r < 0) {
        if (!rg->bad_lba)
            rg->bad_lba = base;
        rg->bad_err = r;
        return -EAGAIN;
    }
    return 0;
}

static int write_rec(struct lockspace *ls, uint64_t lba, uint8_t *blk)
{
    return ls_write_raw(ls, lba, 1, blk);
}

/* Check a region read against our ballot: 0 ok, -EAGAIN abort. */
static int ballot_check(struct lockspace *ls, const struct region *rg, uint64_t lver, uint64_t mbal)
{
    for (uint32_t i = 0; i < ls->hdr.max_hosts; i++) {
        if (i == ls->slot)
            continue;
        if (rg->d[i].lver > lver)
            return -EAGAIN;
        if (rg->d[i].lver == lver && rg->d[i].mbal > mbal)
            return -EAGAIN;
    }
    return 0;
}

/* Run a ballot for `lver`; on success *won = the decided owner. */
static int ballot(struct lockspace *ls, uint8_t *buf, struct region *rg, uint64_t lver,
                  struct ls_owner *won, uint64_t *p2_issued)
{
    uint32_t H = ls->hdr.max_hosts;
    uint64_t base = ls->offset + ls->hdr.paxos_off;
    uint64_t maxm = 0;
    for (uint32_t i = 0; i < H; i++)
        if (rg->d[i].lver == lver && rg->d[i].mbal > maxm)
            maxm = rg->d[i].mbal;
    uint64_t mbal = (((maxm >> 16) + 1) << 16) | (ls->slot + 1);
    struct ls_dblock me = rg->d[ls->slot];
    if (me.lver != lver) {
        me.bal = 0;
        me.inp_slot = LS_NO_SLOT;
        me.inp_gen = 0;
    }
    me.lver = lver;
    me.mbal = mbal;
    uint8_t *blk = calloc(1, ls->bs);
    if (!blk)
        return -ENOMEM;
    int r;
    /* Phase 1 */
    ls_dblock_encode(blk, &me);
    if ((r = write_rec(ls, base + 1 + ls->slot, blk)) < 0)
        goto out;
    if ((r = region_read(ls, buf, rg)) < 0 || (r = ballot_check(ls, rg, lver, mbal)) < 0)
        goto out;
    uint64_t best = 0;
    struct ls_owner v = {ls->slot, ls->generation};
    for (uint32_t i = 0; i < H; i++) {
        if (rg->d[i].lver == lver && rg->d[i].bal > best) {
            best = rg->d[i].bal;
            v.slot = rg->d[i].inp_slot;
            v.gen = rg->d[i].inp_gen;
        }
    }
    /* Phase 2 */
    me.bal = mbal;
    me.inp_slot = v.slot;
    me.inp_gen = v.gen;
    ls_dblock_encode(blk, &me);
    *p2_issued = ls_now_ns();
    if ((r = write_rec(ls, base + 1 + ls->slot, blk)) < 0)
        goto out;
    if ((r = region_read(ls, buf, rg)) < 0 || (r = ballot_check(ls, rg, lver, mbal)) < 0)
        goto out;
    *won = v;
out:
    free(blk);
    return r;
}

/* The holder's leader writes carry the mutex deadline: a late "held" or
 * "free" never lands after a contender took the next instance over. */
static int leader_write(struct lockspace *ls, uint64_t lver, bool held)
{
    uint8_t *blk = calloc(1, ls->bs);
    if (!blk)
        return -ENOMEM;
    struct ls_leader l = {
        .held = held, .lver = lver, .owner_slot = ls->slot, .owner_gen = ls->generation};
    ls_leader_encode(blk, &l);
    int r = ls_write_dl(ls, LS_TP_META_WRITE, ls->offset + ls->hdr.paxos_off, 1, blk, 0,
                        ls->mutex_deadline_ns);
    free(blk);
    return r;
}

/* Is the holder (slot, gen) gone? Judged on a fresh read of the heartbeat
 * region, never on a cached view: 1 live (or unknown), 0 gone (its slot is
 * free at a generation >= gen, or holds a greater generation), 2 dead. */
static int holder_liveness(struct lockspace *ls, uint32_t slot, uint32_t gen)
{
    int lv = ls_owner_liveness(ls, slot, gen);
    if (lv == 1)
        return 1;
    int r = ls_hb_scan(ls);
    if (r < 0)
        return r;
    return ls_owner_liveness(ls, slot, gen);
}

int ls_mutex_acquire(struct lockspace *ls)
{
    uint32_t H = ls->hdr.max_hosts;
    if (ls->slot == LS_NO_SLOT)
        return -EINVAL;
    pthread_mutex_lock(&ls->mutex_lock);
    uint8_t *buf = malloc((size_t)(H + 1) * ls->bs);
    struct region rg = {.d = calloc(H, sizeof(struct ls_dblock))};
    int r = -ENOMEM;
    if (!buf || !rg.d)
        goto fail;
    unsigned backoff_us = 200;
    /* The holder we wait for, and since when (our clock) we see it hold. */
    struct {
        uint64_t lver, since;
        uint32_t slot, gen;
    } hold = {0};
    uint64_t torn_lba = 0, torn_since = 0;
    const uint64_t steal_ns = (uint64_t)ls->to.mutex_steal_ms * 1000000ull;
    for (;;) {
        uint64_t p2 = 0;
        if ((r = lockspace_check_write(ls)) < 0)
            goto fail;
        r = region_read(ls, buf, &rg);
        uint64_t t_read = ls_now_ns();
        if (r == -EAGAIN) {
            /* A torn (or corrupt) block: retry; corrupt only if it stays so. */
            if (rg.bad_lba != torn_lba) {
                torn_lba = rg.bad_lba;
                torn_since = t_read;
            } else if (t_read - torn_since >= (uint64_t)ls->to.dead_ms * 1000000ull) {
                struct ls_dblock d;
                uint64_t base = ls->offset + ls->hdr.paxos_off;
                ls_dblock_decode(buf + (size_t)(torn_lba - base) * ls->bs, &d, "paxos block",
                                 torn_lba); /* logs the reason */
                log_err("%s: paxos block at lba %llu stays unreadable for %u ms: %s",
                        lun_name(ls->lun), (unsigned long long)torn_lba, ls->to.dead_ms,
                        strerror(-rg.bad_err));
                r = rg.bad_err;
                goto fail;
            }
            goto wait;
        }
        if (r < 0)
            goto fail;
        torn_lba = 0;
        struct ls_leader cur = rg.leader;
        uint64_t maxl = 0;
        for (uint32_t i = 0; i < H; i++)
            if (rg.d[i].lver > maxl)
                maxl = rg.d[i].lver;
        struct ls_owner w;
        if (maxl > cur.lver) {
            /* Learn the instance the leader has not caught up with. */
            r = ballot(ls, buf, &rg, maxl, &w, &p2);
            if (r == -EAGAIN)
                goto wait;
            if (r < 0)
                goto fail;
            cur.lver = maxl;
            cur.held = 1;
            cur.owner_slot = w.slot;
            cur.owner_gen = w.gen;
            t_read = ls_now_ns();
        }
        if (cur.held && cur.owner_slot == ls->slot && cur.owner_gen == ls->generation) {
            /* An earlier attempt of ours won this instance (its leader
             * write landed, or we just learned it) but we gave up on it:
             * its deadline is unknown here, so never use it; take the
             * next instance. */
            cur.held = 0;
        }
        if (cur.held) {
            int lv = holder_liveness(ls, cur.owner_slot, cur.owner_gen);
            if (lv < 0) {
                r = lv;
                goto fail;
            }
            if (lv == 1) {
                /* Alive: its writes under the mutex stop at its phase 2 +
                 * mutex_hold_ms, which precedes our first sight of it. A
                 * holder that neither releases nor dies (a phantom: its
                 * phase-2 write landed but it failed before using it) is
                 * taken over after mutex_steal_ms of watching it. */
                if (hold.lver != cur.lver || hold.slot != cur.owner_slot ||
                    hold.gen != cur.owner_gen || !hold.since) {
                    hold.lver = cur.lver;
                    hold.slot = cur.owner_slot;
                    hold.gen = cur.owner_gen;
                    hold.since = t_read;
                    goto wait;
                }
                if (t_read - hold.since < steal_ns)
                    goto wait;
                log_warn("%s: paxos mutex instance %llu held by slot %u generation %u for %u ms "
                         "without release: taken over",
                         lun_name(ls->lun), (unsigned long long)cur.lver, cur.owner_slot,
                         cur.owner_gen, ls->to.mutex_steal_ms);
            } else if (lv == 2 && (r = ls_host_fence(ls, cur.owner_slot, cur.owner_gen)) < 0) {
                goto fail;
            }
        }
        r = ballot(ls, buf, &rg, cur.lver + 1, &w, &p2);
        if (r == -EAGAIN)
            goto wait;
        if (r < 0)
            goto fail;
        if (w.slot == ls->slot && w.gen == ls->generation) {
            cur.lver++;
            goto won;
        }
    wait:
        usleep(backoff_us / 2 + (unsigned)random() % (backoff_us / 2 + 1));
        if (backoff_us < 20000)
            backoff_us *= 2;
        continue;
    won:
        ls->paxos_round = 0;
        ls->mutex_lver = cur.lver;
        /* Every write under the mutex must land before contenders may take
         * it over: they start counting no earlier than our phase 2. */
        ls->mutex_deadline_ns = p2 + (uint64_t)ls->to.mutex_hold_ms * 1000000ull;
        r = leader_write(ls, cur.lver, true);
        if (r < 0) {
            leader_write(ls, cur.lver, false);
            ls->mutex_deadline_ns = 0;
            if (r == -ETIMEDOUT && lockspace_check_write(ls) == 0)
                goto wait; /* too slow to use it: try again */
            goto fail;
        }
        free(buf);
        free(rg.d);
        return 0; /* mutex_lock stays held until ls_mutex_release */
    }
fail:
    free(buf);
    free(rg.d);
    pthread_mutex_unlock(&ls->mutex_lock);
    return r;
}

int ls_mutex_release(struct lockspace *ls)
{
    int r = leader_write(ls, ls->mutex_lver, false);
    ls->mutex_deadline_ns = 0;
    pthread_mutex_unlock(&ls->mutex_lock);
    if (r == -ETIMEDOUT && lockspace_check_write(ls) == 0)
        r = 0; /* past the hold time: contenders take the instance over */
    return r;
}
