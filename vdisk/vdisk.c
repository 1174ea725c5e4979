/* vdisk.c: vd_open dispatch, raw images, and the extent-walking I/O core
 * shared by every VMDK flavour.
 *
 * Design notes
 * - An image is a list of extents covering [0, size). Every I/O call walks
 *   the request extent by extent; inside an extent, vd_map_local() says for
 *   a prefix of the range whether it is data at some file offset, zeroes,
 *   unallocated (ask the parent) or a compressed grain. Reads follow the
 *   map; writes go to the extent type's writer (flat: pwrite; sparse: grain
 *   allocation in vmdk_sparse.c).
 * - No global lock on the I/O path. Raw and flat I/O are plain pread/pwrite.
 *   Sparse extents keep all grain tables in memory, read entries with
 *   atomic loads, and take a striped lock only to allocate or zero a grain.
 * - Parents are opened read-only; a read of an unallocated range recurses
 *   into the parent, clipped to the parent's size (a grown child reads
 *   zeroes past the parent's end).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk_internal.h"

static int vd_flush_unlocked(struct vd_image *img);

struct vd_image *vd_image_alloc(const char *path, unsigned flags)
{
    struct vd_image *img = calloc(1, sizeof(*img));
    if (!img)
        return NULL;
    img->path = strdup(path);
    const char *slash = strrchr(path, '/');
    img->dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup("");
    if (!img->path || !img->dir) {
        free(img->path);
        free(img->dir);
        free(img);
        return NULL;
    }
    img->flags = flags;
    img->ro = (flags & VD_OPEN_RDONLY) != 0;
    img->io = &vd_io_posix;
    img->fd = -1;
    img->dirh = -1;
    img->gran = 4096;
    pthread_mutex_init(&img->cid_lock, NULL);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&img->io_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    return img;
}

void vd_image_free(struct vd_image *img)
{
    if (!img)
        return;
    if (img->kind == VD_KIND_VMDK)
        vmdk_close(img);
    if (img->fd >= 0)
        VD_IO(img->io, close, img->fd);
    if (img->dirh >= 0)
        VD_IO(img->io, close, img->dirh);
    if (img->parent) {
        vd_image_free(img->parent);
        img->parent = NULL;
    }
    pthread_mutex_destroy(&img->cid_lock);
    pthread_rwlock_destroy(&img->io_lock);
    free(img->path);
    free(img->dir);
    free(img->real_dir);
    for (int i = 0; i < img->n_open_roots; i++)
        free(img->open_roots[i]);
    free(img->open_roots);
    free(img);
}

struct vd_image *vd_parent(const struct vd_image *img)
{
    return img->parent;
}

bool vd_is_vmdk(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK;
}

const char *vd_create_type(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK && img->desc.create_type ? img->desc.create_type : "raw";
}

uint32_t vd_cid(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK ? img->desc.cid : 0;
}

uint32_t vd_parent_cid(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK ? img->desc.parent_cid : 0xffffffffu;
}

const char *vd_parent_hint(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK ? img->desc.parent_hint : NULL;
}

const char *vd_desc_key(const struct vd_image *img, const char *key)
{
    return img->kind == VD_KIND_VMDK ? vmdk_desc_ddb_get(&img->desc, key) : NULL;
}

uint64_t vd_allocated_bytes(const struct vd_image *img)
{
    struct vd_io_stat st;
    uint64_t n = 0;
    if (!img->desc_embedded && img->fd >= 0 && VD_IO(img->io, stat, img->fd, &st) == 0)
        n += st.blocks;
    for (int i = 0; i < img->n_ext; i++)
        if (img->ext[i].fd >= 0 && img->ext[i].fd != img->fd &&
            VD_IO(img->io, stat, img->ext[i].fd, &st) == 0)
            n += st.blocks;
    if (img->desc_embedded && img->fd >= 0 && VD_IO(img->io, stat, img->fd, &st) == 0)
        n += st.blocks;
    return n;
}

int vd_extent_count(const struct vd_image *img)
{
    return img->kind == VD_KIND_VMDK ? img->n_ext : 0;
}

int vd_extent_get(const struct vd_image *img, int i, struct vd_extent_info *out)
{
    static const char *const names[] = {[VMDK_EXT_FLAT] = "FLAT",
                                        [VMDK_EXT_SPARSE] = "SPARSE",
                                        [VMDK_EXT_ZERO] = "ZERO",
                                        [VMDK_EXT_VMFS] = "VMFS",
                                        [VMDK_EXT_VMFSSPARSE] = "VMFSSPARSE",
                                        [VMDK_EXT_SESPARSE] = "SESPARSE"};
    if (i < 0 || i >= vd_extent_count(img))
        return -EINVAL;
    const struct vmdk_extent *e = &img->ext[i];
    memset(out, 0, sizeof(*out));
    out->path = e->path;
    out->type = names[e->type];
    out->start = e->start;
    out->len = e->len;
    if (e->sp) {
        out->sparse = true;
        out->grain_size = e->sp->grain_bytes;
        out->compressed = e->sp->compressed;
        out->zeroed_grain = e->sp->zero_grain;
        out->cowd = e->sp->cowd;
        out->version = e->sp->h.version;
    }
    return 0;
}

bool vd_buf_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    size_t i = 0;
    for (; i < len && (i & 7); i++)
        if (p[i])
            return false;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        if (v)
            return false;
    }
    for (; i < len; i++)
        if (p[i])
            return false;
    return true;
}

enum vd_lock_mode vd_lock_mode_for(unsigned flags, bool rw)
{
    if (flags & VD_OPEN_NOLOCK)
        return VD_LOCK_NONE;
    if (flags & VD_OPEN_SHARED)
        return VD_LOCK_SHARED;
    return rw ? VD_LOCK_WRITE : VD_LOCK_READ;
}

int vd_close(struct vd_image *img)
{
    if (!img)
        return 0;
    int rc = img->ro ? 0 : vd_flush_unlocked(img);
    vd_image_free(img);
    return rc;
}

uint64_t vd_size(const struct vd_image *img)
{
    return img->size;
}

bool vd_is_readonly(const struct vd_image *img)
{
    return img->ro;
}

const char *vd_path(const struct vd_image *img)
{
    return img->path;
}

uint32_t vd_granularity(const struct vd_image *img)
{
    return img->gran;
}

static int vd_check_range(const struct vd_image *img, uint64_t off, uint64_t len, const char *op)
{
    if (off > img->size || len > img->size - off) {
        log_err("%s: %s of %llu bytes at offset %llu is past the end (size %llu)", img->path, op,
                (unsigned long long)len, (unsigned long long)off, (unsigned long long)img->size);
        return -EINVAL;
    }
    return 0;
}

static struct vmdk_extent *vd_extent_find(struct vd_image *img, uint64_t off)
{
    int lo = 0, hi = img->n_ext - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (img->ext[mid].start <= off)
            lo = mid;
        else
            hi = mid - 1;
    }
    return &img->ext[lo];
}

int vd_map_local(struct vd_image *img, uint64_t off, uint64_t len, struct vd_map *m)
{
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    if (img->kind == VD_KIND_RAW) {
        m->state = VD_MAP_DATA;
        m->len = len;
        m->fd = img->fd;
        m->file_off = off;
        return 0;
    }
    struct vmdk_extent *e = vd_extent_find(img, off);
    uint64_t in = off - e->start;
    uint64_t n = MIN(len, e->len - in);
    m->ext = e;
    switch (e->type) {
    case VMDK_EXT_FLAT:
    case VMDK_EXT_VMFS:
        m->state = VD_MAP_DATA;
        m->len = n;
        m->fd = e->fd;
        m->file_off = e->file_off + in;
        return 0;
    case VMDK_EXT_ZERO:
        m->state = VD_MAP_ZERO;
        m->len = n;
        return 0;
    case VMDK_EXT_VMFSSPARSE: /* not at run time */
    case VMDK_EXT_SESPARSE:
    case VMDK_EXT_SPARSE:
        return vmdk_sparse_map(e, in, n, m);
    }
    return -EINVAL;
}

static int vd_read_mapped(struct vd_image *img, uint8_t *buf, uint64_t off, struct vd_map *m,
                          bool local)
{
    switch (m->state) {
    case VD_MAP_DATA: {
        int rc = VD_IO(img->io, pread, m->fd, buf, m->len, m->file_off);
        if (rc < 0)
            log_err("%s: read of %llu bytes at file offset %llu: %s",
                    m->ext ? m->ext->path : img->path, (unsigned long long)m->len,
                    (unsigned long long)m->file_off, strerror(-rc));
        return rc;
    }
    case VD_MAP_ZERO:
        memset(buf, 0, m->len);
        return 0;
    case VD_MAP_UNALLOC:
        if (local || !img->parent || off >= img->parent->size) {
            memset(buf, 0, m->len);
            return 0;
        } else {
            uint64_t pn = MIN(m->len, img->parent->size - off);
            if (pn < m->len)
                memset(buf + pn, 0, m->len - pn);
            return vd_pread(img->parent, buf, pn, off);
        }
    case VD_MAP_COMPRESSED: {
        struct vmdk_sparse *sp = m->ext->sp;
        uint64_t in = off - m->ext->start;
        uint64_t grain = in / sp->grain_bytes;
        uint8_t *g = malloc(sp->grain_bytes);
        if (!g)
            return -ENOMEM;
        int rc = vmdk_sparse_read_compressed(m->ext, m->file_off, grain, g);
        if (rc == 0)
            memcpy(buf, g + (in - grain * sp->grain_bytes), m->len);
        free(g);
        return rc;
    }
    }
    return -EINVAL;
}

static int vd_pread_common(struct vd_image *img, void *buf, size_t len, uint64_t off, bool local)
{
    int rc = vd_check_range(img, off, len, "read");
    if (rc < 0)
        return rc;
    uint8_t *p = buf;
    while (len > 0) {
        struct vd_map m;
        rc = vd_map_local(img, off, len, &m);
        if (rc < 0)
            return rc;
        rc = vd_read_mapped(img, p, off, &m, local);
        if (rc < 0)
            return rc;
        p += m.len;
        off += m.len;
        len -= m.len;
    }
    return 0;
}

/* ------------------------------------------------------- non-blocking read
 * vd_pread_nowait() serves a read only if it needs no disk I/O: the mapping
 * is in memory (raw, flat, zero extents; sparse grain tables are loaded at
 * open and read with atomic loads, no lock), and each data piece is read
 * with preadv2(RWF_NOWAIT), which copies from the page cache or fails with
 * EAGAIN (a miss starts readahead, it does not wait for it). Anything else
 * (a compressed grain: inflate is a blocking pread plus CPU; a short read; a
 * filesystem without RWF_NOWAIT; an I/O error) is -EAGAIN, silently: the
 * caller retries with vd_pread, which does the work and logs the error.
 * Tests make preadv2 miss through a link-time seam (test-nowait.h), not a
 * hook here. */

static int vd_pread_nowait_common(struct vd_image *img, uint8_t *p, size_t len, uint64_t off)
{
    if (off > img->size || len > img->size - off)
        return -EINVAL;
    while (len > 0) {
        struct vd_map m;
        int rc = vd_map_local(img, off, len, &m);
        if (rc < 0)
            return -EAGAIN;
        switch (m.state) {
        case VD_MAP_DATA:
            rc = img->io->ops->pread_nowait
                     ? VD_IO(img->io, pread_nowait, m.fd, p, m.len, m.file_off)
                     : -EAGAIN;
            if (rc < 0)
                rc = -EAGAIN;
            break;
        case VD_MAP_ZERO:
            memset(p, 0, m.len);
            break;
        case VD_MAP_UNALLOC:
            if (!img->parent || off >= img->parent->size) {
                memset(p, 0, m.len);
            } else {
                uint64_t pn = MIN(m.len, img->parent->size - off);
                if (pn < m.len)
                    memset(p + pn, 0, m.len - pn);
                rc = vd_pread_nowait_common(img->parent, p, pn, off);
            }
            break;
        case VD_MAP_COMPRESSED:
            rc = -EAGAIN;
            break;
        }
        if (rc < 0)
            return rc;
        p += m.len;
        off += m.len;
        len -= m.len;
    }
    return 0;
}

static int vd_pread_nowait_unlocked(struct vd_image *img, void *buf, size_t len, uint64_t off)
{
    return vd_pread_nowait_common(img, buf, len, off);
}

static int vd_pread_unlocked(struct vd_image *img, void *buf, size_t len, uint64_t off)
{
    return vd_pread_common(img, buf, len, off, false);
}

int vd_pread_local(struct vd_image *img, void *buf, size_t len, uint64_t off)
{
    return vd_pread_common(img, buf, len, off, true);
}

int vd_sync_failed(struct vd_image *img)
{
    int err = __atomic_load_n(&img->sync_err, __ATOMIC_ACQUIRE);
    if (err == 0)
        return 0;
    log_err("%s: an earlier flush failed (%s): writes made before it may not be on disk, so "
            "every flush fails until the image is closed, checked (vdisk check) and reopened",
            img->path, strerror(-err));
    return -EIO;
}

int vd_sync_fd(struct vd_image *img, int fd, const char *path)
{
    if (fd < 0)
        return 0;
    int rc = vd_sync_failed(img);
    if (rc < 0)
        return rc;
    rc = VD_IO(img->io, flush, fd); /* special files (EINVAL, EROFS): 0 */
    if (rc == 0)
        return 0;
    int zero = 0;
    __atomic_compare_exchange_n(&img->sync_err, &zero, rc, false, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
    log_err("%s: fdatasync: %s (every later flush of %s fails until it is reopened)", path,
            strerror(-rc), img->path);
    return rc;
}

static int vd_fd_sync(struct vd_image *img, int fd, const char *path)
{
    return vd_sync_fd(img, fd, path);
}

static int vd_flush_unlocked(struct vd_image *img)
{
    if (img->ro)
        return 0;
    int rc = vd_fd_sync(img, img->fd, img->path);
    for (int i = 0; i < img->n_ext && rc == 0; i++) {
        struct vmdk_extent *e = &img->ext[i];
        if (e->type == VMDK_EXT_SPARSE && e->sp && e->fd >= 0)
            rc = vmdk_sparse_flush(e); /* data, then the deferred GT entries */
        else
            rc = vd_fd_sync(img, e->fd, e->path);
    }
    return rc;
}

static int vd_writable_extent(struct vd_image *img, struct vmdk_extent *e)
{
    if (e->access != VMDK_ACC_RW) {
        log_err("%s: extent %s is not writable (access is %s)", img->path,
                e->path ? e->path : "ZERO", e->access == VMDK_ACC_RDONLY ? "RDONLY" : "NOACCESS");
        return -EROFS;
    }
    if (e->type == VMDK_EXT_ZERO) {
        log_err("%s: cannot write into a ZERO extent at offset %llu", img->path,
                (unsigned long long)e->start);
        return -EROFS;
    }
    if (e->type == VMDK_EXT_SPARSE && e->sp->sesparse) {
        log_err("%s: %s: writing into seSparse extents is not supported (they are read as "
                "parents; write to a delta above)",
                img->path, e->path);
        return -ENOTSUP;
    }
    if (e->type == VMDK_EXT_SPARSE && e->sp->cowd) {
        log_err("%s: %s: writing into vmfsSparse (COWD) extents is not supported", img->path,
                e->path);
        return -ENOTSUP;
    }
    if (e->type == VMDK_EXT_SPARSE && e->sp->compressed) {
        log_err("%s: %s: writing into streamOptimized (compressed) extents is not supported",
                img->path, e->path);
        return -ENOTSUP;
    }
    return 0;
}

/* Refuse before anything (the CID update included) is written. */
static int vd_writable_range(struct vd_image *img, uint64_t off, uint64_t len)
{
    while (len > 0) {
        struct vmdk_extent *e = vd_extent_find(img, off);
        uint64_t n = MIN(len, e->len - (off - e->start));
        int rc = vd_writable_extent(img, e);
        if (rc < 0)
            return rc;
        off += n;
        len -= n;
    }
    return 0;
}

/* A raw image whose format was probed (not given): refuse a write that
 * would make sector 0 probe as a VMDK on the next open, where the guest
 * would choose the parent and the extents (QEMU refuses the same). */
static int vd_raw_guard_sector0(struct vd_image *img, const void *buf, size_t len, uint64_t off)
{
    uint8_t s0[VD_SECTOR];
    size_t n = (size_t)MIN(img->size, VD_SECTOR);
    int rc = VD_IO(img->io, pread, img->fd, s0, n, 0);
    if (rc < 0) {
        log_err("%s: read of sector 0: %s", img->path, strerror(-rc));
        return rc;
    }
    memcpy(s0 + off, buf, MIN(len, n - off));
    if (vd_probe_is_vmdk(s0, n)) {
        log_err("%s: write to sector 0 refused: it would make this raw image (format probed, "
                "not given) look like a VMDK; open it with --format raw to allow it",
                img->path);
        return -EPERM;
    }
    return 0;
}

static int vd_pwrite_unlocked(struct vd_image *img, const void *buf, size_t len, uint64_t off,
                              unsigned flags)
{
    if (img->ro) {
        log_err("%s: image is open read-only", img->path);
        return -EROFS;
    }
    int rc = vd_check_range(img, off, len, "write");
    if (rc < 0)
        return rc;
    if (img->kind == VD_KIND_RAW) {
        if (img->probed_raw && off < VD_SECTOR &&
            (rc = vd_raw_guard_sector0(img, buf, len, off)) < 0)
            return rc;
        rc = VD_IO(img->io, pwrite, img->fd, buf, len, off);
        if (rc < 0) {
            log_err("%s: write of %zu bytes at offset %llu: %s", img->path, len,
                    (unsigned long long)off, strerror(-rc));
            return rc;
        }
        return (flags & VD_FUA) ? vd_fd_sync(img, img->fd, img->path) : 0;
    }
    rc = vd_writable_range(img, off, len);
    if (rc == 0)
        rc = vmdk_cid_touch(img);
    if (rc < 0)
        return rc;
    const uint8_t *p = buf;
    while (len > 0) {
        struct vmdk_extent *e = vd_extent_find(img, off);
        uint64_t in = off - e->start;
        uint64_t n = MIN(len, e->len - in);
        rc = vd_writable_extent(img, e);
        if (rc < 0)
            return rc;
        if (e->type == VMDK_EXT_SPARSE) {
            rc = vmdk_sparse_write(img, e, p, n, in, flags);
        } else {
            rc = VD_IO(img->io, pwrite, e->fd, p, n, e->file_off + in);
            if (rc < 0)
                log_err("%s: write of %llu bytes at file offset %llu: %s", e->path,
                        (unsigned long long)n, (unsigned long long)(e->file_off + in),
                        strerror(-rc));
            else if (flags & VD_FUA)
                rc = vd_fd_sync(img, e->fd, e->path);
        }
        if (rc < 0)
            return rc;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Zero a range of a plain file: punch (or ZERO_RANGE when keep_alloc),
 * falling back to writing zeroes, 1 MiB at a time; with `fast` (FAST_ZERO)
 * -ENOTSUP instead of the fallback. */
static int vd_fd_zero(const struct vd_io *io, int fd, const char *path, uint64_t off, uint64_t len,
                      bool keep_alloc, bool fast)
{
    int rc = VD_IO(io, punch, fd, off, len, keep_alloc);
    if (rc == 0)
        return 0;
    if (rc != -EOPNOTSUPP) {
        log_err("%s: fallocate of %llu bytes at %llu: %s", path, (unsigned long long)len,
                (unsigned long long)off, strerror(-rc));
        return rc;
    }
    if (fast)
        return -ENOTSUP;
    static const uint8_t zero[1 << 20];
    while (len > 0) {
        size_t n = (size_t)MIN(len, sizeof(zero));
        rc = VD_IO(io, pwrite, fd, zero, n, off);
        if (rc < 0) {
            log_err("%s: write of zeroes at %llu: %s", path, (unsigned long long)off,
                    strerror(-rc));
            return rc;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int vd_write_zeroes_unlocked(struct vd_image *img, uint64_t off, uint64_t len,
                                    unsigned flags)
{
    if (img->ro) {
        log_err("%s: image is open read-only", img->path);
        return -EROFS;
    }
    int rc = vd_check_range(img, off, len, "write zeroes");
    if (rc < 0 || len == 0)
        return rc;
    if (img->kind == VD_KIND_RAW) {
        rc = vd_fd_zero(img->io, img->fd, img->path, off, len, (flags & VD_NO_HOLE) != 0,
                        (flags & VD_ZERO_FAST) != 0);
        return (rc == 0 && (flags & VD_FUA)) ? vd_fd_sync(img, img->fd, img->path) : rc;
    }
    rc = vd_writable_range(img, off, len);
    if (rc == 0)
        rc = vmdk_cid_touch(img);
    if (rc < 0)
        return rc;
    while (len > 0) {
        struct vmdk_extent *e = vd_extent_find(img, off);
        uint64_t in = off - e->start;
        uint64_t n = MIN(len, e->len - in);
        rc = vd_writable_extent(img, e);
        if (rc < 0)
            return rc;
        if (e->type == VMDK_EXT_SPARSE) {
            rc = vmdk_sparse_zero(img, e, in, n, flags);
        } else {
            /* flat stays allocated */
            rc = vd_fd_zero(img->io, e->fd, e->path, e->file_off + in, n, true,
                            (flags & VD_ZERO_FAST) != 0);
            if (rc == 0 && (flags & VD_FUA))
                rc = vd_fd_sync(img, e->fd, e->path);
        }
        if (rc < 0)
            return rc;
        off += n;
        len -= n;
    }
    return 0;
}

static int vd_discard_unlocked(struct vd_image *img, uint64_t off, uint64_t len)
{
    if (img->kind == VD_KIND_RAW || img->ro)
        return vd_write_zeroes_unlocked(img, off, len, 0);
    int rc = vd_check_range(img, off, len, "discard");
    if (rc < 0 || len == 0)
        return rc;
    rc = vd_writable_range(img, off, len);
    if (rc == 0)
        rc = vmdk_cid_touch(img);
    while (len > 0 && rc == 0) {
        struct vmdk_extent *e = vd_extent_find(img, off);
        uint64_t in = off - e->start;
        uint64_t n = MIN(len, e->len - in);
        if (e->type == VMDK_EXT_SPARSE)
            rc = vmdk_sparse_discard(img, e, in, n);
        else /* flat stays allocated */
            rc = vd_fd_zero(img->io, e->fd, e->path, e->file_off + in, n, true, false);
        off += n;
        len -= n;
    }
    return rc;
}

/* Status of a prefix of [off, off+len) of a plain file: data or hole. */
static int vd_fd_status(const struct vd_io *io, int fd, uint64_t off, uint64_t len, uint64_t *n,
                        unsigned *status)
{
    uint64_t d, h;
    int rc = VD_IO(io, seek, fd, off, true, &d);
    if (rc < 0) {
        if (rc == -ENXIO) { /* hole to EOF */
            *n = len;
            *status = VD_STATUS_HOLE | VD_STATUS_ZERO;
            return 0;
        }
        *n = len; /* no SEEK_DATA: all data */
        *status = 0;
        return 0;
    }
    if (d > off) {
        *n = MIN(len, d - off);
        *status = VD_STATUS_HOLE | VD_STATUS_ZERO;
        return 0;
    }
    if (VD_IO(io, seek, fd, off, false, &h) < 0 || h <= off)
        *n = len;
    else
        *n = MIN(len, h - off);
    *status = 0;
    return 0;
}

/* One step of block status, not merged. */
static int vd_status_step(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *n,
                          unsigned *status)
{
    struct vd_map m;
    int rc = vd_map_local(img, off, len, &m);
    if (rc < 0)
        return rc;
    *n = m.len;
    switch (m.state) {
    case VD_MAP_DATA:
        if (img->kind == VD_KIND_RAW || (m.ext && m.ext->type != VMDK_EXT_SPARSE)) {
            rc = vd_fd_status(img->io, m.fd, m.file_off, m.len, n, status);
            if (rc == 0 && (*status & VD_STATUS_HOLE) && img->kind != VD_KIND_RAW)
                *status = VD_STATUS_ZERO; /* a flat extent is allocated to the guest */
            return rc;
        }
        *status = 0;
        return 0;
    case VD_MAP_COMPRESSED:
        *status = 0;
        return 0;
    case VD_MAP_ZERO:
        *status = VD_STATUS_ZERO;
        return 0;
    case VD_MAP_UNALLOC:
        if (!img->parent || off >= img->parent->size) {
            *status = VD_STATUS_HOLE | VD_STATUS_ZERO;
            return 0;
        }
        return vd_status_step(img->parent, off, MIN(m.len, img->parent->size - off), n, status);
    }
    return -EINVAL;
}

static int vd_block_status_unlocked(struct vd_image *img, uint64_t off, uint64_t len,
                                    uint64_t *ext_len, unsigned *status)
{
    int rc = vd_check_range(img, off, len, "block status");
    if (rc < 0)
        return rc;
    if (len == 0) {
        log_err("%s: block status of an empty range at %llu", img->path, (unsigned long long)off);
        return -EINVAL;
    }
    uint64_t n;
    unsigned st;
    rc = vd_status_step(img, off, len, &n, &st);
    if (rc < 0)
        return rc;
    uint64_t done = n;
    /* merge following pieces with the same status (bounded work per call) */
    for (int i = 0; i < 4096 && done < len; i++) {
        uint64_t n2;
        unsigned st2;
        rc = vd_status_step(img, off + done, len - done, &n2, &st2);
        if (rc < 0 || st2 != st)
            break;
        done += n2;
    }
    *ext_len = done;
    *status = st;
    return 0;
}

int vd_alloc_iterate(struct vd_image *img, vd_alloc_cb cb, void *opaque)
{
    uint64_t off = 0;
    while (off < img->size) {
        struct vd_map m;
        int rc = vd_map_local(img, off, img->size - off, &m);
        if (rc < 0)
            return rc;
        if (m.state != VD_MAP_UNALLOC) {
            rc = cb(off, m.len, m.state, opaque);
            if (rc)
                return rc;
        }
        off += m.len;
    }
    return 0;
}

int vd_copy_range(struct vd_image *src, struct vd_image *dst, uint64_t off, uint64_t len)
{
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return -ENOMEM;
    int rc = vd_pread(src, buf, len, off);
    if (rc == 0) {
        if (vd_buf_is_zero(buf, len) && !dst->parent)
            rc = 0;
        else
            rc = vd_pwrite(dst, buf, len, off, 0);
    }
    free(buf);
    return rc;
}

/* ------------------------------------------------------------- I/O gate
 * Every I/O call holds img->io_lock shared; vd_image_switch holds it
 * exclusively. The non-blocking read only tries (a switch in progress is
 * -EAGAIN: the caller retries with vd_pread, which waits). */
static int vd_io_enter(struct vd_image *img)
{
    pthread_rwlock_rdlock(&img->io_lock);
    int dead = __atomic_load_n(&img->dead, __ATOMIC_ACQUIRE);
    if (dead) {
        pthread_rwlock_unlock(&img->io_lock);
        log_err("%s: the disk could not be reopened after a snapshot operation (%s); "
                "restart the server",
                img->path, strerror(-dead));
        return -EIO;
    }
    return 0;
}

#define VD_IO_GATED(call)                                                                          \
    do {                                                                                           \
        int gate_rc_ = vd_io_enter(img);                                                           \
        if (gate_rc_ < 0)                                                                          \
            return gate_rc_;                                                                       \
        int rc_ = (call);                                                                          \
        pthread_rwlock_unlock(&img->io_lock);                                                      \
        return rc_;                                                                                \
    } while (0)

int vd_pread(struct vd_image *img, void *buf, size_t len, uint64_t off)
{
    VD_IO_GATED(vd_pread_unlocked(img, buf, len, off));
}

int vd_pread_nowait(struct vd_image *img, void *buf, size_t len, uint64_t off)
{
    if (pthread_rwlock_tryrdlock(&img->io_lock) != 0)
        return -EAGAIN;
    int rc = __atomic_load_n(&img->dead, __ATOMIC_ACQUIRE)
                 ? -EAGAIN
                 : vd_pread_nowait_unlocked(img, buf, len, off);
    pthread_rwlock_unlock(&img->io_lock);
    return rc;
}

int vd_pwrite(struct vd_image *img, const void *buf, size_t len, uint64_t off, unsigned flags)
{
    VD_IO_GATED(vd_pwrite_unlocked(img, buf, len, off, flags));
}

int vd_flush(struct vd_image *img)
{
    VD_IO_GATED(vd_flush_unlocked(img));
}

int vd_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    VD_IO_GATED(vd_write_zeroes_unlocked(img, off, len, flags));
}

int vd_discard(struct vd_image *img, uint64_t off, uint64_t len)
{
    VD_IO_GATED(vd_discard_unlocked(img, off, len));
}

int vd_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *ext_len,
                    unsigned *status)
{
    VD_IO_GATED(vd_block_status_unlocked(img, off, len, ext_len, status));
}

/* ----------------------------------------------------------- live switch */

/* Take the image locks of every file of img's chain (after a switch: the
 * new image was opened without them, while the old one held its own). */
static int vd_image_lock_chain(struct vd_image *img, unsigned flags)
{
    int rc = vd_image_lock_file(img->io, img->fd, img->path, vd_lock_mode_for(flags, !img->ro));
    for (int i = 0; i < img->n_ext && rc == 0; i++) {
        struct vmdk_extent *e = &img->ext[i];
        if (e->fd >= 0 && e->fd != img->fd) /* an embedded extent shares the top's file */
            rc = vd_image_lock_file(img->io, e->fd, e->path,
                                    vd_lock_mode_for(flags, !img->ro && e->access == VMDK_ACC_RW));
    }
    if (rc == 0 && img->parent)
        rc = vd_image_lock_chain(img->parent, (flags & ~VD_OPEN_NOLOCK) | VD_OPEN_RDONLY);
    return rc;
}

/* Exchange the open-image state (everything above cid_lock) of a and b. */
static void vd_image_exchange(struct vd_image *a, struct vd_image *b)
{
    size_t n = offsetof(struct vd_image, cid_lock);
    unsigned char t[offsetof(struct vd_image, cid_lock)];
    memcpy(t, a, n);
    memcpy(a, b, n);
    memcpy(b, t, n);
    for (int i = 0; i < a->n_ext; i++)
        a->ext[i].img = a;
    for (int i = 0; i < b->n_ext; i++)
        b->ext[i].img = b;
}

int vd_image_switch(struct vd_image *img, int (*op)(const char *path, void *arg), void *arg)
{
    pthread_rwlock_wrlock(&img->io_lock);
    int rc = __atomic_load_n(&img->dead, __ATOMIC_ACQUIRE);
    if (rc == 0)
        rc = vd_flush_unlocked(img);
    /* the file's real end for the operation's own opens (a frozen file
     * keeps no grown-ahead tail; a consolidation appends after the last
     * grain) */
    for (int i = 0; i < img->n_ext && rc == 0 && !img->ro; i++)
        if (img->ext[i].sp && img->ext[i].fd >= 0)
            rc = vmdk_sparse_trim_ahead(&img->ext[i]);
    if (rc < 0) {
        log_err("%s: not flushed (%s): the snapshot operation was not started", img->path,
                strerror(-rc));
        pthread_rwlock_unlock(&img->io_lock);
        return rc;
    }
    unsigned flags = img->flags & ~VD_OPEN_NOLOCK;
    rc = op(img->path, arg);
    /* Whatever op did (even a failed op may have committed, or changed
     * the live delta's grains through another open), the disk is what the
     * path holds now: reopen it. */
    struct vd_image *n = NULL;
    /* through the chain opener, as the first open: the same backend and
     * the same allowed roots (a changed chain is confined like any other) */
    struct vd_open_opts oo = {
        .io = img->io, .roots = (const char *const *)img->open_roots, .n_roots = img->n_open_roots};
    int orc = vd_open_ex(img->path, flags | VD_OPEN_NOLOCK, &oo, &n);
    if (orc == 0 && n->size != img->size) {
        log_err("%s: the disk is %llu bytes after the snapshot operation, %llu before: an "
                "export cannot change size; restart the server",
                img->path, (unsigned long long)n->size, (unsigned long long)img->size);
        vd_image_free(n);
        orc = -EINVAL;
    }
    if (orc < 0) {
        __atomic_store_n(&img->dead, orc, __ATOMIC_RELEASE);
        pthread_rwlock_unlock(&img->io_lock);
        return rc < 0 ? rc : orc;
    }
    vd_image_exchange(img, n);
    img->flags = flags;
    /* n now holds the old state: flushed above; its files stay as they are
     * (no cut-back of space grown ahead: another open may have appended
     * grains since, e.g. a delete consolidating into the live delta) */
    for (int i = 0; i < n->n_ext; i++)
        if (n->ext[i].sp)
            n->ext[i].sp->durable_end = 0;
    n->ro = true; /* vd_close: no flush, no write */
    vd_image_free(n);
    int lrc = vd_image_lock_chain(img, flags);
    if (lrc < 0)
        log_warn("%s: after the switch, the image locks of the new chain were not all taken: "
                 "%s",
                 img->path, strerror(-lrc));
    pthread_rwlock_unlock(&img->io_lock);
    return rc;
}
