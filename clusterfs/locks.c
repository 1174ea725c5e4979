/* The volume's use of the lockspace, in one place (the lock layer is being
 * reworked: fencing tokens, lock caching, a recovery thread; changes stay
 * local to this file).
 *
 * Design notes
 * ------------
 * - First multi-host step: one volume metadata lock (lockspace table lock
 *   0), taken exclusive around every operation of a host that joined. An
 *   operation therefore sees the volume as the last holder left it: when
 *   another host held the lock since our last release (the lock record's
 *   version moved by more than our own release + acquire), every cached
 *   block, cluster and inode is dropped and re-read. Before releasing, the
 *   operation commits and checkpoints its journal, so a journal holds
 *   transactions only while its host holds the lock: replaying it after
 *   the host died never reverts a later host's changes.
 *   Correct first; the per-inode and per-cluster locks with caching
 *   ("hold, don't bounce") replace the one lock in the next step.
 * - Recovery: the lockspace calls recover_hook when it breaks a dead
 *   host's locks (before fencing and clearing its slot, while its locks
 *   stay held): its journal is replayed and emptied there; its orphan list
 *   is freed by our next operation, under the metadata lock.
 * - Open files across hosts: an inode's lock record (the first LUN block of
 *   its slot) is held shared by every host that has it open. The host that
 *   drops the last link, or the last local reference of an unlinked inode,
 *   frees it only if it gets that lock exclusive at once; otherwise a host
 *   still has it open, and that host frees it at its last close.
 * - Writes of a fenced host: cfs_locks_check_write() before every write
 *   (metadata and data); on a LUN with persistent reservations the target
 *   refuses them too.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cfs_internal.h"
#include "le.h"
#include "lockspace.h"
#include "log.h"
#include "lun.h"

static int recover_hook(struct lockspace *ls, const struct ls_host_info *dead, void *opaque)
{
    struct cfs_volume *v = opaque;
    uint64_t n = 0;
    int r = cfs_journal_replay(v->lun, &v->sb, dead->slot, true, &n, NULL, NULL);
    log_info("%s: recovering host %s (slot %u, generation %u): replayed %" PRIu64
             " journal transaction(s)%s",
             lun_name(v->lun), dead->name, dead->slot, dead->generation, n,
             r < 0 ? " -- FAILED" : "");
    if (r < 0)
        return r;
    pthread_mutex_lock(&v->rec_mtx);
    if (v->nrec < 64)
        v->rec_slots[v->nrec++] = dead->slot;
    pthread_mutex_unlock(&v->rec_mtx);
    return 0;
}

int cfs_locks_join(struct cfs_volume *v)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&v->gl, &a);
    pthread_mutexattr_destroy(&a);
    pthread_mutex_init(&v->rec_mtx, NULL);
    struct ls_open_opts o = {.host_name = v->opts.host_name, .recover = recover_hook, .opaque = v};
    struct lockspace *ls;
    int r = lockspace_open(v->lun, v->sb.ls_off / v->lbs, &o, &ls);
    if (r < 0)
        return r;
    if ((r = lockspace_join(ls)) < 0) {
        lockspace_close(ls);
        return r;
    }
    v->ls = ls;
    v->slot = lockspace_slot(ls);
    v->gl_lba = lockspace_lock_lba(ls, 0);
    return 0;
}

void cfs_locks_leave(struct cfs_volume *v)
{
    if (!v->ls)
        return;
    lockspace_leave(v->ls);
    lockspace_close(v->ls);
    v->ls = NULL;
    pthread_mutex_destroy(&v->gl);
    pthread_mutex_destroy(&v->rec_mtx);
}

int cfs_locks_check_write(struct cfs_volume *v)
{
    return v->ls ? lockspace_check_write(v->ls) : 0;
}

/* The lock record's version counter (le64 at byte 8 of the record). */
static int gl_version(struct cfs_volume *v, uint64_t *ver)
{
    uint8_t *b = aligned_alloc(4096, v->lbs < 4096 ? 4096 : v->lbs);
    if (!b)
        return -ENOMEM;
    int r = lun_read(v->lun, v->gl_lba, 1, b);
    if (r == 0)
        *ver = le64_get(b + 8);
    free(b);
    return r;
}

/* Free the orphans of hosts the hook recovered. Under v->mtx and the lock. */
static int recovered_orphans(struct cfs_volume *v)
{
    pthread_mutex_lock(&v->rec_mtx);
    unsigned n = v->nrec;
    uint32_t slots[64];
    memcpy(slots, v->rec_slots, n * sizeof(uint32_t));
    v->nrec = 0;
    pthread_mutex_unlock(&v->rec_mtx);
    for (unsigned i = 0; i < n; i++) {
        uint64_t ha = v->sb.journal_off + (uint64_t)slots[i] * v->sb.journal_bytes + CFS_META;
        struct cfs_buf *b;
        struct cfs_host *h = malloc(sizeof(*h));
        if (!h)
            return -ENOMEM;
        int r = cfs_buf_get(v, ha, CFS_META, CFS_BT_HOST, &b);
        if (r == 0) {
            r = cfs_host_decode(b->data, v->uuid, ha, h);
            cfs_buf_put(v, b);
        }
        for (uint32_t k = 0; r == 0 && k < h->norphans; k++) {
            struct cfs_inode *ip;
            if (cfs_inode_get(v, h->orphans[k], &ip) == 0)
                cfs_inode_put(v, ip); /* frees it if nobody has it open */
        }
        if (r == 0 && h->norphans) {
            h->norphans = 0;
            memcpy(h->h.uuid, v->uuid, 16);
            h->h.addr = ha;
            if ((r = cfs_buf_new(v, ha, CFS_META, CFS_BT_HOST, &b)) == 0) {
                cfs_host_encode(b->data, h);
                cfs_buf_dirty(v, b);
                cfs_buf_put(v, b);
            }
        }
        free(h);
        if (r < 0)
            return r;
    }
    return 0;
}

int cfs_op_begin(struct cfs_volume *v)
{
    if (!v->ls)
        return 0;
    pthread_mutex_lock(&v->gl);
    if (v->gl_depth++)
        return 0;
    int r = lock_acquire(v->ls, v->gl_lba, LS_LOCK_EXCLUSIVE, -1);
    if (r < 0) {
        v->gl_depth--;
        pthread_mutex_unlock(&v->gl);
        return r;
    }
    uint64_t ver = 0;
    r = gl_version(v, &ver);
    pthread_mutex_lock(&v->mtx);
    /* Our release and our acquire: +2. Anything else: another host wrote. */
    if (r < 0 || !v->gl_ver || ver != v->gl_ver + 2) {
        int d = cfs_cache_drop(v);
        if (d < 0 && r == 0)
            r = d;
    }
    v->gl_ver = r == 0 ? ver : 0;
    if (r == 0 && v->nrec)
        r = recovered_orphans(v);
    pthread_mutex_unlock(&v->mtx);
    if (r < 0) {
        cfs_op_end(v);
        return r;
    }
    return 0;
}

void cfs_op_end(struct cfs_volume *v)
{
    if (!v->ls)
        return;
    if (--v->gl_depth) {
        pthread_mutex_unlock(&v->gl);
        return;
    }
    pthread_mutex_lock(&v->mtx);
    int r = v->fatal;
    if (r == 0)
        r = cfs_txn_commit(v);
    if (r == 0 && v->j_used)
        r = cfs_journal_checkpoint(v);
    pthread_mutex_unlock(&v->mtx);
    if (r < 0)
        v->gl_ver = 0;
    lock_release(v->ls, v->gl_lba);
    pthread_mutex_unlock(&v->gl);
}

static uint64_t ilock_lba(const struct cfs_volume *v, uint64_t ino)
{
    return ino * CFS_INODE_SLOT / v->lbs;
}

int cfs_ilock_format(struct cfs_volume *v, uint64_t ino)
{
    if (!v->ls)
        return 0;
    return lock_record_format(v->ls, ilock_lba(v, ino), "inode");
}

static int ilock_acquire(struct cfs_volume *v, uint64_t ino, enum ls_lock_mode m, int timeout)
{
    int r = lock_acquire(v->ls, ilock_lba(v, ino), m, timeout);
    if (r == -EUCLEAN) { /* an inode made before hosts joined: lay its record now */
        if ((r = cfs_ilock_format(v, ino)) == 0)
            r = lock_acquire(v->ls, ilock_lba(v, ino), m, timeout);
    }
    return r;
}

int cfs_ilock_open(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (!v->ls || ip->nopen != 1)
        return 0;
    return ilock_acquire(v, ip->d.ino, LS_LOCK_SHARED, 5000);
}

void cfs_ilock_close(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (v->ls && ip->nopen == 0)
        lock_release(v->ls, ilock_lba(v, ip->d.ino));
}

int cfs_ilock_try_delete(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (!v->ls)
        return 0;
    int r = ilock_acquire(v, ip->d.ino, LS_LOCK_EXCLUSIVE, 0);
    return r == -ETIMEDOUT ? -EBUSY : r;
}

void cfs_ilock_done(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (v->ls)
        lock_release(v->ls, ilock_lba(v, ip->d.ino));
}

void cfs_locks_token(struct cfs_volume *v, uint32_t *slot, uint32_t *gen, uint64_t *ver)
{
    *slot = v->slot;
    *gen = v->ls ? lockspace_generation(v->ls) : 0;
    *ver = v->ls ? v->gl_ver : 0;
}
