/* Inodes in memory: the inode table, references, allocation, deletion,
 * the orphan list.
 *
 * An inode stays in memory while it has lookup references (FUSE), open
 * handles, internal pins (an operation in progress) or unwritten changes
 * (dirty: until the transaction commits). When the last reference of an
 * inode with no links goes, its blocks and its slot are freed. An inode
 * that loses its last link while still referenced goes on this host's
 * orphan list (the host block, journaled), so that after a crash the
 * mount (or the recovery of this host) frees it: open-unlinked files are
 * kept until their last close and never leaked.
 * Everything here runs under v->mtx.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cfs_internal.h"
#include "log.h"
#include "lun.h"

int64_t cfs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static size_t ih_hash(uint64_t ino, size_t cap)
{
    ino *= 0x9e3779b97f4a7c15ull;
    return (size_t)(ino >> 24) & (cap - 1);
}

static int ih_insert(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (!v->ih || v->ninodes + 1 > v->ih_cap) {
        size_t nc = v->ih_cap ? v->ih_cap * 2 : 1024;
        struct cfs_inode **nh = calloc(nc, sizeof(*nh));
        if (!nh)
            return -ENOMEM;
        for (size_t i = 0; i < v->ih_cap; i++)
            for (struct cfs_inode *p = v->ih[i], *n; p; p = n) {
                n = p->hnext;
                size_t h = ih_hash(p->d.ino, nc);
                p->hnext = nh[h];
                nh[h] = p;
            }
        free(v->ih);
        v->ih = nh;
        v->ih_cap = nc;
    }
    size_t h = ih_hash(ip->d.ino, v->ih_cap);
    ip->hnext = v->ih[h];
    v->ih[h] = ip;
    v->ninodes++;
    return 0;
}

static struct cfs_inode *ih_find(struct cfs_volume *v, uint64_t ino)
{
    if (!v->ih)
        return NULL;
    for (struct cfs_inode *p = v->ih[ih_hash(ino, v->ih_cap)]; p; p = p->hnext)
        if (p->d.ino == ino)
            return p;
    return NULL;
}

static void ih_remove(struct cfs_volume *v, struct cfs_inode *ip)
{
    struct cfs_inode **pp = &v->ih[ih_hash(ip->d.ino, v->ih_cap)];
    while (*pp && *pp != ip)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = ip->hnext;
        v->ninodes--;
    }
    pthread_rwlock_destroy(&ip->io);
    free(ip);
}

void cfs_inode_fini(struct cfs_volume *v)
{
    if (!v->ih)
        return;
    for (size_t i = 0; i < v->ih_cap; i++)
        for (struct cfs_inode *p = v->ih[i], *n; p; p = n) {
            n = p->hnext;
            pthread_rwlock_destroy(&p->io);
            free(p);
        }
    free(v->ih);
    v->ih = NULL;
    v->ih_cap = v->ninodes = 0;
}

static struct cfs_inode *inode_new(uint64_t ino)
{
    struct cfs_inode *ip = calloc(1, sizeof(*ip));
    if (!ip)
        return NULL;
    ip->d.ino = ino;
    pthread_rwlock_init(&ip->io, NULL);
    return ip;
}

int cfs_inode_get(struct cfs_volume *v, cfs_ino_t ino, struct cfs_inode **out)
{
    if (ino * CFS_INODE_SLOT < v->sb.data_off || ino * CFS_INODE_SLOT >= v->sb.volume_bytes ||
        ino > (UINT64_MAX / CFS_INODE_SLOT))
        return -ENOENT;
    struct cfs_inode *ip = ih_find(v, ino);
    if (ip) {
        if (ip->d.mode == 0)
            return -ENOENT;
        ip->pins++;
        *out = ip;
        return 0;
    }
    uint64_t a = ino * CFS_INODE_SLOT + CFS_META;
    struct cfs_buf *b;
    int r = cfs_buf_get(v, a, CFS_META, CFS_BT_INODE, &b);
    if (r == -ENODATA || r == -ESTALE)
        return -ENOENT;
    if (r < 0)
        return r;
    ip = inode_new(ino);
    if (!ip) {
        cfs_buf_put(v, b);
        return -ENOMEM;
    }
    r = cfs_inode_decode(b->data, v->uuid, a, &ip->d);
    cfs_buf_put(v, b);
    if (r == 0 && ip->d.mode == 0)
        r = -ENOENT; /* a freed inode: a stale number */
    if (r == 0)
        r = ih_insert(v, ip);
    if (r < 0) {
        pthread_rwlock_destroy(&ip->io);
        free(ip);
        return r;
    }
    ip->pins = 1;
    *out = ip;
    return 0;
}

void cfs_inode_dirty(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (ip->dirty)
        return;
    ip->dirty = true;
    ip->dnext = v->dirty_inodes;
    v->dirty_inodes = ip;
    v->ndirty_inodes++;
}

static void orphan_remove(struct cfs_volume *v, uint64_t ino)
{
    for (uint32_t i = 0; i < v->host.norphans; i++)
        if (v->host.orphans[i] == ino) {
            v->host.orphans[i] = v->host.orphans[--v->host.norphans];
            v->host_dirty = true;
            return;
        }
}

void cfs_orphan_add(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (ip->orphan)
        return;
    if (v->host.norphans >= CFS_ORPHAN_MAX) {
        log_warn("%s: orphan list full: inode %" PRIu64
                 " (unlinked while open) would be leaked by a crash; check finds it",
                 lun_name(v->lun), (uint64_t)ip->d.ino);
        return;
    }
    v->host.orphans[v->host.norphans++] = ip->d.ino;
    v->host_dirty = true;
    ip->orphan = true;
}

/* Free the inode's blocks and its slot (nlink 0, no references). */
static int inode_delete(struct cfs_volume *v, struct cfs_inode *ip)
{
    int r = cfs_ilock_try_delete(v, ip);
    if (r == -EBUSY) { /* open on another host: its last close frees it */
        cfs_orphan_add(v, ip);
        return 0;
    }
    if (r < 0)
        return r;
    r = cfs_file_free_all(v, ip);
    if (r < 0) {
        cfs_ilock_done(v, ip);
        return r;
    }
    r = cfs_free_inode(v, ip->d.ino);
    if (r < 0)
        return r;
    cfs_ilock_done(v, ip);
    orphan_remove(v, ip->d.ino);
    ip->orphan = false;
    ip->d.mode = 0; /* a freed inode on disk: stale numbers find nothing */
    ip->d.nlink = 0;
    ip->d.size = 0;
    ip->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, ip);
    return 0;
}

void cfs_inode_put(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (!ip)
        return;
    if (ip->pins)
        ip->pins--;
    if (ip->pins || ip->nlookup || ip->nopen)
        return;
    if (ip->d.nlink == 0 && ip->d.mode != 0 && !v->ro && !v->fatal) {
        ip->pins++; /* held while its blocks are freed */
        int r = inode_delete(v, ip);
        ip->pins--;
        if (r < 0)
            log_err("%s: inode %" PRIu64 ": freeing it failed (%s); check will find it",
                    lun_name(v->lun), (uint64_t)ip->d.ino, strerror(-r));
    }
    if (!ip->dirty && !ip->pins)
        ih_remove(v, ip);
}

void cfs_inode_clean(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (!ip->pins && !ip->nlookup && !ip->nopen && !ip->dirty && (ip->d.nlink || ip->d.mode == 0))
        ih_remove(v, ip);
}

static uint32_t next_generation(void)
{
    static uint32_t ctr;
    uint64_t t = (uint64_t)cfs_now_ns();
    return (uint32_t)(t / 1000) + __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED);
}

int cfs_inode_alloc(struct cfs_volume *v, mode_t mode, uid_t uid, gid_t gid, cfs_ino_t parent,
                    struct cfs_inode **out)
{
    uint64_t ino;
    int r = cfs_alloc_inode(v, &ino);
    if (r < 0)
        return r;
    struct cfs_inode *ip = ih_find(v, ino);
    if (ip) {
        /* A freed inode still in memory (written, not yet evicted). */
        if (ip->d.mode != 0 || ip->pins || ip->nlookup || ip->nopen) {
            log_err("%s: inode slot %" PRIu64 " allocated while in use", lun_name(v->lun), ino);
            return -EUCLEAN;
        }
        struct cfs_inode *keep_next = ip->hnext;
        struct cfs_inode *keep_dnext = ip->dnext;
        bool was_dirty = ip->dirty;
        memset(&ip->d, 0, sizeof(ip->d));
        ip->hnext = keep_next;
        ip->dnext = keep_dnext;
        ip->dirty = was_dirty;
        ip->orphan = false;
    } else {
        ip = inode_new(ino);
        if (!ip)
            return -ENOMEM;
        if ((r = ih_insert(v, ip)) < 0) {
            free(ip);
            return r;
        }
    }
    int64_t now = cfs_now_ns();
    ip->d.ino = ino;
    ip->d.generation = next_generation();
    ip->d.mode = mode;
    ip->d.uid = uid;
    ip->d.gid = gid;
    ip->d.nlink = S_ISDIR(mode) ? 2 : 1;
    ip->d.parent = parent;
    ip->d.map_shift = S_ISDIR(mode) ? CFS_SMALL_SHIFT : 0;
    ip->d.atime_ns = ip->d.mtime_ns = ip->d.ctime_ns = ip->d.btime_ns = now;
    ip->pins = 1;
    cfs_inode_dirty(v, ip);
    if ((r = cfs_ilock_format(v, ino)) < 0) /* its open lock, with several hosts */
        log_warn("%s: inode %" PRIu64 ": lock record not laid (%s); laid at first open",
                 lun_name(v->lun), ino, strerror(-r));
    *out = ip;
    return 0;
}

static struct timespec ts_of(int64_t ns)
{
    struct timespec t;
    t.tv_sec = (time_t)(ns / 1000000000ll);
    t.tv_nsec = (long)(ns % 1000000000ll);
    if (t.tv_nsec < 0) {
        t.tv_nsec += 1000000000L;
        t.tv_sec--;
    }
    return t;
}

void cfs_inode_attr(struct cfs_volume *v, const struct cfs_inode *ip, struct cfs_attr *a)
{
    memset(a, 0, sizeof(*a));
    a->ino = ip->d.ino;
    a->generation = ip->d.generation;
    a->mode = ip->d.mode;
    a->nlink = ip->d.nlink;
    a->uid = ip->d.uid;
    a->gid = ip->d.gid;
    a->rdev = (dev_t)ip->d.rdev;
    a->size = ip->d.size;
    a->blocks = ip->d.blocks / 512;
    a->blksize = v->bs;
    a->atime = ts_of(ip->d.atime_ns);
    a->mtime = ts_of(ip->d.mtime_ns);
    a->ctime = ts_of(ip->d.ctime_ns);
    a->btime = ts_of(ip->d.btime_ns);
}

void cfs_attr_to_stat(const struct cfs_attr *a, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = a->ino;
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = a->rdev;
    st->st_size = (off_t)a->size;
    st->st_blocks = (blkcnt_t)a->blocks;
    st->st_blksize = a->blksize;
    st->st_atim = a->atime;
    st->st_mtim = a->mtime;
    st->st_ctim = a->ctime;
}

int cfs_orphans_process(struct cfs_volume *v)
{
    uint64_t list[CFS_ORPHAN_MAX];
    uint32_t n = v->host.norphans;
    memcpy(list, v->host.orphans, n * sizeof(uint64_t));
    for (uint32_t i = 0; i < n; i++) {
        struct cfs_inode *ip;
        int r = cfs_inode_get(v, list[i], &ip);
        if (r < 0) {
            orphan_remove(v, list[i]);
            continue;
        }
        ip->orphan = true;
        if (ip->d.nlink) {
            orphan_remove(v, list[i]);
            ip->orphan = false;
        }
        cfs_inode_put(v, ip); /* nlink 0: freed now */
    }
    return v->fatal;
}

int cfs_inode_reload_all(struct cfs_volume *v)
{
    for (size_t i = 0; v->ih && i < v->ih_cap; i++) {
        struct cfs_inode *p = v->ih[i], *n;
        for (; p; p = n) {
            n = p->hnext;
            if (p->dirty)
                return -EBUSY;
            if (!p->pins && !p->nlookup && !p->nopen) {
                ih_remove(v, p);
                continue;
            }
            uint64_t a = p->d.ino * CFS_INODE_SLOT + CFS_META;
            struct cfs_buf *b;
            int r = cfs_buf_get(v, a, CFS_META, CFS_BT_INODE, &b);
            if (r == 0) {
                r = cfs_inode_decode(b->data, v->uuid, a, &p->d);
                cfs_buf_put(v, b);
            }
            if (r == -ENOMEM || r == -EIO)
                return r;
            if (r < 0) { /* gone or damaged: stale from now on */
                p->d.mode = 0;
                p->d.nlink = 0;
            }
        }
    }
    return 0;
}
