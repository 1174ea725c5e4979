/* Namespace operations and attributes: lookup, create, mkdir, mknod,
 * symlink, link, unlink, rmdir, rename, readdir, getattr / setattr, xattrs.
 *
 * Each operation runs under v->mtx from its first check to its last change,
 * so it is one atomic step in the running transaction: a crash keeps all of
 * it or none. Multi-inode operations (rename, link) will take the on-disk
 * locks of their inodes in increasing inode number (docs/design.md).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "cfs_internal.h"
#include "le.h"
#include "log.h"

#define LINK_MAX_CFS 65000u

static int name_check(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return -ENOENT;
    if (n > CFS_NAME_MAX)
        return -ENAMETOOLONG;
    if (strchr(name, '/'))
        return -EINVAL;
    return 0;
}

static bool is_dot(const char *name)
{
    return !strcmp(name, ".") || !strcmp(name, "..");
}

/* Get a directory inode, pinned. Caller holds v->mtx. */
static int dir_get(struct cfs_volume *v, cfs_ino_t ino, struct cfs_inode **out)
{
    int r = cfs_inode_get(v, ino, out);
    if (r < 0)
        return r;
    if (!S_ISDIR((*out)->d.mode)) {
        cfs_inode_put(v, *out);
        return -ENOTDIR;
    }
    if ((*out)->d.nlink == 0) { /* removed, still referenced */
        cfs_inode_put(v, *out);
        return -ENOENT;
    }
    return 0;
}

static int writable(struct cfs_volume *v)
{
    if (v->ro)
        return -EROFS;
    return v->fatal;
}

int cfsi_getattr(struct cfs_volume *v, cfs_ino_t ino, struct cfs_attr *out)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = cfs_inode_get(v, ino, &ip);
    if (r == 0) {
        cfs_inode_attr(v, ip, out);
        cfs_inode_put(v, ip);
    }
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfsi_lookup(struct cfs_volume *v, cfs_ino_t parent, const char *name, struct cfs_attr *out)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *dp, *ip;
    cfs_ino_t ino;
    int r = dir_get(v, parent, &dp);
    if (r < 0)
        goto out;
    if (!strcmp(name, "."))
        ino = parent;
    else if (!strcmp(name, ".."))
        ino = dp->d.parent;
    else if ((r = name_check(name)) == 0)
        r = cfs_dir_lookup(v, dp, name, &ino, NULL);
    cfs_inode_put(v, dp);
    if (r < 0)
        goto out;
    if ((r = cfs_inode_get(v, ino, &ip)) < 0) {
        if (r == -ENOENT) {
            log_err("%s: directory %" PRIu64 ": entry '%s' names inode %" PRIu64
                    " that is not allocated (dangling entry; run clusterfs check)",
                    "volume", (uint64_t)parent, name, (uint64_t)ino);
            r = -EUCLEAN;
        }
        goto out;
    }
    ip->nlookup++;
    cfs_inode_attr(v, ip, out);
    cfs_inode_put(v, ip);
out:
    pthread_mutex_unlock(&v->mtx);
    return r;
}

void cfsi_forget(struct cfs_volume *v, cfs_ino_t ino, uint64_t nlookup)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    /* A freed inode (mode 0) is never looked up again; the others are found. */
    if (cfs_inode_get(v, ino, &ip) == 0) {
        ip->nlookup -= nlookup < ip->nlookup ? nlookup : ip->nlookup;
        cfs_inode_put(v, ip);
    }
    pthread_mutex_unlock(&v->mtx);
}

/* Create a node in parent. Under v->mtx. Returns the new inode pinned. */
static int make_node(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode,
                     dev_t rdev, uid_t uid, gid_t gid, const char *target, struct cfs_inode **out)
{
    int r = writable(v);
    if (r)
        return r;
    if (is_dot(name))
        return -EEXIST;
    if ((r = name_check(name)) < 0)
        return r;
    size_t tlen = target ? strlen(target) : 0;
    if (target && (tlen == 0 || tlen > CFS_INLINE_MAX))
        return tlen ? -ENAMETOOLONG : -ENOENT;
    struct cfs_inode *dp, *ip;
    if ((r = dir_get(v, parent, &dp)) < 0)
        return r;
    cfs_ino_t old;
    r = cfs_dir_lookup(v, dp, name, &old, NULL);
    if (r == 0)
        r = -EEXIST;
    if (r != -ENOENT)
        goto out;
    if (S_ISDIR(mode) && dp->d.nlink >= LINK_MAX_CFS) {
        r = -EMLINK;
        goto out;
    }
    if ((r = cfs_inode_alloc(v, mode, uid, gid, parent, &ip)) < 0)
        goto out;
    ip->d.rdev = rdev;
    if (S_ISDIR(mode))
        cfs_dir_init(v, ip);
    if (target) {
        memcpy(ip->d.inline_data, target, tlen);
        ip->d.size = tlen;
    }
    r = cfs_dir_add(v, dp, name, ip->d.ino, IFTODT(mode));
    if (r < 0) {
        ip->d.nlink = 0;
        cfs_inode_put(v, ip); /* frees it again */
        goto out;
    }
    if (S_ISDIR(mode))
        dp->d.nlink++;
    dp->d.mtime_ns = dp->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, dp);
    *out = ip;
out:
    cfs_inode_put(v, dp);
    return r;
}

static int make_public(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode,
                       dev_t rdev, uid_t uid, gid_t gid, const char *target, struct cfs_attr *out)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = make_node(v, parent, name, mode, rdev, uid, gid, target, &ip);
    if (r == 0) {
        ip->nlookup++;
        if (out)
            cfs_inode_attr(v, ip, out);
        cfs_inode_put(v, ip);
        r = cfs_txn_maybe_commit(v);
    }
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfsi_mknod(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, dev_t rdev,
               uid_t uid, gid_t gid, struct cfs_attr *out)
{
    if (!S_ISREG(mode) && !S_ISFIFO(mode) && !S_ISSOCK(mode) && !S_ISCHR(mode) && !S_ISBLK(mode))
        return -EINVAL;
    if (!S_ISCHR(mode) && !S_ISBLK(mode))
        rdev = 0;
    return make_public(v, parent, name, mode, rdev, uid, gid, NULL, out);
}

int cfsi_mkdir(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, uid_t uid,
               gid_t gid, struct cfs_attr *out)
{
    return make_public(v, parent, name, S_IFDIR | (mode & 07777), 0, uid, gid, NULL, out);
}

int cfsi_symlink(struct cfs_volume *v, cfs_ino_t parent, const char *name, const char *target,
                 uid_t uid, gid_t gid, struct cfs_attr *out)
{
    return make_public(v, parent, name, S_IFLNK | 0777, 0, uid, gid, target, out);
}

ssize_t cfsi_readlink(struct cfs_volume *v, cfs_ino_t ino, char *buf, size_t size)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    ssize_t r = cfs_inode_get(v, ino, &ip);
    if (r == 0) {
        if (!S_ISLNK(ip->d.mode)) {
            r = -EINVAL;
        } else {
            size_t n = ip->d.size < size ? ip->d.size : size;
            memcpy(buf, ip->d.inline_data, n);
            if (n < size)
                buf[n] = 0;
            r = (ssize_t)ip->d.size;
        }
        cfs_inode_put(v, ip);
    }
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfsi_create(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, int flags,
                uid_t uid, gid_t gid, struct cfs_attr *out, struct cfs_file **fh)
{
    struct cfs_file *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = make_node(v, parent, name, S_IFREG | (mode & 07777), 0, uid, gid, NULL, &ip);
    if (r == 0) {
        ip->nlookup++;
        ip->nopen++;
        if ((r = cfs_ilock_open(v, ip)) < 0) {
            ip->nopen--;
            cfs_inode_put(v, ip);
            pthread_mutex_unlock(&v->mtx);
            free(f);
            return r;
        }
        if (out)
            cfs_inode_attr(v, ip, out);
        cfs_inode_put(v, ip);
        f->v = v;
        f->ip = ip;
        f->flags = flags & ~(O_CREAT | O_EXCL | O_TRUNC);
        r = cfs_txn_maybe_commit(v);
        pthread_mutex_unlock(&v->mtx);
        if (r < 0) {
            cfs_release(f);
            return r;
        }
        *fh = f;
        return 0;
    }
    pthread_mutex_unlock(&v->mtx);
    free(f);
    if (r == -EEXIST && !(flags & O_EXCL)) {
        struct cfs_attr a;
        if ((r = cfs_lookup(v, parent, name, &a)) < 0)
            return r;
        if (S_ISDIR(a.mode)) {
            cfs_forget(v, a.ino, 1);
            return -EISDIR;
        }
        r = cfs_open(v, a.ino, flags & ~(O_CREAT | O_EXCL), fh);
        if (r < 0) {
            cfs_forget(v, a.ino, 1);
            return r;
        }
        if (out)
            r = cfs_getattr(v, a.ino, out);
    }
    return r;
}

int cfsi_link(struct cfs_volume *v, cfs_ino_t ino, cfs_ino_t newparent, const char *newname,
              struct cfs_attr *out)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *dp = NULL, *ip = NULL;
    cfs_ino_t old;
    int r = writable(v);
    if (r == 0 && is_dot(newname))
        r = -EEXIST;
    if (r == 0)
        r = name_check(newname);
    if (r == 0)
        r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto out;
    if (S_ISDIR(ip->d.mode)) {
        r = -EPERM;
        goto out;
    }
    if (ip->d.nlink == 0) {
        r = -ENOENT;
        goto out;
    }
    if (ip->d.nlink >= LINK_MAX_CFS) {
        r = -EMLINK;
        goto out;
    }
    if ((r = dir_get(v, newparent, &dp)) < 0)
        goto out;
    r = cfs_dir_lookup(v, dp, newname, &old, NULL);
    if (r == 0)
        r = -EEXIST;
    if (r != -ENOENT)
        goto out;
    if ((r = cfs_dir_add(v, dp, newname, ino, IFTODT(ip->d.mode))) < 0)
        goto out;
    ip->d.nlink++;
    ip->d.ctime_ns = dp->d.mtime_ns = dp->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, ip);
    cfs_inode_dirty(v, dp);
    ip->nlookup++;
    if (out)
        cfs_inode_attr(v, ip, out);
    r = cfs_txn_maybe_commit(v);
out:
    cfs_inode_put(v, dp);
    cfs_inode_put(v, ip);
    pthread_mutex_unlock(&v->mtx);
    return r;
}

/* Drop one link of ip (a directory: all of them). Under v->mtx. */
static void drop_link(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (S_ISDIR(ip->d.mode))
        ip->d.nlink = 0;
    else if (ip->d.nlink)
        ip->d.nlink--;
    ip->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, ip);
    if (ip->d.nlink == 0 && (ip->nlookup || ip->nopen))
        cfs_orphan_add(v, ip);
}

static int remove_common(struct cfs_volume *v, cfs_ino_t parent, const char *name, bool dir)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *dp = NULL, *ip = NULL;
    cfs_ino_t ino;
    int r = writable(v);
    if (r == 0 && dir && !strcmp(name, "."))
        r = -EINVAL;
    if (r == 0 && is_dot(name))
        r = dir ? -ENOTEMPTY : -EISDIR;
    if (r == 0)
        r = name_check(name);
    if (r == 0)
        r = dir_get(v, parent, &dp);
    if (r == 0)
        r = cfs_dir_lookup(v, dp, name, &ino, NULL);
    if (r == 0)
        r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto out;
    if (dir && !S_ISDIR(ip->d.mode)) {
        r = -ENOTDIR;
        goto out;
    }
    if (!dir && S_ISDIR(ip->d.mode)) {
        r = -EISDIR;
        goto out;
    }
    if (dir && ip->d.dir_entries) {
        r = -ENOTEMPTY;
        goto out;
    }
    if ((r = cfs_dir_remove(v, dp, name)) < 0)
        goto out;
    drop_link(v, ip);
    if (dir)
        dp->d.nlink--;
    dp->d.mtime_ns = dp->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, dp);
    r = cfs_txn_maybe_commit(v);
out:
    cfs_inode_put(v, ip); /* frees it if nothing refers to it any more */
    cfs_inode_put(v, dp);
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfsi_unlink(struct cfs_volume *v, cfs_ino_t parent, const char *name)
{
    return remove_common(v, parent, name, false);
}

int cfsi_rmdir(struct cfs_volume *v, cfs_ino_t parent, const char *name)
{
    return remove_common(v, parent, name, true);
}

/* Is `ino` dir or below it? Walks up the parents of `ino`. */
static int is_under(struct cfs_volume *v, cfs_ino_t ino, cfs_ino_t dir)
{
    unsigned guard = 0;
    while (ino != dir) {
        if (ino == v->sb.root_ino || ++guard > 100000)
            return 0;
        struct cfs_inode *ip;
        int r = cfs_inode_get(v, ino, &ip);
        if (r < 0)
            return r;
        cfs_ino_t p = ip->d.parent;
        cfs_inode_put(v, ip);
        ino = p;
    }
    return 1;
}

int cfsi_rename(struct cfs_volume *v, cfs_ino_t parent, const char *name, cfs_ino_t newparent,
                const char *newname, unsigned flags)
{
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
        return -EINVAL;
    if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE))
        return -EINVAL;
    if (is_dot(name) || is_dot(newname))
        return -EBUSY;
    int r = name_check(name);
    if (r == 0)
        r = name_check(newname);
    if (r < 0)
        return r;
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *dp = NULL, *ndp = NULL, *sip = NULL, *dip = NULL;
    cfs_ino_t sino, dino;
    unsigned stype, dtype;
    bool exists;
    if ((r = writable(v)) < 0)
        goto out;
    if ((r = dir_get(v, parent, &dp)) < 0 || (r = dir_get(v, newparent, &ndp)) < 0)
        goto out;
    if ((r = cfs_dir_lookup(v, dp, name, &sino, &stype)) < 0)
        goto out;
    r = cfs_dir_lookup(v, ndp, newname, &dino, &dtype);
    if (r < 0 && r != -ENOENT)
        goto out;
    exists = r == 0;
    r = 0;
    if (exists && dino == sino)
        goto out; /* both names are links of one inode: nothing to do */
    if (exists && (flags & RENAME_NOREPLACE)) {
        r = -EEXIST;
        goto out;
    }
    if (!exists && (flags & RENAME_EXCHANGE)) {
        r = -ENOENT;
        goto out;
    }
    if ((r = cfs_inode_get(v, sino, &sip)) < 0)
        goto out;
    if (exists && (r = cfs_inode_get(v, dino, &dip)) < 0)
        goto out;
    bool sdir = S_ISDIR(sip->d.mode), ddir = dip && S_ISDIR(dip->d.mode);
    /* No directory may move below itself. */
    if (sdir && parent != newparent && (r = is_under(v, newparent, sino)) != 0) {
        r = r > 0 ? -EINVAL : r;
        goto out;
    }
    if ((flags & RENAME_EXCHANGE) && ddir && parent != newparent &&
        (r = is_under(v, parent, dino)) != 0) {
        r = r > 0 ? -EINVAL : r;
        goto out;
    }
    int64_t now = cfs_now_ns();
    if (flags & RENAME_EXCHANGE) {
        if ((r = cfs_dir_remove(v, dp, name)) < 0 || (r = cfs_dir_remove(v, ndp, newname)) < 0 ||
            (r = cfs_dir_add(v, dp, name, dino, dtype)) < 0 ||
            (r = cfs_dir_add(v, ndp, newname, sino, stype)) < 0)
            goto out;
        if (parent != newparent) {
            if (sdir) {
                sip->d.parent = newparent;
                dp->d.nlink--;
                ndp->d.nlink++;
            }
            if (ddir) {
                dip->d.parent = parent;
                ndp->d.nlink--;
                dp->d.nlink++;
            }
        }
        dip->d.ctime_ns = now;
        cfs_inode_dirty(v, dip);
    } else {
        if (exists) {
            if (sdir && !ddir) {
                r = -ENOTDIR;
                goto out;
            }
            if (!sdir && ddir) {
                r = -EISDIR;
                goto out;
            }
            if (ddir && dip->d.dir_entries) {
                r = -ENOTEMPTY;
                goto out;
            }
            if ((r = cfs_dir_remove(v, ndp, newname)) < 0)
                goto out;
            drop_link(v, dip);
            if (ddir)
                ndp->d.nlink--;
        }
        if ((r = cfs_dir_remove(v, dp, name)) < 0 ||
            (r = cfs_dir_add(v, ndp, newname, sino, stype)) < 0)
            goto out;
        if (sdir && parent != newparent) {
            sip->d.parent = newparent;
            dp->d.nlink--;
            ndp->d.nlink++;
        }
    }
    sip->d.ctime_ns = now;
    dp->d.mtime_ns = dp->d.ctime_ns = now;
    ndp->d.mtime_ns = ndp->d.ctime_ns = now;
    cfs_inode_dirty(v, sip);
    cfs_inode_dirty(v, dp);
    cfs_inode_dirty(v, ndp);
    r = cfs_txn_maybe_commit(v);
out:
    cfs_inode_put(v, dip);
    cfs_inode_put(v, sip);
    cfs_inode_put(v, ndp);
    cfs_inode_put(v, dp);
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfsi_readdir(struct cfs_volume *v, cfs_ino_t dir, uint64_t off, cfs_readdir_fn fn, void *ctx)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *dp;
    int r = cfs_inode_get(v, dir, &dp);
    if (r < 0)
        goto out;
    if (!S_ISDIR(dp->d.mode)) {
        r = -ENOTDIR;
        goto put;
    }
    if (off == 0) {
        if (fn(ctx, ".", dir, DT_DIR, 1))
            goto put;
        off = 1;
    }
    if (off == 1) {
        if (fn(ctx, "..", dp->d.parent, DT_DIR, 2))
            goto put;
        off = 2;
    }
    r = cfs_dir_iterate(v, dp, off >= 3 ? off - 3 : 0, fn, ctx);
put:
    cfs_inode_put(v, dp);
out:
    pthread_mutex_unlock(&v->mtx);
    return r;
}

/* ---- setattr ---------------------------------------------------------------- */

static int64_t ns_of(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}

int cfsi_setattr(struct cfs_volume *v, cfs_ino_t ino, const struct cfs_attr *in, unsigned mask,
                 struct cfs_attr *out)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = writable(v);
    if (r == 0)
        r = cfs_inode_get(v, ino, &ip);
    pthread_mutex_unlock(&v->mtx);
    if (r < 0)
        return r;
    bool size = mask & CFS_SET_SIZE;
    if (size) {
        if (S_ISDIR(ip->d.mode))
            r = -EISDIR;
        else if (!S_ISREG(ip->d.mode))
            r = -EINVAL;
        if (r < 0) {
            pthread_mutex_lock(&v->mtx);
            cfs_inode_put(v, ip);
            pthread_mutex_unlock(&v->mtx);
            return r;
        }
        pthread_rwlock_wrlock(&ip->io);
    }
    pthread_mutex_lock(&v->mtx);
    int64_t now = cfs_now_ns();
    r = v->fatal;
    if (r == 0 && size)
        r = cfs_file_truncate_locked(v, ip, in->size);
    if (r == 0) {
        if (mask & CFS_SET_MODE)
            ip->d.mode = (ip->d.mode & S_IFMT) | (in->mode & 07777);
        if (mask & CFS_SET_UID)
            ip->d.uid = in->uid;
        if (mask & CFS_SET_GID)
            ip->d.gid = in->gid;
        if (mask & CFS_SET_ATIME_NOW)
            ip->d.atime_ns = now;
        else if (mask & CFS_SET_ATIME)
            ip->d.atime_ns = ns_of(in->atime);
        if (mask & CFS_SET_MTIME_NOW)
            ip->d.mtime_ns = now;
        else if (mask & CFS_SET_MTIME)
            ip->d.mtime_ns = ns_of(in->mtime);
        ip->d.ctime_ns = (mask & CFS_SET_CTIME) ? ns_of(in->ctime) : now;
        cfs_inode_dirty(v, ip);
        if (out)
            cfs_inode_attr(v, ip, out);
        r = cfs_txn_maybe_commit(v);
    }
    cfs_inode_put(v, ip);
    pthread_mutex_unlock(&v->mtx);
    if (size)
        pthread_rwlock_unlock(&ip->io);
    return r;
}

int cfsi_truncate(struct cfs_volume *v, cfs_ino_t ino, uint64_t size)
{
    struct cfs_attr a = {.size = size};
    return cfs_setattr(v, ino, &a, CFS_SET_SIZE | CFS_SET_MTIME_NOW, NULL);
}

/* ---- xattrs: [u8 namelen][u8 0][le16 vallen][name][value] ... ------------- */

static int xa_find(const struct cfs_inode *ip, const char *name, uint32_t *off, uint32_t *len,
                   uint32_t *voff, uint32_t *vlen)
{
    size_t nl = strlen(name);
    const uint8_t *x = ip->d.xattr;
    for (uint32_t o = 0; o + 4 <= ip->d.xattr_len;) {
        uint32_t n = x[o], vl = le16_get(x + o + 2), sz = 4 + n + vl;
        if (o + sz > ip->d.xattr_len)
            return -EUCLEAN;
        if (n == nl && !memcmp(x + o + 4, name, nl)) {
            *off = o;
            *len = sz;
            *voff = o + 4 + n;
            *vlen = vl;
            return 0;
        }
        o += sz;
    }
    return -ENODATA;
}

int cfsi_setxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, const void *value,
                  size_t size, int flags)
{
    size_t nl = strlen(name);
    if (nl == 0 || nl > 255)
        return nl ? -ERANGE : -EINVAL;
    if (4 + nl + size > CFS_XATTR_MAX)
        return -E2BIG;
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = writable(v);
    if (r == 0)
        r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto unlock;
    uint32_t off, len, voff, vlen;
    r = xa_find(ip, name, &off, &len, &voff, &vlen);
    if (r == -EUCLEAN)
        goto put;
    bool exists = r == 0;
    if (exists && (flags & XATTR_CREATE)) {
        r = -EEXIST;
        goto put;
    }
    if (!exists && (flags & XATTR_REPLACE)) {
        r = -ENODATA;
        goto put;
    }
    uint32_t base = ip->d.xattr_len - (exists ? len : 0);
    if (base + 4 + nl + size > CFS_XATTR_MAX) {
        r = -ENOSPC;
        goto put;
    }
    uint8_t *x = ip->d.xattr;
    if (exists) {
        memmove(x + off, x + off + len, ip->d.xattr_len - off - len);
        ip->d.xattr_len -= len;
    }
    uint8_t *p = x + ip->d.xattr_len;
    p[0] = (uint8_t)nl;
    p[1] = 0;
    le16_put(p + 2, (uint16_t)size);
    memcpy(p + 4, name, nl);
    memcpy(p + 4 + nl, value, size);
    ip->d.xattr_len += (uint32_t)(4 + nl + size);
    memset(x + ip->d.xattr_len, 0, CFS_XATTR_MAX - ip->d.xattr_len);
    ip->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, ip);
    r = cfs_txn_maybe_commit(v);
put:
    cfs_inode_put(v, ip);
unlock:
    pthread_mutex_unlock(&v->mtx);
    return r;
}

ssize_t cfsi_getxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, void *value,
                      size_t size)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    ssize_t r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto unlock;
    uint32_t off, len, voff, vlen;
    r = xa_find(ip, name, &off, &len, &voff, &vlen);
    if (r == 0) {
        if (size == 0)
            r = vlen;
        else if (size < vlen)
            r = -ERANGE;
        else {
            memcpy(value, ip->d.xattr + voff, vlen);
            r = vlen;
        }
    }
    cfs_inode_put(v, ip);
unlock:
    pthread_mutex_unlock(&v->mtx);
    return r;
}

ssize_t cfsi_listxattr(struct cfs_volume *v, cfs_ino_t ino, char *list, size_t size)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    ssize_t r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto unlock;
    size_t need = 0;
    const uint8_t *x = ip->d.xattr;
    for (uint32_t o = 0; o + 4 <= ip->d.xattr_len;) {
        uint32_t n = x[o], vl = le16_get(x + o + 2);
        if (size && need + n + 1 <= size) {
            memcpy(list + need, x + o + 4, n);
            list[need + n] = 0;
        }
        need += n + 1;
        o += 4 + n + vl;
    }
    r = size && need > size ? -ERANGE : (ssize_t)need;
    cfs_inode_put(v, ip);
unlock:
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfsi_removexattr(struct cfs_volume *v, cfs_ino_t ino, const char *name)
{
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = writable(v);
    if (r == 0)
        r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto unlock;
    uint32_t off, len, voff, vlen;
    r = xa_find(ip, name, &off, &len, &voff, &vlen);
    if (r == 0) {
        uint8_t *x = ip->d.xattr;
        memmove(x + off, x + off + len, ip->d.xattr_len - off - len);
        ip->d.xattr_len -= len;
        memset(x + ip->d.xattr_len, 0, CFS_XATTR_MAX - ip->d.xattr_len);
        ip->d.ctime_ns = cfs_now_ns();
        cfs_inode_dirty(v, ip);
        r = cfs_txn_maybe_commit(v);
    }
    cfs_inode_put(v, ip);
unlock:
    pthread_mutex_unlock(&v->mtx);
    return r;
}
