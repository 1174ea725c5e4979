/* snapshot.c: snapshots of a VMDK disk that keeps its path for the VMM.
 *
 * Design notes
 * - Layout. A disk at DIR/STEM.vmdk with snapshots is a chain of files in
 *   DIR: frozen images "STEM-NNNNNN.vmdk" (NNNNNN = the snapshot id, six
 *   digits, VMware's "disk-000001.vmdk" style) and, at the original path, a
 *   thin delta whose parentFileNameHint is the frozen file's plain name and
 *   whose parentCID is that file's CID. Hints are always relative (same
 *   folder), so the folder can be moved or mounted elsewhere.
 * - The tree (id, name, frozen file, its CID, parent id, creation time) and
 *   the id the live delta sits on are ddb.snapshot.* keys in the descriptor
 *   of the file at the disk's path. QEMU ignores ddb keys. Because the live
 *   delta is replaced by rename(2), the chain and the tree change together,
 *   atomically. Frozen files carry ddb.frozen = "true", mode 0444, and no
 *   tree; they are opened read-only by everyone except delete's
 *   consolidation (which keeps their CID: see below).
 * - Crash safety of create: (1) link(disk, frozen) - a second name for the
 *   current image; (2) write the new delta under ".STEM.vmdk.snap-tmp" with
 *   the new tree, fsync; (3) rename(tmp, disk), fsync the folder; (4) mark
 *   the frozen file (ddb.frozen, mode 0444). Before (3) the disk is the old
 *   image, after it the new delta on the frozen file: the disk's path is a
 *   usable disk at every instant. Where link(2) is not supported (EPERM on
 *   some FUSE file systems) (1) is rename(disk, frozen) and between (1) and
 *   (3) the path is missing (the tmp file and the frozen file are complete;
 *   renaming the tmp file back finishes the job by hand).
 * - Revert writes a new empty delta on the snapshot's file under the tmp
 *   name, then renames it over the disk: the old live delta is dropped in
 *   the same atomic step.
 * - Delete consolidates: every grain allocated in the snapshot's file (data
 *   or zeroed-grain entry) that a child lacks is copied into the child, then
 *   the child is re-pointed to the snapshot's parent (hint and parentCID),
 *   then the file is unlinked, then the tree is rewritten. Children are the
 *   snapshots whose parent is the deleted one, plus the live delta if it
 *   sits on it. Copying a grain from a parent into a child that lacks it does
 *   not change what the child reads, so the child keeps its CID (its own
 *   children and clones stay valid) and a crash at any point leaves a
 *   readable chain; re-running the delete finishes it (a child already
 *   re-pointed is recognised and skipped; a missing file means all children
 *   were re-pointed, and only the tree is left to update).
 * - A snapshot whose frozen file has live linked clones (ddb.dependents,
 *   see clone.c) is not deleted: the clones are named in the message.
 * - Tree changes in one folder are serialised between processes by flock on
 *   the folder (skipped where unsupported). A VMM writing the disk at the
 *   same time would write the frozen file, so every operation holds QEMU's
 *   writer image lock on the disk for its run (sn_hold_disk: refused while
 *   anyone has it open), and opens its own files without locks. A process
 *   serving the disk runs the operation itself between two requests
 *   (vd_snapshot_*_open -> vd_image_switch: flush, operate with the lock it
 *   already holds, reopen the path in place through the chain opener).
 * - Limits: the descriptor with the tree must fit half of the 10 KiB
 *   embedded area (the other half holds the journal copy that makes every
 *   rewrite crash-safe, vmdk_open.c): about 26 snapshots with short names;
 *   the chain VD_MAX_CHAIN images; both fail cleanly.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "snapshot.h"
#include "util.h"

#define SN_PREFIX "ddb.snapshot."

/* Every image the snapshot code opens is opened without image locks: the
 * operation holds the disk's writer lock itself for its whole run
 * (sn_hold_disk), or runs inside the server that holds it (vd_snapshot_*_open),
 * and its own opens of the same files must not conflict with it. */
static int sn_vd_open(const char *path, unsigned flags, struct vd_image **out)
{
    return vd_open(path, flags | VD_OPEN_NOLOCK, out);
}

/* Take QEMU's writer image lock on the disk for the operation: refused
 * (-EBUSY, naming the holder) while a VM, qemu-io, qemu-nbd or a vdisk
 * server has it open. *fd_out: close it to release. */
int vd_snap_check_writable(const char *path);
static int sn_hold_disk(const char *path, int *fd_out)
{
    *fd_out = -1;
    int rc = vd_snap_check_writable(path);
    if (rc < 0)
        return rc;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        log_err("%s: %s", path, strerror(-rc));
        return rc;
    }
    rc = vd_imagelock_take(fd, path, VD_LOCK_WRITE);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

static void sn_release_disk(int fd)
{
    if (fd >= 0)
        close(fd); /* drops the image lock */
}

static const char *sn_basename(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* "dir/" of path (or "") */
static char *sn_dirname(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? strndup(path, (size_t)(s - path) + 1) : strdup("");
}

static char *sn_join(const char *dir, const char *name)
{
    char *p;
    if (name[0] == '/')
        return strdup(name);
    return asprintf(&p, "%s%s", dir, name) < 0 ? NULL : p;
}

int vd_fsync_dir_of(const char *path)
{
    char *dir = sn_dirname(path);
    if (!dir)
        return -ENOMEM;
    int fd = open(*dir ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || (fsync(fd) < 0 && errno != EINVAL)) {
        rc = -errno;
        log_err("%s: fsync of the folder: %s", *dir ? dir : ".", strerror(-rc));
    }
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

void vd_snap_list_free(struct vd_snap_list *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->s[i].name);
        free(l->s[i].file);
    }
    free(l->s);
    memset(l, 0, sizeof(*l));
}

static void sn_ddb_del_prefix(struct vmdk_desc *d, const char *prefix)
{
    size_t pl = strlen(prefix);
    int j = 0;
    for (int i = 0; i < d->n_ddb; i++) {
        if (strncmp(d->ddb[i].key, prefix, pl) == 0) {
            free(d->ddb[i].key);
            free(d->ddb[i].val);
        } else {
            d->ddb[j++] = d->ddb[i];
        }
    }
    d->n_ddb = j;
}

static struct vd_snap *sn_find_id(struct vd_snap_list *l, int id)
{
    for (int i = 0; i < l->n; i++)
        if (l->s[i].id == id)
            return &l->s[i];
    return NULL;
}

static struct vd_snap *sn_find(struct vd_snap_list *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->s[i].name, name) == 0)
            return &l->s[i];
    return NULL;
}

static int sn_cmp(const void *a, const void *b)
{
    const struct vd_snap *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static int sn_parse_int(const char *s, long long *v)
{
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 10);
    return (errno || end == s || *end) ? -EINVAL : 0;
}

/* Read the tree from a descriptor's ddb.snapshot.* keys. */
static int sn_meta_load(const struct vmdk_desc *d, struct vd_snap_list *l, const char *what)
{
    memset(l, 0, sizeof(*l));
    int rc = 0;
    for (int i = 0; i < d->n_ddb && rc == 0; i++) {
        const char *k = d->ddb[i].key;
        if (strncmp(k, SN_PREFIX, strlen(SN_PREFIX)) != 0)
            continue;
        k += strlen(SN_PREFIX);
        long long id;
        char field[16];
        if (strcmp(k, "current") == 0) {
            if (sn_parse_int(d->ddb[i].val, &id) < 0 || id < 0 || id > INT_MAX)
                goto bad;
            l->current = (int)id;
            continue;
        }
        if (strcmp(k, "lastId") == 0) {
            if (sn_parse_int(d->ddb[i].val, &id) < 0 || id < 0 || id > INT_MAX)
                goto bad;
            l->last_id = (int)id;
            continue;
        }
        if (sscanf(k, "%lld.%15s", &id, field) != 2 || id <= 0 || id > INT_MAX)
            continue; /* someone else's key: keep it, ignore it */
        if (sn_find_id(l, (int)id))
            continue;
        struct vd_snap *n = realloc(l->s, sizeof(*n) * (size_t)(l->n + 1));
        if (!n) {
            rc = -ENOMEM;
            break;
        }
        l->s = n;
        struct vd_snap *s = &l->s[l->n++];
        memset(s, 0, sizeof(*s));
        s->id = (int)id;
        char key[64];
        const char *v;
        snprintf(key, sizeof(key), SN_PREFIX "%d.name", s->id);
        v = vmdk_desc_ddb_get(d, key);
        if (!v)
            goto bad;
        s->name = strdup(v);
        snprintf(key, sizeof(key), SN_PREFIX "%d.file", s->id);
        v = vmdk_desc_ddb_get(d, key);
        if (!v || !vmdk_fname_is_safe(v) || strchr(v, '/'))
            goto bad;
        s->file = strdup(v);
        if (!s->name || !s->file) {
            rc = -ENOMEM;
            break;
        }
        snprintf(key, sizeof(key), SN_PREFIX "%d.cid", s->id);
        v = vmdk_desc_ddb_get(d, key);
        char *end;
        if (!v || (s->cid = (uint32_t)strtoul(v, &end, 16), *end || end == v))
            goto bad;
        long long x;
        snprintf(key, sizeof(key), SN_PREFIX "%d.parent", s->id);
        v = vmdk_desc_ddb_get(d, key);
        if (!v || sn_parse_int(v, &x) < 0 || x < 0 || x > INT_MAX)
            goto bad;
        s->parent = (int)x;
        snprintf(key, sizeof(key), SN_PREFIX "%d.created", s->id);
        v = vmdk_desc_ddb_get(d, key);
        if (v && sn_parse_int(v, &x) == 0)
            s->created = x;
        continue;
    bad:
        log_err("%s: snapshot tree key \"%s\" is missing or malformed (see ddb.snapshot.* in "
                "the descriptor)",
                what, d->ddb[i].key);
        rc = -EUCLEAN;
    }
    if (rc < 0) {
        vd_snap_list_free(l);
        return rc;
    }
    if (l->n)
        qsort(l->s, (size_t)l->n, sizeof(*l->s), sn_cmp);
    return 0;
}

/* Replace the tree in a descriptor. */
static int sn_meta_store(struct vmdk_desc *d, const struct vd_snap_list *l)
{
    sn_ddb_del_prefix(d, SN_PREFIX);
    int rc = 0;
    char key[64], val[32];
    for (int i = 0; i < l->n && rc == 0; i++) {
        const struct vd_snap *s = &l->s[i];
        snprintf(key, sizeof(key), SN_PREFIX "%d.name", s->id);
        rc = vmdk_desc_ddb_set(d, key, s->name);
        snprintf(key, sizeof(key), SN_PREFIX "%d.file", s->id);
        if (rc == 0)
            rc = vmdk_desc_ddb_set(d, key, s->file);
        snprintf(key, sizeof(key), SN_PREFIX "%d.cid", s->id);
        snprintf(val, sizeof(val), "%08x", s->cid);
        if (rc == 0)
            rc = vmdk_desc_ddb_set(d, key, val);
        snprintf(key, sizeof(key), SN_PREFIX "%d.parent", s->id);
        snprintf(val, sizeof(val), "%d", s->parent);
        if (rc == 0)
            rc = vmdk_desc_ddb_set(d, key, val);
        snprintf(key, sizeof(key), SN_PREFIX "%d.created", s->id);
        snprintf(val, sizeof(val), "%" PRId64, s->created);
        if (rc == 0)
            rc = vmdk_desc_ddb_set(d, key, val);
    }
    if (rc == 0 && l->n) {
        snprintf(val, sizeof(val), "%d", l->current);
        rc = vmdk_desc_ddb_set(d, SN_PREFIX "current", val);
    }
    int last = l->last_id; /* ids are never reused, even after deletes */
    for (int i = 0; i < l->n; i++)
        last = MAX(last, l->s[i].id);
    if (rc == 0 && last) {
        snprintf(val, sizeof(val), "%d", last);
        rc = vmdk_desc_ddb_set(d, SN_PREFIX "lastId", val);
    }
    return rc;
}

static bool sn_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > VD_SNAP_NAME_MAX || strstr(name, "parentFileNameHint"))
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] < 0x20 || name[i] > 0x7e || name[i] == '"' || name[i] == '\\')
            return false;
    return true;
}

static bool sn_is_frozen(const struct vd_image *img)
{
    const char *v = img->kind == VD_KIND_VMDK ? vmdk_desc_ddb_get(&img->desc, "ddb.frozen") : NULL;
    return v && strcmp(v, "true") == 0;
}

static int sn_refuse_frozen(const struct vd_image *img)
{
    if (sn_is_frozen(img)) {
        log_err("%s: is a frozen image (ddb.frozen): snapshots or linked clones sit on it, so "
                "it is never written; work on the disk above it instead",
                img->path);
        return -EROFS;
    }
    return 0;
}

int vd_snap_check_writable(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        int rc = -errno;
        log_err("%s: %s", path, strerror(-rc));
        return rc;
    }
    if (S_ISLNK(st.st_mode)) {
        /* link(2) and rename(2) would act on the link, not on the disk */
        log_err("%s: is a symbolic link; give the disk's real path", path);
        return -EINVAL;
    }
    if (!(st.st_mode & 0222)) {
        log_err("%s: file is read-only (mode %04o): frozen snapshot or clone parents are never "
                "written",
                path, (unsigned)(st.st_mode & 07777));
        return -EROFS;
    }
    return 0;
}

/* Set by the vd_snapshot_*_open calls (live.c path) around an operation
 * on a disk their caller has open and locked: the operation must not take
 * the disk's image lock again (its own lock would conflict with it). */
static __thread bool sn_disk_held;

struct sn_lock {
    int dirfd;  /* flock on the folder */
    int holdfd; /* the disk's writer image lock (sn_hold_disk), -1 if held by the caller */
};

/* Serialise tree changes of disks in one folder between processes: flock
 * on the folder (the disk's inode is replaced by each change, so it cannot
 * carry the lock). Where flock is not supported, go on unlocked. Then take
 * the disk's writer image lock, unless the caller holds it. */
static int sn_lock_folder(const char *path, struct sn_lock *lk)
{
    lk->dirfd = lk->holdfd = -1;
    char *dir = sn_dirname(path);
    if (!dir)
        return -ENOMEM;
    int fd = open(*dir ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK) {
        log_err("%s: another snapshot or clone operation is running in this folder; try "
                "again when it has finished",
                path);
        close(fd);
        return -EBUSY;
    }
    lk->dirfd = fd;
    if (!sn_disk_held) {
        int rc = sn_hold_disk(path, &lk->holdfd);
        if (rc < 0) {
            if (fd >= 0)
                close(fd);
            lk->dirfd = -1;
            return rc;
        }
    }
    return 0;
}

static void sn_unlock_folder(struct sn_lock lk)
{
    sn_release_disk(lk.holdfd);
    if (lk.dirfd >= 0)
        close(lk.dirfd); /* drops the flock */
}

static int sn_mark_frozen(const char *fpath);

/* Open the disk at path read-only (VMDK only), refusing frozen images, and
 * load its tree (re-marking frozen files a crash left writable). */
static int sn_open_disk(const char *path, struct vd_image **img, struct vd_snap_list *l)
{
    int rc = vd_snap_check_writable(path);
    if (rc < 0)
        return rc;
    rc = sn_vd_open(path, VD_OPEN_RDONLY, img);
    if (rc < 0)
        return rc;
    if ((*img)->kind != VD_KIND_VMDK) {
        log_err("%s: snapshots need a VMDK image (this is raw)", path);
        rc = -ENOTSUP;
    }
    if (rc == 0)
        rc = sn_refuse_frozen(*img);
    if (rc == 0)
        rc = sn_meta_load(&(*img)->desc, l, path);
    if (rc < 0) {
        vd_close(*img);
        *img = NULL;
        return rc;
    }
    /* Finish step (4) of a create that crashed after its commit point. */
    char *dir = sn_dirname(path);
    for (int i = 0; dir && i < l->n; i++) {
        char *f = sn_join(dir, l->s[i].file);
        struct stat st;
        if (f && stat(f, &st) == 0 && (st.st_mode & 0222)) {
            log_info("%s: snapshot \"%s\": marking %s frozen (an interrupted create left it "
                     "writable)",
                     path, l->s[i].name, f);
            (void)sn_mark_frozen(f);
        }
        free(f);
    }
    free(dir);
    return 0;
}

int vd_snapshot_list(const char *path, struct vd_snap_list *out)
{
    struct vd_image *img;
    int rc = sn_vd_open(path, VD_OPEN_RDONLY, &img);
    if (rc < 0)
        return rc;
    if (img->kind != VD_KIND_VMDK) {
        memset(out, 0, sizeof(*out));
        vd_close(img);
        return 0;
    }
    rc = sn_refuse_frozen(img);
    if (rc == 0)
        rc = sn_meta_load(&img->desc, out, path);
    vd_close(img);
    return rc;
}

static const char *sn_adapter(const struct vd_image *img)
{
    const char *a = vmdk_desc_ddb_get(&img->desc, "ddb.adapterType");
    return vmdk_adapter_known(a) ? a : NULL;
}

static char *sn_tmp_path(const char *path)
{
    char *dir = sn_dirname(path), *t = NULL;
    if (dir && asprintf(&t, "%s.%s.snap-tmp", dir, sn_basename(path)) < 0)
        t = NULL;
    free(dir);
    return t;
}

/* Create a new thin delta at tmp on parent `hint` (same folder) with the
 * tree `l`, then rename it over path. `ref` gives size and adapter. */
static int sn_new_delta(const char *path, const struct vd_image *ref, uint64_t size,
                        const char *hint, uint32_t parent_cid, const struct vd_snap_list *l)
{
    char *tmp = sn_tmp_path(path);
    if (!tmp)
        return -ENOMEM;
    (void)unlink(tmp); /* left over by a crash: it was never the disk */
    struct vd_create_opts o = {
        .size = size,
        .type = VD_TYPE_THIN,
        .adapter = sn_adapter(ref),
        .parent_hint = hint,
        .parent_cid = parent_cid,
    };
    int rc = vmdk_create(tmp, &o);
    if (rc < 0) {
        free(tmp);
        return rc;
    }
    struct vd_image *t;
    rc = sn_vd_open(tmp, 0, &t);
    if (rc == 0) {
        if (t->desc.n_ext == 1)
            rc = vmdk_desc_set_str(&t->desc.ext[0].fname, sn_basename(path));
        if (rc == 0)
            rc = sn_meta_store(&t->desc, l);
        if (rc == 0) { /* the text must fit half of the area: every later
                          rewrite of it is then crash-safe (journal) */
            char *text = vmdk_desc_emit_sealed(&t->desc);
            if (!text)
                rc = -ENOMEM;
            else if (t->desc_embedded && strlen(text) + 1 + 16 > t->desc_cap / 2)
                rc = -ENOSPC;
            free(text);
        }
        if (rc == 0)
            rc = vmdk_desc_write(t);
        if (rc == -ENOSPC || rc == -E2BIG)
            log_err("%s: the snapshot tree (%d snapshots) no longer fits the descriptor "
                    "(at most %d keys, and half of its %u bytes so that every rewrite is "
                    "crash-safe: about 26 snapshots); delete some snapshots first",
                    path, l->n, VD_MAX_DDB, 20 * VD_SECTOR);
        int rc2 = vd_close(t);
        if (rc == 0)
            rc = rc2;
    }
    if (rc == 0 && rename(tmp, path) < 0) {
        rc = -errno;
        log_err("%s: rename of the new delta %s over it: %s", path, tmp, strerror(-rc));
    }
    if (rc == 0)
        rc = vd_fsync_dir_of(path);
    else
        (void)unlink(tmp);
    free(tmp);
    return rc;
}

static void sn_chmod_ro(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && chmod(path, st.st_mode & ~0222u) < 0)
        log_warn("%s: chmod read-only: %s", path, strerror(errno));
}

/* Mark a freshly frozen image: ddb.frozen, no tree, its own name in the
 * embedded extent line, mode 0444 on the file and its extents. */
static int sn_mark_frozen(const char *fpath)
{
    struct vd_image *f;
    int rc = sn_vd_open(fpath, VD_OPEN_FROZEN_OK, &f);
    if (rc < 0)
        return rc;
    sn_ddb_del_prefix(&f->desc, SN_PREFIX);
    rc = vmdk_desc_ddb_set(&f->desc, "ddb.frozen", "true");
    if (rc == 0 && f->desc_embedded && f->desc.n_ext == 1)
        rc = vmdk_desc_set_str(&f->desc.ext[0].fname, sn_basename(fpath));
    if (rc == 0)
        rc = vmdk_desc_write(f);
    for (int i = 0; i < f->n_ext && rc == 0; i++)
        if (f->ext[i].path && strcmp(f->ext[i].path, fpath) != 0)
            sn_chmod_ro(f->ext[i].path);
    int rc2 = vd_close(f);
    if (rc == 0)
        rc = rc2;
    sn_chmod_ro(fpath);
    return rc;
}

int vd_snap_freeze(const char *path, const char *name, char **frozen_path, uint32_t *cid_out)
{
    if (!sn_name_ok(name)) {
        log_err("%s: snapshot name \"%s\" is not valid (1 to %d printable characters, no "
                "quote or backslash)",
                path, name, VD_SNAP_NAME_MAX);
        return -EINVAL;
    }
    struct vd_image *top;
    struct vd_snap_list l;
    struct sn_lock lockfd;
    int rc = sn_lock_folder(path, &lockfd);
    if (rc < 0)
        return rc;
    rc = sn_open_disk(path, &top, &l);
    if (rc < 0) {
        sn_unlock_folder(lockfd);
        return rc;
    }
    char *dir = sn_dirname(path), *fpath = NULL, *fname = NULL;
    bool linked = false, renamed = false;
    uint32_t cid = top->desc.cid;
    if (!dir) {
        rc = -ENOMEM;
        goto out;
    }
    if (sn_find(&l, name)) {
        log_err("%s: a snapshot named \"%s\" exists already", path, name);
        rc = -EEXIST;
        goto out;
    }
    int id = l.last_id + 1; /* never reused: lastId survives deletes */
    for (int i = 0; i < l.n; i++)
        if (l.s[i].id >= id)
            id = l.s[i].id + 1;
    const char *base = sn_basename(path);
    size_t bl = strlen(base);
    if (bl > 5 && strcmp(base + bl - 5, ".vmdk") == 0)
        bl -= 5;
    /* (1) a second name for the current image */
    for (int n = id; n < id + 1000; n++) {
        free(fpath);
        free(fname);
        fpath = NULL;
        if (asprintf(&fname, "%.*s-%06d.vmdk", (int)bl, base, n) < 0) {
            fname = NULL;
            rc = -ENOMEM;
            goto out;
        }
        if (!(fpath = sn_join(dir, fname))) {
            rc = -ENOMEM;
            goto out;
        }
        if (link(path, fpath) == 0) {
            linked = true;
            break;
        }
        if (errno == EEXIST) {
            /* our own second name left by a crash before the switch: reuse */
            struct stat a, b;
            if (stat(path, &a) == 0 && stat(fpath, &b) == 0 && a.st_ino == b.st_ino &&
                a.st_dev == b.st_dev && a.st_nlink > 1 && unlink(fpath) == 0 &&
                link(path, fpath) == 0) {
                linked = true;
                break;
            }
            continue;
        }
        if (errno != EPERM && errno != ENOTSUP && errno != ENOSYS && errno != EMLINK) {
            rc = -errno;
            log_err("%s: link to %s: %s", path, fpath, strerror(-rc));
            goto out;
        }
        /* no hard links here: rename, and accept a window without the path */
        struct stat st;
        if (lstat(fpath, &st) == 0)
            continue;
        if (rename(path, fpath) < 0) {
            rc = -errno;
            log_err("%s: rename to %s: %s", path, fpath, strerror(-rc));
            goto out;
        }
        renamed = true;
        break;
    }
    if (!linked && !renamed) {
        log_err("%s: no free name for the frozen image (tried %s and 999 more)", path, fname);
        rc = -EEXIST;
        goto out;
    }
    rc = vd_fsync_dir_of(path);
    if (rc < 0)
        goto out;
    /* (2)+(3) the new delta with the new tree, renamed over the disk */
    struct vd_snap *n = realloc(l.s, sizeof(*n) * (size_t)(l.n + 1));
    if (!n) {
        rc = -ENOMEM;
        goto out;
    }
    l.s = n;
    l.s[l.n] = (struct vd_snap){.id = id,
                                .name = strdup(name),
                                .file = strdup(fname),
                                .cid = cid,
                                .parent = l.current,
                                .created = (int64_t)time(NULL)};
    l.n++;
    l.current = id;
    if (!l.s[l.n - 1].name || !l.s[l.n - 1].file) {
        rc = -ENOMEM;
        goto out;
    }
    rc = sn_new_delta(path, top, top->size, fname, cid, &l);
    if (rc < 0)
        goto out;
    linked = renamed = false; /* committed */
    /* (4) mark the frozen image */
    rc = sn_mark_frozen(fpath);
    if (rc < 0)
        log_err("%s: snapshot \"%s\" was taken, but marking %s frozen failed", path, name, fpath);
out:
    if (linked && unlink(fpath) < 0)
        log_warn("%s: cleanup: unlink %s: %s", path, fpath, strerror(errno));
    if (renamed && rename(fpath, path) < 0)
        log_err("%s: cleanup: could not rename %s back: %s (do it by hand)", path, fpath,
                strerror(errno));
    vd_snap_list_free(&l);
    vd_close(top);
    sn_unlock_folder(lockfd);
    if (rc == 0 && frozen_path) {
        *frozen_path = fpath;
        fpath = NULL;
    }
    if (rc == 0 && cid_out)
        *cid_out = cid;
    free(fpath);
    free(fname);
    free(dir);
    return rc;
}

int vd_snapshot_create(const char *path, const char *name, int *id)
{
    int rc = vd_snap_freeze(path, name, NULL, NULL);
    if (rc == 0 && id) {
        struct vd_snap_list l;
        rc = vd_snapshot_list(path, &l);
        if (rc == 0) {
            *id = l.current;
            vd_snap_list_free(&l);
        }
    }
    return rc;
}

int vd_snapshot_revert(const char *path, const char *name)
{
    struct vd_image *top, *snap = NULL;
    struct vd_snap_list l;
    struct sn_lock lockfd;
    int rc = sn_lock_folder(path, &lockfd);
    if (rc < 0)
        return rc;
    rc = sn_open_disk(path, &top, &l);
    if (rc < 0) {
        sn_unlock_folder(lockfd);
        return rc;
    }
    char *fpath = NULL;
    struct vd_snap *s = sn_find(&l, name);
    if (!s) {
        log_err("%s: no snapshot named \"%s\" (%d snapshots; see vdisk snapshot list)", path, name,
                l.n);
        rc = -ENOENT;
        goto out;
    }
    char *dir = sn_dirname(path);
    fpath = dir ? sn_join(dir, s->file) : NULL;
    free(dir);
    if (!fpath) {
        rc = -ENOMEM;
        goto out;
    }
    rc = sn_vd_open(fpath, VD_OPEN_RDONLY, &snap);
    if (rc < 0)
        goto out;
    if (snap->kind != VD_KIND_VMDK || snap->desc.cid != s->cid) {
        log_err("%s: snapshot \"%s\": %s has CID %08x but the tree recorded %08x (it was "
                "written after the snapshot); refusing to revert to changed data",
                path, name, fpath, snap->desc.cid, s->cid);
        rc = -EUCLEAN;
        goto out;
    }
    if (!top->desc_embedded)
        log_warn("%s: the live image is a %s descriptor; its extent files are left in place", path,
                 top->desc.create_type);
    l.current = s->id;
    rc = sn_new_delta(path, top, snap->size, s->file, s->cid, &l);
out:
    vd_close(snap);
    vd_close(top);
    vd_snap_list_free(&l);
    free(fpath);
    sn_unlock_folder(lockfd);
    return rc;
}

/* ------------------------------------------------------------ dependents */

static char *sn_realpath_dir(const char *path)
{
    char *dir = sn_dirname(path), *r = NULL;
    if (dir)
        r = realpath(*dir ? dir : ".", NULL);
    free(dir);
    return r;
}

/* Does the chain opened at `path` contain the image whose realpath is `real`? */
static int sn_chain_has(const char *path, const char *real)
{
    struct vd_image *img;
    log_clear_last_error();
    /* the clone may sit in another folder: allow the frozen file's */
    char *fdir = strdup(real), *s = fdir ? strrchr(fdir, '/') : NULL;
    if (s)
        *s = 0;
    const char *roots[] = {fdir && *fdir ? fdir : "/"};
    struct vd_open_opts o = {.roots = roots, .n_roots = 1};
    int rc = vd_open_ex(path, VD_OPEN_RDONLY | VD_OPEN_NOLOCK, &o, &img);
    free(fdir);
    if (rc < 0)
        return 1; /* cannot tell: keep it */
    int found = 0;
    for (struct vd_image *p = img; p && !found; p = vd_parent(p)) {
        char *r = realpath(vd_path(p), NULL);
        found = r && strcmp(r, real) == 0;
        free(r);
    }
    vd_close(img);
    return found;
}

static char *sn_dependent_name(const char *frozen_path, const char *dependent)
{
    char *fd = sn_realpath_dir(frozen_path), *dd = sn_realpath_dir(dependent), *r = NULL;
    if (fd && dd) {
        if (strcmp(fd, dd) == 0)
            r = strdup(sn_basename(dependent));
        else if (asprintf(&r, "%s/%s", dd, sn_basename(dependent)) < 0)
            r = NULL;
    }
    free(fd);
    free(dd);
    return r;
}

static int sn_set_dependents(const char *frozen_path, const char *val)
{
    struct stat st;
    bool ro = stat(frozen_path, &st) == 0 && !(st.st_mode & 0200);
    if (ro)
        (void)chmod(frozen_path, st.st_mode | 0200);
    struct vd_image *f;
    int rc = sn_vd_open(frozen_path, VD_OPEN_FROZEN_OK, &f);
    if (rc == 0) {
        if (val && *val) {
            rc = vmdk_desc_ddb_set(&f->desc, "ddb.dependents", val);
        } else {
            sn_ddb_del_prefix(&f->desc, "ddb.dependents");
        }
        if (rc == 0)
            rc = vmdk_desc_write(f);
        int rc2 = vd_close(f);
        if (rc == 0)
            rc = rc2;
    }
    if (ro)
        (void)chmod(frozen_path, st.st_mode);
    return rc;
}

static int sn_get_dependents(const char *frozen_path, char **out)
{
    struct vd_image *f;
    *out = NULL;
    int rc = sn_vd_open(frozen_path, VD_OPEN_RDONLY, &f);
    if (rc < 0)
        return rc;
    const char *v = f->kind == VD_KIND_VMDK ? vmdk_desc_ddb_get(&f->desc, "ddb.dependents") : NULL;
    if (v && !(*out = strdup(v)))
        rc = -ENOMEM;
    vd_close(f);
    return rc;
}

int vd_snap_dependent_add(const char *frozen_path, const char *dependent)
{
    char *name = sn_dependent_name(frozen_path, dependent), *cur = NULL, *val = NULL;
    if (!name)
        return -ENOMEM;
    if (strchr(name, ';') || strchr(name, '"')) {
        log_err("%s: a linked clone path may not contain ';' or '\"'", dependent);
        free(name);
        return -EINVAL;
    }
    int rc = sn_get_dependents(frozen_path, &cur);
    if (rc == 0 &&
        asprintf(&val, "%s%s%s", cur && *cur ? cur : "", cur && *cur ? ";" : "", name) < 0) {
        val = NULL;
        rc = -ENOMEM;
    }
    if (rc == 0)
        rc = sn_set_dependents(frozen_path, val);
    if (rc == 0)
        rc = vd_fsync_dir_of(frozen_path);
    free(name);
    free(cur);
    free(val);
    return rc;
}

int vd_snap_dependents_live(const char *frozen_path, const char *what)
{
    char *cur = NULL;
    int rc = sn_get_dependents(frozen_path, &cur);
    if (rc < 0 || !cur)
        return rc;
    char *real = realpath(frozen_path, NULL), *dir = sn_dirname(frozen_path);
    size_t cap = strlen(cur) + 2, lcap = 0;
    char *keep = calloc(1, cap), *live_list = NULL;
    FILE *lf = open_memstream(&live_list, &lcap);
    if (!real || !dir || !keep || !lf) {
        rc = -ENOMEM;
        goto out;
    }
    int live = 0, pruned = 0;
    char *save = NULL;
    for (char *tok = strtok_r(cur, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        char *p = sn_join(dir, tok);
        if (!p) {
            rc = -ENOMEM;
            goto out;
        }
        struct stat st;
        bool exists = stat(p, &st) == 0;
        if (exists && sn_chain_has(p, real)) {
            snprintf(keep + strlen(keep), cap - strlen(keep), "%s%s", *keep ? ";" : "", tok);
            fprintf(lf, "%s%s", live ? ", " : "", p);
            live++;
        } else {
            pruned++;
            log_info("%s: former linked clone %s %s; dropped from ddb.dependents", frozen_path, p,
                     exists ? "no longer sits on it" : "is gone");
        }
        free(p);
    }
    fclose(lf);
    lf = NULL;
    if (pruned)
        (void)sn_set_dependents(frozen_path, keep);
    if (live)
        log_err("%s cannot be deleted: %d linked clone%s depend%s on %s: %s (delete them or make "
                "full clones of them first)",
                what, live, live == 1 ? "" : "s", live == 1 ? "s" : "", frozen_path,
                live_list ? live_list : "");
    rc = live;
out:
    if (lf)
        fclose(lf);
    free(live_list);
    free(real);
    free(dir);
    free(keep);
    free(cur);
    return rc;
}

/* --------------------------------------------------------------- delete */

struct sn_merge {
    struct vd_image *child;
    struct vd_image *parent;
    uint8_t *buf;
    bool grandparent; /* the child will still have a parent after */
};

/* Copy one allocated range of the parent into the child where the child
 * has nothing of its own. */
static int sn_merge_cb(uint64_t off, uint64_t len, enum vd_map_state state, void *opaque)
{
    struct sn_merge *m = opaque;
    struct vd_image *c = m->child;
    if (off >= c->size)
        return 0;
    len = MIN(len, c->size - off);
    while (len > 0) {
        struct vd_map cm;
        int rc = vd_map_local(c, off, MIN(len, (uint64_t)c->gran - off % c->gran), &cm);
        if (rc < 0)
            return rc;
        if (cm.state == VD_MAP_UNALLOC) {
            if (state == VD_MAP_ZERO) {
                rc = vd_write_zeroes(c, off, cm.len, 0);
            } else {
                rc = vd_pread_local(m->parent, m->buf, cm.len, off);
                if (rc == 0 && !vd_buf_is_zero(m->buf, cm.len))
                    rc = vd_pwrite(c, m->buf, cm.len, off, 0);
                else if (rc == 0 && m->grandparent) /* zeroes must still hide it */
                    rc = vd_write_zeroes(c, off, cm.len, 0);
                /* else: zeroes over nothing read as zeroes already (flat bases) */
            }
            if (rc < 0)
                return rc;
        }
        off += cm.len;
        len -= cm.len;
    }
    return 0;
}

/* Consolidate the frozen image at fpath (with parent hint/CID phint/pcid)
 * into the child at cpath and re-point the child to phint. */
static int sn_consolidate_into(const char *cpath, const char *fpath, const char *phint,
                               uint32_t pcid)
{
    struct stat st;
    if (stat(cpath, &st) < 0) {
        int rc = -errno;
        log_err("%s: child of %s: %s", cpath, fpath, strerror(-rc));
        return rc;
    }
    bool ro = !(st.st_mode & 0200);
    if (ro)
        (void)chmod(cpath, st.st_mode | 0200);
    struct vd_image *c;
    int rc = sn_vd_open(cpath, VD_OPEN_FROZEN_OK, &c);
    if (rc < 0)
        goto out_mode;
    if (c->kind != VD_KIND_VMDK) {
        rc = -EUCLEAN;
        goto out;
    }
    /* Already re-pointed by an interrupted delete? */
    bool same_hint = (!phint && !c->desc.parent_hint) ||
                     (phint && c->desc.parent_hint && strcmp(phint, c->desc.parent_hint) == 0);
    if (same_hint && c->desc.parent_cid == pcid)
        goto out;
    char *want = realpath(fpath, NULL);
    char *have = c->parent ? realpath(c->parent->path, NULL) : NULL;
    bool ok = want && have && strcmp(want, have) == 0;
    free(want);
    free(have);
    if (!ok) {
        log_err("%s: expected to sit on %s (parentFileNameHint \"%s\"); the snapshot tree "
                "does not match the files",
                cpath, fpath, c->desc.parent_hint ? c->desc.parent_hint : "");
        rc = -EUCLEAN;
        goto out;
    }
    /* Copying a parent's grains into the child does not change what the
     * child reads: keep its CID so its own children stay valid. */
    __atomic_store_n(&c->cid_updated, 1, __ATOMIC_RELEASE);
    struct sn_merge m = {
        .child = c, .parent = c->parent, .buf = malloc(c->gran), .grandparent = phint != NULL};
    if (!m.buf) {
        rc = -ENOMEM;
        goto out;
    }
    rc = vd_alloc_iterate(c->parent, sn_merge_cb, &m);
    free(m.buf);
    /* A frozen file smaller than the child: past its end the child read
     * zeroes; after the re-pointing it would read the grandparent there.
     * Zero what the child does not hold itself (zeroed-grain entries, and
     * the grain at the old end written with its bytes and zeroes). */
    struct vd_image *gp = c->parent->parent;
    uint64_t fend = c->parent->size;
    if (rc == 0 && phint && gp && fend < c->size && gp->size > fend) {
        uint64_t end = MIN(c->size, gp->size);
        for (uint64_t off = fend; off < end && rc == 0;) {
            struct vd_map cm;
            rc = vd_map_local(c, off, end - off, &cm);
            if (rc == 0 && cm.state == VD_MAP_UNALLOC)
                rc = vd_write_zeroes(c, off, cm.len, 0);
            off += cm.len;
        }
    }
    if (rc == 0)
        rc = vd_flush(c);
    if (rc == 0) {
        rc = vmdk_desc_set_str(&c->desc.parent_hint, phint);
        c->desc.parent_cid = phint ? pcid : 0xffffffffu;
    }
    if (rc == 0)
        rc = vmdk_desc_write(c);
    if (rc < 0)
        log_err("%s: consolidating %s into it failed: %s", cpath, fpath, strerror(-rc));
out:;
    int rc2 = vd_close(c);
    if (rc == 0)
        rc = rc2;
out_mode:
    if (ro)
        (void)chmod(cpath, st.st_mode);
    return rc;
}

int vd_snapshot_delete(const char *path, const char *name)
{
    struct vd_image *top, *f = NULL;
    struct vd_snap_list l;
    struct sn_lock lockfd;
    int rc = sn_lock_folder(path, &lockfd);
    if (rc < 0)
        return rc;
    rc = sn_open_disk(path, &top, &l);
    if (rc < 0) {
        sn_unlock_folder(lockfd);
        return rc;
    }
    char *dir = sn_dirname(path), *fpath = NULL, *phint = NULL;
    char **ext_paths = NULL;
    int n_ext_paths = 0;
    uint32_t pcid = 0xffffffffu;
    struct vd_snap *s = sn_find(&l, name);
    if (!s) {
        log_err("%s: no snapshot named \"%s\" (%d snapshots; see vdisk snapshot list)", path, name,
                l.n);
        rc = -ENOENT;
        goto out;
    }
    fpath = dir ? sn_join(dir, s->file) : NULL;
    if (!fpath) {
        rc = -ENOMEM;
        goto out;
    }
    bool top_is_child = l.current == s->id;
    struct stat fst;
    if (stat(fpath, &fst) < 0 && errno == ENOENT) {
        /* An interrupted delete unlinked the file after re-pointing every
         * child (step 2 runs only after step 1 is complete): finish step 3. */
        log_info("%s: snapshot \"%s\": %s is gone already; finishing an interrupted delete", path,
                 name, fpath);
        goto tree;
    }
    char what[PATH_MAX + VD_SNAP_NAME_MAX + 32];
    snprintf(what, sizeof(what), "%s: snapshot \"%s\"", path, name);
    rc = vd_snap_dependents_live(fpath, what);
    if (rc > 0)
        rc = -EBUSY;
    if (rc < 0)
        goto out;
    rc = sn_vd_open(fpath, VD_OPEN_RDONLY, &f);
    if (rc < 0)
        goto out;
    if (f->desc.parent_hint && !(phint = strdup(f->desc.parent_hint))) {
        rc = -ENOMEM;
        goto out;
    }
    pcid = f->desc.parent_cid;
    if (!f->desc_embedded) {
        ext_paths = calloc((size_t)f->n_ext, sizeof(*ext_paths));
        for (int i = 0; ext_paths && i < f->n_ext; i++)
            if (f->ext[i].path && (ext_paths[n_ext_paths] = strdup(f->ext[i].path)))
                n_ext_paths++;
    }
    vd_close(f);
    f = NULL;
    vd_close(top);
    top = NULL;
    /* (1) each child: take the grains it lacks, then point past s */
    for (int i = 0; i < l.n && rc == 0; i++) {
        if (l.s[i].parent != s->id)
            continue;
        char *cpath = sn_join(dir, l.s[i].file);
        rc = cpath ? sn_consolidate_into(cpath, fpath, phint, pcid) : -ENOMEM;
        free(cpath);
    }
    if (rc == 0 && top_is_child)
        rc = sn_consolidate_into(path, fpath, phint, pcid);
    if (rc < 0)
        goto out;
    /* (2) the file, now on no chain (its extents first: the file's absence
     * is what tells a re-run that (1) is complete) */
    for (int i = 0; i < n_ext_paths; i++)
        if (strcmp(ext_paths[i], fpath) != 0 && unlink(ext_paths[i]) < 0)
            log_warn("%s: unlink extent %s: %s", path, ext_paths[i], strerror(errno));
    if (unlink(fpath) < 0) {
        rc = -errno;
        log_err("%s: unlink %s: %s", path, fpath, strerror(-rc));
        goto out;
    }
    rc = vd_fsync_dir_of(path);
    if (rc < 0)
        goto out;
tree:
    /* (3) the tree */
    vd_close(top);
    top = NULL;
    for (int i = 0; i < l.n; i++)
        if (l.s[i].parent == s->id)
            l.s[i].parent = s->parent;
    if (top_is_child)
        l.current = s->parent;
    free(s->name);
    free(s->file);
    memmove(s, s + 1, sizeof(*s) * (size_t)(l.n - (s - l.s) - 1));
    l.n--;
    rc = sn_vd_open(path, 0, &top);
    if (rc == 0) {
        __atomic_store_n(&top->cid_updated, 1, __ATOMIC_RELEASE);
        rc = sn_meta_store(&top->desc, &l);
        if (rc == 0)
            rc = vmdk_desc_write(top);
        if (rc == 0)
            rc = vd_flush(top);
    }
out:
    vd_close(f);
    vd_close(top);
    vd_snap_list_free(&l);
    for (int i = 0; i < n_ext_paths; i++)
        free(ext_paths[i]);
    free(ext_paths);
    free(dir);
    free(fpath);
    free(phint);
    sn_unlock_folder(lockfd);
    return rc;
}

/* ------------------------------------------------------ on an open disk */

enum sn_live_kind { SN_LIVE_CREATE, SN_LIVE_REVERT, SN_LIVE_DELETE };

struct sn_live_op {
    enum sn_live_kind kind;
    const char *name;
    int *id;
    uint64_t size; /* the export's size */
};

/* A revert must not change the size of a disk that is served. */
static int sn_revert_size_ok(const char *path, const char *name, uint64_t size)
{
    struct vd_snap_list l;
    int rc = vd_snapshot_list(path, &l);
    if (rc < 0)
        return rc;
    struct vd_snap *s = sn_find(&l, name);
    char *dir = sn_dirname(path), *f = s && dir ? sn_join(dir, s->file) : NULL;
    struct vd_image *img = NULL;
    if (s && f && sn_vd_open(f, VD_OPEN_RDONLY, &img) == 0 && vd_size(img) != size) {
        log_err("%s: snapshot \"%s\" is %llu bytes, the served disk %llu: a served disk cannot "
                "change size; stop the server to revert to it",
                path, name, (unsigned long long)vd_size(img), (unsigned long long)size);
        rc = -EINVAL;
    }
    vd_close(img);
    free(f);
    free(dir);
    vd_snap_list_free(&l);
    return rc; /* a missing snapshot: the revert itself says so */
}

static int sn_live_run(const char *path, void *arg)
{
    struct sn_live_op *o = arg;
    int rc = 0;
    sn_disk_held = true; /* the caller's open image holds the disk's lock */
    switch (o->kind) {
    case SN_LIVE_CREATE:
        rc = vd_snapshot_create(path, o->name, o->id);
        break;
    case SN_LIVE_REVERT:
        rc = sn_revert_size_ok(path, o->name, o->size);
        if (rc == 0)
            rc = vd_snapshot_revert(path, o->name);
        break;
    case SN_LIVE_DELETE:
        rc = vd_snapshot_delete(path, o->name);
        break;
    }
    sn_disk_held = false;
    return rc;
}

bool vd_snapshot_capable(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK && !sn_is_frozen(img);
}

static int sn_live(struct vd_image *img, enum sn_live_kind kind, const char *name, int *id)
{
    if (!vd_snapshot_capable(img)) {
        log_err("%s: %s", vd_path(img),
                img->kind == VD_KIND_VMDK ? "is a frozen image: no snapshots"
                                          : "snapshots need a VMDK image (this is raw)");
        return img->kind == VD_KIND_VMDK ? -EROFS : -ENOTSUP;
    }
    struct sn_live_op o = {.kind = kind, .name = name, .id = id, .size = vd_size(img)};
    return vd_image_switch(img, sn_live_run, &o);
}

int vd_snapshot_create_open(struct vd_image *img, const char *name, int *id)
{
    return sn_live(img, SN_LIVE_CREATE, name, id);
}

int vd_snapshot_revert_open(struct vd_image *img, const char *name)
{
    return sn_live(img, SN_LIVE_REVERT, name, NULL);
}

int vd_snapshot_delete_open(struct vd_image *img, const char *name)
{
    return sn_live(img, SN_LIVE_DELETE, name, NULL);
}
