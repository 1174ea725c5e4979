/* The I/O gate: the only file of locking/ that reads or writes the LUN on
 * behalf of a joined host, and the clock every deadline is measured on.
 *
 * Design notes
 * ------------
 * Layering (a file calls only the ones below it): io.c (this gate) ->
 * format.c (records, no I/O) -> liveness.c (timeouts, peer view, the scan)
 * -> fence.c (PR) -> cas.c, paxos.c (the atomic step) -> lockspace.c
 * (heartbeats: join, renewal, leave, status) -> recovery.c (break of a
 * dead host) -> lock.c (lock records). Exception: a joiner taking a dead
 * slot (lockspace.c) calls the break in recovery.c.
 *
 * Every write a joined host issues carries a deadline (absolute,
 * CLOCK_BOOTTIME, the LUN layer's clock): its self-fence deadline (the issue
 * time of its last good renewal + fence_ms), or a shorter one given by the
 * caller (a delta-lease write must land within io_timeout/2 of the read it
 * was based on). The gate checks the deadline before dispatch, and the LUN
 * layer checks it again at every dispatch, retry, failover and drain of the
 * all-paths-down queue, so a write issued before the deadline cannot be
 * sent after it: that is what makes "dead >= fence + in-flight + margin"
 * hold with the LUN layer's retries. When the host fences itself (deadline
 * passed, key preempted, slot lost) it also fences its LUN (lun_fence_self):
 * writes still queued in the LUN layer fail.
 *
 * CLOCK_BOOTTIME, not CLOCK_MONOTONIC: MONOTONIC stops while the machine is
 * suspended, so a host that resumed after a suspend longer than the dead
 * time would believe its lease still valid; BOOTTIME keeps counting.
 *
 * The test hook (lockspace_set_test_hook) is called after the gate's check
 * and right before the LUN call, so a test can pause a host exactly between
 * its fence check and its write. When no hook is installed it costs one
 * load and a predicted branch per write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "lun.h"
#include "ls_internal.h"

uint64_t ls_now_ns(void)
{
    return lun_now_ns();
}

void lockspace_set_test_hook(struct lockspace *ls, ls_test_hook_fn fn, void *opaque)
{
    pthread_mutex_lock(&ls->lock);
    ls->hook_opaque = opaque;
    __atomic_store_n(&ls->hook, fn, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ls->lock);
}

static void call_hook(struct lockspace *ls, enum ls_test_point where, uint64_t lba)
{
    ls_test_hook_fn fn = __atomic_load_n(&ls->hook, __ATOMIC_ACQUIRE);
    if (__builtin_expect(fn != NULL, 0))
        fn(ls, where, lba, ls->hook_opaque);
}

int ls_read(struct lockspace *ls, uint64_t lba, uint32_t n, void *buf)
{
    __atomic_add_fetch(&ls->nio, 1, __ATOMIC_RELAXED);
    return lun_read(ls->lun, lba, n, buf);
}

/* Caller holds ls->lock. */
void ls_fence_locked(struct lockspace *ls, enum ls_fence_reason why, const char *msg)
{
    if (ls->fenced)
        return;
    ls->fenced = true;
    log_err("%s: lockspace at block %llu: host %s (slot %u generation %u) fenced: %s; "
            "all writes to the LUN stop, operations fail with EIO",
            lun_name(ls->lun), (unsigned long long)ls->offset, ls->name, ls->slot, ls->generation,
            msg);
    /* Writes queued or retried inside the LUN layer fail from now on. */
    lun_fence_self(ls->lun);
    if (ls->opts.fenced) {
        /* The callback must not call back into the lockspace's locks. */
        pthread_mutex_unlock(&ls->lock);
        ls->opts.fenced(ls, why, ls->opts.opaque);
        pthread_mutex_lock(&ls->lock);
    }
}

/* 0 and the deadline writes must carry (0 = none: not joined), or -EIO. */
int ls_write_gate_locked(struct lockspace *ls, uint64_t *deadline)
{
    if (ls->fenced)
        return -EIO;
    uint64_t now = ls_now_ns();
    if (ls->claiming && now >= ls->deadline_ns) {
        /* A joiner recovering a dead slot: its mark is its heartbeat, and
         * after mark + fence_ms another host may take the slot over. */
        log_err("%s: lockspace at block %llu: host %s: recovery of slot %u took past the "
                "joiner's self-fence deadline (%u ms after its mark): write refused",
                lun_name(ls->lun), (unsigned long long)ls->offset, ls->name, ls->slot,
                ls->to.fence_ms);
        return -EIO;
    }
    if (ls->joined && now >= ls->deadline_ns) {
        ls_fence_locked(ls, LS_FENCE_DEADLINE, "heartbeat not renewed by the self-fence deadline");
        return -EIO;
    }
    if (deadline)
        *deadline = ls->joined || ls->claiming ? ls->deadline_ns : 0;
    return 0;
}

int lockspace_check_write(struct lockspace *ls)
{
    pthread_mutex_lock(&ls->lock);
    int r = ls_write_gate_locked(ls, NULL);
    pthread_mutex_unlock(&ls->lock);
    return r;
}

int lockspace_write_deadline(struct lockspace *ls, uint64_t *deadline_ns)
{
    pthread_mutex_lock(&ls->lock);
    int r = ls_write_gate_locked(ls, deadline_ns);
    pthread_mutex_unlock(&ls->lock);
    return r;
}

/* After a write: RESERVATION CONFLICT fences us for good; a deadline that
 * expired inside the LUN layer is our self-fence deadline passing. */
static void note_write_error(struct lockspace *ls, int r, const char *what)
{
    if (r == -EBADE) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "the target refused %s (RESERVATION CONFLICT): our key was "
                 "preempted",
                 what);
        pthread_mutex_lock(&ls->lock);
        ls_fence_locked(ls, LS_FENCE_PREEMPTED, msg);
        pthread_mutex_unlock(&ls->lock);
    } else if (r == -ETIMEDOUT) {
        pthread_mutex_lock(&ls->lock);
        ls_write_gate_locked(ls, NULL); /* fences if the deadline passed */
        pthread_mutex_unlock(&ls->lock);
    }
}

static uint64_t min_deadline(uint64_t a, uint64_t b)
{
    if (!a)
        return b;
    if (!b)
        return a;
    return a < b ? a : b;
}

int ls_write_dl(struct lockspace *ls, enum ls_test_point where, uint64_t lba, uint32_t n,
                const void *buf, unsigned flags, uint64_t deadline)
{
    uint64_t dl;
    pthread_mutex_lock(&ls->lock);
    int r = ls_write_gate_locked(ls, &dl);
    pthread_mutex_unlock(&ls->lock);
    if (r < 0)
        return r;
    dl = min_deadline(dl, deadline);
    call_hook(ls, where, lba);
    __atomic_add_fetch(&ls->nio, 1, __ATOMIC_RELAXED);
    r = lun_write_dl(ls->lun, lba, n, buf, flags, dl);
    note_write_error(ls, r, "a write");
    return r;
}

int ls_write_raw(struct lockspace *ls, uint64_t lba, uint32_t n, const void *buf)
{
    return ls_write_dl(ls, LS_TP_META_WRITE, lba, n, buf, 0, 0);
}

int ls_write(struct lockspace *ls, uint64_t lba, uint32_t nblocks, const void *buf, unsigned flags)
{
    return ls_write_dl(ls, LS_TP_DATA_WRITE, lba, nblocks, buf, flags, 0);
}

int ls_caw_dl(struct lockspace *ls, enum ls_test_point where, uint64_t lba, const void *expect,
              const void *data, void *found, uint64_t deadline)
{
    uint64_t dl;
    pthread_mutex_lock(&ls->lock);
    int r = ls_write_gate_locked(ls, &dl);
    pthread_mutex_unlock(&ls->lock);
    if (r < 0)
        return r;
    dl = min_deadline(dl, deadline);
    call_hook(ls, where, lba);
    __atomic_add_fetch(&ls->nio, 1, __ATOMIC_RELAXED);
    r = lun_compare_and_write_dl(ls->lun, lba, expect, data, found, dl);
    note_write_error(ls, r, "COMPARE AND WRITE");
    return r;
}
