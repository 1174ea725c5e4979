/* vmdk_sparse.c: hosted sparse extents ("KDMV"): header codec, grain table
 * cache, grain lookup, allocation, zeroed grains, compressed grains.
 *
 * Design notes
 * - Every grain table of the extent is loaded at open into one flat array
 *   (4 bytes per grain: 64 MiB per TiB of virtual size with 64 KiB grains,
 *   128 MiB for 2 TiB; we refuse extents needing more than 1 GiB).
 *   Entries are read with __atomic_load (acquire) and published with
 *   __atomic_store (release), so reads take no lock at all.
 * - Writes into an allocated grain are a plain pwrite at the grain's file
 *   offset, no lock. Allocating a grain (or turning it into a zeroed grain)
 *   takes stripe[grain % VMDK_STRIPES], re-reads the entry (another writer
 *   may have allocated it meanwhile: then we just write into it), reserves
 *   space at the end of the file under alloc_lock, writes the whole grain
 *   (old content from the parent or zeroes, merged with the new bytes),
 *   then stores the entry, in one of two ways:
 *     * at once (a grain that read zeroes: no parent, past the parent's end,
 *       or a zeroed grain; and every zeroed-grain entry): the GT entry, then
 *       the redundant GT entry, then the entry is published in memory, all
 *       under meta_lock. A kill between the steps leaves no entry (a leaked
 *       grain) or an entry pointing at written data; after a power cut an
 *       entry whose data was lost reads zeroes, what the grain read before,
 *       because the file is grown (and fdatasync'ed) ahead of new grains,
 *       16 MiB at a time, so no entry ever points past the end of the file.
 *       With VD_FUA the data is fdatasync'ed before the entry.
 *     * deferred (a grain of a delta that read the parent's data): an entry
 *       that reached the disk without its data would read zeroes over the
 *       parent's bytes, so the data must be durable first. As qcow2 does
 *       with its L2 cache, the entry is published in memory at once (readers
 *       see it) and marked pending in its 512-byte GT sector; the next
 *       vmdk_sparse_flush() (vd_flush, a FUA write, close) does
 *       fdatasync(data) -> write each GT sector with pending entries, whole,
 *       primary then redundant -> fdatasync. Until then a kill or a power
 *       cut loses the grain whole (it reads the parent's data again, and the
 *       space leaks), which is what a write not followed by a flush may do.
 * - Deferred entries (struct vmdk_gt_sector, per GT sector, under meta_lock):
 *   `pend` bits are entries published in memory whose file entry is still 0;
 *   a flush first moves every pend bit to `flush` (the entries published
 *   before it started: their data writes completed, so its fdatasync covers
 *   them), syncs, then writes each taken sector from gt[] with the entries
 *   still pend (published meanwhile, data maybe not durable) as 0, and
 *   clears the flush bits after the final fdatasync (on an error they go
 *   back to pend, and are never written: a failed fdatasync is sticky,
 *   vd_sync_fd, so every later flush fails before it syncs or writes a GT
 *   sector; Linux reports a writeback error once per open file, so a later
 *   sync that succeeds says nothing about the data the failed one lost).
 *   One flush at a time (flush_lock); a sector is written
 *   under meta_lock, and every entry written at once takes meta_lock too
 *   and clears its bits, so a flush never writes back a stale value over
 *   it. The per-sector list (`dirty`) keeps a flush's work proportional to
 *   the sectors it has to write.
 * - Whole-grain zero writes and discards set the entry to 1 (zeroed grain,
 *   header flag bit 2, as VMware and QEMU do) and punch the old grain's
 *   bytes out of the file. Entry 1 hides the parent's data, as the
 *   vd_discard contract asks.
 * - Entries are validated at open: an entry pointing into the metadata or
 *   past the end of the file fails the open with the GT index and value,
 *   so a crafted image can never make us write over its header.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "le.h"
#include "log.h"
#include "util.h"
#include "vdisk_internal.h"

#define VD_MAX_GT_BYTES (1ull << 30)
/* New grains go into space the file was grown to ahead of time, this much at
 * a time (one ftruncate + fdatasync per step; cut back at close). */
#define VMDK_GROW_AHEAD (16ull << 20)
#define VMDK_GTES_PER_SECTOR (VD_SECTOR / 4)
#define SESPARSE_CONST_MAGIC 0xcafebabeull
#define SESPARSE_VOLATILE_MAGIC 0xcafecafeull

void vmdk4_header_encode(const struct vmdk4_header *h, struct vmdk4_header_disk *d)
{
    memset(d, 0, sizeof(*d));
    le32_put(d->magic, VMDK4_MAGIC);
    le32_put(d->version, h->version);
    le32_put(d->flags, h->flags);
    le64_put(d->capacity, h->capacity);
    le64_put(d->grain_size, h->grain_size);
    le64_put(d->desc_offset, h->desc_offset);
    le64_put(d->desc_size, h->desc_size);
    le32_put(d->num_gtes_per_gt, h->num_gtes_per_gt);
    le64_put(d->rgd_offset, h->rgd_offset);
    le64_put(d->gd_offset, h->gd_offset);
    le64_put(d->overhead, h->overhead);
    d->unclean_shutdown = h->unclean_shutdown;
    d->single_end_line_char = '\n';
    d->non_end_line_char = ' ';
    d->double_end_line_char1 = '\r';
    d->double_end_line_char2 = '\n';
    le16_put(d->compress_algorithm, h->compress_algorithm);
}

int vmdk4_header_decode(const struct vmdk4_header_disk *d, struct vmdk4_header *h, const char *what)
{
    memset(h, 0, sizeof(*h));
    if (le32_get(d->magic) != VMDK4_MAGIC) {
        log_err("%s: not a VMDK sparse extent (magic %08x, expected %08x \"KDMV\")", what,
                le32_get(d->magic), VMDK4_MAGIC);
        return -EINVAL;
    }
    h->version = le32_get(d->version);
    h->flags = le32_get(d->flags);
    h->capacity = le64_get(d->capacity);
    h->grain_size = le64_get(d->grain_size);
    h->desc_offset = le64_get(d->desc_offset);
    h->desc_size = le64_get(d->desc_size);
    h->num_gtes_per_gt = le32_get(d->num_gtes_per_gt);
    h->rgd_offset = le64_get(d->rgd_offset);
    h->gd_offset = le64_get(d->gd_offset);
    h->overhead = le64_get(d->overhead);
    h->unclean_shutdown = d->unclean_shutdown;
    h->compress_algorithm = le16_get(d->compress_algorithm);
    if (h->version < 1 || h->version > 3) {
        log_err("%s: header version %u not supported (1 to 3)", what, h->version);
        return -EUCLEAN;
    }
    if (h->grain_size < 8 || h->grain_size > 2048 || (h->grain_size & (h->grain_size - 1))) {
        log_err("%s: header grainSize %" PRIu64 " sectors out of range (power of two, 8 to "
                "2048)",
                what, h->grain_size);
        return -EUCLEAN;
    }
    if (h->capacity == 0 || h->capacity > (1ull << 50) / VD_SECTOR) {
        log_err("%s: header capacity %" PRIu64 " sectors out of range (1 sector to 1 PiB)", what,
                h->capacity);
        return -EUCLEAN;
    }
    if (h->num_gtes_per_gt == 0 || h->num_gtes_per_gt > 512) {
        log_err("%s: header numGTEsPerGT %u out of range (1 to 512)", what, h->num_gtes_per_gt);
        return -EUCLEAN;
    }
    if (h->desc_offset && (h->desc_size == 0 || h->desc_size > VD_MAX_DESC / VD_SECTOR)) {
        log_err("%s: header descriptorSize %" PRIu64 " sectors out of range (1 to %u)", what,
                h->desc_size, VD_MAX_DESC / VD_SECTOR);
        return -EUCLEAN;
    }
    if (h->desc_offset > (1ull << 50) / VD_SECTOR) {
        log_err("%s: header descriptorOffset %" PRIu64 " out of range", what, h->desc_offset);
        return -EUCLEAN;
    }
    if (h->flags & VMDK4_FLAG_COMPRESS) {
        if (h->compress_algorithm != VMDK4_COMPRESS_DEFLATE) {
            log_err("%s: header compressAlgorithm %u not supported (1 = deflate)", what,
                    h->compress_algorithm);
            return -EUCLEAN;
        }
    }
    if (h->gd_offset == 0 && !(h->flags & VMDK4_FLAG_RGD && h->rgd_offset)) {
        log_err("%s: header gdOffset is 0", what);
        return -EUCLEAN;
    }
    if (h->gd_offset != VMDK4_GD_AT_END && h->gd_offset > (1ull << 50) / VD_SECTOR) {
        log_err("%s: header gdOffset %" PRIu64 " out of range", what, h->gd_offset);
        return -EUCLEAN;
    }
    if ((h->flags & VMDK4_FLAG_RGD) && h->rgd_offset > (1ull << 50) / VD_SECTOR) {
        log_err("%s: header rgdOffset %" PRIu64 " out of range", what, h->rgd_offset);
        return -EUCLEAN;
    }
    if (h->overhead > (1ull << 50) / VD_SECTOR) {
        log_err("%s: header overHead %" PRIu64 " out of range", what, h->overhead);
        return -EUCLEAN;
    }
    return 0;
}

/* ESX "COWD" sparse extent header (vmfsSparse): after the magic, u32 version,
 * flags, numSectors, grainSize (sectors), gdOffset (sectors), numGDEntries,
 * freeSector, ...; 4096 entries per grain table, no redundant directory. */
int vmdk3_header_decode(const uint8_t *b, struct vmdk4_header *h, const char *what)
{
    memset(h, 0, sizeof(*h));
    h->version = le32_get(b + 4);
    h->capacity = le32_get(b + 12);
    h->grain_size = le32_get(b + 16);
    h->gd_offset = le32_get(b + 20);
    uint32_t gd_entries = le32_get(b + 24);
    h->num_gtes_per_gt = VMDK3_GTES;
    h->overhead = 1;
    if (h->grain_size == 0 || h->grain_size > 2048 || (h->grain_size & (h->grain_size - 1))) {
        log_err("%s: COWD header grainSize %" PRIu64 " sectors out of range (power of two, 1 to "
                "2048)",
                what, h->grain_size);
        return -EUCLEAN;
    }
    if (h->capacity == 0) {
        log_err("%s: COWD header numSectors is 0", what);
        return -EUCLEAN;
    }
    if (h->gd_offset == 0) {
        log_err("%s: COWD header gdOffset is 0", what);
        return -EUCLEAN;
    }
    uint64_t need = DIV_ROUND_UP(DIV_ROUND_UP(h->capacity, h->grain_size), VMDK3_GTES);
    if (gd_entries < need) {
        log_err("%s: COWD header numGDEntries %u, capacity needs %" PRIu64, what, gd_entries, need);
        return -EUCLEAN;
    }
    return 0;
}

void vmdk_sparse_free(struct vmdk_sparse *sp)
{
    if (!sp)
        return;
    free(sp->gd);
    free(sp->rgd);
    free(sp->gt);
    free(sp->gts);
    free(sp->dirty);
    free(sp->flushing);
    pthread_mutex_destroy(&sp->alloc_lock);
    pthread_mutex_destroy(&sp->meta_lock);
    pthread_mutex_destroy(&sp->flush_lock);
    for (int i = 0; i < VMDK_STRIPES; i++)
        pthread_mutex_destroy(&sp->stripe[i]);
    free(sp);
}

/* streamOptimized: the real header is the footer at end - 1024. */
int vmdk_sparse_read_footer(const struct vd_io *io, int fd, uint64_t fsize, struct vmdk4_header *h,
                            const char *what)
{
    uint8_t buf[1536];
    if (fsize < 1536 + 512) {
        log_err("%s: gdOffset says \"at end\" but the file (%" PRIu64 " bytes) has no footer", what,
                fsize);
        return -EUCLEAN;
    }
    int rc = VD_IO(io, pread, fd, buf, sizeof(buf), fsize - 1536);
    if (rc < 0) {
        log_err("%s: read of the footer: %s", what, strerror(-rc));
        return rc;
    }
    if (le32_get(buf + 12) != 3) {
        log_err("%s: footer marker type %u, expected 3", what, le32_get(buf + 12));
        return -EUCLEAN;
    }
    struct vmdk4_header_disk d;
    memcpy(&d, buf + 512, 512);
    rc = vmdk4_header_decode(&d, h, what);
    if (rc == -EINVAL)
        rc = -EUCLEAN;
    if (rc == 0 && h->gd_offset == VMDK4_GD_AT_END) {
        log_err("%s: footer gdOffset is still \"at end\"", what);
        return -EUCLEAN;
    }
    return rc;
}

static int vmdk_sparse_read_table(const struct vd_io *io, int fd, uint32_t *out, uint64_t n,
                                  uint64_t sector, uint64_t fsize, const char *what,
                                  const char *name)
{
    uint64_t bytes = n * 4;
    if (sector > fsize / VD_SECTOR || sector * VD_SECTOR + bytes > fsize) {
        log_err("%s: %s at sector %" PRIu64 " (%" PRIu64 " bytes) is past the end of the file "
                "(%" PRIu64 " bytes)",
                what, name, sector, bytes, fsize);
        return -EUCLEAN;
    }
    int rc = VD_IO(io, pread, fd, out, bytes, sector * VD_SECTOR);
    if (rc < 0) {
        log_err("%s: read of %s: %s", what, name, strerror(-rc));
        return rc;
    }
    for (uint64_t i = 0; i < n; i++)
        out[i] = le32_get(&out[i]);
    return 0;
}

/* ---------------------------------------------------------------- seSparse
 * ESXi's snapshot delta format on VMFS-6 (read-only here, as in QEMU; the
 * format is not publicly documented, these are the facts QEMU's reader
 * relies on). Sector 0: the const header, 64-bit LE fields: magic
 * 0xcafebabe, version 0x200000001, capacity, grainSize (8 sectors),
 * grainTableSize (64 sectors = 4096 entries), flags (0), 4 reserved (0),
 * then (offset, size) in sectors of: volatile header, journal header,
 * journal, grain directory, grain tables, free bitmap, back map, grains;
 * the rest zero. The volatile header (magic 0xcafecafe, free GT number,
 * next transaction, replayJournal) must not ask for a journal replay.
 * Grain directory entries: 0 (no table) or 0x10000000_xxxxxxxx, table
 * xxxxxxxx at grainTablesOffset + xxxxxxxx * 64. Grain table entries, by
 * their top nibble: 0 unallocated (whole entry 0), 1 unmapped and 2 zero
 * (read zeroes), 3 allocated: grain index ((e >> 48) & 0xfff) |
 * ((e & 0xffffffffffff) << 12), data at grainsOffset + index * 8. The
 * tables are translated at open into the engine's 32-bit table: sector of
 * the grain, VMDK_GTE_ZEROED, or 0; grains past 2 TiB are refused. */
static int vmdk_sesparse_open(struct vmdk_extent *e, struct vmdk_sparse *sp, const uint8_t *c,
                              uint64_t fsize, const char *what)
{
    uint64_t version = le64_get(c + 8), cap = le64_get(c + 16), gs = le64_get(c + 24);
    uint64_t gts = le64_get(c + 32), flags = le64_get(c + 40);
    uint64_t voff = le64_get(c + 80), gd_off = le64_get(c + 128), gd_size = le64_get(c + 136);
    uint64_t gt_off = le64_get(c + 144), gr_off = le64_get(c + 192);
    if (version != 0x200000001ull || gs != 8 || gts != 64 || flags != 0) {
        log_err("%s: seSparse header: version %" PRIx64 ", grain %" PRIu64 ", table %" PRIu64
                " sectors, flags %" PRIx64 " not supported (200000001, 8, 64, 0)",
                what, version, gs, gts, flags);
        return -ENOTSUP;
    }
    uint64_t fsec = fsize / VD_SECTOR;
    if (cap == 0 || cap > (1ull << 50) / VD_SECTOR || voff == 0 || voff >= fsec || gd_off == 0 ||
        gd_off + gd_size > fsec || gt_off == 0 || gt_off > fsec || gr_off == 0 ||
        gr_off > UINT32_MAX) {
        log_err("%s: seSparse header: capacity or offsets out of range (file %" PRIu64 " sectors)",
                what, fsec);
        return -EUCLEAN;
    }
    uint8_t v[512];
    int rc = VD_IO(e->io, pread, e->fd, v, sizeof(v), voff * VD_SECTOR);
    if (rc < 0)
        return rc;
    if (le64_get(v) != SESPARSE_VOLATILE_MAGIC) {
        log_err("%s: seSparse volatile header magic %" PRIx64 ", expected cafecafe", what,
                le64_get(v));
        return -EUCLEAN;
    }
    if (le64_get(v + 24)) {
        log_err("%s: seSparse image is dirty (its journal needs a replay, which we do not do); "
                "consolidate it on the ESXi host first",
                what);
        return -ENOTSUP;
    }
    struct vmdk4_header *h = &sp->h;
    memset(h, 0, sizeof(*h));
    h->capacity = cap;
    h->grain_size = 8;
    h->num_gtes_per_gt = 4096;
    h->overhead = gr_off;
    sp->sesparse = true;
    sp->zero_grain = true;
    sp->grain_bytes = 8 * VD_SECTOR;
    uint64_t grains = DIV_ROUND_UP(cap, 8), ngt = DIV_ROUND_UP(grains, 4096);
    if (ngt * 4096 * 4 > VD_MAX_GT_BYTES) {
        log_err("%s: seSparse capacity %" PRIu64 " sectors needs more than %llu MiB of tables",
                what, cap, VD_MAX_GT_BYTES >> 20);
        return -EUCLEAN;
    }
    if (ngt > gd_size * VD_SECTOR / 8) {
        log_err("%s: seSparse grain directory of %" PRIu64 " sectors is too small for %" PRIu64
                " tables",
                what, gd_size, ngt);
        return -EUCLEAN;
    }
    sp->num_gts = (uint32_t)ngt;
    sp->gd = calloc(ngt, 4);
    sp->gt = calloc(ngt * 4096, 4);
    uint64_t *gd = malloc(ngt * 8), *t = malloc(4096 * 8);
    if (!sp->gd || !sp->gt || !gd || !t) {
        rc = -ENOMEM;
        goto out;
    }
    rc = VD_IO(e->io, pread, e->fd, gd, ngt * 8, gd_off * VD_SECTOR);
    for (uint64_t i = 0; i < ngt && rc == 0; i++) {
        uint64_t de = le64_get((const uint8_t *)&gd[i]);
        if (de == 0)
            continue;
        uint64_t tsec = gt_off + (de & 0xffffffffull) * 64;
        if ((de >> 32) != 0x10000000ull || tsec + 64 > fsec) {
            log_err("%s: seSparse grain directory entry %" PRIu64 " = %016" PRIx64 " is invalid",
                    what, i, de);
            rc = -EUCLEAN;
            break;
        }
        sp->gd[i] = (uint32_t)MIN(tsec, UINT32_MAX);
        rc = VD_IO(e->io, pread, e->fd, t, 4096 * 8, tsec * VD_SECTOR);
        for (uint64_t k = 0; k < 4096 && rc == 0; k++) {
            uint64_t te = le64_get((const uint8_t *)&t[k]), g = i * 4096 + k, sec;
            switch (te >> 60) {
            case 0:
                if (te) {
                    rc = -EUCLEAN;
                    break;
                }
                continue;
            case 1: /* unmapped (SCSI UNMAP): reads zeroes */
            case 2: /* zero */
                sp->gt[g] = VMDK_GTE_ZEROED;
                continue;
            case 3:
                sec = gr_off + ((((te >> 48) & 0xfff) | ((te & 0xffffffffffffull) << 12)) * 8);
                if (sec + 8 > fsec || sec > UINT32_MAX - 8) {
                    rc = -EUCLEAN;
                    break;
                }
                sp->gt[g] = (uint32_t)sec;
                continue;
            default:
                rc = -EUCLEAN;
            }
            if (rc < 0)
                log_err("%s: seSparse grain table %" PRIu64 " entry %" PRIu64 " = %016" PRIx64
                        " is invalid (or its grain is outside the file)",
                        what, i, k, te);
        }
    }
    if (rc == 0) {
        sp->file_end = ROUND_UP(fsize, VD_SECTOR);
        sp->defer_ok = false;
    }
out:
    free(gd);
    free(t);
    return rc;
}

int vmdk_sparse_open(struct vmdk_extent *e, const char *what)
{
    struct vmdk_sparse *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return -ENOMEM;
    pthread_mutex_init(&sp->alloc_lock, NULL);
    pthread_mutex_init(&sp->meta_lock, NULL);
    pthread_mutex_init(&sp->flush_lock, NULL);
    for (int i = 0; i < VMDK_STRIPES; i++)
        pthread_mutex_init(&sp->stripe[i], NULL);
    int rc;
    struct vd_io_stat st;
    rc = VD_IO(e->io, stat, e->fd, &st);
    if (rc < 0)
        goto fail;
    uint64_t fsize = st.size;
    sp->file_size = fsize;
    struct vmdk4_header_disk d;
    if (fsize < 512) {
        log_err("%s: truncated: %" PRIu64 " bytes, less than one header sector", what, fsize);
        rc = -EUCLEAN;
        goto fail;
    }
    rc = VD_IO(e->io, pread, e->fd, &d, sizeof(d), 0);
    if (rc < 0) {
        log_err("%s: read of the header: %s", what, strerror(-rc));
        goto fail;
    }
    if (le64_get((const uint8_t *)&d) == SESPARSE_CONST_MAGIC) {
        rc = vmdk_sesparse_open(e, sp, (const uint8_t *)&d, fsize, what);
        if (rc < 0)
            goto fail;
        e->sp = sp;
        return 0;
    }
    if (memcmp(d.magic, VMDK3_MAGIC_BYTES, 4) == 0)
        rc = vmdk3_header_decode((const uint8_t *)&d, &sp->h, what);
    else
        rc = vmdk4_header_decode(&d, &sp->h, what);
    if (rc == -EINVAL)
        rc = -EUCLEAN;
    if (rc < 0)
        goto fail;
    sp->cowd = memcmp(d.magic, VMDK3_MAGIC_BYTES, 4) == 0;
    if (sp->h.gd_offset == VMDK4_GD_AT_END) {
        rc = vmdk_sparse_read_footer(e->io, e->fd, fsize, &sp->h, what);
        if (rc < 0)
            goto fail;
    }
    struct vmdk4_header *h = &sp->h;
    sp->compressed = (h->flags & VMDK4_FLAG_COMPRESS) != 0;
    sp->zero_grain = (h->flags & VMDK4_FLAG_ZERO_GRAIN) != 0;
    sp->grain_bytes = h->grain_size * VD_SECTOR;
    uint64_t grains = DIV_ROUND_UP(h->capacity, h->grain_size);
    uint64_t ngt = DIV_ROUND_UP(grains, h->num_gtes_per_gt);
    uint64_t total = ngt * h->num_gtes_per_gt;
    if (ngt > (1u << 22)) { /* tiny tables: one read and one GD entry per grain */
        log_err("%s: %" PRIu64 " grain tables of %u entries: more than the %u we read", what, ngt,
                h->num_gtes_per_gt, 1u << 22);
        rc = -EUCLEAN;
        goto fail;
    }
    if (total * 4 > VD_MAX_GT_BYTES) {
        log_err("%s: capacity %" PRIu64 " sectors needs %" PRIu64 " MiB of grain tables, more "
                "than the %llu MiB we cache",
                what, h->capacity, total * 4 >> 20, VD_MAX_GT_BYTES >> 20);
        rc = -EUCLEAN;
        goto fail;
    }
    if (e->len > h->capacity * VD_SECTOR) {
        log_err("%s: the descriptor says %" PRIu64 " sectors but the header capacity is %" PRIu64,
                what, e->len / VD_SECTOR, h->capacity);
        rc = -EUCLEAN;
        goto fail;
    }
    sp->num_gts = (uint32_t)ngt;
    sp->gd = calloc(ngt, 4);
    sp->gt = calloc(total, 4);
    if (!sp->gd || !sp->gt) {
        rc = -ENOMEM;
        goto fail;
    }
    uint64_t gd_sector = h->gd_offset;
    if (gd_sector == 0) /* only a redundant directory: use it */
        gd_sector = h->rgd_offset;
    rc = vmdk_sparse_read_table(e->io, e->fd, sp->gd, ngt, gd_sector, fsize, what,
                                "grain directory (header gdOffset)");
    if (rc < 0)
        goto fail;
    if ((h->flags & VMDK4_FLAG_RGD) && h->rgd_offset && !sp->compressed) {
        sp->rgd = calloc(ngt, 4);
        if (!sp->rgd) {
            rc = -ENOMEM;
            goto fail;
        }
        rc = vmdk_sparse_read_table(e->io, e->fd, sp->rgd, ngt, h->rgd_offset, fsize, what,
                                    "redundant grain directory");
        if (rc < 0)
            goto fail;
    }
    uint64_t gt_bytes = (uint64_t)h->num_gtes_per_gt * 4;
    uint64_t gt_sectors = DIV_ROUND_UP(gt_bytes, VD_SECTOR);
    uint64_t meta_end = h->overhead ? h->overhead : 1;
    for (uint64_t i = 0; i < ngt;) {
        if (sp->gd[i] == 0) {
            i++;
            continue;
        }
        /* batch contiguous grain tables into one read */
        uint64_t j = i + 1;
        while (j < ngt && j - i < 4096 && sp->gd[j] == sp->gd[j - 1] + gt_sectors &&
               gt_sectors * VD_SECTOR == gt_bytes)
            j++;
        char name[64];
        snprintf(name, sizeof(name), "grain table %" PRIu64, i);
        rc = vmdk_sparse_read_table(e->io, e->fd, sp->gt + i * h->num_gtes_per_gt,
                                    (j - i) * h->num_gtes_per_gt, sp->gd[i], fsize, what, name);
        if (rc < 0)
            goto fail;
        if (sp->rgd && sp->rgd[i] == 0) {
            log_err("%s: redundant grain directory entry %" PRIu64 " is 0 but the primary is %u",
                    what, i, sp->gd[i]);
            rc = -EUCLEAN;
            goto fail;
        }
        i = j;
    }
    for (uint64_t g = 0; g < total; g++) {
        uint32_t v = sp->gt[g];
        if (v == 0 || (v == VMDK_GTE_ZEROED && sp->zero_grain))
            continue;
        uint64_t end = (uint64_t)v * VD_SECTOR + (sp->compressed ? 12 : sp->grain_bytes);
        if (v < meta_end || end > ROUND_UP(fsize, VD_SECTOR)) {
            log_err("%s: grain table %" PRIu64 " entry %" PRIu64 " (grain %" PRIu64 ") points "
                    "to sector %u, outside the grain area (sectors %" PRIu64 " to %" PRIu64 ")",
                    what, g / h->num_gtes_per_gt, g % h->num_gtes_per_gt, g, v, meta_end,
                    fsize / VD_SECTOR);
            rc = -EUCLEAN;
            goto fail;
        }
    }
    sp->file_end = MAX(ROUND_UP(fsize, VD_SECTOR), h->overhead * VD_SECTOR);
    sp->defer_ok = !sp->compressed && !sp->cowd && h->num_gtes_per_gt % VMDK_GTES_PER_SECTOR == 0;
    e->sp = sp;
    return 0;
fail:
    vmdk_sparse_free(sp);
    return rc;
}

static inline uint32_t vmdk_gte_load(struct vmdk_sparse *sp, uint64_t grain)
{
    return __atomic_load_n(&sp->gt[grain], __ATOMIC_ACQUIRE);
}

static enum vd_map_state vmdk_gte_state(struct vmdk_sparse *sp, uint32_t v)
{
    if (v == 0)
        return VD_MAP_UNALLOC;
    if (v == VMDK_GTE_ZEROED && sp->zero_grain)
        return VD_MAP_ZERO;
    return sp->compressed ? VD_MAP_COMPRESSED : VD_MAP_DATA;
}

int vmdk_sparse_map(struct vmdk_extent *e, uint64_t off, uint64_t len, struct vd_map *m)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    uint64_t grain = off / gb, in = off % gb;
    uint32_t v = vmdk_gte_load(sp, grain);
    m->state = vmdk_gte_state(sp, v);
    m->fd = e->fd;
    m->file_off =
        m->state == VD_MAP_COMPRESSED ? (uint64_t)v * VD_SECTOR : (uint64_t)v * VD_SECTOR + in;
    m->len = MIN(len, gb - in);
    if (m->state == VD_MAP_COMPRESSED)
        return 0;
    uint64_t done = m->len;
    uint32_t prev = v;
    while (done < len) {
        grain++;
        uint32_t nv = vmdk_gte_load(sp, grain);
        enum vd_map_state ns = vmdk_gte_state(sp, nv);
        if (ns != m->state)
            break;
        if (ns == VD_MAP_DATA && (uint64_t)nv != (uint64_t)prev + sp->h.grain_size)
            break;
        prev = nv;
        done += MIN(len - done, gb);
    }
    m->len = done;
    return 0;
}

int vmdk_sparse_read_compressed(struct vmdk_extent *e, uint64_t file_off, uint64_t grain,
                                uint8_t *out)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    bool marker = (sp->h.flags & VMDK4_FLAG_MARKER) != 0;
    uint64_t cap = 2 * gb + 4096;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    int rc;
    size_t n = file_off < sp->file_size ? (size_t)MIN(cap, sp->file_size - file_off) : 0;
    rc = VD_IO(e->io, pread, e->fd, buf, n, file_off);
    if (rc < 0) {
        log_err("%s: read of compressed grain %" PRIu64 " at %" PRIu64 ": %s", e->path, grain,
                file_off, strerror(-rc));
        goto out;
    }
    uint8_t *data = buf;
    uint64_t dlen = (uint64_t)n;
    if (marker) {
        if (n < 12 || le32_get(buf + 8) == 0 || le32_get(buf + 8) > (uint64_t)n - 12) {
            log_err("%s: compressed grain %" PRIu64 " at file offset %" PRIu64 ": bad marker "
                    "(size %u)",
                    e->path, grain, file_off, n >= 12 ? le32_get(buf + 8) : 0);
            rc = -EUCLEAN;
            goto out;
        }
        if (le64_get(buf) != grain * sp->h.grain_size) {
            log_err("%s: compressed grain %" PRIu64 " at file offset %" PRIu64
                    ": marker LBA %" PRIu64 ", expected %" PRIu64,
                    e->path, grain, file_off, le64_get(buf), grain * sp->h.grain_size);
            rc = -EUCLEAN;
            goto out;
        }
        dlen = le32_get(buf + 8);
        data = buf + 12;
    }
    uLongf olen = (uLongf)gb;
    int zr = uncompress(out, &olen, data, (uLong)dlen);
    if (zr != Z_OK && !(zr == Z_BUF_ERROR && !marker)) {
        log_err("%s: compressed grain %" PRIu64 " at file offset %" PRIu64 ": inflate failed "
                "(zlib %d)",
                e->path, grain, file_off, zr);
        rc = -EUCLEAN;
        goto out;
    }
    if (olen < gb)
        memset(out + olen, 0, gb - olen);
    rc = 0;
out:
    free(buf);
    return rc;
}

static pthread_mutex_t *vmdk_stripe(struct vmdk_sparse *sp, uint64_t grain)
{
    return &sp->stripe[grain % VMDK_STRIPES];
}

/* Write GT entry (primary then redundant), then publish it. Caller holds
 * the grain's stripe lock. */
static int vmdk_gte_store(struct vmdk_extent *e, uint64_t grain, uint32_t val)
{
    struct vmdk_sparse *sp = e->sp;
    uint32_t per = sp->h.num_gtes_per_gt;
    uint64_t gti = grain / per, idx = grain % per;
    uint8_t b[4];
    le32_put(b, val);
    if (sp->gd[gti] == 0) {
        log_err("%s: grain table %" PRIu64 " is not allocated (grain directory entry 0); "
                "cannot allocate grain %" PRIu64,
                e->path, gti, grain);
        return -EUCLEAN;
    }
    /* meta_lock: a flush writing this entry's sector must not overwrite
     * the new value with the one it read before */
    pthread_mutex_lock(&sp->meta_lock);
    int rc = VD_IO(e->io, pwrite, e->fd, b, 4, (uint64_t)sp->gd[gti] * VD_SECTOR + idx * 4);
    if (rc == 0 && sp->rgd && sp->rgd[gti])
        rc = VD_IO(e->io, pwrite, e->fd, b, 4, (uint64_t)sp->rgd[gti] * VD_SECTOR + idx * 4);
    if (rc == 0) {
        if (sp->gts) { /* the file has the entry now: nothing left to defer */
            struct vmdk_gt_sector *t = &sp->gts[grain / VMDK_GTES_PER_SECTOR];
            unsigned i = grain % VMDK_GTES_PER_SECTOR;
            t->pend[i / 64] &= ~(1ull << (i % 64));
            t->flush[i / 64] &= ~(1ull << (i % 64));
        }
        __atomic_store_n(&sp->gt[grain], val, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&sp->meta_lock);
    if (rc < 0) {
        log_err("%s: write of grain table %" PRIu64 " entry %" PRIu64 ": %s", e->path, gti, idx,
                strerror(-rc));
        return rc;
    }
    return 0;
}

/* Publish `val` (a new grain whose data is written but maybe not durable)
 * for `grain`, whose entry in the file is 0; the file gets it at the next
 * vmdk_sparse_flush(). Caller holds the grain's stripe lock. -ENOMEM when
 * the tracking could not be allocated: then the caller writes the entry at
 * once, after an fdatasync. */
static int vmdk_gte_defer(struct vmdk_extent *e, uint64_t grain, uint32_t val)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gti = grain / sp->h.num_gtes_per_gt;
    if (sp->gd[gti] == 0) {
        log_err("%s: grain table %" PRIu64 " is not allocated (grain directory entry 0); "
                "cannot allocate grain %" PRIu64,
                e->path, gti, grain);
        return -EUCLEAN;
    }
    pthread_mutex_lock(&sp->meta_lock);
    if (!sp->gts) {
        uint64_t nsec = (uint64_t)sp->num_gts * sp->h.num_gtes_per_gt / VMDK_GTES_PER_SECTOR;
        struct vmdk_gt_sector *gts = calloc(nsec, sizeof(*gts));
        sp->dirty = malloc(nsec * sizeof(*sp->dirty));
        sp->flushing = malloc(nsec * sizeof(*sp->flushing));
        if (!gts || !sp->dirty || !sp->flushing) {
            free(gts);
            free(sp->dirty);
            free(sp->flushing);
            sp->dirty = sp->flushing = NULL;
            pthread_mutex_unlock(&sp->meta_lock);
            return -ENOMEM;
        }
        __atomic_store_n(&sp->gts, gts, __ATOMIC_RELEASE);
    }
    uint64_t sec = grain / VMDK_GTES_PER_SECTOR;
    unsigned i = grain % VMDK_GTES_PER_SECTOR;
    struct vmdk_gt_sector *t = &sp->gts[sec];
    t->pend[i / 64] |= 1ull << (i % 64);
    if (!t->listed) {
        t->listed = true;
        sp->dirty[sp->n_dirty++] = (uint32_t)sec;
    }
    __atomic_store_n(&sp->gt[grain], val, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&sp->meta_lock);
    return 0;
}

static int vmdk_fdatasync(struct vmdk_extent *e)
{
    return vd_sync_fd(e->img, e->fd, e->path);
}

/* Write GT sector `sec` (primary, then redundant) as the file must hold it
 * now: every entry from gt[] except the pending ones (data not synced yet),
 * which stay 0. meta_lock held. */
static int vmdk_gt_sector_write(struct vmdk_extent *e, uint64_t sec)
{
    struct vmdk_sparse *sp = e->sp;
    const struct vmdk_gt_sector *t = &sp->gts[sec];
    uint32_t per = sp->h.num_gtes_per_gt;
    uint64_t first = sec * VMDK_GTES_PER_SECTOR, gti = first / per;
    uint64_t in = (first % per) * 4;
    uint8_t b[VD_SECTOR];
    for (unsigned i = 0; i < VMDK_GTES_PER_SECTOR; i++) {
        bool pend = (t->pend[i / 64] >> (i % 64)) & 1;
        le32_put(b + i * 4, pend ? 0 : vmdk_gte_load(sp, first + i));
    }
    int rc = VD_IO(e->io, pwrite, e->fd, b, sizeof(b), (uint64_t)sp->gd[gti] * VD_SECTOR + in);
    if (rc == 0 && sp->rgd && sp->rgd[gti])
        rc = VD_IO(e->io, pwrite, e->fd, b, sizeof(b), (uint64_t)sp->rgd[gti] * VD_SECTOR + in);
    if (rc < 0)
        log_err("%s: write of grain table %" PRIu64 " entries %" PRIu64 " to %" PRIu64 ": %s",
                e->path, gti, first % per, first % per + VMDK_GTES_PER_SECTOR - 1, strerror(-rc));
    return rc;
}

int vmdk_sparse_flush(struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    if (!__atomic_load_n(&sp->gts, __ATOMIC_ACQUIRE)) /* nothing was ever deferred */
        return vmdk_fdatasync(e);
    pthread_mutex_lock(&sp->flush_lock);
    /* take every entry published so far: their data writes completed
     * before they were published, so the fdatasync below covers them */
    pthread_mutex_lock(&sp->meta_lock);
    uint32_t n = sp->n_dirty;
    memcpy(sp->flushing, sp->dirty, n * sizeof(*sp->flushing));
    for (uint32_t k = 0; k < n; k++) {
        struct vmdk_gt_sector *t = &sp->gts[sp->flushing[k]];
        t->listed = false;
        for (int w = 0; w < 2; w++) {
            t->flush[w] |= t->pend[w];
            t->pend[w] = 0;
        }
    }
    sp->n_dirty = 0;
    pthread_mutex_unlock(&sp->meta_lock);
    int rc = vmdk_fdatasync(e);
    if (n == 0) {
        pthread_mutex_unlock(&sp->flush_lock);
        return rc;
    }
    /* data durable: now the entries; entries published meanwhile are pend
     * again and are written as 0 (the next flush writes them) */
    for (uint32_t k = 0; k < n && rc == 0; k++) {
        pthread_mutex_lock(&sp->meta_lock);
        const struct vmdk_gt_sector *t = &sp->gts[sp->flushing[k]];
        if (t->flush[0] | t->flush[1])
            rc = vmdk_gt_sector_write(e, sp->flushing[k]);
        pthread_mutex_unlock(&sp->meta_lock);
    }
    if (rc == 0)
        rc = vmdk_fdatasync(e);
    pthread_mutex_lock(&sp->meta_lock);
    for (uint32_t k = 0; k < n; k++) {
        struct vmdk_gt_sector *t = &sp->gts[sp->flushing[k]];
        for (int w = 0; w < 2; w++) {
            if (rc < 0) /* not durable: the next flush tries again */
                t->pend[w] |= t->flush[w];
            t->flush[w] = 0;
        }
        if (rc < 0 && (t->pend[0] | t->pend[1]) && !t->listed) {
            t->listed = true;
            sp->dirty[sp->n_dirty++] = sp->flushing[k];
        }
    }
    pthread_mutex_unlock(&sp->meta_lock);
    pthread_mutex_unlock(&sp->flush_lock);
    return rc;
}

/* Allocate `grain` holding `data` (a full grain). Stripe lock held.
 * `shadows`: until now the grain read the parent's data. Then the data must
 * be durable before the entry reaches the file, FUA or not: an entry that
 * reached the disk without its data would read zeroes over the parent's
 * (flushed) bytes after a power cut, in the rest of the grain too. So the
 * entry is deferred to the next flush, which syncs the data first (or, for
 * an extent whose tables are not whole 512-byte sectors of entries, the data
 * is synced here, before the entry). Without a parent a lost grain reads
 * zeroes, which is what the grain held, so the entry is written at once. */
static int vmdk_grain_alloc(struct vmdk_extent *e, uint64_t grain, const uint8_t *data,
                            unsigned flags, bool shadows)
{
    struct vmdk_sparse *sp = e->sp;
    pthread_mutex_lock(&sp->alloc_lock);
    uint64_t at = sp->file_end;
    if (at / VD_SECTOR + sp->h.grain_size > UINT32_MAX) {
        pthread_mutex_unlock(&sp->alloc_lock);
        log_err("%s: the extent file would pass 2 TiB; grain offsets do not fit 32 bits", e->path);
        return -EFBIG;
    }
    sp->file_end += sp->grain_bytes;
    int rc = 0;
    if (at + sp->grain_bytes > sp->durable_end) {
        /* Power-cut safety: a GT entry must never point past the end of the
         * file, even when the grain's data write and the size change it
         * implies were lost while the entry reached the disk (writeback
         * order is the kernel's). So grow the file ahead of new grains, in
         * VMDK_GROW_AHEAD steps, and make the size durable before any entry
         * points into the new space. A lost grain then reads as zeroes, what
         * an unallocated grain of a disk without a parent read before. */
        uint64_t end = ROUND_UP(at + sp->grain_bytes, VMDK_GROW_AHEAD);
        rc = VD_IO(e->io, truncate, e->fd, end);
        if (rc == 0)
            rc = vmdk_fdatasync(e);
        if (rc < 0) {
            sp->file_end -= sp->grain_bytes; /* nothing points there yet */
            pthread_mutex_unlock(&sp->alloc_lock);
            log_err("%s: growing the file to %" PRIu64 " bytes for new grains: %s", e->path, end,
                    strerror(-rc));
            return rc;
        }
        sp->durable_end = end;
    }
    pthread_mutex_unlock(&sp->alloc_lock);
    rc = VD_IO(e->io, pwrite, e->fd, data, sp->grain_bytes, at);
    if (rc < 0) {
        log_err("%s: write of new grain %" PRIu64 " at file offset %" PRIu64 ": %s", e->path, grain,
                at, strerror(-rc));
        return rc;
    }
    if (shadows && sp->defer_ok) {
        /* the entry waits for the next flush, which syncs the data first
         * (a FUA write flushes before it returns) */
        rc = vmdk_gte_defer(e, grain, (uint32_t)(at / VD_SECTOR));
        if (rc != -ENOMEM)
            return rc;
    }
    if (((flags & VD_FUA) || shadows) && (rc = vmdk_fdatasync(e)) < 0)
        return rc;
    return vmdk_gte_store(e, grain, (uint32_t)(at / VD_SECTOR));
}

/* Fill a full grain buffer with what the grain reads as now (parent data or
 * zeroes). */
static int vmdk_grain_base(struct vd_image *img, struct vmdk_extent *e, uint64_t grain, uint32_t v,
                           uint8_t *g)
{
    struct vmdk_sparse *sp = e->sp;
    memset(g, 0, sp->grain_bytes);
    if (v == VMDK_GTE_ZEROED && sp->zero_grain)
        return 0;
    struct vd_image *p = img->parent;
    uint64_t vo = e->start + grain * sp->grain_bytes;
    if (!p || vo >= p->size)
        return 0;
    uint64_t n = MIN(sp->grain_bytes, e->len - grain * sp->grain_bytes);
    n = MIN(n, p->size - vo);
    return vd_pread(p, g, n, vo);
}

int vmdk_sparse_write(struct vd_image *img, struct vmdk_extent *e, const uint8_t *buf, uint64_t len,
                      uint64_t off, unsigned flags)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    uint8_t *g = NULL;
    int rc = 0;
    bool wrote = false;
    while (len > 0) {
        uint64_t grain = off / gb, in = off % gb;
        uint64_t n = MIN(len, gb - in);
        uint32_t v = vmdk_gte_load(sp, grain);
        if (vmdk_gte_state(sp, v) != VD_MAP_DATA) {
            pthread_mutex_t *mx = vmdk_stripe(sp, grain);
            pthread_mutex_lock(mx);
            v = vmdk_gte_load(sp, grain);
            if (vmdk_gte_state(sp, v) != VD_MAP_DATA) {
                const uint8_t *data = buf;
                if (n < gb) {
                    if (!g && !(g = malloc(gb))) {
                        pthread_mutex_unlock(mx);
                        rc = -ENOMEM;
                        break;
                    }
                    rc = vmdk_grain_base(img, e, grain, v, g);
                    if (rc == 0)
                        memcpy(g + in, buf, n);
                    data = g;
                }
                bool shadows = img->parent && !(v == VMDK_GTE_ZEROED && sp->zero_grain) &&
                               e->start + grain * gb < img->parent->size;
                if (rc == 0)
                    rc = vmdk_grain_alloc(e, grain, data, flags, shadows);
                pthread_mutex_unlock(mx);
                if (rc < 0)
                    break;
                wrote = true; /* FUA: the GT entries must be durable too */
                goto next;
            }
            pthread_mutex_unlock(mx);
        }
        rc = VD_IO(e->io, pwrite, e->fd, buf, n, (uint64_t)v * VD_SECTOR + in);
        if (rc < 0) {
            log_err("%s: write of grain %" PRIu64 " at file offset %" PRIu64 ": %s", e->path, grain,
                    (uint64_t)v * VD_SECTOR + in, strerror(-rc));
            break;
        }
        wrote = true;
    next:
        buf += n;
        off += n;
        len -= n;
    }
    free(g);
    /* FUA: the data and every entry it needs (deferred ones included) */
    if (rc == 0 && wrote && (flags & VD_FUA))
        rc = vmdk_sparse_flush(e);
    return rc;
}

/* Make bytes [in, in+n) of the allocated grain at sector v read zeroes
 * without writing zero data: punch them out of the file, or zero them in
 * place (ZERO_RANGE) when `keep` (NO_HOLE). -EOPNOTSUPP where the file
 * system cannot. The grain's entry does not change; a grain that is DATA
 * stays at v (its space is never reused), so this is safe beside a
 * concurrent whole-grain zeroing that punches the same bytes. */
static int vmdk_grain_fallocate(struct vmdk_extent *e, uint32_t v, uint64_t in, uint64_t n,
                                bool keep)
{
    int rc = VD_IO(e->io, punch, e->fd, (uint64_t)v * VD_SECTOR + in, n, keep);
    if (rc == 0 || rc == -EOPNOTSUPP)
        return rc;
    log_err("%s: fallocate of %" PRIu64 " bytes in the grain at sector %u: %s", e->path, n, v,
            strerror(-rc));
    return rc;
}

/* Turn a whole grain into a zeroed-grain entry (hides the parent's data)
 * and punch its old bytes out of the file. */
static int vmdk_grain_zero_entry(struct vmdk_extent *e, uint64_t grain)
{
    struct vmdk_sparse *sp = e->sp;
    int rc = 0;
    pthread_mutex_t *mx = vmdk_stripe(sp, grain);
    pthread_mutex_lock(mx);
    uint32_t v = vmdk_gte_load(sp, grain);
    if (vmdk_gte_state(sp, v) != VD_MAP_ZERO) {
        rc = vmdk_gte_store(e, grain, VMDK_GTE_ZEROED);
        if (rc == 0 && vmdk_gte_state(sp, v) == VD_MAP_DATA)
            (void)VD_IO(e->io, punch, e->fd, (uint64_t)v * VD_SECTOR, sp->grain_bytes, false);
    }
    pthread_mutex_unlock(mx);
    return rc;
}

/* What zeroing one grain piece takes. */
enum vmdk_zero_how {
    VMDK_ZERO_NOTHING, /* reads zeroes already and may stay a hole */
    VMDK_ZERO_ENTRY,   /* whole grain: a zeroed-grain entry (metadata only) */
    VMDK_ZERO_FALLOC,  /* allocated here: fallocate in place (no data written) */
    VMDK_ZERO_WRITE,   /* allocation (and a copy-up of the parent's data) */
};

static enum vmdk_zero_how vmdk_zero_plan(struct vd_image *img, struct vmdk_extent *e, uint64_t off,
                                         uint64_t n, unsigned flags)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes, grain = off / gb, in = off % gb;
    enum vd_map_state st = vmdk_gte_state(sp, vmdk_gte_load(sp, grain));
    bool whole = n == gb || (in == 0 && off + n == e->len);
    bool reads_zero = st == VD_MAP_ZERO || (st == VD_MAP_UNALLOC && !img->parent);
    bool no_hole = flags & VD_NO_HOLE;
    if (whole && sp->zero_grain && !no_hole)
        return st == VD_MAP_ZERO ? VMDK_ZERO_NOTHING : VMDK_ZERO_ENTRY;
    if (reads_zero && !no_hole)
        return VMDK_ZERO_NOTHING;
    if (st == VD_MAP_DATA)
        return VMDK_ZERO_FALLOC;
    return VMDK_ZERO_WRITE;
}

int vmdk_sparse_zero(struct vd_image *img, struct vmdk_extent *e, uint64_t off, uint64_t len,
                     unsigned flags)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    if (flags & VD_ZERO_FAST) {
        /* FAST_ZERO: refuse before changing anything if some piece would
         * have to be written with zero data (an allocation, a copy-up) */
        for (uint64_t o = off, l = len; l > 0;) {
            uint64_t n = MIN(l, gb - o % gb);
            if (vmdk_zero_plan(img, e, o, n, flags) == VMDK_ZERO_WRITE)
                return -ENOTSUP;
            o += n;
            l -= n;
        }
    }
    uint8_t *z = NULL;
    int rc = 0;
    while (len > 0 && rc == 0) {
        uint64_t grain = off / gb, in = off % gb;
        uint64_t n = MIN(len, gb - in);
        enum vmdk_zero_how how = vmdk_zero_plan(img, e, off, n, flags);
        if (how == VMDK_ZERO_ENTRY) {
            rc = vmdk_grain_zero_entry(e, grain);
        } else if (how == VMDK_ZERO_FALLOC) {
            rc = vmdk_grain_fallocate(e, vmdk_gte_load(sp, grain), in, n, true);
            if (rc == -EOPNOTSUPP)
                rc = (flags & VD_ZERO_FAST) ? -ENOTSUP : 1; /* 1: write the zeroes */
        }
        if (how == VMDK_ZERO_WRITE || rc == 1) {
            if (!z && !(z = calloc(1, gb))) {
                rc = -ENOMEM;
                break;
            }
            rc = vmdk_sparse_write(img, e, z, n, off, flags & ~VD_FUA);
        }
        off += n;
        len -= n;
    }
    free(z);
    if (rc == 0 && (flags & VD_FUA))
        rc = vmdk_sparse_flush(e);
    return rc;
}

int vmdk_sparse_discard(struct vd_image *img, struct vmdk_extent *e, uint64_t off, uint64_t len)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    int rc = 0;
    while (len > 0 && rc == 0) {
        uint64_t grain = off / gb, in = off % gb;
        uint64_t n = MIN(len, gb - in);
        uint32_t v = vmdk_gte_load(sp, grain);
        enum vd_map_state st = vmdk_gte_state(sp, v);
        bool whole = n == gb || (in == 0 && off + n == e->len);
        if (whole && sp->zero_grain) {
            if (st != VD_MAP_ZERO)
                rc = vmdk_grain_zero_entry(e, grain);
        } else if (st == VD_MAP_DATA) {
            rc = vmdk_grain_fallocate(e, v, in, n, false);
            if (rc == -EOPNOTSUPP)
                rc = 0; /* advisory */
        }
        /* else: not allocated here (or compressed): nothing to give back,
         * and no copy-up of a whole grain for a piece of it */
        off += n;
        len -= n;
    }
    return rc;
}

int vmdk_sparse_trim_ahead(struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    int rc = 0;
    pthread_mutex_lock(&sp->alloc_lock);
    if (sp->durable_end > sp->file_end) {
        rc = VD_IO(e->io, truncate, e->fd, sp->file_end);
        if (rc < 0) {
            log_err("%s: cutting the space grown ahead of new grains: %s", e->path, strerror(-rc));
        } else {
            rc = vmdk_fdatasync(e);
            sp->durable_end = 0; /* the next grain grows the file again */
        }
    }
    pthread_mutex_unlock(&sp->alloc_lock);
    return rc;
}
