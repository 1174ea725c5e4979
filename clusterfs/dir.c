/* Directories: linear hashing over 8 KiB directory blocks.
 *
 * Design notes
 * ------------
 * - A name hashes to 64 bits (FNV-1a, then a 64-bit finaliser). The
 *   directory has 2^L + S buckets (inode dir_level, dir_split): bucket
 *   b = h mod 2^L, or h mod 2^(L+1) when that is below S (Litwin's linear
 *   hashing). Bucket b's primary block is block b of the directory's block
 *   map; a full bucket chains overflow blocks at indices 2^29 + n.
 * - Growth is one bucket at a time: when the directory holds more than
 *   100 entries per bucket, bucket S is split into S and S + 2^L by bit L
 *   of the hash, and S advances. A split touches one chain and one new
 *   bucket, so no operation ever rehashes the whole directory, and a lookup
 *   reads one block (plus overflow blocks, rare) at any size: 100,000
 *   entries are about 1,000 buckets.
 * - Readdir cookies are hash order, not block order: entry cookie =
 *   bitreverse(h) >> 2, and bucket b holds exactly the cookies whose top
 *   bits are bitreverse(b). A split divides a bucket's cookie range into
 *   two contiguous halves, so a listing resumed from a cookie never returns
 *   an entry twice nor skips one present throughout, however the directory
 *   grew in between (the ext4 htree approach). Two names whose 62-bit
 *   cookies collide could be cut apart by a full readdir buffer; at 62 bits
 *   that is negligible (documented in README).
 * - Directories never shrink their bucket count; emptied overflow blocks
 *   are freed.
 * Under v->mtx.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cfs_internal.h"
#include "le.h"
#include "log.h"
#include "util.h"

#define OVF_BASE (1ull << 29)
#define SPLIT_LOAD 100u
#define R_BITS 62
#define R_END (1ull << R_BITS)

#define OFF_NEXT offsetof(struct cfs_dir_disk, next)
#define OFF_NENT offsetof(struct cfs_dir_disk, nent)
#define OFF_USED offsetof(struct cfs_dir_disk, used)
#define AREA(b) ((b)->data + offsetof(struct cfs_dir_disk, area))

uint64_t cfs_name_hash(const char *name, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)name[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t rev64(uint64_t x)
{
    x = ((x >> 1) & 0x5555555555555555ull) | ((x & 0x5555555555555555ull) << 1);
    x = ((x >> 2) & 0x3333333333333333ull) | ((x & 0x3333333333333333ull) << 2);
    x = ((x >> 4) & 0x0f0f0f0f0f0f0f0full) | ((x & 0x0f0f0f0f0f0f0f0full) << 4);
    return __builtin_bswap64(x);
}

static uint64_t cookie_of(uint64_t h)
{
    return rev64(h) >> (64 - R_BITS);
}

static uint64_t bucket_of(const struct cfs_inode *dp, uint64_t h)
{
    uint32_t L = dp->d.dir_level, S = dp->d.dir_split;
    uint64_t b = h & ((1ull << L) - 1);
    if (b < S)
        b = h & ((1ull << (L + 1)) - 1);
    return b;
}

static unsigned depth_of(const struct cfs_inode *dp, uint64_t b)
{
    uint32_t L = dp->d.dir_level, S = dp->d.dir_split;
    return (b < S || b >= (1ull << L)) ? L + 1 : L;
}

/* The directory block at map index idx; *out = NULL for a hole. */
static int blk_get(struct cfs_volume *v, struct cfs_inode *dp, uint64_t idx, struct cfs_buf **out)
{
    uint64_t p;
    *out = NULL;
    int r = cfs_bmap_get(v, dp, idx, &p);
    if (r < 0 || !p)
        return r;
    uint64_t a = cfs_ptr_addr(p);
    r = cfs_buf_get(v, a, CFS_SMALL, CFS_BT_DIR, out);
    if (r == -ENODATA || r == -ESTALE) {
        log_err("directory block at byte %" PRIu64 " of directory %" PRIu64 ": never written", a,
                (uint64_t)dp->d.ino);
        return -EUCLEAN;
    }
    if (r < 0)
        return r;
    struct cfs_dirblk hdr;
    r = cfs_dirblk_parse((*out)->data, a, &hdr);
    if (r == 0 && hdr.dir_ino != dp->d.ino) {
        log_err("directory block at byte %" PRIu64 ": belongs to directory %" PRIu64
                ", reached from directory %" PRIu64,
                a, hdr.dir_ino, (uint64_t)dp->d.ino);
        r = -EUCLEAN;
    }
    if (r < 0) {
        cfs_buf_put(v, *out);
        *out = NULL;
    }
    return r;
}

static int blk_new(struct cfs_volume *v, struct cfs_inode *dp, uint64_t idx, uint64_t bucket,
                   struct cfs_buf **out)
{
    uint64_t a;
    int r = cfs_alloc_small(v, &a);
    if (r < 0)
        return r;
    r = cfs_buf_new(v, a, CFS_SMALL, CFS_BT_DIR, out);
    if (r < 0)
        return r;
    struct cfs_dirblk h = {.dir_ino = dp->d.ino, .bucket = bucket};
    memcpy(h.h.uuid, v->uuid, 16);
    h.h.addr = a;
    cfs_dirblk_put((*out)->data, &h);
    cfs_buf_dirty(v, *out);
    dp->d.blocks += CFS_SMALL;
    r = cfs_bmap_set(v, dp, idx, cfs_ptr_make(a, 0));
    if (r < 0) {
        cfs_buf_put(v, *out);
        *out = NULL;
    }
    return r;
}

static int blk_free(struct cfs_volume *v, struct cfs_inode *dp, uint64_t idx, struct cfs_buf *b)
{
    uint64_t a = b->addr;
    cfs_buf_put(v, b);
    int r = cfs_bmap_set(v, dp, idx, 0);
    if (r == 0)
        r = cfs_free_small(v, a);
    if (r == 0)
        dp->d.blocks -= CFS_SMALL;
    return r;
}

struct ent {
    uint64_t ino, hash;
    unsigned type, nl;
    const char *name;
};

static uint32_t ent_at(const struct cfs_buf *b, uint32_t off, struct ent *e)
{
    const uint8_t *p = AREA(b) + off;
    e->ino = le64_get(p);
    e->hash = le64_get(p + 8);
    e->type = p[16];
    e->nl = p[17];
    e->name = (const char *)p + CFS_DIRENT_HDR;
    return cfs_dirent_size(e->nl);
}

static void ent_append(struct cfs_volume *v, struct cfs_buf *b, uint64_t ino, uint64_t hash,
                       unsigned type, const char *name, unsigned nl)
{
    uint32_t used = le32_get(b->data + OFF_USED);
    uint8_t *p = AREA(b) + used;
    uint32_t sz = cfs_dirent_size(nl);
    memset(p, 0, sz);
    le64_put(p, ino);
    le64_put(p + 8, hash);
    p[16] = (uint8_t)type;
    p[17] = (uint8_t)nl;
    memcpy(p + CFS_DIRENT_HDR, name, nl);
    le32_put(b->data + OFF_USED, used + sz);
    le32_put(b->data + OFF_NENT, le32_get(b->data + OFF_NENT) + 1);
    cfs_buf_dirty(v, b);
}

int cfs_dir_init(struct cfs_volume *v, struct cfs_inode *dp)
{
    dp->d.map_shift = CFS_SMALL_SHIFT;
    dp->d.dir_level = 0;
    dp->d.dir_split = 0;
    dp->d.dir_entries = 0;
    dp->d.dir_ovf_next = 0;
    cfs_inode_dirty(v, dp);
    return 0;
}

/* Find `name` in its chain: the block (ref'd), the offset of the entry,
 * and the previous block's index in the chain (for unlinking). */
static int find(struct cfs_volume *v, struct cfs_inode *dp, const char *name, size_t nl, uint64_t h,
                struct cfs_buf **ob, uint64_t *oidx, uint32_t *ooff, uint64_t *prev)
{
    uint64_t idx = bucket_of(dp, h), pidx = UINT64_MAX;
    unsigned guard = 0;
    for (;;) {
        struct cfs_buf *b;
        int r = blk_get(v, dp, idx, &b);
        if (r < 0)
            return r;
        if (!b)
            return -ENOENT;
        uint32_t used = le32_get(b->data + OFF_USED);
        for (uint32_t off = 0; off < used;) {
            struct ent e;
            uint32_t sz = ent_at(b, off, &e);
            if (e.hash == h && e.nl == nl && !memcmp(e.name, name, nl)) {
                *ob = b;
                *oidx = idx;
                *ooff = off;
                if (prev)
                    *prev = pidx;
                return 0;
            }
            off += sz;
        }
        uint64_t next = le64_get(b->data + OFF_NEXT);
        cfs_buf_put(v, b);
        if (!next)
            return -ENOENT;
        if (next < OVF_BASE || ++guard > 1000000) {
            log_err("directory %" PRIu64 ": bad overflow chain (block index %" PRIu64 ")",
                    (uint64_t)dp->d.ino, next);
            return -EUCLEAN;
        }
        pidx = idx;
        idx = next;
    }
}

int cfs_dir_lookup(struct cfs_volume *v, struct cfs_inode *dp, const char *name, cfs_ino_t *ino,
                   unsigned *dtype)
{
    size_t nl = strlen(name);
    if (nl > CFS_NAME_MAX)
        return -ENAMETOOLONG;
    struct cfs_buf *b;
    uint64_t idx;
    uint32_t off;
    int r = find(v, dp, name, nl, cfs_name_hash(name, nl), &b, &idx, &off, NULL);
    if (r < 0)
        return r;
    struct ent e;
    ent_at(b, off, &e);
    *ino = e.ino;
    if (dtype)
        *dtype = e.type;
    cfs_buf_put(v, b);
    return 0;
}

/* Append an entry to bucket b's chain (no split, no count). */
static int chain_insert(struct cfs_volume *v, struct cfs_inode *dp, uint64_t bucket, uint64_t ino,
                        uint64_t h, unsigned type, const char *name, unsigned nl)
{
    uint32_t need = cfs_dirent_size(nl);
    uint64_t idx = bucket;
    struct cfs_buf *b;
    int r = blk_get(v, dp, idx, &b);
    if (r < 0)
        return r;
    if (!b && (r = blk_new(v, dp, idx, bucket, &b)) < 0)
        return r;
    for (;;) {
        if (CFS_DIR_AREA - le32_get(b->data + OFF_USED) >= need) {
            ent_append(v, b, ino, h, type, name, nl);
            cfs_buf_put(v, b);
            return 0;
        }
        uint64_t next = le64_get(b->data + OFF_NEXT);
        if (!next) {
            uint64_t nidx = OVF_BASE + dp->d.dir_ovf_next;
            struct cfs_buf *nb;
            if ((r = blk_new(v, dp, nidx, bucket, &nb)) < 0) {
                cfs_buf_put(v, b);
                return r;
            }
            dp->d.dir_ovf_next++;
            le64_put(b->data + OFF_NEXT, nidx);
            cfs_buf_dirty(v, b);
            cfs_buf_put(v, b);
            ent_append(v, nb, ino, h, type, name, nl);
            cfs_buf_put(v, nb);
            cfs_inode_dirty(v, dp);
            return 0;
        }
        cfs_buf_put(v, b);
        if ((r = blk_get(v, dp, next, &b)) < 0)
            return r;
        if (!b) {
            log_err("directory %" PRIu64 ": overflow block %" PRIu64 " missing",
                    (uint64_t)dp->d.ino, next);
            return -EUCLEAN;
        }
    }
}

/* Split bucket S into S and S + 2^L. */
static int split(struct cfs_volume *v, struct cfs_inode *dp)
{
    uint32_t L = dp->d.dir_level, S = dp->d.dir_split;
    if (L >= 28)
        return 0; /* 2^28 buckets: stop growing (chains take over) */
    uint64_t nbkt = S + (1ull << L);
    /* Gather chain S. */
    size_t cap = 0, len = 0;
    uint8_t *ents = NULL;
    uint64_t idx = S;
    struct cfs_buf *b;
    int r = blk_get(v, dp, idx, &b);
    if (r < 0)
        return r;
    bool primary = true;
    while (b) {
        uint32_t used = le32_get(b->data + OFF_USED);
        if (len + used > cap) {
            cap = (len + used) * 2 + 1024;
            uint8_t *n = realloc(ents, cap);
            if (!n) {
                cfs_buf_put(v, b);
                free(ents);
                return -ENOMEM;
            }
            ents = n;
        }
        memcpy(ents + len, AREA(b), used);
        len += used;
        uint64_t next = le64_get(b->data + OFF_NEXT);
        if (primary) {
            memset(AREA(b), 0, CFS_DIR_AREA);
            le32_put(b->data + OFF_USED, 0);
            le32_put(b->data + OFF_NENT, 0);
            le64_put(b->data + OFF_NEXT, 0);
            cfs_buf_dirty(v, b);
            cfs_buf_put(v, b);
            primary = false;
        } else if ((r = blk_free(v, dp, idx, b)) < 0) {
            free(ents);
            return r;
        }
        if (!next)
            break;
        idx = next;
        if ((r = blk_get(v, dp, idx, &b)) < 0) {
            free(ents);
            return r;
        }
    }
    dp->d.dir_split++;
    if (dp->d.dir_split == (1u << L)) {
        dp->d.dir_level++;
        dp->d.dir_split = 0;
    }
    cfs_inode_dirty(v, dp);
    for (size_t off = 0; off < len && r == 0;) {
        const uint8_t *p = ents + off;
        uint64_t ino = le64_get(p), h = le64_get(p + 8);
        unsigned type = p[16], nl = p[17];
        r = chain_insert(v, dp, (h >> L) & 1 ? nbkt : S, ino, h, type,
                         (const char *)p + CFS_DIRENT_HDR, nl);
        off += cfs_dirent_size(nl);
    }
    free(ents);
    return r;
}

int cfs_dir_add(struct cfs_volume *v, struct cfs_inode *dp, const char *name, cfs_ino_t ino,
                unsigned dtype)
{
    size_t nl = strlen(name);
    if (nl > CFS_NAME_MAX)
        return -ENAMETOOLONG;
    uint64_t h = cfs_name_hash(name, nl);
    int r = chain_insert(v, dp, bucket_of(dp, h), ino, h, dtype, name, (unsigned)nl);
    if (r < 0)
        return r;
    dp->d.dir_entries++;
    cfs_inode_dirty(v, dp);
    uint64_t nb = (1ull << dp->d.dir_level) + dp->d.dir_split;
    if (dp->d.dir_entries > nb * SPLIT_LOAD)
        r = split(v, dp);
    return r;
}

int cfs_dir_remove(struct cfs_volume *v, struct cfs_inode *dp, const char *name)
{
    size_t nl = strlen(name);
    if (nl > CFS_NAME_MAX)
        return -ENAMETOOLONG;
    uint64_t h = cfs_name_hash(name, nl);
    struct cfs_buf *b;
    uint64_t idx, prev;
    uint32_t off;
    int r = find(v, dp, name, nl, h, &b, &idx, &off, &prev);
    if (r < 0)
        return r;
    uint32_t used = le32_get(b->data + OFF_USED);
    uint32_t sz = cfs_dirent_size((unsigned)nl);
    uint8_t *area = AREA(b);
    memmove(area + off, area + off + sz, used - off - sz);
    memset(area + used - sz, 0, sz);
    le32_put(b->data + OFF_USED, used - sz);
    uint32_t nent = le32_get(b->data + OFF_NENT) - 1;
    le32_put(b->data + OFF_NENT, nent);
    cfs_buf_dirty(v, b);
    dp->d.dir_entries--;
    cfs_inode_dirty(v, dp);
    uint64_t next = le64_get(b->data + OFF_NEXT);
    if (nent == 0 && idx >= OVF_BASE && prev != UINT64_MAX) {
        struct cfs_buf *pb;
        r = blk_get(v, dp, prev, &pb);
        if (r == 0 && pb) {
            le64_put(pb->data + OFF_NEXT, next);
            cfs_buf_dirty(v, pb);
            cfs_buf_put(v, pb);
            return blk_free(v, dp, idx, b);
        }
    } else if (nent == 0 && idx < OVF_BASE && !next) {
        return blk_free(v, dp, idx, b);
    }
    cfs_buf_put(v, b);
    return r;
}

struct sorted {
    uint64_t r;
    uint64_t ino;
    unsigned type;
    char name[CFS_NAME_MAX + 1];
};

static int cmp_sorted(const void *a, const void *b)
{
    const struct sorted *x = a, *y = b;
    return x->r < y->r ? -1 : x->r > y->r;
}

int cfs_dir_iterate(struct cfs_volume *v, struct cfs_inode *dp, uint64_t c, cfs_readdir_fn fn,
                    void *ctx)
{
    struct sorted *list = NULL;
    size_t cap = 0;
    int r = 0;
    while (c < R_END) {
        uint64_t hl = rev64(c << (64 - R_BITS));
        uint64_t bkt = bucket_of(dp, hl);
        unsigned d = depth_of(dp, bkt);
        size_t n = 0;
        uint64_t idx = bkt;
        struct cfs_buf *b;
        if ((r = blk_get(v, dp, idx, &b)) < 0)
            break;
        while (b) {
            uint32_t used = le32_get(b->data + OFF_USED);
            for (uint32_t off = 0; off < used;) {
                struct ent e;
                off += ent_at(b, off, &e);
                uint64_t ck = cookie_of(e.hash);
                if (ck < c)
                    continue;
                if (n == cap) {
                    cap = cap ? cap * 2 : 256;
                    struct sorted *nl = realloc(list, cap * sizeof(*list));
                    if (!nl) {
                        cfs_buf_put(v, b);
                        free(list);
                        return -ENOMEM;
                    }
                    list = nl;
                }
                list[n].r = ck;
                list[n].ino = e.ino;
                list[n].type = e.type;
                memcpy(list[n].name, e.name, e.nl);
                list[n].name[e.nl] = 0;
                n++;
            }
            uint64_t next = le64_get(b->data + OFF_NEXT);
            cfs_buf_put(v, b);
            b = NULL;
            if (next && (r = blk_get(v, dp, next, &b)) < 0)
                break;
        }
        if (r < 0)
            break;
        if (n) /* list is NULL when the bucket chain is empty */
            qsort(list, n, sizeof(*list), cmp_sorted);
        for (size_t i = 0; i < n; i++) {
            /* Cookies 0..2 are the start, "." and ".."; an entry's cookie is r + 3. */
            if (fn(ctx, list[i].name, list[i].ino, list[i].type, list[i].r + 4)) {
                free(list);
                return 0;
            }
        }
        uint64_t prefix = c >> (R_BITS - d);
        if (prefix + 1 >= (1ull << d))
            break;
        c = (prefix + 1) << (R_BITS - d);
    }
    free(list);
    return r;
}
