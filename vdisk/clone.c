/* clone.c: full and linked clones of a disk.
 *
 * Design notes
 * - Full clone: a standalone image (monolithicSparse, or monolithicFlat with
 *   --type thick) with the bytes the source chain reads. It walks the
 *   source with block status: ranges that read as zeroes (holes, zeroed
 *   grains) are skipped, and so are all-zero grains of data ranges, so an
 *   unallocated grain stays unallocated.
 * - Publishing: every clone is built under a hidden temporary name beside
 *   the destination (".<stem>-clonetmp.vmdk"), its extent names are then
 *   set to the final ones (a flat extent file is renamed first), and the
 *   descriptor is renamed to the destination with RENAME_NOREPLACE. So the
 *   destination name never shows a half-made image, an existing file is
 *   never overwritten, and a crash leaves only a temporary file that the
 *   next clone to that name removes.
 * - Linked clone: the source's current state is frozen exactly as
 *   `vdisk snapshot create` would freeze it (a snapshot named
 *   "clone:<dst name>" in the source's tree), and the destination is a new
 *   thin delta on that frozen image. A frozen source (a snapshot file) is
 *   used as it is. The destination's parentFileNameHint is the frozen file's
 *   plain name when both are in one folder, else its absolute path.
 * - Dependents: before the destination is created, its name (relative to the
 *   frozen file's folder, or absolute) is appended to the frozen file's
 *   ddb.dependents (';'-separated). Recording first means a crash can only
 *   leave a stale entry, never an unrecorded clone. Stale entries (the clone
 *   was deleted with rm, or no longer has the frozen file in its chain) are
 *   pruned when a delete checks the list, so deleting a clone needs no
 *   command of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "progress.h"
#include "snapshot.h"
#include "util.h"

static const char *cl_basename(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static const char *cl_adapter(const struct vd_image *img)
{
    const char *a =
        img->kind == VD_KIND_VMDK ? vmdk_desc_ddb_get(&img->desc, "ddb.adapterType") : NULL;
    return vmdk_adapter_known(a) ? a : NULL;
}

/* The flat extent vmdk_create makes beside a thick descriptor. */
static char *cl_flat_path(const char *dst)
{
    const char *base = cl_basename(dst);
    size_t bl = strlen(base);
    if (bl > 5 && strcmp(base + bl - 5, ".vmdk") == 0)
        bl -= 5;
    char *p;
    if (asprintf(&p, "%.*s%.*s-flat.vmdk", (int)(base - dst), dst, (int)bl, base) < 0)
        return NULL;
    return p;
}

static int cl_refuse_existing(const char *dst)
{
    struct stat st;
    if (lstat(dst, &st) == 0) {
        log_err("%s: exists already; a clone never overwrites (remove it or pick another name)",
                dst);
        return -EEXIST;
    }
    return 0;
}

/* Temporary name beside dst: "<dir>/.<stem>-clonetmp.vmdk". */
static char *cl_tmp_path(const char *dst)
{
    const char *base = cl_basename(dst);
    size_t bl = strlen(base);
    if (bl > 5 && strcmp(base + bl - 5, ".vmdk") == 0)
        bl -= 5;
    char *p;
    if (asprintf(&p, "%.*s.%.*s-clonetmp.vmdk", (int)(base - dst), dst, (int)bl, base) < 0)
        return NULL;
    return p;
}

/* rename that never replaces an existing file (where the FS can say so) */
static int cl_rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
        struct stat st;
        if (lstat(to, &st) == 0)
            errno = EEXIST;
        else if (rename(from, to) == 0)
            return 0;
    }
    int rc = -errno;
    log_err("%s: rename of %s to it: %s", to, from, strerror(-rc));
    return rc;
}

static void cl_remove_tmp(const char *tmp)
{
    char *flat = cl_flat_path(tmp);
    (void)unlink(tmp);
    if (flat)
        (void)unlink(flat);
    free(flat);
}

/* Give the finished image made at tmp its final name dst: the extent names
 * in its descriptor first (a flat extent file is renamed too), then the
 * descriptor file itself, so dst never names a half-made image. */
static int cl_publish(const char *tmp, const char *dst, bool *flat_moved)
{
    struct vd_image *img;
    int rc = vd_open(tmp, 0, &img);
    if (rc < 0)
        return rc;
    char *tflat = cl_flat_path(tmp), *dflat = cl_flat_path(dst);
    if (!tflat || !dflat) {
        rc = -ENOMEM;
        goto out;
    }
    if (img->desc_embedded && img->desc.n_ext == 1) {
        rc = vmdk_desc_set_str(&img->desc.ext[0].fname, cl_basename(dst));
    } else if (img->desc.n_ext == 1 && img->desc.ext[0].fname &&
               strcmp(img->desc.ext[0].fname, cl_basename(tflat)) == 0) {
        rc = cl_rename_noreplace(tflat, dflat);
        if (rc == 0) {
            *flat_moved = true;
            rc = vmdk_desc_set_str(&img->desc.ext[0].fname, cl_basename(dflat));
        }
    }
    if (rc == 0)
        rc = vmdk_desc_write(img);
out:;
    int rc2 = vd_close(img);
    if (rc == 0)
        rc = rc2;
    if (rc == 0)
        rc = cl_rename_noreplace(tmp, dst);
    if (rc == 0)
        rc = vd_fsync_dir_of(dst);
    free(tflat);
    free(dflat);
    return rc;
}

static int cl_full(const char *src_path, const char *dst_path, const struct vd_clone_opts *o)
{
    struct vd_image *src, *dst = NULL;
    int rc = vd_open(src_path, VD_OPEN_RDONLY, &src);
    if (rc < 0)
        return rc;
    char *flat = o->type != VD_TYPE_THIN ? cl_flat_path(dst_path) : NULL;
    char *tmp = cl_tmp_path(dst_path);
    if (!tmp) {
        rc = -ENOMEM;
        goto out;
    }
    struct stat st;
    if (flat && lstat(flat, &st) == 0 && lstat(tmp, &st) == 0) {
        /* DST-flat.vmdk beside our temporary descriptor (and no DST): a
         * crash between the two renames of a publish left it; it was never
         * part of a visible image */
        log_info("%s: removing %s, left by an interrupted clone to this name", dst_path, flat);
        (void)unlink(flat);
    }
    if (flat && (rc = cl_refuse_existing(flat)) < 0)
        goto out;
    cl_remove_tmp(tmp); /* left by a crash: never visible as dst */
    struct vd_create_opts co = {.size = vd_size(src), .type = o->type, .adapter = cl_adapter(src)};
    rc = vmdk_create(tmp, &co);
    if (rc < 0)
        goto out;
    rc = vd_open(tmp, 0, &dst);
    if (rc < 0)
        goto out_unlink;
    uint64_t gs = vd_granularity(dst);
    if (gs < 4096)
        gs = 4096;
    rc = vd_copy_sparse(src, dst, gs, "clone", o->progress);
    if (rc == 0) {
        rc = vd_close(dst);
        dst = NULL;
    }
    bool flat_moved = false;
    if (rc == 0)
        rc = cl_publish(tmp, dst_path, &flat_moved);
out_unlink:
    if (rc < 0) {
        vd_close(dst);
        dst = NULL;
        log_err("clone %s -> %s failed: %s", src_path, dst_path, strerror(-rc));
        if (flat_moved && lstat(dst_path, &st) < 0)
            (void)unlink(flat); /* ours, and no descriptor names it */
        cl_remove_tmp(tmp);
    }
out:
    vd_close(dst);
    vd_close(src);
    free(flat);
    free(tmp);
    return rc;
}

/* parentFileNameHint for dst pointing at frozen: plain name in one folder,
 * else the absolute path. */
static char *cl_hint(const char *dst, const char *frozen)
{
    char *fr = realpath(frozen, NULL);
    if (!fr)
        return NULL;
    const char *db = cl_basename(dst);
    char *ddir = db > dst ? strndup(dst, (size_t)(db - dst)) : strdup(".");
    char *dr = ddir ? realpath(ddir, NULL) : NULL;
    char *hint = NULL;
    const char *fb = cl_basename(fr);
    if (dr && strlen(dr) == (size_t)(fb - fr - 1) && strncmp(dr, fr, strlen(dr)) == 0)
        hint = strdup(fb);
    else if (dr)
        hint = strdup(fr);
    free(fr);
    free(ddir);
    free(dr);
    return hint;
}

/* "clone:<dst name>", made unique in src's tree ("#2", "#3", ... when an
 * earlier, interrupted clone left one of that name). */
static int cl_snap_name(const char *src_path, const char *dst_path, char *name, size_t size)
{
    struct vd_snap_list l;
    int rc = vd_snapshot_list(src_path, &l);
    if (rc < 0)
        return rc;
    char base[VD_SNAP_NAME_MAX - 8];
    snprintf(base, sizeof(base), "clone:%s", cl_basename(dst_path));
    for (size_t i = 0; base[i]; i++)
        if (base[i] == '"' || base[i] == '\\' || base[i] < 0x20 || base[i] > 0x7e)
            base[i] = '_';
    snprintf(name, size, "%s", base);
    for (int k = 2, taken = 1; taken && k < 10000; k++) {
        taken = 0;
        for (int i = 0; i < l.n && !taken; i++)
            taken = strcmp(l.s[i].name, name) == 0;
        if (taken)
            snprintf(name, size, "%s#%d", base, k);
    }
    vd_snap_list_free(&l);
    return 0;
}

static int cl_linked(const char *src_path, const char *dst_path)
{
    struct vd_image *src;
    int rc = vd_open(src_path, VD_OPEN_RDONLY, &src);
    if (rc < 0)
        return rc;
    const char *fz = src->kind == VD_KIND_VMDK ? vmdk_desc_ddb_get(&src->desc, "ddb.frozen") : NULL;
    bool frozen = fz && strcmp(fz, "true") == 0;
    bool is_vmdk = src->kind == VD_KIND_VMDK;
    uint32_t cid = src->desc.cid;
    uint64_t size = vd_size(src);
    char adapter[32] = "";
    if (cl_adapter(src))
        snprintf(adapter, sizeof(adapter), "%s", cl_adapter(src));
    vd_close(src);
    if (!is_vmdk) {
        log_err("%s: a linked clone needs a VMDK source (this is raw)", src_path);
        return -ENOTSUP;
    }
    /* the clone must be able to open its parent: refuse before freezing */
    rc = vd_chain_path_allowed(dst_path, src_path);
    if (rc < 0)
        return rc;
    char *fpath = NULL, *hint = NULL;
    if (frozen) {
        fpath = strdup(src_path);
        if (!fpath)
            return -ENOMEM;
    } else {
        char name[VD_SNAP_NAME_MAX + 1];
        rc = cl_snap_name(src_path, dst_path, name, sizeof(name));
        if (rc < 0)
            return rc;
        rc = vd_snap_freeze(src_path, name, &fpath, &cid);
        if (rc < 0)
            return rc;
    }
    hint = cl_hint(dst_path, fpath);
    if (!hint) {
        rc = -errno ? -errno : -ENOMEM;
        log_err("%s: cannot resolve the folder of the clone: %s", dst_path, strerror(-rc));
        goto out;
    }
    rc = vd_snap_dependent_add(fpath, dst_path);
    if (rc < 0)
        goto out;
    struct vd_create_opts co = {.size = size,
                                .type = VD_TYPE_THIN,
                                .adapter = adapter[0] ? adapter : NULL,
                                .parent_hint = hint,
                                .parent_cid = cid};
    char *tmp = cl_tmp_path(dst_path);
    if (!tmp) {
        rc = -ENOMEM;
        goto out;
    }
    cl_remove_tmp(tmp);
    rc = vmdk_create(tmp, &co);
    if (rc == 0)
        rc = cl_publish(tmp, dst_path, &(bool){false}); /* opens the new chain: proves it works */
    if (rc < 0)
        cl_remove_tmp(tmp);
    free(tmp);
out:
    free(fpath);
    free(hint);
    return rc;
}

int vd_clone(const char *src, const char *dst, const struct vd_clone_opts *o)
{
    int rc = cl_refuse_existing(dst);
    if (rc < 0)
        return rc;
    if (o->linked && o->type != VD_TYPE_THIN) {
        log_err("%s: a linked clone is a thin delta; --type applies to full clones only", dst);
        return -EINVAL;
    }
    return o->linked ? cl_linked(src, dst) : cl_full(src, dst, o);
}

int vd_copy_sparse(struct vd_image *src, struct vd_image *dst, uint64_t gs, const char *what,
                   bool progress)
{
    uint64_t size = vd_size(src), off = 0;
    size_t bs = 1 << 20;
    uint8_t *buf = malloc(bs);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    struct progress pr;
    progress_start(&pr, what, size, progress);
    while (off < size && rc == 0) {
        uint64_t n;
        unsigned st;
        rc = vd_block_status(src, off, MIN(size - off, 64ull << 20), &n, &st);
        if (rc < 0)
            break;
        if (st & VD_STATUS_ZERO) { /* the new image reads zeroes there */
            off += n;
            progress_update(&pr, off);
            continue;
        }
        for (uint64_t end = off + n; off < end && rc == 0;) {
            size_t len = (size_t)MIN(bs - (off % bs), end - off);
            rc = vd_pread(src, buf, len, off);
            for (size_t i = 0; i < len && rc == 0;) {
                size_t piece = (size_t)MIN(gs - ((off + i) % gs), len - i);
                if (!vd_buf_is_zero(buf + i, piece))
                    rc = vd_pwrite(dst, buf + i, piece, off + i, 0);
                i += piece;
            }
            off += len;
            progress_update(&pr, off);
        }
    }
    progress_finish(&pr);
    free(buf);
    return rc;
}
