/* vmdk_open.c: open a VMDK image: a monolithic sparse file with an embedded
 * descriptor, or a text descriptor with separate extent files (monolithicFlat,
 * twoGbMaxExtentSparse/Flat, vmfs, streamOptimized, ...); then its parent
 * chain. Also the descriptor rewrite and the CID update on first write.
 *
 * Design notes
 * - The parent is found through parentFileNameHint (relative to the
 *   child's folder, or absolute), opened read-only, and must carry the CID
 *   the child records as parentCID: a mismatch means the parent was written
 *   after the child was made, and reading through it would return mixed
 *   data; we refuse with both file names and both CIDs.
 * - Loops: every image of the chain is identified by realpath(); opening
 *   a parent already on the chain fails, and so does a chain deeper than
 *   VD_MAX_CHAIN.
 * - CID: like QEMU (vmdk_write_cid), the first write after open gives the
 *   image a new random CID, so any child made from it earlier no longer
 *   matches and will refuse to open instead of showing corrupted data.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk_internal.h"

uint32_t vmdk_random_cid(void)
{
    uint32_t v = 0;
    while (v == 0 || v == 0xffffffffu || v == 0xfffffffeu) {
        if (getrandom(&v, sizeof(v), 0) != sizeof(v))
            v = (uint32_t)now_ns() * 2654435761u;
    }
    return v;
}

void vmdk_close(struct vd_image *img)
{
    for (int i = 0; i < img->n_ext; i++) {
        struct vmdk_extent *e = &img->ext[i];
        /* deferred GT entries left when the image is freed without
         * vd_close() (vd_close flushed them already) */
        if (e->fd >= 0 && e->sp && !img->ro && e->sp->n_dirty && !img->sync_err)
            (void)vmdk_sparse_flush(e);
        /* cut the space grown ahead of new grains (vmdk_grain_alloc) back
         * to the last grain; if this fails or is lost, the tail is holes
         * that `vdisk check` counts as leaked grains */
        if (e->fd >= 0 && e->sp && !img->ro && e->sp->durable_end > e->sp->file_end &&
            ftruncate(e->fd, (off_t)e->sp->file_end) == 0)
            (void)fdatasync(e->fd);
        if (e->fd >= 0)
            close(e->fd);
        vmdk_sparse_free(e->sp);
        free(e->path);
    }
    free(img->ext);
    img->ext = NULL;
    img->n_ext = 0;
    vmdk_desc_free(&img->desc);
}

static int vmdk_read_text_desc(struct vd_image *img, char **out, size_t *len)
{
    struct stat st;
    if (fstat(img->fd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size > VD_MAX_DESC) {
        log_err("%s: descriptor file is %lld bytes, more than the %u we accept", img->path,
                (long long)st.st_size, VD_MAX_DESC);
        return -EUCLEAN;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        return -ENOMEM;
    int rc = pread_full(img->fd, buf, (size_t)st.st_size, 0);
    if (rc < 0) {
        log_err("%s: read of descriptor: %s", img->path, strerror(-rc));
        free(buf);
        return rc;
    }
    buf[st.st_size] = 0;
    *out = buf;
    *len = (size_t)st.st_size;
    return 0;
}

static int vmdk_open_extents(struct vd_image *img, bool embedded)
{
    struct vmdk_desc *d = &img->desc;
    int n = embedded ? 1 : d->n_ext;
    img->ext = calloc((size_t)n, sizeof(*img->ext));
    if (!img->ext)
        return -ENOMEM;
    uint64_t start = 0;
    img->gran = 0;
    for (int i = 0; i < n; i++) {
        struct vmdk_extent *e = &img->ext[i];
        e->fd = -1;
        e->img = img;
        img->n_ext = i + 1;
        const struct vmdk_desc_extent *de = embedded ? NULL : &d->ext[i];
        e->type = embedded ? VMDK_EXT_SPARSE : de->type;
        if (e->type == VMDK_EXT_VMFSSPARSE)
            e->type = VMDK_EXT_SPARSE; /* vmdk_sparse_open reads the COWD header */
        e->access = embedded ? VMDK_ACC_RW : de->access;
        e->start = start;
        if (e->type == VMDK_EXT_ZERO) {
            e->len = de->sectors * VD_SECTOR;
            start += e->len;
            continue;
        }
        if (embedded) {
            e->path = strdup(img->path);
            e->fd = dup(img->fd);
        } else {
            if (asprintf(&e->path, "%s%s", img->dir, de->fname) < 0)
                e->path = NULL;
            if (e->path) {
                bool rw = !img->ro && e->access == VMDK_ACC_RW;
                e->fd = open(e->path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
                if (e->fd < 0) {
                    int rc = -errno;
                    log_err("%s: extent %d: cannot open \"%s\": %s", img->path, i, e->path,
                            strerror(-rc));
                    return rc;
                }
                int rc = vd_imagelock_take(e->fd, e->path, vd_lock_mode_for(img->flags, rw));
                if (rc < 0)
                    return rc;
            }
        }
        if (!e->path || e->fd < 0)
            return -ENOMEM;
        if (e->type == VMDK_EXT_SPARSE) {
            e->len = embedded ? 0 : de->sectors * VD_SECTOR;
            int rc = vmdk_sparse_open(e, e->path);
            if (rc < 0)
                return rc;
            if (embedded)
                e->len = e->sp->h.capacity * VD_SECTOR;
            if (!img->gran || e->sp->grain_bytes < img->gran)
                img->gran = (uint32_t)e->sp->grain_bytes;
        } else {
            e->len = de->sectors * VD_SECTOR;
            e->file_off = de->offset * VD_SECTOR;
            struct stat st;
            if (fstat(e->fd, &st) < 0)
                return -errno;
            if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < e->file_off + e->len) {
                log_err("%s: flat extent \"%s\" is truncated: %lld bytes, the descriptor "
                        "needs %" PRIu64,
                        img->path, e->path, (long long)st.st_size, e->file_off + e->len);
                return -EUCLEAN;
            }
        }
        start += e->len;
    }
    if (!img->gran)
        img->gran = 4096;
    img->size = start;
    return 0;
}

static int vmdk_open_parent(struct vd_image *img, int depth, char **seen)
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
    if (depth + 1 >= VD_MAX_CHAIN) {
        log_err("%s: parent chain deeper than %d images", img->path, VD_MAX_CHAIN);
        return -ELOOP;
    }
    char *ppath;
    if (d->parent_hint[0] == '/')
        ppath = strdup(d->parent_hint);
    else if (asprintf(&ppath, "%s%s", img->dir, d->parent_hint) < 0)
        ppath = NULL;
    if (!ppath)
        return -ENOMEM;
    char *real = realpath(ppath, NULL);
    if (!real) {
        int rc = -errno;
        log_err("%s: parent \"%s\" (parentFileNameHint \"%s\"): %s", img->path, ppath,
                d->parent_hint, strerror(-rc));
        free(ppath);
        return rc;
    }
    for (int i = 0; i <= depth; i++) {
        if (seen[i] && strcmp(seen[i], real) == 0) {
            log_err("%s: parent chain loops: parentFileNameHint \"%s\" is %s, already in the "
                    "chain",
                    img->path, d->parent_hint, real);
            free(real);
            free(ppath);
            return -ELOOP;
        }
    }
    seen[depth + 1] = real;
    struct vd_image *p = NULL;
    int rc = vd_open_chain(ppath, VD_OPEN_RDONLY | (img->flags & (VD_OPEN_SHARED | VD_OPEN_NOLOCK)),
                           depth + 1, seen, &p);
    seen[depth + 1] = NULL;
    free(real);
    if (rc < 0) {
        free(ppath);
        return rc;
    }
    if (p->kind != VD_KIND_VMDK) {
        log_err("%s: parent %s is not a VMDK image", img->path, ppath);
        rc = -EUCLEAN;
    } else if (p->desc.cid != d->parent_cid) {
        log_err("%s: parent %s has CID %08x but this image expects parentCID %08x (the parent "
                "was modified after this image was created)",
                img->path, ppath, p->desc.cid, d->parent_cid);
        rc = -EUCLEAN;
    }
    free(ppath);
    if (rc < 0) {
        vd_image_free(p);
        return rc;
    }
    img->parent = p;
    return 0;
}

int vmdk_open(struct vd_image *img, const uint8_t *first, size_t first_len, int depth, char **seen)
{
    int rc;
    char *text = NULL;
    size_t tlen = 0;
    char *my_seen[VD_MAX_CHAIN + 1];
    char *real = NULL;
    if (!seen) {
        memset(my_seen, 0, sizeof(my_seen));
        seen = my_seen;
        real = realpath(img->path, NULL);
        if (!real)
            return -errno;
        seen[0] = real;
        depth = 0;
    }
    bool embedded = first_len >= 4 && le32_get(first) == VMDK4_MAGIC;
    bool cowd = first_len >= 4 && memcmp(first, VMDK3_MAGIC_BYTES, 4) == 0;
    if (cowd) {
        /* a bare ESX COWD extent (vmfsSparse without its descriptor) */
        embedded = true;
        memset(&img->desc, 0, sizeof(img->desc));
        img->desc.version = 1;
        img->desc.parent_cid = 0xffffffffu;
        img->desc.cid = 0xfffffffeu;
        rc = vmdk_desc_set_str(&img->desc.create_type, "vmfsSparse");
        img->desc_cap = 0;
        img->desc_embedded = true; /* no descriptor to rewrite */
    } else if (embedded) {
        struct vmdk4_header h;
        struct vmdk4_header_disk hd;
        if (first_len < sizeof(hd)) {
            log_err("%s: truncated: %zu bytes, less than one header sector", img->path, first_len);
            rc = -EUCLEAN;
            goto out;
        }
        memcpy(&hd, first, sizeof(hd));
        rc = vmdk4_header_decode(&hd, &h, img->path);
        if (rc < 0) {
            rc = -EUCLEAN;
            goto out;
        }
        if (h.desc_offset == 0) {
            /* a bare sparse extent (e.g. one piece of a split disk) */
            memset(&img->desc, 0, sizeof(img->desc));
            img->desc.version = 1;
            img->desc.parent_cid = 0xffffffffu;
            img->desc.cid = 0xfffffffeu;
            rc = vmdk_desc_set_str(&img->desc.create_type, "monolithicSparse");
            img->desc_cap = 0;
        } else {
            img->desc_off = h.desc_offset * VD_SECTOR;
            img->desc_cap = h.desc_size * VD_SECTOR;
            text = malloc(img->desc_cap);
            if (!text) {
                rc = -ENOMEM;
                goto out;
            }
            rc = pread_full(img->fd, text, img->desc_cap, img->desc_off);
            if (rc < 0) {
                log_err("%s: descriptor at offset %" PRIu64 " (%" PRIu64 " bytes) is past the "
                        "end of the file (truncated?)",
                        img->path, img->desc_off, img->desc_cap);
                rc = -EUCLEAN;
                goto out;
            }
            rc = vmdk_desc_parse(text, img->desc_cap, &img->desc, img->path);
        }
        img->desc_embedded = true;
    } else {
        rc = vmdk_read_text_desc(img, &text, &tlen);
        if (rc < 0)
            goto out;
        rc = vmdk_desc_parse(text, tlen, &img->desc, img->path);
    }
    if (rc < 0)
        goto out;
    if (!img->ro && !(img->flags & VD_OPEN_FROZEN_OK)) { /* snapshot.c: frozen images */
        const char *fz = vmdk_desc_ddb_get(&img->desc, "ddb.frozen");
        if (fz && strcmp(fz, "true") == 0) {
            log_err("%s: is a frozen snapshot or linked-clone parent (ddb.frozen): it opens "
                    "read-only only; write to the disk above it",
                    img->path);
            rc = -EROFS;
            goto out;
        }
    }
    rc = vmdk_open_extents(img, embedded);
    if (rc < 0)
        goto out;
    rc = vmdk_open_parent(img, depth, seen);
out:
    free(text);
    free(real);
    if (rc < 0)
        vmdk_close(img);
    return rc;
}

int vmdk_desc_write(struct vd_image *img)
{
    if (img->ro)
        return -EROFS;
    char *text = vmdk_desc_emit(&img->desc);
    if (!text)
        return -ENOMEM;
    size_t len = strlen(text);
    int rc;
    if (img->desc_embedded) {
        if (img->desc_cap == 0) {
            free(text);
            return 0; /* bare extent: nothing to record */
        }
        if (len >= img->desc_cap) {
            log_err("%s: descriptor (%zu bytes) does not fit its %" PRIu64 "-byte area", img->path,
                    len, img->desc_cap);
            free(text);
            return -ENOSPC;
        }
        char *area = calloc(1, img->desc_cap);
        if (!area) {
            free(text);
            return -ENOMEM;
        }
        memcpy(area, text, len);
        rc = pwrite_full(img->fd, area, img->desc_cap, img->desc_off);
        free(area);
    } else {
        rc = pwrite_full(img->fd, text, len, 0);
        if (rc == 0 && ftruncate(img->fd, (off_t)len) < 0)
            rc = -errno;
    }
    if (rc < 0)
        log_err("%s: write of descriptor: %s", img->path, strerror(-rc));
    free(text);
    return rc;
}

int vmdk_cid_touch(struct vd_image *img)
{
    if (__atomic_load_n(&img->cid_updated, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&img->cid_lock);
    int rc = 0;
    if (!img->cid_updated) {
        uint32_t old = img->desc.cid, cid;
        do
            cid = vmdk_random_cid();
        while (cid == old);
        img->desc.cid = cid;
        rc = vmdk_desc_write(img);
        if (rc < 0)
            img->desc.cid = old;
        else
            __atomic_store_n(&img->cid_updated, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&img->cid_lock);
    return rc;
}
