/* Fencing by persistent reservations: PREEMPT a dead host's key and make
 * sure it is gone, keep the Write Exclusive - All Registrants reservation in
 * place. Below the atomic step (the paxos mutex preempts a dead holder) and
 * the recovery (mark -> fence -> hook -> clear).
 *
 * Design notes
 * ------------
 * A PREEMPT is only trusted once READ KEYS no longer lists the key: a
 * target may accept it and still list the key, and a re-registration may
 * race with it. istgt 0.4 lists the preemptor's own registration under the
 * preempted key afterwards; preempting "again" would remove our own
 * registration, so a listing without our key but with the victim's is
 * answered by registering our key again and reading again. An unregistered
 * host is kept out only while the reservation exists: after fencing, we make
 * sure it does (the last host to leave releases it).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "ls_internal.h"

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
int ls_fence_key(struct lockspace *ls, uint64_t key, const char *name, uint32_t slot, uint32_t gen)
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
                log_err("%s: cannot register our key 0x%016" PRIx64 " again: %s", lun_name(ls->lun),
                        ls->pr_key, strerror(-r));
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
    return ls_fence_key(ls, hb.pr_key, hb.name, slot, gen);
}
