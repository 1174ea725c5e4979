/* The public API (volume.h): each operation runs inside cfs_op_begin /
 * cfs_op_end, which take and release the volume metadata lock when several
 * hosts share the volume (locks.c) and do nothing for a local open. The
 * implementations are the cfsi_* functions of namei.c, file.c, super.c and
 * check.c. */
#include "cfs_internal.h"

int cfs_getattr(struct cfs_volume *v, cfs_ino_t ino, struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_getattr(v, ino, out);
    cfs_op_end(vol);
    return r;
}

int cfs_lookup(struct cfs_volume *v, cfs_ino_t parent, const char *name, struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_lookup(v, parent, name, out);
    cfs_op_end(vol);
    return r;
}

void cfs_forget(struct cfs_volume *v, cfs_ino_t ino, uint64_t nlookup)
{
    int b = cfs_op_begin(v);
    cfsi_forget(v, ino, nlookup); /* local references go whatever happens */
    if (b == 0)
        cfs_op_end(v);
}

int cfs_mknod(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, dev_t rdev,
              uid_t uid, gid_t gid, struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_mknod(v, parent, name, mode, rdev, uid, gid, out);
    cfs_op_end(vol);
    return r;
}

int cfs_mkdir(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, uid_t uid,
              gid_t gid, struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_mkdir(v, parent, name, mode, uid, gid, out);
    cfs_op_end(vol);
    return r;
}

int cfs_symlink(struct cfs_volume *v, cfs_ino_t parent, const char *name, const char *target,
                uid_t uid, gid_t gid, struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_symlink(v, parent, name, target, uid, gid, out);
    cfs_op_end(vol);
    return r;
}

ssize_t cfs_readlink(struct cfs_volume *v, cfs_ino_t ino, char *buf, size_t size)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    ssize_t r = cfsi_readlink(v, ino, buf, size);
    cfs_op_end(vol);
    return r;
}

int cfs_create(struct cfs_volume *v, cfs_ino_t parent, const char *name, mode_t mode, int flags,
               uid_t uid, gid_t gid, struct cfs_attr *out, struct cfs_file **fh)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_create(v, parent, name, mode, flags, uid, gid, out, fh);
    cfs_op_end(vol);
    return r;
}

int cfs_link(struct cfs_volume *v, cfs_ino_t ino, cfs_ino_t newparent, const char *newname,
             struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_link(v, ino, newparent, newname, out);
    cfs_op_end(vol);
    return r;
}

int cfs_unlink(struct cfs_volume *v, cfs_ino_t parent, const char *name)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_unlink(v, parent, name);
    cfs_op_end(vol);
    return r;
}

int cfs_rmdir(struct cfs_volume *v, cfs_ino_t parent, const char *name)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_rmdir(v, parent, name);
    cfs_op_end(vol);
    return r;
}

int cfs_rename(struct cfs_volume *v, cfs_ino_t parent, const char *name, cfs_ino_t newparent,
               const char *newname, unsigned flags)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_rename(v, parent, name, newparent, newname, flags);
    cfs_op_end(vol);
    return r;
}

int cfs_readdir(struct cfs_volume *v, cfs_ino_t dir, uint64_t off, cfs_readdir_fn fn, void *ctx)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_readdir(v, dir, off, fn, ctx);
    cfs_op_end(vol);
    return r;
}

int cfs_setattr(struct cfs_volume *v, cfs_ino_t ino, const struct cfs_attr *in, unsigned mask,
                struct cfs_attr *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_setattr(v, ino, in, mask, out);
    cfs_op_end(vol);
    return r;
}

int cfs_truncate(struct cfs_volume *v, cfs_ino_t ino, uint64_t size)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_truncate(v, ino, size);
    cfs_op_end(vol);
    return r;
}

int cfs_setxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, const void *value,
                 size_t size, int flags)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_setxattr(v, ino, name, value, size, flags);
    cfs_op_end(vol);
    return r;
}

ssize_t cfs_getxattr(struct cfs_volume *v, cfs_ino_t ino, const char *name, void *value,
                     size_t size)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    ssize_t r = cfsi_getxattr(v, ino, name, value, size);
    cfs_op_end(vol);
    return r;
}

ssize_t cfs_listxattr(struct cfs_volume *v, cfs_ino_t ino, char *list, size_t size)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    ssize_t r = cfsi_listxattr(v, ino, list, size);
    cfs_op_end(vol);
    return r;
}

int cfs_removexattr(struct cfs_volume *v, cfs_ino_t ino, const char *name)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_removexattr(v, ino, name);
    cfs_op_end(vol);
    return r;
}

int cfs_fallocate(struct cfs_file *f, int mode, uint64_t off, uint64_t len)
{
    struct cfs_volume *vol = f->v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_fallocate(f, mode, off, len);
    cfs_op_end(vol);
    return r;
}

int64_t cfs_lseek(struct cfs_file *f, int64_t off, int whence)
{
    struct cfs_volume *vol = f->v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int64_t r = cfsi_lseek(f, off, whence);
    cfs_op_end(vol);
    return r;
}

int cfs_open(struct cfs_volume *v, cfs_ino_t ino, int flags, struct cfs_file **fh)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_open(v, ino, flags, fh);
    cfs_op_end(vol);
    return r;
}

int cfs_release(struct cfs_file *f)
{
    struct cfs_volume *v = f->v;
    int b = cfs_op_begin(v);
    if (b < 0) {
        cfsi_release(f);
        return b;
    }
    int r = cfsi_release(f);
    cfs_op_end(v);
    return r;
}

ssize_t cfs_read(struct cfs_file *f, void *buf, size_t size, uint64_t off)
{
    struct cfs_volume *vol = f->v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    ssize_t r = cfsi_read(f, buf, size, off);
    cfs_op_end(vol);
    return r;
}

ssize_t cfs_write(struct cfs_file *f, const void *buf, size_t size, uint64_t off)
{
    struct cfs_volume *vol = f->v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    ssize_t r = cfsi_write(f, buf, size, off);
    cfs_op_end(vol);
    return r;
}

int cfs_fsync(struct cfs_file *f, bool datasync)
{
    struct cfs_volume *vol = f->v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_fsync(f, datasync);
    cfs_op_end(vol);
    return r;
}

int cfs_volume_info(struct cfs_volume *v, struct cfs_volume_info *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_volume_info(v, out);
    cfs_op_end(vol);
    return r;
}

int cfs_statfs(struct cfs_volume *v, struct statvfs *out)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_statfs(v, out);
    cfs_op_end(vol);
    return r;
}

int cfs_sync(struct cfs_volume *v)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_sync(v);
    cfs_op_end(vol);
    return r;
}

int cfs_volume_recover_slot(struct cfs_volume *v, uint32_t slot, uint64_t *ntxn)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_volume_recover_slot(v, slot, ntxn);
    cfs_op_end(vol);
    return r;
}

int cfs_check(struct cfs_volume *v, unsigned flags, cfs_check_msg_fn fn, void *ctx,
              struct cfs_check_report *rep)
{
    struct cfs_volume *vol = v;
    int b = cfs_op_begin(vol);
    if (b < 0)
        return b;
    int r = cfsi_check(v, flags, fn, ctx, rep);
    cfs_op_end(vol);
    return r;
}
