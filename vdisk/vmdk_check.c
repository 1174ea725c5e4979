/* vmdk_check.c: `vdisk check [--repair]`.
 *
 * Design notes
 * - The checker reads the on-disk structures itself instead of going
 *   through vd_open(), because vd_open() refuses exactly the images the
 *   checker must describe. It validates: header fields, the descriptor,
 *   primary vs redundant grain directory, every grain table entry (past the
 *   end of the file, inside metadata, duplicates and overlaps, primary vs
 *   redundant table), flat extent sizes, and finally the parent chain (by
 *   opening the image read-only: missing parent, CID mismatch, loops).
 * - --repair fixes only what has one right answer:
 *     * a GT entry whose primary and redundant copies differ, both valid:
 *       the primary wins, whatever the redundant holds (0 or another valid
 *       value). The engine writes the primary first (one entry, or whole
 *       512-byte sectors of deferred entries at a flush), so a difference is
 *       a crash between the two writes, a crash leftover, not damage; QEMU
 *       reads only the primary table too. Exception: a primary 0 with a
 *       valid redundant entry takes the redundant value (a power cut can
 *       keep the redundant sector and lose the primary; both point at
 *       synced data or the grain reads zeroes);
 *     * a GT or GD entry invalid in one copy and valid in the other: copy
 *       the valid one;
 *     * an entry invalid in both copies (past the end of the file, inside
 *       metadata): cleared, so the grain reads from the parent or as
 *       zeroes instead of returning another grain's or the header's bytes;
 *     * uncleanShutdown set: cleared.
 *   Duplicates (two grains sharing file space) are reported, not repaired:
 *   no rule says which grain owns the data.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "le.h"
#include "log.h"
#include "progress.h"
#include "util.h"
#include "vdisk_internal.h"

/* bounds for a hostile header: what one check may allocate, and how many
 * grain tables (each is one read) it may walk; a 2 TiB disk of 64 KiB
 * grains and 512-entry tables has 65536 tables and needs 264 MiB */
#define VD_CHECK_MAX_BYTES (2ull << 30)
#define VD_CHECK_MAX_GTS (1u << 22)

struct vd_checker {
    struct json *j;
    struct vd_check_report *r;
    bool repair;
    bool progress;
};

/* One problem. `repairable`: --repair knows the one right fix (and applies
 * it when given: then `repaired` says whether the fix was written). */
static void vd_vproblem(struct vd_checker *c, bool repairable, bool repaired, const char *file,
                        const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    c->r->errors++;
    if (repaired)
        c->r->repaired++;
    if (repairable || repaired)
        c->r->repairable++;
    if (c->j) {
        json_obj_begin(c->j, NULL);
        json_str(c->j, "file", file);
        json_str(c->j, "problem", msg);
        json_bool(c->j, "repairable", repairable || repaired);
        json_bool(c->j, "repaired", repaired);
        json_obj_end(c->j);
    } else {
        log_warn("%s: %s%s", file, msg,
                 repaired     ? " (repaired)"
                 : repairable ? " (repairable: check --repair)"
                              : "");
    }
}

static void vd_problem(struct vd_checker *c, bool repaired, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void vd_problem(struct vd_checker *c, bool repaired, const char *file, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vd_vproblem(c, false, repaired, file, fmt, ap);
    va_end(ap);
}

static void vd_fixable(struct vd_checker *c, bool repaired, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void vd_fixable(struct vd_checker *c, bool repaired, const char *file, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vd_vproblem(c, true, repaired, file, fmt, ap);
    va_end(ap);
}

struct vd_range {
    uint64_t start, end; /* sectors */
};

static int vd_range_cmp(const void *a, const void *b)
{
    const struct vd_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static bool vd_range_hit(const struct vd_range *r, size_t n, uint64_t s, uint64_t e)
{
    /* r sorted by start; find last with start < e */
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r[mid].start < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* ranges may overlap each other; scan back a little */
    for (size_t i = lo; i-- > 0 && lo - i <= 4;)
        if (r[i].end > s)
            return true;
    return false;
}

static int vd_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int vd_rd_table(int fd, uint32_t *t, uint64_t n, uint64_t sector, uint64_t fsize)
{
    if (sector * VD_SECTOR + n * 4 > fsize)
        return -ERANGE;
    int rc = pread_full(fd, t, n * 4, sector * VD_SECTOR);
    for (uint64_t i = 0; rc == 0 && i < n; i++)
        t[i] = le32_get(&t[i]);
    return rc;
}

static int vd_wr_entry(int fd, uint64_t sector, uint64_t idx, uint32_t v)
{
    uint8_t b[4];
    le32_put(b, v);
    return pwrite_full(fd, b, 4, sector * VD_SECTOR + idx * 4);
}

static int vd_check_sparse(struct vd_checker *c, const char *path)
{
    /* never hang on a FIFO, never follow a link an extent name made */
    int fd = open(path, (c->repair ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0) {
        vd_problem(c, false, path, "cannot open: %s",
                   errno == ELOOP ? "is a symbolic link" : strerror(errno));
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        vd_problem(c, false, path, "is not a regular file");
        close(fd);
        return 0;
    }
    uint64_t fsize = (uint64_t)st.st_size;
    struct vmdk4_header_disk hd;
    struct vmdk4_header h;
    uint32_t *gd = NULL, *rgd = NULL, *gt = NULL, *rgt = NULL;
    struct vd_range *meta = NULL;
    uint64_t *offs = NULL;
    int rc = 0;
    if (fsize < 512 || pread_full(fd, &hd, sizeof(hd), 0) < 0) {
        vd_problem(c, false, path, "truncated: %" PRIu64 " bytes, no header", fsize);
        goto out;
    }
    log_clear_last_error();
    if (vmdk4_header_decode(&hd, &h, path) < 0) {
        vd_problem(c, false, path, "header: %s", log_last_error());
        goto out;
    }
    if (h.gd_offset == VMDK4_GD_AT_END) {
        /* streamOptimized: the footer near the end holds the real header */
        log_clear_last_error();
        if (vmdk_sparse_read_footer(&vd_io_posix, fd, fsize, &h, path) < 0) {
            vd_problem(c, false, path, "footer: %s", log_last_error());
            goto out;
        }
    }
    /* compressed grains are packed: each takes at least one sector */
    uint64_t span = (h.flags & VMDK4_FLAG_COMPRESS) ? 1 : h.grain_size;
    if (h.unclean_shutdown) {
        bool fix = c->repair;
        if (fix) {
            uint8_t z = 0;
            fix = pwrite_full(fd, &z, 1, offsetof(struct vmdk4_header_disk, unclean_shutdown)) == 0;
        }
        vd_fixable(c, fix, path, "header: uncleanShutdown is set");
    }
    uint64_t grains = DIV_ROUND_UP(h.capacity, h.grain_size);
    uint64_t ngt = DIV_ROUND_UP(grains, h.num_gtes_per_gt);
    uint64_t per = h.num_gtes_per_gt;
    uint64_t gt_sec = DIV_ROUND_UP(per * 4, VD_SECTOR);
    /* memory: both directories, both table copies, two metadata ranges per
     * table; tiny tables (numGTEsPerGT 1) mean one table per grain */
    uint64_t need = ngt * (4 + 4 + 2 * sizeof(struct vd_range)) + ngt * per * 4 * 2;
    if (ngt * per * 4 > (1ull << 30) || ngt > VD_CHECK_MAX_GTS || need > VD_CHECK_MAX_BYTES) {
        vd_problem(c, false, path,
                   "header: capacity %" PRIu64 " sectors in %" PRIu64 " grain tables of %" PRIu64
                   " entries would take %" PRIu64 " MiB to check (more than %llu MiB, or more "
                   "than %u tables)",
                   h.capacity, ngt, per, need >> 20, VD_CHECK_MAX_BYTES >> 20, VD_CHECK_MAX_GTS);
        goto out;
    }
    gd = calloc(ngt, 4);
    gt = calloc(ngt * per, 4);
    bool has_rgd = (h.flags & VMDK4_FLAG_RGD) && h.rgd_offset;
    if (has_rgd) {
        rgd = calloc(ngt, 4);
        rgt = calloc(ngt * per, 4);
    }
    meta = calloc(ngt * 2 + 8, sizeof(*meta));
    if (!gd || !gt || !meta || (has_rgd && (!rgd || !rgt))) {
        rc = -ENOMEM;
        goto out;
    }
    size_t nm = 0;
    uint64_t gd_sec = DIV_ROUND_UP(ngt * 4, VD_SECTOR);
    meta[nm++] = (struct vd_range){0, 1};
    if (h.desc_offset)
        meta[nm++] = (struct vd_range){h.desc_offset, h.desc_offset + h.desc_size};
    meta[nm++] = (struct vd_range){h.gd_offset, h.gd_offset + gd_sec};
    if (vd_rd_table(fd, gd, ngt, h.gd_offset, fsize) < 0) {
        vd_problem(c, false, path,
                   "grain directory at sector %" PRIu64 " is past the end of "
                   "the file (%" PRIu64 " bytes)",
                   h.gd_offset, fsize);
        goto out;
    }
    if (has_rgd) {
        meta[nm++] = (struct vd_range){h.rgd_offset, h.rgd_offset + gd_sec};
        if (vd_rd_table(fd, rgd, ngt, h.rgd_offset, fsize) < 0) {
            vd_problem(c, false, path,
                       "redundant grain directory at sector %" PRIu64 " is past "
                       "the end of the file",
                       h.rgd_offset);
            has_rgd = false;
        }
    }
    /* directories: each entry must point at a whole table inside the file */
    for (uint64_t i = 0; i < ngt; i++) {
        bool ok = gd[i] && ((uint64_t)gd[i] + gt_sec) * VD_SECTOR <= fsize;
        bool rok = has_rgd && rgd[i] && ((uint64_t)rgd[i] + gt_sec) * VD_SECTOR <= fsize;
        if (!ok && gd[i])
            vd_problem(c, false, path,
                       "grain directory entry %" PRIu64 " = %u points past the "
                       "end of the file",
                       i, gd[i]);
        if (has_rgd && !rok && rgd[i])
            vd_problem(c, false, path,
                       "redundant grain directory entry %" PRIu64 " = %u points "
                       "past the end of the file",
                       i, rgd[i]);
        if (!ok)
            gd[i] = 0;
        if (has_rgd && !rok)
            rgd[i] = 0;
        if (gd[i])
            meta[nm++] = (struct vd_range){gd[i], gd[i] + gt_sec};
        if (has_rgd && rgd[i])
            meta[nm++] = (struct vd_range){rgd[i], rgd[i] + gt_sec};
        if (gd[i] && vd_rd_table(fd, gt + i * per, per, gd[i], fsize) < 0)
            gd[i] = 0;
        if (has_rgd && rgd[i] && vd_rd_table(fd, rgt + i * per, per, rgd[i], fsize) < 0)
            rgd[i] = 0;
        if (has_rgd && (gd[i] == 0) != (rgd[i] == 0)) {
            bool fix = false, fixable = (gd[i] == 0 && !ok) || (rgd[i] == 0 && ok);
            if (c->repair && gd[i] == 0 && ok == false) {
                /* primary directory entry bad, redundant fine: copy it */
                fix = vd_wr_entry(fd, h.gd_offset, i, rgd[i]) == 0;
                if (fix) {
                    gd[i] = rgd[i];
                    memcpy(gt + i * per, rgt + i * per, per * 4);
                }
            } else if (c->repair && rgd[i] == 0 && ok) {
                fix = vd_wr_entry(fd, h.rgd_offset, i, gd[i]) == 0;
                if (fix) {
                    rgd[i] = gd[i];
                    memcpy(rgt + i * per, gt + i * per, per * 4);
                }
            }
            (fixable ? vd_fixable : vd_problem)(
                c, fix, path, "grain directory entry %" PRIu64 ": primary %u, redundant %u", i,
                gd[i], rgd[i]);
        }
    }
    qsort(meta, nm, sizeof(*meta), vd_range_cmp);
    struct progress pr;
    progress_start(&pr, "check", h.capacity * VD_SECTOR, c->progress); /* virtual bytes scanned */
    uint64_t fend = DIV_ROUND_UP(fsize, VD_SECTOR);
    bool zg = (h.flags & VMDK4_FLAG_ZERO_GRAIN) != 0;
    uint64_t nalloc = 0;
    size_t offs_cap = 0; /* grows with the allocated grains only */
    for (uint64_t g = 0; g < ngt * per; g++) {
        uint64_t ti = g / per, idx = g % per;
        if (idx == 0)
            progress_update(&pr, MIN(g * h.grain_size, h.capacity) * VD_SECTOR);
        if (!gd[ti] && !(has_rgd && rgd[ti]))
            continue;
        uint32_t v = gd[ti] ? gt[g] : 0, rv = has_rgd && rgd[ti] ? rgt[g] : v;
        bool vok =
            v == 0 || (zg && v == 1) || (v + span <= fend && !vd_range_hit(meta, nm, v, v + span));
        bool rvok = rv == 0 || (zg && rv == 1) ||
                    (rv + span <= fend && !vd_range_hit(meta, nm, rv, rv + span));
        uint32_t want = v;
        if (!vok && !rvok)
            want = 0;
        else if (!vok)
            want = rv;
        else if (!rvok)
            want = v;
        else if (v != rv && v == 0)
            want = rv; /* primary lost; redundant is valid */
        /* else the primary wins: the engine writes an entry to the primary
         * table first, so a redundant entry that is 0 or another valid value
         * is a write (or a flush of deferred entries) cut between the two */
        if (!vok || !rvok || v != rv) {
            bool fix = false;
            if (c->repair) {
                fix = true;
                if (gd[ti] && v != want)
                    fix = vd_wr_entry(fd, gd[ti], idx, want) == 0;
                if (fix && has_rgd && rgd[ti] && rv != want)
                    fix = vd_wr_entry(fd, rgd[ti], idx, want) == 0;
            }
            const char *why =
                !vok    ? (v + span > fend ? "past the end of the file" : "inside metadata")
                : !rvok ? (rv + span > fend ? "redundant entry past the end of the file"
                                            : "redundant entry inside metadata")
                        : "primary and redundant tables differ";
            vd_fixable(c, fix, path,
                       "grain table %" PRIu64 " entry %" PRIu64 " (primary %u, "
                       "redundant %u): %s",
                       ti, idx, v, rv, why);
            v = fix ? want : (vok ? v : 0);
        }
        if (v > 1 || (v == 1 && !zg)) {
            if (nalloc == offs_cap) {
                size_t ncap = offs_cap ? offs_cap * 2 : 4096;
                uint64_t *n = realloc(offs, ncap * sizeof(*offs));
                if (!n) {
                    rc = -ENOMEM;
                    goto out;
                }
                offs = n;
                offs_cap = ncap;
            }
            offs[nalloc++] = v;
        }
    }
    progress_finish(&pr);
    if (nalloc > 1)
        qsort(offs, nalloc, sizeof(*offs), vd_cmp_u64);
    for (uint64_t i = 1; i < nalloc; i++) {
        if (offs[i] == offs[i - 1])
            vd_problem(c, false, path,
                       "two grains share sector %" PRIu64 " (duplicate grain "
                       "table entries)",
                       offs[i]);
        else if (offs[i] < offs[i - 1] + span)
            vd_problem(c, false, path, "grains at sectors %" PRIu64 " and %" PRIu64 " overlap",
                       offs[i - 1], offs[i]);
    }
    if (h.overhead && fend > h.overhead && span == h.grain_size) {
        uint64_t slots = (fend - h.overhead) / h.grain_size;
        if (slots > nalloc)
            c->r->leaks += (unsigned)(slots - nalloc);
    }
out:
    free(gd);
    free(rgd);
    free(gt);
    free(rgt);
    free(meta);
    free(offs);
    if (c->repair)
        fsync(fd);
    close(fd);
    return rc;
}

int vd_check(const char *path, unsigned flags, struct json *j, struct vd_check_report *r)
{
    memset(r, 0, sizeof(*r));
    struct vd_checker c = {.j = j,
                           .r = r,
                           .repair = (flags & VD_CHECK_REPAIR) != 0,
                           .progress = (flags & VD_CHECK_PROGRESS) != 0};
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int rc = -errno;
        log_err("%s: cannot open: %s", path, strerror(-rc));
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))) {
        log_err("%s: not a regular file or block device", path);
        close(fd);
        return -EINVAL;
    }
    /* QEMU's image locks for the whole check: a reader's, a writer's for
     * --repair (an image in use is refused, as by qemu-img check) */
    int lrc = vd_imagelock_take(fd, path, c.repair ? VD_LOCK_WRITE : VD_LOCK_READ);
    if (lrc < 0) {
        close(fd);
        return lrc;
    }
    uint8_t first[512];
    ssize_t n = pread(fd, first, sizeof(first), 0);
    if (j) {
        json_obj_begin(j, NULL);
        json_str(j, "file", path);
        json_arr_begin(j, "problems");
    }
    int rc = 0;
    bool sparse = n >= 4 && le32_get(first) == VMDK4_MAGIC;
    const char *fmt = "vmdk";
    if (flags & VD_CHECK_RAW) {
        fmt = "raw"; /* the user's word: nothing to check */
    } else if (!vd_probe_is_vmdk(first, n > 0 ? (size_t)n : 0) &&
               ((flags & VD_CHECK_VMDK) || !(S_ISBLK(st.st_mode) || vd_name_says_raw(path)))) {
        /* never "0 problems" for a damaged VMDK taken for raw */
        fmt = "unknown";
        vd_problem(&c, false, path,
                   "not a VMDK (no KDMV/COWD magic, no descriptor: magic damaged?) and the name "
                   "does not say raw; give --format raw if it is a raw disk");
    } else if (sparse) {
        rc = vd_check_sparse(&c, path);
    } else if (n >= 4 && memcmp(first, VMDK3_MAGIC_BYTES, 4) == 0) {
        ; /* ESX COWD extent: validated by the open below */
    } else if (n > 0 && (memmem(first, (size_t)n, "createType", 10) ||
                         memmem(first, (size_t)n, "# Disk DescriptorFile", 21))) {
        /* text descriptor with extent files */
        struct vmdk_desc d;
        char *text = NULL;
        if ((uint64_t)st.st_size > VD_MAX_DESC) {
            vd_problem(&c, false, path, "descriptor file is %lld bytes, more than %u",
                       (long long)st.st_size, VD_MAX_DESC);
        } else if ((text = malloc((size_t)st.st_size + 1)) &&
                   pread_full(fd, text, (size_t)st.st_size, 0) == 0) {
            log_clear_last_error();
            if (vmdk_desc_parse(text, (size_t)st.st_size, &d, path) < 0) {
                vd_problem(&c, false, path, "descriptor: %s", log_last_error());
            } else {
                const char *slash = strrchr(path, '/');
                int dl = slash ? (int)(slash - path + 1) : 0;
                for (int i = 0; i < d.n_ext && rc == 0; i++) {
                    char *ep;
                    if (!d.ext[i].fname || asprintf(&ep, "%.*s%s", dl, path, d.ext[i].fname) < 0)
                        continue;
                    struct stat es;
                    if (stat(ep, &es) < 0)
                        vd_problem(&c, false, ep, "extent %d: missing (%s)", i, strerror(errno));
                    else if (d.ext[i].type == VMDK_EXT_VMFSSPARSE ||
                             d.ext[i].type == VMDK_EXT_SESPARSE)
                        ; /* COWD: checked by the open below */
                    else if (d.ext[i].type == VMDK_EXT_SPARSE)
                        rc = vd_check_sparse(&c, ep);
                    else if (S_ISREG(es.st_mode) &&
                             (uint64_t)es.st_size <
                                 (d.ext[i].offset + d.ext[i].sectors) * VD_SECTOR)
                        vd_problem(&c, false, ep,
                                   "flat extent %d is truncated: %lld bytes, "
                                   "needs %" PRIu64,
                                   i, (long long)es.st_size,
                                   (d.ext[i].offset + d.ext[i].sectors) * VD_SECTOR);
                    free(ep);
                }
                vmdk_desc_free(&d);
            }
        }
        free(text);
    } else {
        fmt = "raw";
    }
    close(fd);
    /* the chain, and anything else the open path refuses */
    if (rc == 0 && r->errors == 0 && strcmp(fmt, "raw") != 0) {
        struct vd_image *img;
        log_clear_last_error();
        enum log_level lv = log_get_level();
        log_set_level(LOG_LVL_ERR);
        int orc = vd_open(path, VD_OPEN_RDONLY | VD_OPEN_VMDK, &img);
        log_set_level(lv);
        if (orc < 0) {
            vd_problem(&c, false, path, "open: %s", log_last_error());
        } else {
            bool torn = img->desc_torn;
            vd_close(img);
            bool fixed = false;
            if (torn && c.repair) { /* a writable open writes the journal's text back */
                log_set_level(LOG_LVL_ERR);
                fixed = vd_open(path, VD_OPEN_VMDK, &img) == 0;
                log_set_level(lv);
                if (fixed)
                    fixed = vd_close(img) == 0;
            }
            if (torn)
                vd_fixable(&c, fixed, path,
                           "descriptor: torn by a crash during a rewrite (its checksum does not "
                           "match); the journal copy of the new text is whole and is used");
        }
    }
    if (j) {
        json_arr_end(j);
        json_str(j, "format", fmt);
        json_u64(j, "errors", r->errors);
        json_u64(j, "repaired", r->repaired);
        json_u64(j, "repairable", r->repairable);
        json_u64(j, "leaked_grains", r->leaks);
        json_obj_end(j);
    }
    return rc;
}
