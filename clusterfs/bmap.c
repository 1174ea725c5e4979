/* Block maps: which block holds each unit of a file or directory.
 *
 * A radix tree of 8 KiB pointer blocks, 1008 pointers each, whose height
 * grows with the highest index used (inode map_height; height 0: the root
 * pointer is the block of index 0). With 1 MiB file blocks, height 1 maps
 * 1008 MiB, height 2 about 1 TiB, height 3 about 1 PiB. A pointer is 0 (a
 * hole), or an address with an "unwritten" flag (allocated, reads as
 * zeroes). The units are file blocks for files and 8 KiB small blocks for
 * directories (map_shift). Pointer blocks that become empty are freed.
 * Under v->mtx.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cfs_internal.h"
#include "le.h"
#include "log.h"

#define FAN CFS_PTR_PER_BLOCK
#define MAX_HEIGHT 6

static uint64_t span_of(unsigned level) /* indices under one entry of a node at `level` */
{
    uint64_t s = 1;
    for (unsigned i = 1; i < level; i++)
        s *= FAN;
    return s;
}

static uint64_t cap_of(unsigned h)
{
    return h == 0 ? 1 : span_of(h) * FAN;
}

static int node_get(struct cfs_volume *v, struct cfs_inode *ip, uint64_t p, unsigned level,
                    struct cfs_buf **out)
{
    uint64_t a = cfs_ptr_addr(p);
    int r = cfs_buf_get(v, a, CFS_SMALL, CFS_BT_PTR, out);
    if (r == -ENODATA || r == -ESTALE) {
        log_err("pointer block at byte %" PRIu64 " of inode %" PRIu64 ": never written", a,
                (uint64_t)ip->d.ino);
        return -EUCLEAN;
    }
    if (r < 0)
        return r;
    const uint8_t *d = (*out)->data;
    uint64_t owner = le64_get(d + offsetof(struct cfs_ptr_disk, owner));
    uint32_t lv = le32_get(d + offsetof(struct cfs_ptr_disk, level));
    if (owner != ip->d.ino || lv != level) {
        log_err("pointer block at byte %" PRIu64 ": belongs to inode %" PRIu64 " level %u, "
                "reached from inode %" PRIu64 " level %u",
                a, owner, lv, (uint64_t)ip->d.ino, level);
        cfs_buf_put(v, *out);
        return -EUCLEAN;
    }
    return 0;
}

static int node_new(struct cfs_volume *v, struct cfs_inode *ip, unsigned level, uint64_t *ptr,
                    struct cfs_buf **out)
{
    uint64_t a;
    int r = cfs_alloc_small(v, &a);
    if (r < 0)
        return r;
    struct cfs_buf *b;
    r = cfs_buf_new(v, a, CFS_SMALL, CFS_BT_PTR, &b);
    if (r < 0)
        return r;
    struct cfs_ptrblk pb = {.owner = ip->d.ino, .level = level};
    memcpy(pb.h.uuid, v->uuid, 16);
    pb.h.addr = a;
    cfs_ptrblk_init(b->data, &pb);
    cfs_buf_dirty(v, b);
    ip->d.blocks += CFS_SMALL;
    *ptr = cfs_ptr_make(a, 0);
    *out = b;
    return 0;
}

int cfs_bmap_get(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr)
{
    unsigned h = ip->d.map_height;
    *ptr = 0;
    if (idx >= cap_of(h))
        return 0;
    uint64_t p = ip->d.map_root;
    for (unsigned level = h; level >= 1; level--) {
        if (!p)
            return 0;
        struct cfs_buf *b;
        int r = node_get(v, ip, p, level, &b);
        if (r < 0)
            return r;
        p = cfs_ptrblk_get(b->data, (unsigned)((idx / span_of(level)) % FAN));
        cfs_buf_put(v, b);
    }
    *ptr = p;
    return 0;
}

int cfs_bmap_set(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t ptr)
{
    int r;
    while (idx >= cap_of(ip->d.map_height)) {
        if (ptr == 0)
            return 0;
        if (ip->d.map_height >= MAX_HEIGHT)
            return -EFBIG;
        if (ip->d.map_root) {
            uint64_t np;
            struct cfs_buf *b;
            if ((r = node_new(v, ip, ip->d.map_height + 1u, &np, &b)) < 0)
                return r;
            cfs_ptrblk_set(b->data, 0, ip->d.map_root);
            cfs_buf_put(v, b);
            ip->d.map_root = np;
        }
        ip->d.map_height++;
        cfs_inode_dirty(v, ip);
    }
    unsigned h = ip->d.map_height;
    if (h == 0) {
        ip->d.map_root = ptr;
        cfs_inode_dirty(v, ip);
        return 0;
    }
    struct cfs_buf *parent = NULL;
    unsigned pi = 0;
    for (unsigned level = h; level >= 1; level--) {
        uint64_t p = parent ? cfs_ptrblk_get(parent->data, pi) : ip->d.map_root;
        struct cfs_buf *b;
        if (!p) {
            if (ptr == 0) {
                cfs_buf_put(v, parent);
                return 0;
            }
            if ((r = node_new(v, ip, level, &p, &b)) < 0) {
                cfs_buf_put(v, parent);
                return r;
            }
            if (parent) {
                cfs_ptrblk_set(parent->data, pi, p);
                cfs_buf_dirty(v, parent);
            } else {
                ip->d.map_root = p;
            }
            cfs_inode_dirty(v, ip);
        } else if ((r = node_get(v, ip, p, level, &b)) < 0) {
            cfs_buf_put(v, parent);
            return r;
        }
        cfs_buf_put(v, parent);
        unsigned i = (unsigned)((idx / span_of(level)) % FAN);
        if (level == 1) {
            cfs_ptrblk_set(b->data, i, ptr);
            cfs_buf_dirty(v, b);
            cfs_buf_put(v, b);
            return 0;
        }
        parent = b;
        pi = i;
    }
    return 0;
}

static int walk_node(struct cfs_volume *v, struct cfs_inode *ip, uint64_t *p, unsigned level,
                     uint64_t base, uint64_t start, uint64_t end, cfs_bmap_fn fn, void *ctx,
                     bool *changed)
{
    if (!*p)
        return 0;
    if (level == 0) {
        uint64_t old = *p;
        int r = fn(v, ip, base, p, ctx);
        if (*p != old)
            *changed = true;
        return r;
    }
    struct cfs_buf *b;
    int r = node_get(v, ip, *p, level, &b);
    if (r < 0)
        return r;
    uint64_t span = span_of(level);
    uint64_t first = start > base ? (start - base) / span : 0;
    uint64_t last = (end - 1 - base) / span;
    if (last >= FAN)
        last = FAN - 1;
    bool any = false;
    for (uint64_t i = first; i <= last && r == 0; i++) {
        uint64_t e = cfs_ptrblk_get(b->data, (unsigned)i);
        if (!e)
            continue;
        bool ch = false;
        r = walk_node(v, ip, &e, level - 1, base + i * span, start, end, fn, ctx, &ch);
        if (ch) {
            cfs_ptrblk_set(b->data, (unsigned)i, e);
            cfs_buf_dirty(v, b);
            any = true;
        }
    }
    if (any && r >= 0) {
        bool empty = true;
        for (unsigned i = 0; i < FAN && empty; i++)
            if (cfs_ptrblk_get(b->data, i))
                empty = false;
        if (empty) {
            uint64_t a = cfs_ptr_addr(*p);
            cfs_buf_put(v, b);
            int fr = cfs_free_small(v, a);
            if (fr < 0)
                return fr;
            ip->d.blocks -= CFS_SMALL;
            *p = 0;
            *changed = true;
            return r;
        }
    }
    cfs_buf_put(v, b);
    return r;
}

int cfs_bmap_walk(struct cfs_volume *v, struct cfs_inode *ip, uint64_t start, uint64_t end,
                  cfs_bmap_fn fn, void *ctx)
{
    unsigned h = ip->d.map_height;
    uint64_t cap = cap_of(h);
    if (end > cap)
        end = cap;
    if (start >= end)
        return 0;
    uint64_t root = ip->d.map_root;
    bool ch = false;
    int r = walk_node(v, ip, &root, h, 0, start, end, fn, ctx, &ch);
    if (ch) {
        ip->d.map_root = root;
        if (!root)
            ip->d.map_height = 0;
        cfs_inode_dirty(v, ip);
    }
    return r;
}

struct free_ctx {
    uint64_t max, n;
};

static int free_cb(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr,
                   void *ctx)
{
    struct free_ctx *fc = ctx;
    if (fc->n >= fc->max)
        return 1;
    uint64_t a = cfs_ptr_addr(*ptr);
    int r = ip->d.map_shift == CFS_SMALL_SHIFT ? cfs_free_small(v, a) : cfs_free_block(v, a);
    if (r < 0)
        return r;
    ip->d.blocks -= ip->d.map_shift == CFS_SMALL_SHIFT ? CFS_SMALL : v->bs;
    *ptr = 0;
    fc->n++;
    return 0;
}

int cfs_bmap_free_from(struct cfs_volume *v, struct cfs_inode *ip, uint64_t start, uint64_t max)
{
    struct free_ctx fc = {.max = max};
    return cfs_bmap_walk(v, ip, start, UINT64_MAX, free_cb, &fc);
}

static int meta_node(struct cfs_volume *v, struct cfs_inode *ip, uint64_t p, unsigned level,
                     cfs_bmap_meta_fn fn, void *ctx)
{
    if (!p || level == 0)
        return 0;
    int r = fn(v, cfs_ptr_addr(p), ctx);
    if (r)
        return r;
    struct cfs_buf *b;
    if ((r = node_get(v, ip, p, level, &b)) < 0)
        return r;
    for (unsigned i = 0; i < FAN && r == 0; i++) {
        uint64_t e = cfs_ptrblk_get(b->data, i);
        if (e && level > 1)
            r = meta_node(v, ip, e, level - 1, fn, ctx);
    }
    cfs_buf_put(v, b);
    return r;
}

int cfs_bmap_walk_meta(struct cfs_volume *v, struct cfs_inode *ip, cfs_bmap_meta_fn fn, void *ctx)
{
    return meta_node(v, ip, ip->d.map_root, ip->d.map_height, fn, ctx);
}
