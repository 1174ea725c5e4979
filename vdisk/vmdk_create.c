/* vmdk_create.c: create images (monolithicSparse, monolithicFlat, raw) and
 * resize them.
 *
 * Design notes
 * - monolithicSparse is laid out exactly as QEMU lays it out: header,
 *   20-sector embedded descriptor, redundant grain directory, redundant
 *   grain tables, grain directory, grain tables, then grains from the next
 *   grain boundary. All grain tables are preallocated (zero-filled holes in
 *   the file), because QEMU cannot allocate a missing grain table.
 * - New images set the zeroed-grain flag (header version 2, as QEMU's
 *   zeroed_grain=on does), so discard and zero writes can hide a parent's
 *   data without writing zeroes.
 * - Resize of a sparse image writes a complete new set of (redundant) grain
 *   directory and tables at the end of the file, then switches to it with
 *   one header sector write, then updates the descriptor: a crash leaves
 *   either the old or the new geometry. The old tables stay in the file as
 *   unused space.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk_internal.h"

static const char *vd_basename(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

uint64_t vmdk_geometry_cylinders(uint64_t sectors, unsigned heads)
{
    uint64_t c = sectors / ((uint64_t)heads * 63);
    /* ATA CHS addresses at most 16383 cylinders (16 heads, 63 sectors):
     * larger IDE disks report that and are addressed by LBA */
    return heads == 16 ? MIN(c, 16383) : c;
}

static int vd_desc_geometry(struct vmdk_desc *d, uint64_t sectors, const char *adapter)
{
    unsigned heads = strcmp(adapter, "ide") == 0 ? 16 : 255;
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, vmdk_geometry_cylinders(sectors, heads));
    int rc = vmdk_desc_ddb_set(d, "ddb.geometry.cylinders", buf);
    snprintf(buf, sizeof(buf), "%u", heads);
    if (rc == 0)
        rc = vmdk_desc_ddb_set(d, "ddb.geometry.heads", buf);
    if (rc == 0)
        rc = vmdk_desc_ddb_set(d, "ddb.geometry.sectors", "63");
    return rc;
}

static int vd_desc_init(struct vmdk_desc *d, const struct vd_create_opts *o, uint64_t sectors,
                        const char *create_type)
{
    memset(d, 0, sizeof(*d));
    d->version = 1;
    d->cid = vmdk_random_cid();
    d->parent_cid = o->parent_hint ? o->parent_cid : 0xffffffffu;
    const char *adapter = o->adapter ? o->adapter : "lsilogic";
    int rc = vmdk_desc_set_str(&d->create_type, create_type);
    if (rc == 0)
        rc = vmdk_desc_set_str(&d->parent_hint, o->parent_hint);
    if (rc == 0)
        rc = vmdk_desc_ddb_set(d, "ddb.virtualHWVersion", "4");
    if (rc == 0)
        rc = vd_desc_geometry(d, sectors, adapter);
    if (rc == 0)
        rc = vmdk_desc_ddb_set(d, "ddb.adapterType", adapter);
    if (rc == 0) { /* random UUID in VMware's own key and layout (ddb.uuid.image
                      is VirtualBox's): 16 hex bytes, a dash after the 8th */
        uint8_t u[16];
        for (int i = 0; i < 16; i += 4) {
            uint32_t r = vmdk_random_cid();
            memcpy(u + i, &r, 4);
        }
        u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
        u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
        char buf[64];
        snprintf(buf, sizeof(buf),
                 "%02x %02x %02x %02x %02x %02x %02x %02x-%02x %02x %02x %02x %02x %02x %02x %02x",
                 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
                 u[13], u[14], u[15]);
        rc = vmdk_desc_ddb_set(d, "ddb.uuid", buf);
    }
    return rc;
}

static int vd_add_extent(struct vmdk_desc *d, enum vmdk_ext_type t, uint64_t sectors,
                         const char *fname)
{
    struct vmdk_desc_extent *n = realloc(d->ext, sizeof(*n) * (size_t)(d->n_ext + 1));
    if (!n)
        return -ENOMEM;
    d->ext = n;
    n[d->n_ext] = (struct vmdk_desc_extent){
        .access = VMDK_ACC_RW, .type = t, .sectors = sectors, .fname = strdup(fname)};
    if (!n[d->n_ext].fname)
        return -ENOMEM;
    d->n_ext++;
    return 0;
}

/* New files are made through the POSIX backend (the user's paths). */
static const struct vd_io *const vc_io = &vd_io_posix;

static int vd_create_file(const char *path, int *fd)
{
    int rc = VD_IO(vc_io, open, VD_IO_CWD, path, VD_IO_RDWR | VD_IO_CREATE, fd);
    if (rc < 0) {
        *fd = -1;
        log_err("%s: cannot create: %s", path, strerror(-rc));
        return rc;
    }
    return 0;
}

int vd_create_raw(const char *path, uint64_t size)
{
    int fd, rc = vd_create_file(path, &fd);
    if (rc < 0)
        return rc;
    rc = VD_IO(vc_io, truncate, fd, size);
    if (rc < 0)
        log_err("%s: truncate to %" PRIu64 " bytes: %s", path, size, strerror(-rc));
    VD_IO(vc_io, close, fd);
    if (rc < 0)
        unlink(path);
    return rc;
}

/* Layout of grain directories and tables for `cap` sectors, starting at
 * sector `at`: rgd, rgts, gd, gts. */
struct vd_sparse_layout {
    uint64_t gt_count, gd_sectors, rgd, rgt, gd, gt, end;
};

static void vd_sparse_layout(uint64_t cap, uint64_t at, struct vd_sparse_layout *l)
{
    uint64_t grains = DIV_ROUND_UP(cap, 128);
    l->gt_count = DIV_ROUND_UP(grains, 512);
    l->gd_sectors = DIV_ROUND_UP(l->gt_count * 4, VD_SECTOR);
    l->rgd = at;
    l->rgt = l->rgd + l->gd_sectors;
    l->gd = l->rgt + l->gt_count * 4;
    l->gt = l->gd + l->gd_sectors;
    l->end = l->gt + l->gt_count * 4;
}

/* Write both directories (pointing at their tables) and optionally both
 * table sets from `gt` (gt_count * 512 entries, host order). */
static int vd_sparse_write_tables(const struct vd_io *io, int fd, const struct vd_sparse_layout *l,
                                  const uint32_t *gt)
{
    size_t gdb = (size_t)(l->gd_sectors * VD_SECTOR);
    uint8_t *gd = calloc(1, gdb), *rgd = calloc(1, gdb);
    int rc = 0;
    if (!gd || !rgd) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < l->gt_count; i++) {
        le32_put(rgd + i * 4, (uint32_t)(l->rgt + i * 4));
        le32_put(gd + i * 4, (uint32_t)(l->gt + i * 4));
    }
    rc = VD_IO(io, pwrite, fd, rgd, gdb, l->rgd * VD_SECTOR);
    if (rc == 0)
        rc = VD_IO(io, pwrite, fd, gd, gdb, l->gd * VD_SECTOR);
    if (rc == 0 && gt) {
        size_t n = (size_t)(l->gt_count * 512);
        uint8_t *t = malloc(n * 4);
        if (!t) {
            rc = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            le32_put(t + i * 4, gt[i]);
        rc = VD_IO(io, pwrite, fd, t, n * 4, l->rgt * VD_SECTOR);
        if (rc == 0)
            rc = VD_IO(io, pwrite, fd, t, n * 4, l->gt * VD_SECTOR);
        free(t);
    }
out:
    free(gd);
    free(rgd);
    return rc;
}

static int vd_create_sparse(const char *path, const struct vd_create_opts *o, uint64_t cap)
{
    struct vd_sparse_layout l;
    vd_sparse_layout(cap, 21, &l);
    if (l.end > UINT32_MAX) {
        log_err("%s: %" PRIu64 " sectors is too large for a sparse extent", path, cap);
        return -EFBIG;
    }
    struct vmdk4_header h = {
        .version = o->no_zero_grain ? 1 : 2,
        .flags =
            VMDK4_FLAG_NL_DETECT | VMDK4_FLAG_RGD | (o->no_zero_grain ? 0 : VMDK4_FLAG_ZERO_GRAIN),
        .capacity = cap,
        .grain_size = 128,
        .desc_offset = 1,
        .desc_size = 20,
        .num_gtes_per_gt = 512,
        .rgd_offset = l.rgd,
        .gd_offset = l.gd,
        .overhead = ROUND_UP(l.end, 128),
    };
    struct vmdk_desc d;
    int rc = vd_desc_init(&d, o, cap, "monolithicSparse");
    if (rc == 0)
        rc = vd_add_extent(&d, VMDK_EXT_SPARSE, cap, vd_basename(path));
    char *text = rc == 0 ? vmdk_desc_emit_sealed(&d) : NULL;
    vmdk_desc_free(&d);
    if (!text)
        return rc < 0 ? rc : -ENOMEM;
    if (strlen(text) >= 20 * VD_SECTOR) {
        log_err("%s: descriptor too long for the embedded area (parent hint too long?)", path);
        free(text);
        return -ENAMETOOLONG;
    }
    int fd;
    rc = vd_create_file(path, &fd);
    if (rc < 0) {
        free(text);
        return rc;
    }
    struct vmdk4_header_disk hd;
    vmdk4_header_encode(&h, &hd);
    uint8_t area[20 * VD_SECTOR] = {0};
    memcpy(area, text, strlen(text));
    free(text);
    rc = VD_IO(vc_io, pwrite, fd, &hd, sizeof(hd), 0);
    if (rc == 0)
        rc = VD_IO(vc_io, pwrite, fd, area, sizeof(area), VD_SECTOR);
    if (rc == 0)
        rc = vd_sparse_write_tables(vc_io, fd, &l, NULL);
    if (rc == 0)
        rc = VD_IO(vc_io, truncate, fd, h.overhead * VD_SECTOR);
    if (rc == 0)
        rc = VD_IO(vc_io, flush, fd);
    VD_IO(vc_io, close, fd);
    if (rc < 0) {
        log_err("%s: writing the new image: %s", path, strerror(-rc));
        unlink(path);
    }
    return rc;
}

static int vd_fill_zero(int fd, uint64_t size, const char *path)
{
    size_t bs = 1 << 20;
    uint8_t *z = calloc(1, bs);
    if (!z)
        return -ENOMEM;
    int rc = 0;
    for (uint64_t off = 0; off < size && rc == 0; off += bs)
        rc = VD_IO(vc_io, pwrite, fd, z, (size_t)MIN(bs, size - off), off);
    free(z);
    if (rc < 0)
        log_err("%s: writing zeroes: %s", path, strerror(-rc));
    return rc;
}

static int vd_create_flat(const char *path, const struct vd_create_opts *o, uint64_t cap)
{
    const char *base = vd_basename(path);
    size_t bl = strlen(base);
    if (bl > 5 && strcmp(base + bl - 5, ".vmdk") == 0)
        bl -= 5;
    char *flatname = NULL, *flatpath = NULL;
    if (asprintf(&flatname, "%.*s-flat.vmdk", (int)bl, base) < 0)
        return -ENOMEM;
    if (asprintf(&flatpath, "%.*s%s", (int)(base - path), path, flatname) < 0) {
        free(flatname);
        return -ENOMEM;
    }
    struct vmdk_desc d;
    int rc = vd_desc_init(&d, o, cap, "monolithicFlat");
    if (rc == 0)
        rc = vd_add_extent(&d, VMDK_EXT_FLAT, cap, flatname);
    char *text = rc == 0 ? vmdk_desc_emit_sealed(&d) : NULL;
    vmdk_desc_free(&d);
    int dfd = -1, ffd = -1;
    bool made_desc = false, made_flat = false;
    if (!text) {
        rc = rc < 0 ? rc : -ENOMEM;
        goto out;
    }
    rc = vd_create_file(path, &dfd);
    if (rc < 0)
        goto out;
    made_desc = true;
    rc = vd_create_file(flatpath, &ffd);
    if (rc < 0)
        goto out;
    made_flat = true;
    uint64_t size = cap * VD_SECTOR;
    rc = VD_IO(vc_io, allocate, ffd, 0, size);
    if (rc < 0)
        rc = VD_IO(vc_io, truncate, ffd, size);
    if (rc < 0) {
        log_err("%s: allocating %" PRIu64 " bytes: %s", flatpath, size, strerror(-rc));
        goto out;
    }
    if (o->type == VD_TYPE_EAGER && (rc = vd_fill_zero(ffd, size, flatpath)) < 0)
        goto out;
    rc = VD_IO(vc_io, pwrite, dfd, text, strlen(text), 0);
    if (rc == 0)
        rc = VD_IO(vc_io, flush, ffd);
    if (rc == 0)
        rc = VD_IO(vc_io, flush, dfd);
    if (rc < 0)
        log_err("%s: writing the descriptor: %s", path, strerror(-rc));
out:
    if (dfd >= 0)
        VD_IO(vc_io, close, dfd);
    if (ffd >= 0)
        VD_IO(vc_io, close, ffd);
    if (rc < 0) {
        if (made_desc)
            unlink(path);
        if (made_flat)
            unlink(flatpath);
    }
    free(text);
    free(flatname);
    free(flatpath);
    return rc;
}

bool vmdk_adapter_known(const char *a)
{
    static const char *const known[] = {"ide", "lsilogic", "buslogic", "legacyESX"};
    for (size_t i = 0; a && i < ARRAY_SIZE(known); i++)
        if (strcmp(a, known[i]) == 0)
            return true;
    return false;
}

int vmdk_create(const char *path, const struct vd_create_opts *o)
{
    if (o->size == 0 || o->size > (1ull << 50)) {
        log_err("%s: size %" PRIu64 " out of range (1 byte to 1 PiB)", path, o->size);
        return -EINVAL;
    }
    const char *ad = o->adapter ? o->adapter : "lsilogic";
    if (!vmdk_adapter_known(ad)) {
        log_err("%s: adapter type \"%s\" unknown (ide, lsilogic, buslogic, legacyESX: the "
                "values QEMU and the VMDK specification know; a PVSCSI controller takes a "
                "lsilogic disk)",
                path, ad);
        return -EINVAL;
    }
    if (o->type == VD_TYPE_STREAM) {
        log_err("%s: streamOptimized images are written by convert, not created empty", path);
        return -EINVAL;
    }
    if (o->parent_hint && o->type != VD_TYPE_THIN) {
        log_err("%s: a delta disk (with a parent) must be thin", path);
        return -EINVAL;
    }
    uint64_t cap = DIV_ROUND_UP(o->size, VD_SECTOR);
    if (o->type == VD_TYPE_THIN)
        return vd_create_sparse(path, o, cap);
    return vd_create_flat(path, o, cap);
}

int vd_create(const char *path, const struct vd_create_opts *o)
{
    return vmdk_create(path, o);
}

/* ---------------------------------------------------------------- resize */

static int vd_resize_sparse(struct vd_image *img, uint64_t cap)
{
    struct vmdk_extent *e = &img->ext[0];
    struct vmdk_sparse *sp = e->sp;
    if (sp->compressed || sp->h.grain_size != 128 || sp->h.num_gtes_per_gt != 512) {
        log_err("%s: resize needs 64 KiB grains, 512 entries per table and no compression",
                img->path);
        return -ENOTSUP;
    }
    uint64_t old_grains = DIV_ROUND_UP(sp->h.capacity, 128);
    uint64_t new_grains = DIV_ROUND_UP(cap, 128);
    /* Shrink: zero the tail of a kept partial grain so a later grow reads zeroes. */
    if (cap < sp->h.capacity && cap % 128) {
        uint64_t tail = cap * VD_SECTOR, n = new_grains * sp->grain_bytes - tail;
        uint32_t v = sp->gt[new_grains - 1];
        if (v > 1) {
            uint8_t *z = calloc(1, n);
            if (!z)
                return -ENOMEM;
            int rc = VD_IO(e->io, pwrite, e->fd, z, n,
                           (uint64_t)v * VD_SECTOR + (tail % sp->grain_bytes));
            free(z);
            if (rc < 0)
                return rc;
        }
    }
    /* Grow a delta: the new area must read zeroes, not the parent's bytes
     * (after a shrink the parent still holds data there). The grain at the
     * old end is allocated with its own bytes and zeroes past the old end;
     * whole grains past it that the parent covers become zeroed-grain
     * entries in the new tables, so the header switch publishes both. */
    uint64_t gb = sp->grain_bytes, old_bytes = sp->h.capacity * VD_SECTOR;
    struct vd_image *par = img->parent;
    bool hide = cap > sp->h.capacity && par && par->size > old_bytes;
    if (hide && !sp->zero_grain) {
        log_err("%s: growing a delta whose grain tables have no zeroed-grain entries (version 1) "
                "would show the parent's data past the old end; convert it first",
                img->path);
        return -ENOTSUP;
    }
    if (hide && old_bytes % gb && sp->gt[old_bytes / gb] == 0) {
        uint64_t g0 = old_bytes / gb * gb;
        uint8_t *b = malloc(gb);
        if (!b)
            return -ENOMEM;
        int rc = vd_pread(img, b, old_bytes - g0, g0);
        if (rc == 0)
            rc = vd_pwrite(img, b, old_bytes - g0, g0, 0);
        free(b);
        if (rc < 0)
            return rc;
    }
    if (hide) {
        int rc = vd_flush(img);
        if (rc < 0)
            return rc;
    }
    struct vd_sparse_layout l;
    vd_sparse_layout(cap, DIV_ROUND_UP(sp->file_end, VD_SECTOR), &l);
    if (l.end > UINT32_MAX) {
        log_err("%s: the file would pass 2 TiB", img->path);
        return -EFBIG;
    }
    uint32_t *gt = calloc(l.gt_count * 512, 4);
    if (!gt)
        return -ENOMEM;
    memcpy(gt, sp->gt, MIN(old_grains, new_grains) * 4);
    for (uint64_t g = DIV_ROUND_UP(old_bytes, gb); hide && g < new_grains && g * gb < par->size;
         g++)
        gt[g] = VMDK_GTE_ZEROED;
    int rc = vd_sparse_write_tables(e->io, e->fd, &l, gt);
    free(gt);
    /* the tables sit past the grains: the close must not cut them off */
    pthread_mutex_lock(&sp->alloc_lock);
    sp->file_end = MAX(sp->file_end, l.end * VD_SECTOR);
    pthread_mutex_unlock(&sp->alloc_lock);
    if (rc == 0)
        rc = VD_IO(e->io, flush, e->fd);
    if (rc < 0) {
        log_err("%s: writing new grain tables: %s", img->path, strerror(-rc));
        return rc;
    }
    struct vmdk4_header h = sp->h;
    h.capacity = cap;
    h.gd_offset = l.gd;
    h.rgd_offset = l.rgd;
    h.flags |= VMDK4_FLAG_RGD;
    struct vmdk4_header_disk hd;
    vmdk4_header_encode(&h, &hd);
    rc = VD_IO(e->io, pwrite, e->fd, &hd, sizeof(hd), 0);
    if (rc == 0)
        rc = VD_IO(e->io, flush, e->fd);
    if (rc < 0)
        log_err("%s: writing the header: %s", img->path, strerror(-rc));
    return rc;
}

int vd_resize(const char *path, uint64_t size, unsigned flags)
{
    struct vd_image *img;
    bool allow_shrink = (flags & VD_RESIZE_SHRINK) != 0;
    int rc = vd_open(path, flags & (VD_OPEN_RAW | VD_OPEN_VMDK), &img);
    if (rc < 0)
        return rc;
    uint64_t cap = DIV_ROUND_UP(size, VD_SECTOR);
    if (img->kind == VD_KIND_VMDK)
        size = cap * VD_SECTOR;
    if (size == 0 || size > (1ull << 50)) {
        log_err("%s: size %" PRIu64 " out of range", path, size);
        rc = -EINVAL;
        goto out;
    }
    if (size < img->size && !allow_shrink) {
        log_err("%s: new size %" PRIu64 " is smaller than the current %" PRIu64 " bytes; data "
                "past it would be lost (use --shrink)",
                path, size, img->size);
        rc = -EINVAL;
        goto out;
    }
    if (img->kind == VD_KIND_RAW) {
        if ((rc = VD_IO(img->io, truncate, img->fd, size)) < 0) {
            log_err("%s: truncate: %s", path, strerror(-rc));
        }
        goto out;
    }
    if (img->n_ext != 1 || (img->desc.n_ext > 1)) {
        log_err("%s: resize of a %d-extent image (createType %s) is not supported", path,
                img->n_ext, img->desc.create_type);
        rc = -ENOTSUP;
        goto out;
    }
    struct vmdk_extent *e = &img->ext[0];
    if (e->type == VMDK_EXT_SPARSE) {
        rc = vd_resize_sparse(img, cap);
    } else if (e->type == VMDK_EXT_FLAT || e->type == VMDK_EXT_VMFS) {
        uint64_t end = e->file_off + size;
        if (size > e->len && VD_IO(img->io, allocate, e->fd, e->file_off, size) < 0)
            rc = VD_IO(img->io, truncate, e->fd, end);
        if (rc == 0 && size < e->len)
            rc = VD_IO(img->io, truncate, e->fd, end);
        if (rc < 0)
            log_err("%s: resizing %s: %s", path, e->path, strerror(-rc));
    } else {
        rc = -ENOTSUP;
    }
    if (rc < 0)
        goto out;
    if (img->desc.n_ext == 1)
        img->desc.ext[0].sectors = cap;
    const char *heads = vmdk_desc_ddb_get(&img->desc, "ddb.geometry.heads");
    if (heads && vmdk_desc_ddb_get(&img->desc, "ddb.geometry.cylinders")) {
        unsigned long hn = strtoul(heads, NULL, 10);
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRIu64,
                 vmdk_geometry_cylinders(cap, hn && hn <= 255 ? (unsigned)hn : 255));
        rc = vmdk_desc_ddb_set(&img->desc, "ddb.geometry.cylinders", buf);
    }
    if (rc == 0)
        rc = vmdk_desc_write(img);
out:
    vd_close(img);
    return rc;
}
