/* Encode / decode of the volume's on-disk structures (cfs_format.h).
 *
 * Encoders write every field of a zeroed buffer (reserved bytes stay zero)
 * and leave the CRC to cfs_block_seal(), which the journal calls last,
 * after it stamped the transaction sequence. Decoders check the block
 * first (magic, version, type, size, CRC, volume UUID, self address) and
 * then the plausibility of the fields they return, so a corrupt block is an
 * error naming the structure and its address, never a crash or a wild
 * pointer.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "cfs_format.h"
#include "crc32c.h"
#include "le.h"
#include "log.h"

#define PUT16(b, s, f, v) le16_put((uint8_t *)(b) + offsetof(s, f), (uint16_t)(v))
#define PUT32(b, s, f, v) le32_put((uint8_t *)(b) + offsetof(s, f), (uint32_t)(v))
#define PUT64(b, s, f, v) le64_put((uint8_t *)(b) + offsetof(s, f), (uint64_t)(v))
#define GET16(b, s, f) le16_get((const uint8_t *)(b) + offsetof(s, f))
#define GET32(b, s, f) le32_get((const uint8_t *)(b) + offsetof(s, f))
#define GET64(b, s, f) le64_get((const uint8_t *)(b) + offsetof(s, f))

__thread int cfs_decode_quiet;
#undef log_err

#define log_err(...)                                                                               \
    do {                                                                                           \
        if (!cfs_decode_quiet)                                                                     \
            log_msg(LOG_LVL_ERR, __VA_ARGS__);                                                     \
    } while (0)

const char *cfs_btype_name(unsigned t)
{
    switch (t) {
    case CFS_BT_SUPER:
        return "superblock";
    case CFS_BT_JHEAD:
        return "journal header";
    case CFS_BT_JDESC:
        return "journal descriptor";
    case CFS_BT_JCOMMIT:
        return "journal commit";
    case CFS_BT_CLUSTER:
        return "resource cluster header";
    case CFS_BT_INODE:
        return "inode";
    case CFS_BT_DIR:
        return "directory block";
    case CFS_BT_PTR:
        return "pointer block";
    case CFS_BT_HOST:
        return "host block";
    case CFS_BT_RMAP:
        return "resource map";
    }
    return "block";
}

int cfs_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return 0;
    return 1;
}

void cfs_mhdr_encode(void *buf, const struct cfs_mhdr *h)
{
    typedef struct cfs_mhdr_disk D;
    PUT32(buf, D, magic, CFS_MAGIC);
    PUT16(buf, D, version, CFS_VERSION_MAJOR);
    PUT16(buf, D, type, h->type);
    PUT32(buf, D, crc, 0);
    PUT32(buf, D, size, h->size);
    memcpy((uint8_t *)buf + offsetof(D, uuid), h->uuid, 16);
    PUT64(buf, D, addr, h->addr);
    PUT64(buf, D, seq, h->seq);
    PUT32(buf, D, fence_slot, h->fence_slot);
    PUT32(buf, D, fence_gen, h->fence_gen);
    PUT64(buf, D, fence_ver, h->fence_ver);
}

void cfs_mhdr_decode(const void *buf, struct cfs_mhdr *h)
{
    typedef struct cfs_mhdr_disk D;
    h->version = GET16(buf, D, version);
    h->type = GET16(buf, D, type);
    h->size = GET32(buf, D, size);
    memcpy(h->uuid, (const uint8_t *)buf + offsetof(D, uuid), 16);
    h->addr = GET64(buf, D, addr);
    h->seq = GET64(buf, D, seq);
    h->fence_slot = GET32(buf, D, fence_slot);
    h->fence_gen = GET32(buf, D, fence_gen);
    h->fence_ver = GET64(buf, D, fence_ver);
}

static uint32_t block_crc(const void *buf, uint32_t size)
{
    static const uint8_t zero[4];
    uint32_t c = crc32c(buf, offsetof(struct cfs_mhdr_disk, crc));
    c = crc32c_update(c, zero, 4);
    return crc32c_update(c, (const uint8_t *)buf + 12, size - 12);
}

void cfs_block_seal(void *buf, uint32_t size)
{
    le32_put((uint8_t *)buf + offsetof(struct cfs_mhdr_disk, crc), block_crc(buf, size));
}

int cfs_block_check(const void *buf, uint32_t size, unsigned type, const uint8_t uuid[16],
                    uint64_t addr, const char *what)
{
    typedef struct cfs_mhdr_disk D;
    if (!what)
        what = cfs_btype_name(type);
    uint32_t m = GET32(buf, D, magic);
    if (m != CFS_MAGIC) {
        if (cfs_is_zero(buf, size))
            return -ENODATA;
        log_err("%s at byte %llu: bad magic 0x%08x (expected 0x%08x)", what,
                (unsigned long long)addr, m, CFS_MAGIC);
        return -EUCLEAN;
    }
    uint32_t want = GET32(buf, D, crc), got = block_crc(buf, size);
    if (want != got) {
        log_err("%s at byte %llu: bad CRC32C 0x%08x (computed 0x%08x)", what,
                (unsigned long long)addr, want, got);
        return -EBADMSG;
    }
    unsigned v = GET16(buf, D, version);
    if (v != CFS_VERSION_MAJOR) {
        log_err("%s at byte %llu: format version %u not supported (this build reads %u)", what,
                (unsigned long long)addr, v, CFS_VERSION_MAJOR);
        return -EPROTO;
    }
    if (uuid && memcmp((const uint8_t *)buf + offsetof(D, uuid), uuid, 16))
        return -ESTALE; /* another (older) volume's block: not ours */
    unsigned t = GET16(buf, D, type);
    uint32_t sz = GET32(buf, D, size);
    uint64_t a = GET64(buf, D, addr);
    if (t != type || sz != size || a != addr) {
        log_err("%s at byte %llu: found %s (type %u, %u bytes) written for byte %llu", what,
                (unsigned long long)addr, cfs_btype_name(t), t, sz, (unsigned long long)a);
        return -EUCLEAN;
    }
    return 0;
}

static void hdr_decode_after_check(const void *buf, struct cfs_mhdr *h)
{
    cfs_mhdr_decode(buf, h);
}

/* ---- superblock ---------------------------------------------------------- */

void cfs_super_encode(void *buf, const struct cfs_super *s)
{
    typedef struct cfs_super_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = s->h;
    h.type = CFS_BT_SUPER;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT16(buf, D, version_minor, s->version_minor);
    PUT32(buf, D, feat_compat, s->feat_compat);
    PUT32(buf, D, feat_incompat, s->feat_incompat);
    PUT32(buf, D, feat_ro_compat, s->feat_ro_compat);
    memcpy((char *)buf + offsetof(D, label), s->label, strnlen(s->label, 63));
    PUT64(buf, D, created_ns, s->created_ns);
    PUT64(buf, D, volume_bytes, s->volume_bytes);
    PUT32(buf, D, lun_block_size, s->lun_block_size);
    PUT32(buf, D, block_size, s->block_size);
    PUT32(buf, D, small_size, s->small_size);
    PUT32(buf, D, inode_size, s->inode_size);
    PUT32(buf, D, max_hosts, s->max_hosts);
    PUT32(buf, D, io_timeout_ms, s->io_timeout_ms);
    PUT64(buf, D, ls_off, s->ls_off);
    PUT64(buf, D, ls_bytes, s->ls_bytes);
    PUT64(buf, D, journal_off, s->journal_off);
    PUT64(buf, D, journal_bytes, s->journal_bytes);
    PUT64(buf, D, data_off, s->data_off);
    PUT32(buf, D, cluster_blocks, s->cluster_blocks);
    PUT64(buf, D, nclusters, s->nclusters);
    PUT64(buf, D, root_ino, s->root_ino);
    PUT64(buf, D, super_gen, s->super_gen);
    cfs_block_seal(buf, CFS_META);
}

int cfs_super_decode(const void *buf, uint64_t addr, struct cfs_super *s)
{
    typedef struct cfs_super_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_SUPER, NULL, addr, "superblock");
    if (r == -ENODATA)
        log_err("superblock at byte %llu: all zeroes (no volume)", (unsigned long long)addr);
    if (r < 0)
        return r == -ENODATA ? -EUCLEAN : r;
    memset(s, 0, sizeof(*s));
    hdr_decode_after_check(buf, &s->h);
    s->version_minor = GET16(buf, D, version_minor);
    s->feat_compat = GET32(buf, D, feat_compat);
    s->feat_incompat = GET32(buf, D, feat_incompat);
    s->feat_ro_compat = GET32(buf, D, feat_ro_compat);
    memcpy(s->label, (const char *)buf + offsetof(D, label), 64);
    s->label[64] = 0;
    s->created_ns = GET64(buf, D, created_ns);
    s->volume_bytes = GET64(buf, D, volume_bytes);
    s->lun_block_size = GET32(buf, D, lun_block_size);
    s->block_size = GET32(buf, D, block_size);
    s->small_size = GET32(buf, D, small_size);
    s->inode_size = GET32(buf, D, inode_size);
    s->max_hosts = GET32(buf, D, max_hosts);
    s->io_timeout_ms = GET32(buf, D, io_timeout_ms);
    s->ls_off = GET64(buf, D, ls_off);
    s->ls_bytes = GET64(buf, D, ls_bytes);
    s->journal_off = GET64(buf, D, journal_off);
    s->journal_bytes = GET64(buf, D, journal_bytes);
    s->data_off = GET64(buf, D, data_off);
    s->cluster_blocks = GET32(buf, D, cluster_blocks);
    s->nclusters = GET64(buf, D, nclusters);
    s->root_ino = GET64(buf, D, root_ino);
    s->super_gen = GET64(buf, D, super_gen);
    const char *bad = NULL;
    uint64_t cl_bytes = (uint64_t)s->cluster_blocks * s->block_size;
    if (s->lun_block_size != 512 && s->lun_block_size != 4096)
        bad = "LUN block size";
    else if (s->block_size < CFS_BLOCK_MIN || s->block_size > CFS_BLOCK_MAX ||
             (s->block_size & (s->block_size - 1)))
        bad = "file block size";
    else if (s->small_size != CFS_SMALL || s->inode_size != CFS_INODE_SLOT)
        bad = "small block / inode size";
    else if (s->max_hosts < 1 || s->max_hosts > CFS_HOSTS_MAX)
        bad = "max hosts";
    else if (s->cluster_blocks != CFS_CLUSTER_BLOCKS)
        bad = "cluster size";
    else if (s->journal_bytes < CFS_JOURNAL_MIN || s->journal_bytes % CFS_META ||
             s->journal_off < s->ls_off + s->ls_bytes ||
             s->data_off < s->journal_off + s->journal_bytes * s->max_hosts ||
             s->data_off % s->block_size)
        bad = "region offsets";
    else if (s->nclusters == 0 ||
             s->data_off + (s->nclusters - 1) * cl_bytes + 2ull * s->block_size > s->volume_bytes)
        bad = "volume size";
    else if (s->root_ino * CFS_INODE_SLOT < s->data_off ||
             s->root_ino * CFS_INODE_SLOT >= s->volume_bytes)
        bad = "root inode";
    if (bad) {
        log_err("superblock at byte %llu: implausible %s", (unsigned long long)addr, bad);
        return -EUCLEAN;
    }
    return 0;
}

/* ---- journal ------------------------------------------------------------- */

void cfs_jhead_encode(void *buf, const struct cfs_jhead *j)
{
    typedef struct cfs_jhead_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = j->h;
    h.type = CFS_BT_JHEAD;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT32(buf, D, slot, j->slot);
    PUT64(buf, D, tail_seq, j->tail_seq);
    PUT64(buf, D, tail_pos, j->tail_pos);
    cfs_block_seal(buf, CFS_META);
}

int cfs_jhead_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_jhead *j)
{
    typedef struct cfs_jhead_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_JHEAD, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &j->h);
    j->slot = GET32(buf, D, slot);
    j->tail_seq = GET64(buf, D, tail_seq);
    j->tail_pos = GET64(buf, D, tail_pos);
    return 0;
}

void cfs_jdesc_encode(void *buf, const struct cfs_jdesc *d)
{
    typedef struct cfs_jdesc_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = d->h;
    h.type = CFS_BT_JDESC;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT32(buf, D, nrec, d->nrec);
    for (uint32_t i = 0; i < d->nrec && i < CFS_JDESC_MAX; i++) {
        uint8_t *p = (uint8_t *)buf + offsetof(D, rec) + i * sizeof(struct cfs_jrec_disk);
        le64_put(p, d->addr[i]);
        le32_put(p + 8, d->len[i]);
    }
    cfs_block_seal(buf, CFS_META);
}

int cfs_jdesc_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_jdesc *d)
{
    typedef struct cfs_jdesc_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_JDESC, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &d->h);
    d->nrec = GET32(buf, D, nrec);
    if (d->nrec == 0 || d->nrec > CFS_JDESC_MAX) {
        log_err("journal descriptor at byte %llu: %u records (1..%u)", (unsigned long long)addr,
                d->nrec, CFS_JDESC_MAX);
        return -EUCLEAN;
    }
    for (uint32_t i = 0; i < d->nrec; i++) {
        const uint8_t *p =
            (const uint8_t *)buf + offsetof(D, rec) + i * sizeof(struct cfs_jrec_disk);
        d->addr[i] = le64_get(p);
        d->len[i] = le32_get(p + 8);
        if ((d->len[i] != CFS_META && d->len[i] != CFS_SMALL) || d->addr[i] % CFS_META) {
            log_err("journal descriptor at byte %llu: record %u: bad length %u or address %llu",
                    (unsigned long long)addr, i, d->len[i], (unsigned long long)d->addr[i]);
            return -EUCLEAN;
        }
    }
    return 0;
}

void cfs_jcommit_encode(void *buf, const struct cfs_jcommit *c)
{
    typedef struct cfs_jcommit_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = c->h;
    h.type = CFS_BT_JCOMMIT;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT32(buf, D, nblocks, c->nblocks);
    PUT32(buf, D, body_crc, c->body_crc);
    PUT64(buf, D, commit_ns, c->commit_ns);
    cfs_block_seal(buf, CFS_META);
}

int cfs_jcommit_decode(const void *buf, const uint8_t uuid[16], uint64_t addr,
                       struct cfs_jcommit *c)
{
    typedef struct cfs_jcommit_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_JCOMMIT, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &c->h);
    c->nblocks = GET32(buf, D, nblocks);
    c->body_crc = GET32(buf, D, body_crc);
    c->commit_ns = GET64(buf, D, commit_ns);
    return 0;
}

/* ---- host block ---------------------------------------------------------- */

void cfs_host_encode(void *buf, const struct cfs_host *o)
{
    typedef struct cfs_host_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = o->h;
    h.type = CFS_BT_HOST;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT32(buf, D, slot, o->slot);
    PUT32(buf, D, norphans, o->norphans);
    for (uint32_t i = 0; i < o->norphans && i < CFS_ORPHAN_MAX; i++)
        le64_put((uint8_t *)buf + offsetof(D, orphans) + 8 * i, o->orphans[i]);
    cfs_block_seal(buf, CFS_META);
}

int cfs_host_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_host *o)
{
    typedef struct cfs_host_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_HOST, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &o->h);
    o->slot = GET32(buf, D, slot);
    o->norphans = GET32(buf, D, norphans);
    if (o->norphans > CFS_ORPHAN_MAX) {
        log_err("host block at byte %llu: %u orphans (at most %u)", (unsigned long long)addr,
                o->norphans, CFS_ORPHAN_MAX);
        return -EUCLEAN;
    }
    for (uint32_t i = 0; i < o->norphans; i++)
        o->orphans[i] = le64_get((const uint8_t *)buf + offsetof(D, orphans) + 8 * i);
    return 0;
}

/* ---- resource map -------------------------------------------------------- */

void cfs_rmap_encode(void *buf, const struct cfs_rmap *m)
{
    typedef struct cfs_rmap_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = m->h;
    h.type = CFS_BT_RMAP;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT64(buf, D, laid_out, m->laid_out);
    cfs_block_seal(buf, CFS_META);
}

int cfs_rmap_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_rmap *m)
{
    typedef struct cfs_rmap_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_RMAP, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &m->h);
    m->laid_out = GET64(buf, D, laid_out);
    if (m->laid_out == 0) {
        log_err("resource map at byte %llu: no cluster laid out", (unsigned long long)addr);
        return -EUCLEAN;
    }
    return 0;
}

/* ---- resource cluster ---------------------------------------------------- */

void cfs_cluster_encode(void *buf, const struct cfs_cluster *c)
{
    typedef struct cfs_cluster_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = c->h;
    h.type = CFS_BT_CLUSTER;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT64(buf, D, index, c->index);
    PUT32(buf, D, nblocks, c->nblocks);
    PUT32(buf, D, free_blocks, c->free_blocks);
    PUT32(buf, D, owner_slot, c->owner_slot);
    PUT32(buf, D, owner_gen, c->owner_gen);
    PUT32(buf, D, free_small, c->free_small);
    PUT32(buf, D, free_inodes, c->free_inodes);
    memcpy((uint8_t *)buf + offsetof(D, kind), c->kind, sizeof(c->kind));
    memcpy((uint8_t *)buf + offsetof(D, sub), c->sub, sizeof(c->sub));
    cfs_block_seal(buf, CFS_META);
}

int cfs_cluster_decode(const void *buf, const uint8_t uuid[16], uint64_t addr,
                       struct cfs_cluster *c)
{
    typedef struct cfs_cluster_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_CLUSTER, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &c->h);
    c->index = GET64(buf, D, index);
    c->nblocks = GET32(buf, D, nblocks);
    c->free_blocks = GET32(buf, D, free_blocks);
    c->owner_slot = GET32(buf, D, owner_slot);
    c->owner_gen = GET32(buf, D, owner_gen);
    c->free_small = GET32(buf, D, free_small);
    c->free_inodes = GET32(buf, D, free_inodes);
    memcpy(c->kind, (const uint8_t *)buf + offsetof(D, kind), sizeof(c->kind));
    memcpy(c->sub, (const uint8_t *)buf + offsetof(D, sub), sizeof(c->sub));
    if (c->nblocks < 2 || c->nblocks > CFS_CLUSTER_BLOCKS || c->free_blocks >= c->nblocks ||
        c->kind[0] != CFS_K_META) {
        log_err("resource cluster header at byte %llu: implausible (%u blocks, %u free)",
                (unsigned long long)addr, c->nblocks, c->free_blocks);
        return -EUCLEAN;
    }
    for (unsigned i = 0; i < CFS_CLUSTER_BLOCKS; i++)
        if (c->kind[i] > CFS_K_META || (i >= c->nblocks && c->kind[i] != CFS_K_FREE)) {
            log_err("resource cluster header at byte %llu: block %u has bad kind %u",
                    (unsigned long long)addr, i, c->kind[i]);
            return -EUCLEAN;
        }
    return 0;
}

/* ---- inode --------------------------------------------------------------- */

void cfs_inode_encode(void *buf, const struct cfs_dinode *d)
{
    typedef struct cfs_inode_disk D;
    memset(buf, 0, CFS_META);
    struct cfs_mhdr h = d->h;
    h.type = CFS_BT_INODE;
    h.size = CFS_META;
    cfs_mhdr_encode(buf, &h);
    PUT64(buf, D, ino, d->ino);
    PUT32(buf, D, generation, d->generation);
    PUT32(buf, D, mode, d->mode);
    PUT32(buf, D, uid, d->uid);
    PUT32(buf, D, gid, d->gid);
    PUT32(buf, D, nlink, d->nlink);
    PUT32(buf, D, flags, d->flags);
    PUT64(buf, D, size, d->size);
    PUT64(buf, D, blocks, d->blocks);
    PUT64(buf, D, rdev, d->rdev);
    PUT64(buf, D, atime_ns, d->atime_ns);
    PUT64(buf, D, mtime_ns, d->mtime_ns);
    PUT64(buf, D, ctime_ns, d->ctime_ns);
    PUT64(buf, D, btime_ns, d->btime_ns);
    ((uint8_t *)buf)[offsetof(D, map_shift)] = d->map_shift;
    ((uint8_t *)buf)[offsetof(D, map_height)] = d->map_height;
    PUT64(buf, D, map_root, d->map_root);
    PUT64(buf, D, parent, d->parent);
    PUT32(buf, D, dir_level, d->dir_level);
    PUT32(buf, D, dir_split, d->dir_split);
    PUT64(buf, D, dir_entries, d->dir_entries);
    PUT64(buf, D, dir_ovf_next, d->dir_ovf_next);
    PUT32(buf, D, xattr_len, d->xattr_len);
    memcpy((uint8_t *)buf + offsetof(D, inline_data), d->inline_data, CFS_INLINE_MAX);
    memcpy((uint8_t *)buf + offsetof(D, xattr), d->xattr, CFS_XATTR_MAX);
}

int cfs_inode_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_dinode *d)
{
    typedef struct cfs_inode_disk D;
    int r = cfs_block_check(buf, CFS_META, CFS_BT_INODE, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &d->h);
    d->ino = GET64(buf, D, ino);
    d->generation = GET32(buf, D, generation);
    d->mode = GET32(buf, D, mode);
    d->uid = GET32(buf, D, uid);
    d->gid = GET32(buf, D, gid);
    d->nlink = GET32(buf, D, nlink);
    d->flags = GET32(buf, D, flags);
    d->size = GET64(buf, D, size);
    d->blocks = GET64(buf, D, blocks);
    d->rdev = GET64(buf, D, rdev);
    d->atime_ns = (int64_t)GET64(buf, D, atime_ns);
    d->mtime_ns = (int64_t)GET64(buf, D, mtime_ns);
    d->ctime_ns = (int64_t)GET64(buf, D, ctime_ns);
    d->btime_ns = (int64_t)GET64(buf, D, btime_ns);
    d->map_shift = ((const uint8_t *)buf)[offsetof(D, map_shift)];
    d->map_height = ((const uint8_t *)buf)[offsetof(D, map_height)];
    d->map_root = GET64(buf, D, map_root);
    d->parent = GET64(buf, D, parent);
    d->dir_level = GET32(buf, D, dir_level);
    d->dir_split = GET32(buf, D, dir_split);
    d->dir_entries = GET64(buf, D, dir_entries);
    d->dir_ovf_next = GET64(buf, D, dir_ovf_next);
    d->xattr_len = GET32(buf, D, xattr_len);
    memcpy(d->inline_data, (const uint8_t *)buf + offsetof(D, inline_data), CFS_INLINE_MAX);
    memcpy(d->xattr, (const uint8_t *)buf + offsetof(D, xattr), CFS_XATTR_MAX);
    const char *bad = NULL;
    if (d->ino * CFS_INODE_SLOT + CFS_META != addr)
        bad = "inode number";
    else if (d->map_shift != 0 && d->map_shift != CFS_SMALL_SHIFT &&
             (d->map_shift < 16 || d->map_shift > 20))
        bad = "block map unit";
    else if (d->map_height > 6)
        bad = "block map height";
    else if (d->map_shift == 0 && d->size > CFS_INLINE_MAX)
        bad = "inline size";
    else if (d->xattr_len > CFS_XATTR_MAX)
        bad = "xattr length";
    else if (d->dir_level > 40 ||
             (d->dir_level < 40 && d->dir_split >= (1u << d->dir_level) && d->dir_split != 0))
        bad = "directory hash level";
    if (bad) {
        log_err("inode %llu at byte %llu: implausible %s", (unsigned long long)d->ino,
                (unsigned long long)addr, bad);
        return -EUCLEAN;
    }
    return 0;
}

/* ---- pointer blocks ------------------------------------------------------ */

void cfs_ptrblk_init(void *buf, const struct cfs_ptrblk *p)
{
    typedef struct cfs_ptr_disk D;
    memset(buf, 0, CFS_SMALL);
    struct cfs_mhdr h = p->h;
    h.type = CFS_BT_PTR;
    h.size = CFS_SMALL;
    cfs_mhdr_encode(buf, &h);
    PUT64(buf, D, owner, p->owner);
    PUT32(buf, D, level, p->level);
}

int cfs_ptrblk_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_ptrblk *p)
{
    typedef struct cfs_ptr_disk D;
    int r = cfs_block_check(buf, CFS_SMALL, CFS_BT_PTR, uuid, addr, NULL);
    if (r < 0)
        return r;
    hdr_decode_after_check(buf, &p->h);
    p->owner = GET64(buf, D, owner);
    p->level = GET32(buf, D, level);
    if (p->level < 1 || p->level > 6) {
        log_err("pointer block at byte %llu: bad level %u", (unsigned long long)addr, p->level);
        return -EUCLEAN;
    }
    return 0;
}

uint64_t cfs_ptrblk_get(const void *buf, unsigned i)
{
    return le64_get((const uint8_t *)buf + offsetof(struct cfs_ptr_disk, ptr) + 8u * i);
}

void cfs_ptrblk_set(void *buf, unsigned i, uint64_t ptr)
{
    le64_put((uint8_t *)buf + offsetof(struct cfs_ptr_disk, ptr) + 8u * i, ptr);
}

/* ---- directory blocks ---------------------------------------------------- */

void cfs_dirblk_put(void *buf, const struct cfs_dirblk *d)
{
    typedef struct cfs_dir_disk D;
    struct cfs_mhdr h = d->h;
    h.type = CFS_BT_DIR;
    h.size = CFS_SMALL;
    cfs_mhdr_encode(buf, &h);
    PUT64(buf, D, dir_ino, d->dir_ino);
    PUT64(buf, D, bucket, d->bucket);
    PUT64(buf, D, next, d->next);
    PUT32(buf, D, nent, d->nent);
    PUT32(buf, D, used, d->used);
}

int cfs_dirblk_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_dirblk *d)
{
    int r = cfs_block_check(buf, CFS_SMALL, CFS_BT_DIR, uuid, addr, NULL);
    if (r < 0)
        return r;
    return cfs_dirblk_parse(buf, addr, d);
}

int cfs_dirblk_parse(const void *buf, uint64_t addr, struct cfs_dirblk *d)
{
    typedef struct cfs_dir_disk D;
    hdr_decode_after_check(buf, &d->h);
    d->dir_ino = GET64(buf, D, dir_ino);
    d->bucket = GET64(buf, D, bucket);
    d->next = GET64(buf, D, next);
    d->nent = GET32(buf, D, nent);
    d->used = GET32(buf, D, used);
    const uint8_t *area = (const uint8_t *)buf + offsetof(D, area);
    uint32_t off = 0, n = 0;
    if (d->used > CFS_DIR_AREA)
        goto bad;
    while (off < d->used) {
        if (d->used - off < CFS_DIRENT_HDR)
            goto bad;
        unsigned nl = area[off + 17];
        if (nl == 0 || cfs_dirent_size(nl) > d->used - off)
            goto bad;
        if (memchr(area + off + CFS_DIRENT_HDR, '/', nl) ||
            memchr(area + off + CFS_DIRENT_HDR, 0, nl))
            goto bad;
        off += cfs_dirent_size(nl);
        n++;
    }
    if (n != d->nent)
        goto bad;
    return 0;
bad:
    log_err("directory block at byte %llu (directory inode %llu): malformed entries "
            "(%u used bytes, %u entries, entry at offset %u)",
            (unsigned long long)addr, (unsigned long long)d->dir_ino, d->used, d->nent, off);
    return -EUCLEAN;
}
