/* vd_chain.c: the one place where an image and its backing chain are opened
 * (vd_open, vd_open_ex): the top image, its extent files, its parents and
 * theirs.
 *
 * Design notes
 * - A descriptor comes from wherever the image came from (an appliance
 *   download, a tenant's upload), so every name in it is hostile until
 *   checked. Extent names and parentFileNameHint are resolved against the
 *   folder of the descriptor naming them (or taken as absolute), then
 *   normalised lexically; the result must lie inside one of the allowed
 *   roots: the top image's own folder, plus the roots the caller gave
 *   (vd_open_opts.roots, or vd_allow_root() for the whole process: the
 *   tools' --allow-root). Names that leave every root (absolute paths
 *   elsewhere, "..") are refused before anything is opened.
 * - The file is then opened by walking the path from the root's directory
 *   handle one component at a time with the backend's openat (vd_io.h):
 *   no component may be a symbolic link (O_NOFOLLOW), so lexical
 *   normalisation and the kernel agree on what ".." means; the open is
 *   non-blocking (a FIFO does not hang) and the result must be a regular
 *   file (fstat), not a device or a FIFO. Only the top image, which the
 *   user named, may be reached through links or be a block device.
 * - Every file of the chain (descriptors, extents, parents) is recorded by
 *   (device, inode); a file met twice is refused: one file as two extents,
 *   or as an extent of two images, would get two allocators, and a parent
 *   met again is a loop.
 * - Every parent must be a VMDK with a real descriptor whose CID equals the
 *   child's parentCID. A bare sparse extent or an ESX COWD file has no
 *   descriptor, hence no CID: it is refused as a parent instead of being
 *   given a synthetic CID that would bypass the check.
 * - The depth is limited to VD_MAX_CHAIN images, the number of extents of
 *   one image to VD_MAX_EXTENTS, and the grain tables the whole chain
 *   caches to VD_MAX_CHAIN_GT_BYTES, so a hostile chain cannot make an open
 *   take unbounded memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk_internal.h"

/* process-wide allowed roots (vd_allow_root), realpath'ed */
static pthread_mutex_t vd_roots_lock = PTHREAD_MUTEX_INITIALIZER;
static char **vd_roots;
static int vd_n_roots;

int vd_allow_root(const char *dir)
{
    char *r = realpath(dir, NULL);
    if (!r) {
        int rc = -errno;
        log_err("%s: allowed root: %s", dir, strerror(-rc));
        return rc;
    }
    pthread_mutex_lock(&vd_roots_lock);
    char **n = realloc(vd_roots, sizeof(*n) * (size_t)(vd_n_roots + 1));
    if (!n) {
        pthread_mutex_unlock(&vd_roots_lock);
        free(r);
        return -ENOMEM;
    }
    vd_roots = n;
    vd_roots[vd_n_roots++] = r;
    pthread_mutex_unlock(&vd_roots_lock);
    return 0;
}

static int vd_chain_add_root(struct vd_chain *c, const char *dir, bool resolve)
{
    char *r = resolve ? realpath(dir, NULL) : strdup(dir);
    if (!r) {
        int rc = -errno;
        log_err("%s: allowed root: %s", dir, strerror(-rc));
        return rc;
    }
    size_t n = strlen(r);
    while (n > 1 && r[n - 1] == '/')
        r[--n] = 0;
    char **nr = realloc(c->roots, sizeof(*nr) * (size_t)(c->n_roots + 1));
    if (!nr) {
        free(r);
        return -ENOMEM;
    }
    c->roots = nr;
    c->roots[c->n_roots++] = r;
    return 0;
}

static void vd_chain_free(struct vd_chain *c)
{
    for (int i = 0; i < c->n_roots; i++)
        free(c->roots[i]);
    free(c->roots);
    free(c->files);
}

/* Lexically normalise an absolute path: no "", "." or ".." components left.
 * Returns NULL (errno EINVAL) when ".." climbs above "/". */
static char *vd_path_normalize(const char *abs)
{
    size_t n = strlen(abs);
    char *out = malloc(n + 2), *tmp = strdup(abs);
    if (!out || !tmp) {
        free(out);
        free(tmp);
        errno = ENOMEM;
        return NULL;
    }
    size_t len = 0;
    out[0] = 0;
    char *save = NULL;
    for (char *t = strtok_r(tmp, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (strcmp(t, ".") == 0)
            continue;
        if (strcmp(t, "..") == 0) {
            char *s = strrchr(out, '/');
            if (!s) {
                free(out);
                free(tmp);
                errno = EINVAL;
                return NULL;
            }
            *s = 0;
            len = (size_t)(s - out);
            continue;
        }
        out[len++] = '/';
        strcpy(out + len, t);
        len += strlen(t);
    }
    if (len == 0)
        strcpy(out, "/");
    free(tmp);
    return out;
}

int vd_image_lock_file(const struct vd_io *io, int h, const char *path, enum vd_lock_mode mode)
{
    if (mode == VD_LOCK_NONE || h < 0 || !io->ops->imagelock)
        return 0;
    return io->ops->imagelock(io->ctx, h, path, (int)mode, true);
}

/* Record a file of the chain; -ELOOP when it is there already. */
static int vd_chain_note(struct vd_chain *c, const struct vd_io_stat *st)
{
    for (int i = 0; i < c->n_files; i++)
        if (c->files[i].dev == st->dev && c->files[i].ino == st->ino)
            return -ELOOP;
    if (c->n_files == c->cap_files) {
        int ncap = c->cap_files ? c->cap_files * 2 : 16;
        void *n = realloc(c->files, sizeof(*c->files) * (size_t)ncap);
        if (!n)
            return -ENOMEM;
        c->files = n;
        c->cap_files = ncap;
    }
    c->files[c->n_files].dev = st->dev;
    c->files[c->n_files].ino = st->ino;
    c->n_files++;
    return 0;
}

int vd_chain_open_file(struct vd_chain *c, const char *what, const char *from_dir, const char *name,
                       bool rw, int *h_out, char **path_out, char **dir_out, int *dirh_out)
{
    const struct vd_io *io = c->io;
    *h_out = -1;
    if (path_out)
        *path_out = NULL;
    if (dir_out)
        *dir_out = NULL;
    if (dirh_out)
        *dirh_out = -1;
    char *abs = NULL;
    if (name[0] == '/')
        abs = strdup(name);
    else if (asprintf(&abs, "%s/%s", from_dir, name) < 0)
        abs = NULL;
    if (!abs)
        return -ENOMEM;
    char *norm = vd_path_normalize(abs);
    free(abs);
    if (!norm) {
        if (errno == ENOMEM)
            return -ENOMEM;
        log_err("%s: \"%s\" climbs above / (..)", what, name);
        return -EPERM;
    }
    const char *root = NULL;
    size_t rl = 0;
    for (int i = 0; i < c->n_roots; i++) {
        size_t l = strlen(c->roots[i]);
        if (strcmp(c->roots[i], "/") == 0)
            l = 0;
        if (strncmp(norm, c->roots[i], l) == 0 && norm[l] == '/' && norm[l + 1] &&
            (!root || l > rl)) {
            root = c->roots[i];
            rl = l;
        }
    }
    if (!root) {
        log_err("%s: \"%s\" is %s, outside the folders this image may use (%s%s); "
                "allow that folder with --allow-root if you trust this image",
                what, name, norm, c->roots[0], c->n_roots > 1 ? " and the allowed roots" : "");
        free(norm);
        return -EPERM;
    }
    /* walk from the root, one component at a time, no symbolic links */
    int dirh;
    int rc = VD_IO(io, open, VD_IO_CWD, rl ? root : "/", VD_IO_DIR | VD_IO_FOLLOW, &dirh);
    if (rc < 0) {
        log_err("%s: allowed root %s: %s", what, root, strerror(-rc));
        free(norm);
        return rc;
    }
    char *rest = norm + rl + 1;
    for (;;) {
        char *slash = strchr(rest, '/');
        if (!slash)
            break;
        *slash = 0;
        int next;
        rc = VD_IO(io, open, dirh, rest, VD_IO_DIR, &next);
        if (rc < 0) {
            *slash = '/';
            log_err("%s: \"%s\": folder %.*s: %s", what, name, (int)(slash - norm), norm,
                    rc == -ELOOP || rc == -ENOTDIR ? "is a symbolic link or not a folder"
                                                   : strerror(-rc));
            VD_IO(io, close, dirh);
            free(norm);
            return rc == -ENOTDIR ? -ELOOP : rc;
        }
        *slash = '/';
        VD_IO(io, close, dirh);
        dirh = next;
        rest = slash + 1;
    }
    int h = -1;
    rc = VD_IO(io, open, dirh, rest, rw ? VD_IO_RDWR : 0, &h);
    if (rc < 0)
        h = -1;
    struct vd_io_stat st;
    if (rc == 0 && (rc = VD_IO(io, stat, h, &st)) == 0 && st.kind != VD_IO_REG)
        rc = -EINVAL;
    if (rc < 0) {
        const char *why = rc == -ELOOP    ? "is a symbolic link (not followed in a chain)"
                          : rc == -EINVAL ? "is not a regular file (device, FIFO or socket)"
                                          : strerror(-rc);
        log_err("%s: \"%s\" (%s): %s", what, name, norm, why);
        if (h >= 0)
            VD_IO(io, close, h);
        VD_IO(io, close, dirh);
        free(norm);
        return rc;
    }
    rc = vd_chain_note(c, &st);
    if (rc == -ELOOP) {
        log_err("%s: \"%s\" (%s) is already part of this chain (the same file twice, or a "
                "parent chain that loops)",
                what, name, norm);
    }
    if (rc < 0) {
        VD_IO(io, close, h);
        VD_IO(io, close, dirh);
        free(norm);
        return rc;
    }
    *h_out = h;
    if (dirh_out)
        *dirh_out = dirh;
    else
        VD_IO(io, close, dirh);
    if (dir_out) {
        char *s = strrchr(norm, '/');
        *dir_out = s == norm ? strdup("/") : strndup(norm, (size_t)(s - norm));
        if (!*dir_out)
            rc = -ENOMEM;
    }
    if (path_out)
        *path_out = norm;
    else
        free(norm);
    return rc;
}

/* A text descriptor: starts with the usual comment or has createType near
 * the top, and has no NUL byte in the part we looked at. */
static bool vd_probe_text_desc(const uint8_t *b, size_t n)
{
    if (n >= 21 && memcmp(b, "# Disk DescriptorFile", 21) == 0)
        return true;
    if (memchr(b, 0, n))
        return false;
    return memmem(b, n, "createType", 10) != NULL && memmem(b, n, "version", 7) != NULL;
}

bool vd_probe_is_vmdk(const uint8_t *first, size_t n)
{
    return (n >= 4 && le32_get(first) == VMDK4_MAGIC) ||
           (n >= 4 && memcmp(first, VMDK3_MAGIC_BYTES, 4) == 0) || vd_probe_text_desc(first, n);
}

bool vd_name_says_raw(const char *path)
{
    static const char *const ext[] = {".raw", ".img", ".bin", ".iso", ".dd"};
    size_t n = strlen(path);
    for (size_t i = 0; i < ARRAY_SIZE(ext); i++) {
        size_t l = strlen(ext[i]);
        if (n > l && path[n - l - 1] != '/' && strcasecmp(path + n - l, ext[i]) == 0)
            return true;
    }
    return false;
}

static bool vd_name_says_vmdk(const char *path)
{
    size_t n = strlen(path);
    return n > 5 && strcasecmp(path + n - 5, ".vmdk") == 0;
}

/* Open the image whose file is open at img->fd (stat in *st): probe, then
 * VMDK (with extents and parents) or raw. Raw is never a guess (vdisk.h). */
static int vd_chain_open_image(struct vd_chain *c, struct vd_image *img,
                               const struct vd_io_stat *st)
{
    const struct vd_io *io = c->io;
    if (!(img->flags & VD_OPEN_RAW)) {
        uint8_t first[512];
        size_t n = (size_t)MIN(st->size, sizeof(first));
        int rc = n ? VD_IO(io, pread, img->fd, first, n, 0) : 0;
        if (rc < 0) {
            log_err("%s: read of first sector: %s", img->path, strerror(-rc));
            return rc;
        }
        bool vmdk = vd_probe_is_vmdk(first, n);
        if (vmdk && c->depth == 0 && !(img->flags & VD_OPEN_VMDK) && vd_name_says_raw(img->path)) {
            log_err("%s: the name says raw but sector 0 holds a VMDK header or descriptor (a "
                    "guest may have written it); say which it is: --format raw or --format vmdk",
                    img->path);
            return -EMEDIUMTYPE;
        }
        if (vmdk) {
            img->kind = VD_KIND_VMDK;
            return vmdk_open(img, first, n, c);
        }
        if (c->depth > 0 || (img->flags & VD_OPEN_VMDK) || vd_name_says_vmdk(img->path)) {
            log_err("%s: not a VMDK: no sparse header magic (found %08x, expected %08x \"KDMV\") "
                    "and no text descriptor%s; refusing to guess raw (vdisk check; --format raw "
                    "if it really is a raw disk)",
                    img->path, n >= 4 ? le32_get(first) : 0, VMDK4_MAGIC,
                    vd_name_says_vmdk(img->path) ? " although the name ends in .vmdk (damaged?)"
                                                 : "");
            return c->depth > 0 ? -EUCLEAN : -EMEDIUMTYPE;
        }
        if (st->kind != VD_IO_BLOCK && !vd_name_says_raw(img->path)) {
            log_err("%s: format unknown: no VMDK header or descriptor, and the name does not say "
                    "raw (.raw, .img, .bin, .iso, .dd); give --format raw if it is a raw disk",
                    img->path);
            return -EMEDIUMTYPE;
        }
        img->probed_raw = true;
    }
    img->kind = VD_KIND_RAW;
    img->size = st->size;
    img->gran = 4096;
    return 0;
}

int vd_chain_open_parent(struct vd_chain *c, struct vd_image *img)
{
    struct vmdk_desc *d = &img->desc;
    if (!d->parent_hint) {
        if (d->parent_cid != 0xffffffffu) {
            log_err("%s: parentCID is %08x but there is no parentFileNameHint", img->path,
                    d->parent_cid);
            return -EUCLEAN;
        }
        return 0;
    }
    if (c->depth + 1 >= VD_MAX_CHAIN) {
        log_err("%s: parent chain deeper than %d images", img->path, VD_MAX_CHAIN);
        return -ELOOP;
    }
    struct vd_image *p = vd_image_alloc(
        d->parent_hint, VD_OPEN_RDONLY | (img->flags & (VD_OPEN_SHARED | VD_OPEN_NOLOCK)));
    if (!p)
        return -ENOMEM;
    p->io = c->io;
    char what[PATH_MAX + 64];
    snprintf(what, sizeof(what), "%s: parent (parentFileNameHint)", img->path);
    int rc = vd_chain_open_file(c, what, img->real_dir, d->parent_hint, false, &p->fd, NULL,
                                &p->real_dir, &p->dirh);
    struct vd_io_stat st;
    if (rc == 0)
        rc = VD_IO(c->io, stat, p->fd, &st);
    if (rc == 0) {
        /* messages name the parent as the child's folder + hint */
        char *pp = NULL;
        if (d->parent_hint[0] != '/' && asprintf(&pp, "%s%s", img->dir, d->parent_hint) >= 0) {
            free(p->path);
            p->path = pp;
            const char *s = strrchr(pp, '/');
            free(p->dir);
            p->dir = s ? strndup(pp, (size_t)(s - pp) + 1) : strdup("");
            if (!p->dir)
                rc = -ENOMEM;
        }
    }
    /* QEMU's image locks: a parent is read (shared with other readers) */
    if (rc == 0)
        rc = vd_image_lock_file(c->io, p->fd, p->path, vd_lock_mode_for(p->flags, false));
    if (rc == 0) {
        c->depth++;
        rc = vd_chain_open_image(c, p, &st);
        c->depth--;
    }
    if (rc == 0 && p->kind != VD_KIND_VMDK) {
        log_err("%s: parent %s is not a VMDK image", img->path, p->path);
        rc = -EUCLEAN;
    } else if (rc == 0 && !p->has_desc) {
        log_err("%s: parent %s is a bare extent without a descriptor (no CID to check "
                "parentCID %08x against); refusing it as a parent",
                img->path, p->path, d->parent_cid);
        rc = -EUCLEAN;
    } else if (rc == 0 && p->desc.cid != d->parent_cid) {
        log_err("%s: parent %s has CID %08x but this image expects parentCID %08x (the parent "
                "was modified after this image was created)",
                img->path, p->path, p->desc.cid, d->parent_cid);
        rc = -EUCLEAN;
    }
    if (rc < 0) {
        vd_image_free(p);
        return rc;
    }
    img->parent = p;
    return 0;
}

int vd_chain_path_allowed(const char *image_path, const char *target)
{
    struct vd_chain c = {.io = &vd_io_posix};
    const char *slash = strrchr(image_path, '/');
    char *dir = slash ? strndup(image_path, (size_t)(slash - image_path) + 1) : strdup(".");
    char *t = realpath(target, NULL);
    int rc = dir && t ? vd_chain_add_root(&c, dir, true) : -ENOMEM;
    pthread_mutex_lock(&vd_roots_lock);
    for (int i = 0; i < vd_n_roots && rc == 0; i++)
        rc = vd_chain_add_root(&c, vd_roots[i], false);
    pthread_mutex_unlock(&vd_roots_lock);
    bool ok = false;
    for (int i = 0; rc == 0 && i < c.n_roots && !ok; i++) {
        size_t l = strcmp(c.roots[i], "/") == 0 ? 0 : strlen(c.roots[i]);
        ok = strncmp(t, c.roots[i], l) == 0 && t[l] == '/';
    }
    if (rc == 0 && !ok) {
        log_err("%s: its parent %s would be outside the folders it may use (%s); allow that "
                "folder with --allow-root",
                image_path, t, c.roots[0]);
        rc = -EPERM;
    }
    free(dir);
    free(t);
    vd_chain_free(&c);
    return rc;
}

int vd_open_ex(const char *path, unsigned flags, const struct vd_open_opts *o,
               struct vd_image **out)
{
    *out = NULL;
    if (flags & VD_OPEN_SHARED)
        flags |= VD_OPEN_RDONLY;
    struct vd_chain c = {.io = o && o->io ? o->io : &vd_io_posix};
    struct vd_image *img = vd_image_alloc(path, flags);
    if (!img)
        return -ENOMEM;
    img->io = c.io;
    int rc;
    /* kept for a reopen of the same chain (vd_image_switch) */
    for (int i = 0; o && i < o->n_roots; i++) {
        char **nr = realloc(img->open_roots, sizeof(*nr) * (size_t)(i + 1));
        if (!nr || !(nr[i] = strdup(o->roots[i]))) {
            if (nr)
                img->open_roots = nr;
            rc = -ENOMEM;
            goto fail;
        }
        img->open_roots = nr;
        img->n_open_roots = i + 1;
    }
    /* the user's own path: links followed, a block device allowed */
    rc = VD_IO(c.io, open, VD_IO_CWD, path, (img->ro ? 0 : VD_IO_RDWR) | VD_IO_FOLLOW, &img->fd);
    if (rc < 0) {
        log_err("%s: cannot open: %s", path,
                rc == -EINVAL ? "not a regular file or block device" : strerror(-rc));
        goto fail;
    }
    struct vd_io_stat st;
    rc = VD_IO(c.io, stat, img->fd, &st);
    if (rc < 0) {
        log_err("%s: stat: %s", path, strerror(-rc));
        goto fail;
    }
    /* QEMU's image locks on the top file (and, in vmdk_open_extents and
     * vd_chain_open_parent, on every other file of the chain) */
    rc = vd_image_lock_file(c.io, img->fd, path, vd_lock_mode_for(flags, !img->ro));
    if (rc < 0)
        goto fail;
    /* the disk's own folder is the first root; names in it resolve there */
    rc = vd_chain_add_root(&c, *img->dir ? img->dir : ".", c.io == &vd_io_posix);
    if (rc < 0)
        goto fail;
    img->real_dir = strdup(c.roots[0]);
    if (!img->real_dir) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = VD_IO(c.io, open, VD_IO_CWD, img->real_dir, VD_IO_DIR | VD_IO_FOLLOW, &img->dirh);
    if (rc < 0) {
        log_err("%s: its folder %s: %s", path, img->real_dir, strerror(-rc));
        goto fail;
    }
    for (int i = 0; o && i < o->n_roots && rc == 0; i++)
        rc = vd_chain_add_root(&c, o->roots[i], c.io == &vd_io_posix);
    pthread_mutex_lock(&vd_roots_lock);
    for (int i = 0; i < vd_n_roots && rc == 0; i++)
        rc = vd_chain_add_root(&c, vd_roots[i], false);
    pthread_mutex_unlock(&vd_roots_lock);
    if (rc == 0 && st.kind == VD_IO_REG)
        rc = vd_chain_note(&c, &st);
    if (rc == 0)
        rc = vd_chain_open_image(&c, img, &st);
    if (rc < 0)
        goto fail;
    vd_chain_free(&c);
    *out = img;
    return 0;
fail:
    vd_chain_free(&c);
    vd_image_free(img);
    return rc;
}

int vd_open(const char *path, unsigned flags, struct vd_image **out)
{
    return vd_open_ex(path, flags, NULL, out);
}
