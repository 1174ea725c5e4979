/* vmdk_stream.c: write a streamOptimized VMDK (the OVF/OVA export format)
 * from any image, in one sequential pass. Reading them is in
 * vmdk_sparse.c (compressed grains, footer).
 *
 * Design notes
 * - Layout, as VMware's Virtual Disk Format 1.1 describes it: header
 *   (gdOffset = "at end", version 3, flags compressed + markers), embedded
 *   descriptor, then from sector 128: one grain marker (LBA, compressed
 *   size) + zlib data per non-zero grain, padded to a sector; then for each
 *   grain table holding entries a GT marker + the table; a GD marker + the
 *   directory; a footer marker + a copy of the header with the real
 *   gdOffset; an end-of-stream marker. Grains that read as zeroes are not
 *   stored.
 * - One pass, append-only, so the output can go to a pipe-like target;
 *   memory is the grain tables (4 bytes per grain) plus two grain buffers.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "le.h"
#include "log.h"
#include "progress.h"
#include "util.h"
#include "vdisk_internal.h"

#define VMDK_MARKER_EOS 0
#define VMDK_MARKER_GT 1
#define VMDK_MARKER_GD 2
#define VMDK_MARKER_FOOTER 3

static int vd_stream_meta_marker(int fd, uint64_t *pos, uint64_t sectors, uint32_t type)
{
    uint8_t m[512] = {0};
    le64_put(m, sectors);
    le32_put(m + 12, type);
    int rc = pwrite_full(fd, m, sizeof(m), *pos);
    *pos += sizeof(m);
    return rc;
}

int vd_stream_write(struct vd_image *src, const char *path, const char *adapter, bool progress)
{
    const uint64_t gs = 128, gb = gs * VD_SECTOR, per = 512;
    uint64_t cap = DIV_ROUND_UP(vd_size(src), VD_SECTOR);
    uint64_t grains = DIV_ROUND_UP(cap, gs);
    uint64_t ngt = DIV_ROUND_UP(grains, per);
    uint32_t *gt = calloc(ngt * per, 4);
    uint8_t *raw = malloc(gb);
    uLong zcap = compressBound((uLong)gb);
    uint8_t *z = malloc(12 + zcap + VD_SECTOR);
    char *text = NULL;
    int fd = -1, rc = 0;
    if (!gt || !raw || !z) {
        rc = -ENOMEM;
        goto out;
    }
    struct vmdk_desc d = {0};
    d.version = 1;
    d.cid = vmdk_random_cid();
    d.parent_cid = 0xffffffffu;
    struct vmdk_desc_extent e = {.access = VMDK_ACC_RW, .type = VMDK_EXT_SPARSE, .sectors = cap};
    const char *slash = strrchr(path, '/');
    e.fname = (char *)(slash ? slash + 1 : path);
    d.ext = &e;
    d.n_ext = 1;
    rc = vmdk_desc_set_str(&d.create_type, "streamOptimized");
    if (rc == 0)
        rc = vmdk_desc_ddb_set(&d, "ddb.virtualHWVersion", "4");
    if (rc == 0)
        rc = vmdk_desc_ddb_set(&d, "ddb.adapterType", adapter ? adapter : "lsilogic");
    text = rc == 0 ? vmdk_desc_emit(&d) : NULL;
    d.ext = NULL;
    d.n_ext = 0;
    vmdk_desc_free(&d);
    if (!text) {
        rc = rc < 0 ? rc : -ENOMEM;
        goto out;
    }
    if (strlen(text) >= 20 * VD_SECTOR) {
        rc = -ENAMETOOLONG;
        goto out;
    }
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        log_err("%s: cannot create: %s", path, strerror(-rc));
        goto out;
    }
    struct vmdk4_header h = {
        .version = 3,
        .flags = VMDK4_FLAG_NL_DETECT | VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER,
        .capacity = cap,
        .grain_size = gs,
        .desc_offset = 1,
        .desc_size = 20,
        .num_gtes_per_gt = (uint32_t)per,
        .gd_offset = VMDK4_GD_AT_END,
        .overhead = 128,
        .compress_algorithm = VMDK4_COMPRESS_DEFLATE,
    };
    struct vmdk4_header_disk hd;
    vmdk4_header_encode(&h, &hd);
    uint8_t area[20 * VD_SECTOR] = {0};
    memcpy(area, text, strlen(text));
    rc = pwrite_full(fd, &hd, sizeof(hd), 0);
    if (rc == 0)
        rc = pwrite_full(fd, area, sizeof(area), VD_SECTOR);
    uint64_t pos = h.overhead * VD_SECTOR;
    struct progress pr;
    progress_start(&pr, "convert", vd_size(src), progress);
    for (uint64_t g = 0; g < grains && rc == 0; g++) {
        uint64_t off = g * gb, n = MIN(gb, vd_size(src) - off);
        uint64_t st_len;
        unsigned st;
        rc = vd_block_status(src, off, n, &st_len, &st);
        if (rc < 0)
            break;
        if ((st & VD_STATUS_ZERO) && st_len == n)
            continue;
        memset(raw, 0, gb);
        rc = vd_pread(src, raw, n, off);
        if (rc < 0 || vd_buf_is_zero(raw, gb))
            continue;
        uLongf zl = zcap;
        if (compress2(z + 12, &zl, raw, (uLong)gb, Z_DEFAULT_COMPRESSION) != Z_OK) {
            log_err("%s: deflate of grain %" PRIu64 " failed", path, g);
            rc = -EIO;
            break;
        }
        le64_put(z, g * gs);
        le32_put(z + 8, (uint32_t)zl);
        size_t total = (size_t)ROUND_UP(12 + zl, VD_SECTOR);
        memset(z + 12 + zl, 0, total - 12 - zl);
        if (pos / VD_SECTOR > UINT32_MAX) {
            rc = -EFBIG;
            break;
        }
        gt[g] = (uint32_t)(pos / VD_SECTOR);
        rc = pwrite_full(fd, z, total, pos);
        pos += total;
        progress_update(&pr, off + n);
    }
    progress_finish(&pr);
    /* grain tables, directory, footer, end of stream */
    uint32_t *gd = calloc(ngt, 4);
    uint8_t *tbl = malloc(per * 4);
    if (rc == 0 && (!gd || !tbl))
        rc = -ENOMEM;
    for (uint64_t t = 0; t < ngt && rc == 0; t++) {
        bool any = false;
        for (uint64_t i = 0; i < per; i++) {
            le32_put(tbl + i * 4, gt[t * per + i]);
            any |= gt[t * per + i] != 0;
        }
        if (!any)
            continue;
        rc = vd_stream_meta_marker(fd, &pos, per * 4 / VD_SECTOR, VMDK_MARKER_GT);
        gd[t] = (uint32_t)(pos / VD_SECTOR);
        if (rc == 0)
            rc = pwrite_full(fd, tbl, per * 4, pos);
        pos += per * 4;
    }
    uint64_t gd_sectors = DIV_ROUND_UP(ngt * 4, VD_SECTOR);
    if (rc == 0)
        rc = vd_stream_meta_marker(fd, &pos, gd_sectors, VMDK_MARKER_GD);
    h.gd_offset = pos / VD_SECTOR;
    if (rc == 0) {
        uint8_t *gdb = calloc(gd_sectors, VD_SECTOR);
        if (!gdb)
            rc = -ENOMEM;
        for (uint64_t t = 0; rc == 0 && t < ngt; t++)
            le32_put(gdb + t * 4, gd[t]);
        if (rc == 0)
            rc = pwrite_full(fd, gdb, gd_sectors * VD_SECTOR, pos);
        pos += gd_sectors * VD_SECTOR;
        free(gdb);
    }
    if (rc == 0)
        rc = vd_stream_meta_marker(fd, &pos, 1, VMDK_MARKER_FOOTER);
    if (rc == 0) {
        vmdk4_header_encode(&h, &hd);
        rc = pwrite_full(fd, &hd, sizeof(hd), pos);
        pos += sizeof(hd);
    }
    if (rc == 0)
        rc = vd_stream_meta_marker(fd, &pos, 0, VMDK_MARKER_EOS);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    free(gd);
    free(tbl);
out:
    if (rc < 0 && fd >= 0) {
        log_err("%s: writing the streamOptimized image: %s", path, strerror(-rc));
        unlink(path);
    }
    if (fd >= 0)
        close(fd);
    free(text);
    free(gt);
    free(raw);
    free(z);
    return rc;
}
