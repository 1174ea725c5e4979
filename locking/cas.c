/* The atomic step: write a block only if it holds what we expect.
 *
 * Design notes
 * ------------
 * Two implementations behind one call, ls_cas():
 *
 * - COMPARE AND WRITE (SCSI ATS, or the file path's OFD-lock emulation):
 *   one I/O. A CAW that times out or fails for transport reasons may still
 *   have been executed by the target, so it is never retried blindly: the
 *   block is read back. Every record we write carries our slot, generation
 *   and a bumped version, so our new block is unique: if the block equals
 *   it, the CAW happened; if it still equals `expect`, re-sending the very
 *   same CAW is safe (at most one of the two can match); anything else is a
 *   miscompare. A miscompare whose current block equals our new block (an
 *   earlier attempt landed) is success too.
 *
 * - Without CAW (tgt): a paxos mutex (paxos.c) guards a read-compare-write
 *   of the block. Cost: mutex acquire (read region, two paxos phases of
 *   write+read, leader write: 6 I/Os) + read + write + leader release = 9
 *   I/Os, versus 1 for CAW. Persistent-reservation-guarded RMW (what VMFS
 *   did before ATS) is not used: taking a Write Exclusive reservation for
 *   the RMW would replace the Write Exclusive - All Registrants reservation
 *   that fencing depends on, and a host dying while holding it would block
 *   everybody's writes until preempted.
 *
 * Writers who are not the block's owner (lock records, a dead host's slot)
 * always go through ls_cas; the owner of a heartbeat slot renews it with
 * plain writes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "ls_internal.h"

static int cas_caw(struct lockspace *ls, uint64_t lba, const void *expect, const void *data,
                   void *found)
{
    uint8_t *cur = malloc(ls->bs);
    if (!cur)
        return -ENOMEM;
    int r = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        r = ls_caw_dl(ls, LS_TP_CAS, lba, expect, data, cur, 0);
        if (r == 0)
            break;
        if (r == -EILSEQ) {
            if (!memcmp(cur, data, ls->bs))
                r = 0; /* an earlier attempt of ours landed */
            else if (found)
                memcpy(found, cur, ls->bs);
            break;
        }
        if (r == -EBADE || r == -EOPNOTSUPP || r == -EINVAL || r == -EROFS || r == -ENODEV)
            break; /* -EBADE fenced us (the gate did) */
        if ((r == -EIO || r == -ETIMEDOUT) && lockspace_check_write(ls) < 0) {
            r = -EIO; /* fenced, or our deadline passed: whatever happened is moot */
            break;
        }
        /* Timeout / transport: did it happen? */
        int rr = ls_read(ls, lba, 1, cur);
        if (rr < 0) {
            log_err("%s: COMPARE AND WRITE at lba %llu failed (%s) and the read-back failed "
                    "too (%s): outcome unknown",
                    lun_name(ls->lun), (unsigned long long)lba, strerror(-r), strerror(-rr));
            r = rr;
            break;
        }
        if (!memcmp(cur, data, ls->bs)) {
            r = 0;
            break;
        }
        if (memcmp(cur, expect, ls->bs)) {
            if (found)
                memcpy(found, cur, ls->bs);
            r = -EILSEQ;
            break;
        }
        log_warn("%s: COMPARE AND WRITE at lba %llu failed (%s); block unchanged, sending it "
                 "again",
                 lun_name(ls->lun), (unsigned long long)lba, strerror(-r));
    }
    free(cur);
    return r;
}

static int cas_paxos(struct lockspace *ls, uint64_t lba, const void *expect, const void *data,
                     void *found)
{
    uint8_t *cur = malloc(ls->bs);
    if (!cur)
        return -ENOMEM;
    int r = ls_mutex_acquire(ls);
    if (r < 0)
        goto out;
    r = ls_read(ls, lba, 1, cur);
    if (r == 0) {
        if (!memcmp(cur, data, ls->bs)) {
            r = 0;
        } else if (memcmp(cur, expect, ls->bs)) {
            if (found)
                memcpy(found, cur, ls->bs);
            r = -EILSEQ;
        } else {
            r = ls_write_dl(ls, LS_TP_CAS, lba, 1, data, 0, ls->mutex_deadline_ns);
        }
    }
    int rr = ls_mutex_release(ls);
    if (r == 0 && rr < 0)
        r = rr;
out:
    free(cur);
    return r;
}

int ls_cas(struct lockspace *ls, uint64_t lba, const void *expect, const void *data, void *found)
{
    return ls->caw ? cas_caw(ls, lba, expect, data, found)
                   : cas_paxos(ls, lba, expect, data, found);
}

/* ---- Without an atomic step: the delta-lease write (sanlock) ------------ */

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
