/* vmdk_open.c: open a VMDK image: a monolithic sparse file with an embedded
 * descriptor, or a text descriptor with separate extent files (monolithicFlat,
 * twoGbMaxExtentSparse/Flat, vmfs, streamOptimized, ...); then its parent
 * chain. Also the descriptor rewrite and the CID update on first write.
 *
 * Design notes
 * - Extent files and the parent are opened through vd_chain.c, the one
 *   place that resolves names of a chain (confined to the allowed roots, no
 *   symbolic links, regular files, each file once) and checks every
 *   parent's CID against the child's parentCID: a mismatch means the
 *   parent was written after the child was made, and reading through it
 *   would return mixed data; we refuse with both file names and both CIDs.
 * - All file I/O goes through the image's backend (img->io, vd_io.h).
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

#include "crc32c.h"
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
            VD_IO(img->io, truncate, e->fd, e->sp->file_end) == 0)
            (void)VD_IO(img->io, flush, e->fd);
        if (e->fd >= 0 && e->fd != img->fd) /* an embedded extent shares img->fd */
            VD_IO(img->io, close, e->fd);
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
    struct vd_io_stat st;
    int rc = VD_IO(img->io, stat, img->fd, &st);
    if (rc < 0)
        return rc;
    if (st.size > VD_MAX_DESC) {
        log_err("%s: descriptor file is %llu bytes, more than the %u we accept", img->path,
                (unsigned long long)st.size, VD_MAX_DESC);
        return -EUCLEAN;
    }
    char *buf = malloc((size_t)st.size + 1);
    if (!buf)
        return -ENOMEM;
    rc = VD_IO(img->io, pread, img->fd, buf, (size_t)st.size, 0);
    if (rc < 0) {
        log_err("%s: read of descriptor: %s", img->path, strerror(-rc));
        free(buf);
        return rc;
    }
    buf[st.size] = 0;
    *out = buf;
    *len = (size_t)st.size;
    return 0;
}

static int vmdk_open_extents(struct vd_image *img, bool embedded, struct vd_chain *c)
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
        e->io = img->io;
        img->n_ext = i + 1;
        const struct vmdk_desc_extent *de = embedded ? NULL : &d->ext[i];
        e->type = embedded ? VMDK_EXT_SPARSE : de->type;
        if (e->type == VMDK_EXT_VMFSSPARSE || e->type == VMDK_EXT_SESPARSE)
            e->type = VMDK_EXT_SPARSE; /* vmdk_sparse_open reads the COWD/seSparse header */
        e->access = embedded ? VMDK_ACC_RW : de->access;
        e->start = start;
        if (e->type == VMDK_EXT_ZERO) {
            e->len = de->sectors * VD_SECTOR;
            start += e->len;
            continue;
        }
        if (embedded) {
            e->path = strdup(img->path);
            e->fd = img->fd;
        } else {
            bool rw = !img->ro && e->access == VMDK_ACC_RW;
            char what[64 + 4096];
            snprintf(what, sizeof(what), "%s: extent %d", img->path, i);
            int rc =
                vd_chain_open_file(c, what, img->real_dir, de->fname, rw, &e->fd, NULL, NULL, NULL);
            if (rc < 0)
                return rc;
            if (asprintf(&e->path, "%s%s", img->dir, de->fname) < 0)
                e->path = NULL;
            /* QEMU's image locks on every extent file, as on the descriptor */
            if (e->path) {
                rc = vd_image_lock_file(img->io, e->fd, e->path, vd_lock_mode_for(img->flags, rw));
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
            c->gt_bytes += (uint64_t)e->sp->num_gts * e->sp->h.num_gtes_per_gt * 4;
            if (c->gt_bytes > VD_MAX_CHAIN_GT_BYTES) {
                log_err("%s: the chain's grain tables would take more than %llu MiB of memory "
                        "(extent %d, %s)",
                        img->path, VD_MAX_CHAIN_GT_BYTES >> 20, i, e->path);
                return -EUCLEAN;
            }
            if (embedded)
                e->len = e->sp->h.capacity * VD_SECTOR;
            if (!img->gran || e->sp->grain_bytes < img->gran)
                img->gran = (uint32_t)e->sp->grain_bytes;
        } else {
            e->len = de->sectors * VD_SECTOR;
            e->file_off = de->offset * VD_SECTOR;
            struct vd_io_stat st;
            int rc = VD_IO(img->io, stat, e->fd, &st);
            if (rc < 0)
                return rc;
            if (st.kind == VD_IO_REG && st.size < e->file_off + e->len) {
                log_err("%s: flat extent \"%s\" is truncated: %llu bytes, the descriptor "
                        "needs %" PRIu64,
                        img->path, e->path, (unsigned long long)st.size, e->file_off + e->len);
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

int vmdk_open(struct vd_image *img, const uint8_t *first, size_t first_len, struct vd_chain *c)
{
    int rc;
    char *text = NULL;
    size_t tlen = 0;
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
            rc = VD_IO(img->io, pread, img->fd, text, img->desc_cap, img->desc_off);
            if (rc < 0) {
                log_err("%s: descriptor at offset %" PRIu64 " (%" PRIu64 " bytes) is past the "
                        "end of the file (truncated?)",
                        img->path, img->desc_off, img->desc_cap);
                rc = -EUCLEAN;
                goto out;
            }
            const char *dt;
            size_t dl;
            rc = vmdk_desc_recover(text, img->desc_cap, &dl, &dt, img->path);
            if (rc >= 0) {
                img->desc_torn = rc == 1;
                rc = vmdk_desc_parse(dt, dl, &img->desc, img->path);
            }
            img->has_desc = true;
        }
        img->desc_embedded = true;
    } else {
        rc = vmdk_read_text_desc(img, &text, &tlen);
        if (rc < 0)
            goto out;
        rc = vmdk_desc_parse(text, tlen, &img->desc, img->path);
        img->has_desc = true;
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
    rc = vmdk_open_extents(img, embedded, c);
    if (rc < 0)
        goto out;
    if (img->desc_torn && !img->ro) { /* put the journal's text back in place */
        rc = vmdk_desc_write(img);
        if (rc == 0)
            img->desc_torn = false;
        if (rc < 0)
            goto out;
    }
    rc = vd_chain_open_parent(c, img);
out:
    free(text);
    if (rc < 0)
        vmdk_close(img);
    return rc;
}

/* ---------------------------------------------------- descriptor rewrite
 * Never a torn descriptor: a power cut in the middle of a rewrite must not
 * leave text that does not parse, or parses to a mix of the old and the new
 * chain.
 * - A rewrite that changes one 512-byte sector (the first write's CID
 *   update) is one sector write: atomic.
 * - A separate descriptor file: the new text goes to ".NAME.desc-tmp" in the
 *   same folder, synced, renamed over NAME, and the folder synced.
 * - An embedded descriptor (monolithicSparse) stays where QEMU reads it
 *   (sector 1, whatever the header says). It carries a checksum,
 *   ddb.vdisk.descriptorCRC (CRC32C of the text without the CID line and
 *   without that line: QEMU rewrites the CID in place), and a multi-sector
 *   rewrite first writes a journal copy of the new text into the second
 *   half of the area, after the text's terminating NUL where QEMU never
 *   looks ("VDJ1", length, CRC32C, text), syncs, then writes the text in
 *   place, syncs, and retires the journal (zeroes its first sector). At
 *   open, text whose checksum does not match while a valid journal is
 *   there was torn by a crash: the journal copy (checked by its own CRC) is
 *   used instead, and written back when the image is opened for writing.
 *   A stale checksum without a journal means another program (VMware, an
 *   older vdisk, an editor) changed the text and kept our key: the text
 *   is taken as it is.
 */
#define VD_DESC_CRC_KEY "ddb.vdisk.descriptorCRC"
#define VD_DJ_MAGIC "VDJ1"
#define VD_DJ_HDR 16u

/* Which sectors of `len` bytes differ: the count, and the last one. */
static unsigned vd_sectors_differ(const uint8_t *a, const uint8_t *b, size_t len, size_t *which)
{
    unsigned n = 0;
    for (size_t s = 0; s * VD_SECTOR < len; s++) {
        size_t l = MIN(VD_SECTOR, len - s * VD_SECTOR);
        if (memcmp(a + s * VD_SECTOR, b + s * VD_SECTOR, l)) {
            n++;
            *which = s;
        }
    }
    return n;
}

/* CRC32C of descriptor text, skipping the CID line and the CRC line. */
static uint32_t vd_desc_crc(const char *t, size_t len)
{
    uint32_t crc = crc32c("", 0);
    const char *p = t, *end = t + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        size_t l = (size_t)(next - p);
        if (!(l >= 4 && memcmp(p, "CID=", 4) == 0) &&
            !(l >= sizeof(VD_DESC_CRC_KEY) - 1 &&
              memcmp(p, VD_DESC_CRC_KEY, sizeof(VD_DESC_CRC_KEY) - 1) == 0))
            crc = crc32c_update(crc, p, l);
        p = next;
    }
    return crc;
}

/* 1: no checksum (not written by us), 0: matches, -1: torn. */
static int vd_desc_crc_state(const char *t, size_t len)
{
    const char *k = NULL;
    for (const char *p = t; p < t + len;) {
        const char *nl = memchr(p, '\n', (size_t)(t + len - p));
        if ((size_t)(t + len - p) >= sizeof(VD_DESC_CRC_KEY) - 1 &&
            memcmp(p, VD_DESC_CRC_KEY, sizeof(VD_DESC_CRC_KEY) - 1) == 0)
            k = p;
        p = nl ? nl + 1 : t + len;
    }
    if (!k)
        return 1;
    unsigned v;
    if (sscanf(k + sizeof(VD_DESC_CRC_KEY) - 1, " = \"%8x\"", &v) != 1)
        return -1;
    return vd_desc_crc(t, len) == v ? 0 : -1;
}

char *vmdk_desc_emit_sealed(struct vmdk_desc *d)
{
    if (vmdk_desc_ddb_set(d, VD_DESC_CRC_KEY, "00000000") < 0)
        return NULL;
    char *t = vmdk_desc_emit(d);
    if (!t)
        return NULL;
    char v[16];
    snprintf(v, sizeof(v), "%08x", vd_desc_crc(t, strlen(t)));
    free(t);
    if (vmdk_desc_ddb_set(d, VD_DESC_CRC_KEY, v) < 0)
        return NULL;
    return vmdk_desc_emit(d);
}

int vmdk_desc_recover(const char *area, size_t cap, size_t *len, const char **text,
                      const char *what)
{
    size_t tl = strnlen(area, cap);
    *text = area;
    *len = tl;
    if (vd_desc_crc_state(area, tl) >= 0)
        return 0;
    size_t j = ROUND_UP(cap / 2, VD_SECTOR);
    const uint8_t *r = (const uint8_t *)area + j;
    if (j + VD_DJ_HDR <= cap && memcmp(r, VD_DJ_MAGIC, 4) == 0) {
        uint32_t jl = le32_get(r + 4);
        if (jl <= cap - j - VD_DJ_HDR && crc32c(r + VD_DJ_HDR, jl) == le32_get(r + 8) &&
            vd_desc_crc_state((const char *)r + VD_DJ_HDR, jl) == 0) {
            log_warn("%s: the descriptor was torn by a crash during a rewrite; using the "
                     "journal copy of the new text",
                     what);
            *text = (const char *)r + VD_DJ_HDR;
            *len = jl;
            return 1;
        }
    }
    /* no rewrite of ours was in flight: another program (VMware, an older
     * vdisk, an editor) changed the text and kept our key; take the text */
    log_info("%s: the descriptor was edited by another program (its " VD_DESC_CRC_KEY " is stale)",
             what);
    return 0;
}

static int vmdk_desc_write_file(struct vd_image *img, const char *text, size_t len)
{
    const struct vd_io *io = img->io;
    struct vd_io_stat st;
    int rc = VD_IO(io, stat, img->fd, &st);
    if (rc < 0)
        return rc;
    /* one sector changed, size unchanged: write it in place */
    if (st.size == len && len <= VD_MAX_DESC) {
        uint8_t *old = malloc(len ? len : 1);
        if (!old)
            return -ENOMEM;
        rc = VD_IO(io, pread, img->fd, old, len, 0);
        size_t which = 0;
        unsigned n = rc == 0 ? vd_sectors_differ(old, (const uint8_t *)text, len, &which) : 2;
        free(old);
        if (n == 0)
            return 0;
        if (n == 1) {
            size_t off = which * VD_SECTOR;
            return VD_IO(io, pwrite, img->fd, text + off, MIN(VD_SECTOR, len - off), off);
        }
    }
    const char *base = strrchr(img->path, '/');
    base = base ? base + 1 : img->path;
    int cur = -1, tmp = -1;
    char *tname = NULL;
    if (img->dirh < 0 || asprintf(&tname, ".%s.desc-tmp", base) < 0) {
        tname = NULL;
        rc = img->dirh < 0 ? -EOPNOTSUPP : -ENOMEM;
        goto out;
    }
    /* the name must still be this file (not a link, not replaced) */
    struct vd_io_stat cst;
    rc = VD_IO(io, open, img->dirh, base, 0, &cur);
    if (rc == 0)
        rc = VD_IO(io, stat, cur, &cst);
    if (rc == 0 && (cst.dev != st.dev || cst.ino != st.ino))
        rc = -ESTALE;
    if (rc < 0) {
        log_err("%s: cannot replace the descriptor atomically (%s): %s", img->path,
                rc == -ELOOP ? "the name is a symbolic link" : "the name no longer is this file",
                strerror(-rc));
        goto out;
    }
    (void)VD_IO(io, unlink, img->dirh, tname); /* a crash's leftover */
    rc = VD_IO(io, open, img->dirh, tname, VD_IO_RDWR | VD_IO_CREATE, &tmp);
    /* the new descriptor file takes over this open's image locks before
     * its name is the disk's (a new file: nobody else can hold any) */
    if (rc == 0)
        rc = vd_image_lock_file(io, tmp, img->path, vd_lock_mode_for(img->flags, !img->ro));
    if (rc == 0)
        rc = VD_IO(io, pwrite, tmp, text, len, 0);
    if (rc == 0)
        rc = VD_IO(io, flush, tmp);
    if (rc == 0)
        rc = VD_IO(io, rename, img->dirh, tname, base, false);
    if (rc == 0)
        rc = VD_IO(io, flush, img->dirh);
    if (rc < 0) {
        (void)VD_IO(io, unlink, img->dirh, tname);
        goto out;
    }
    VD_IO(io, close, img->fd); /* the old inode, now unlinked */
    img->fd = tmp;
    tmp = -1;
out:
    if (cur >= 0)
        VD_IO(io, close, cur);
    if (tmp >= 0)
        VD_IO(io, close, tmp);
    free(tname);
    return rc;
}

static int vmdk_desc_write_embedded(struct vd_image *img)
{
    const struct vd_io *io = img->io;
    uint64_t cap = img->desc_cap;
    uint8_t *old = malloc(cap), *area = calloc(1, cap);
    char *text = vmdk_desc_emit_sealed(&img->desc);
    int rc = 0;
    size_t len = 0;
    if (!old || !area || !text) {
        rc = -ENOMEM;
        goto out;
    }
    len = strlen(text);
    if (len >= cap) {
        log_err("%s: descriptor (%zu bytes) does not fit its %" PRIu64 "-byte area", img->path, len,
                cap);
        rc = -ENOSPC;
        goto out;
    }
    rc = VD_IO(io, pread, img->fd, old, cap, img->desc_off);
    if (rc < 0)
        goto out;
    /* the area beyond the text keeps what it had (the journal) */
    memcpy(area, old, cap);
    memset(area, 0, MIN(cap, MAX(len, strnlen((const char *)old, cap)) + 1));
    memcpy(area, text, len);
    /* a journal left by an interrupted rewrite is retired by this one */
    size_t j = ROUND_UP(cap / 2, VD_SECTOR);
    if (j + VD_SECTOR <= cap && len < j && memcmp(area + j, VD_DJ_MAGIC, 4) == 0)
        memset(area + j, 0, VD_SECTOR);
    size_t which = 0;
    unsigned n = vd_sectors_differ(old, area, cap, &which);
    if (n == 0)
        goto out;
    if (n == 1) { /* one sector: atomic in place */
        rc = VD_IO(io, pwrite, img->fd, area + which * VD_SECTOR, VD_SECTOR,
                   img->desc_off + which * VD_SECTOR);
        goto out;
    }
    if (len + 1 > j || j + VD_DJ_HDR + len > cap) {
        /* no room for a journal (a long descriptor made elsewhere): one
         * write in place, as before; our own trees are kept to half the
         * area (snapshot.c) so that this never happens to them */
        log_warn("%s: descriptor (%zu bytes) is longer than half of its %" PRIu64 "-byte area: "
                 "rewritten in place, not crash-safe",
                 img->path, len, cap);
        rc = VD_IO(io, pwrite, img->fd, area, cap, img->desc_off);
        goto out;
    }
    /* journal copy first, synced; then the text in place, synced */
    memcpy(area + j, VD_DJ_MAGIC, 4);
    le32_put(area + j + 4, (uint32_t)len);
    le32_put(area + j + 8, crc32c(text, len));
    le32_put(area + j + 12, 0);
    memcpy(area + j + VD_DJ_HDR, text, len);
    memset(area + j + VD_DJ_HDR + len, 0, cap - j - VD_DJ_HDR - len);
    rc = VD_IO(io, pwrite, img->fd, area + j, cap - j, img->desc_off + j);
    if (rc == 0)
        rc = VD_IO(io, flush, img->fd);
    if (rc == 0)
        rc = VD_IO(io, pwrite, img->fd, area, j, img->desc_off);
    if (rc == 0)
        rc = VD_IO(io, flush, img->fd);
    /* the text is whole: retire the journal (unsynced: a journal that
     * survives matches the text, whose checksum then matches too) */
    if (rc == 0) {
        memset(area + j, 0, VD_SECTOR);
        rc = VD_IO(io, pwrite, img->fd, area + j, VD_SECTOR, img->desc_off + j);
    }
    if (rc == -ENOSPC) /* ENOSPC means "the tree does not fit" to the callers */
        rc = -EIO;
out:
    free(old);
    free(area);
    free(text);
    return rc;
}

int vmdk_desc_write(struct vd_image *img)
{
    if (img->ro)
        return -EROFS;
    int rc;
    if (img->desc_embedded) {
        if (img->desc_cap == 0)
            return 0; /* bare extent: nothing to record */
        rc = vmdk_desc_write_embedded(img);
    } else {
        char *text = vmdk_desc_emit_sealed(&img->desc);
        if (!text)
            return -ENOMEM;
        rc = vmdk_desc_write_file(img, text, strlen(text));
        free(text);
    }
    if (rc < 0 && rc != -ENOSPC)
        log_err("%s: write of descriptor: %s", img->path, strerror(-rc));
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
