/* Allocation: resource clusters, their bitmaps, pools of small blocks and
 * of inode slots.
 *
 * Design notes
 * ------------
 * - The data area is cut into resource clusters of 128 file blocks. The
 *   first file block of a cluster holds its lock record (byte 0) and its
 *   header (byte 4096): a kind per file block (free, data, small-block
 *   pool, inode pool, header) and, for a pool block, the bitmap of its
 *   8 KiB slots. The whole header is one 4 KiB block, so every allocation
 *   change is one journaled block image.
 * - Clusters are laid out on demand: a header that reads as zeroes (or
 *   carries another volume's UUID) is a cluster never used, all free. The
 *   first allocation from it writes its header through the journal.
 * - Small blocks (directory and pointer blocks) and inodes are carved from
 *   file blocks turned into pools, as VMFS-6 carves its small file blocks
 *   and file descriptors from resource files that grow on demand; a pool
 *   that empties is a free file block again.
 * - A host keeps a current cluster and allocates from it until it is full
 *   (with several hosts: the clusters it holds the lock of; it prefers
 *   them, VMFS's "resource cluster affinity"), then moves on.
 * - Blocks freed in the running transaction are skipped (v->freed) until
 *   the transaction committed.
 * All under v->mtx.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cfs_internal.h"
#include "log.h"
#include "lun.h"
#include "util.h"

enum { CL_FRESH = 3 }; /* never laid out */

/* ---- address sets --------------------------------------------------------- */

static size_t aset_hash(uint64_t a, size_t cap)
{
    a ^= a >> 31;
    a *= 0x9e3779b97f4a7c15ull;
    return (size_t)(a >> 20) & (cap - 1);
}

bool cfs_addrset_has(const struct cfs_addrset *s, uint64_t a)
{
    if (!s->n)
        return false;
    for (size_t i = aset_hash(a, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (s->slots[i] == a)
            return true;
        if (!s->slots[i])
            return false;
    }
}

int cfs_addrset_add(struct cfs_addrset *s, uint64_t a)
{
    if (cfs_addrset_has(s, a))
        return 0;
    if ((s->n + 1) * 2 > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 256;
        uint64_t *ns = calloc(nc, sizeof(uint64_t));
        if (!ns)
            return -ENOMEM;
        for (size_t i = 0; i < s->cap; i++)
            if (s->slots[i]) {
                size_t j = aset_hash(s->slots[i], nc);
                while (ns[j])
                    j = (j + 1) & (nc - 1);
                ns[j] = s->slots[i];
            }
        free(s->slots);
        s->slots = ns;
        s->cap = nc;
    }
    size_t j = aset_hash(a, s->cap);
    while (s->slots[j])
        j = (j + 1) & (s->cap - 1);
    s->slots[j] = a;
    s->n++;
    return 0;
}

void cfs_addrset_clear(struct cfs_addrset *s)
{
    if (s->n)
        memset(s->slots, 0, s->cap * sizeof(uint64_t));
    s->n = 0;
}

/* ---- clusters -------------------------------------------------------------- */

static uint64_t total_blocks(const struct cfs_super *sb)
{
    return (sb->volume_bytes - sb->data_off) / sb->block_size;
}

static uint32_t cluster_nblocks(const struct cfs_super *sb, uint64_t i)
{
    uint64_t left = total_blocks(sb) - i * CFS_CLUSTER_BLOCKS;
    return (uint32_t)MIN(left, (uint64_t)CFS_CLUSTER_BLOCKS);
}

int cfs_alloc_reload(struct cfs_volume *v)
{
    cfs_alloc_fini(v);
    v->rmap_err = 0;
    return cfs_alloc_init(v);
}

int cfs_alloc_init(struct cfs_volume *v)
{
    v->cl = calloc(v->sb.nclusters, sizeof(*v->cl));
    if (!v->cl)
        return -ENOMEM;
    struct cfs_buf *b;
    struct cfs_rmap m;
    int r = cfs_buf_get(v, CFS_RMAP_OFF, CFS_META, CFS_BT_RMAP, &b);
    if (r == 0) {
        r = cfs_rmap_decode(b->data, v->uuid, CFS_RMAP_OFF, &m);
        cfs_buf_put(v, b);
    }
    if (r == -ENOMEM || r == -EIO)
        return r;
    if (r == 0 && m.laid_out > v->sb.nclusters) {
        log_err("resource map at byte %u: %" PRIu64 " clusters laid out, the volume has %" PRIu64,
                CFS_RMAP_OFF, m.laid_out, v->sb.nclusters);
        r = -EUCLEAN;
    }
    if (r < 0) {
        /* Every cluster counts as laid out: garbage is then damage, never free. */
        log_err("%s: resource map unusable (%s): every cluster is treated as laid out",
                lun_name(v->lun), strerror(-r));
        v->rmap_err = r;
        v->laid_out = v->sb.nclusters;
        return 0;
    }
    v->laid_out = m.laid_out;
    return 0;
}

void cfs_alloc_fini(struct cfs_volume *v)
{
    if (!v->cl)
        return;
    for (uint64_t i = 0; i < v->sb.nclusters; i++)
        free(v->cl[i].c);
    free(v->cl);
    v->cl = NULL;
}

static int cl_load(struct cfs_volume *v, uint64_t i)
{
    struct cfs_clinfo *ci = &v->cl[i];
    if (ci->state != CFS_CL_UNKNOWN)
        return 0;
    if (i >= v->laid_out) {
        ci->state = CL_FRESH;
        return 0;
    }
    uint64_t a = cfs_cluster_addr(v, i) + CFS_META;
    struct cfs_buf *b;
    int r = cfs_buf_get(v, a, CFS_META, CFS_BT_CLUSTER, &b);
    if (r == -ENODATA || r == -ESTALE) {
        log_err("resource cluster header at byte %" PRIu64 ": cluster %" PRIu64
                " is laid out but its header %s",
                a, i, r == -ENODATA ? "was never written" : "belongs to another volume");
        r = -EUCLEAN;
    }
    if (r < 0) {
        if (r != -ENOMEM && r != -EIO)
            ci->state = CFS_CL_BAD;
        return r;
    }
    struct cfs_cluster *c = malloc(sizeof(*c));
    if (!c) {
        cfs_buf_put(v, b);
        return -ENOMEM;
    }
    r = cfs_cluster_decode(b->data, v->uuid, a, c);
    cfs_buf_put(v, b);
    if (r == 0 && (c->index != i || c->nblocks != cluster_nblocks(&v->sb, i))) {
        log_err("resource cluster header at byte %" PRIu64 ": says cluster %" PRIu64
                " of %u blocks, expected cluster %" PRIu64 " of %u",
                a, c->index, c->nblocks, i, cluster_nblocks(&v->sb, i));
        r = -EUCLEAN;
    }
    if (r < 0) {
        free(c);
        ci->state = CFS_CL_BAD;
        return r;
    }
    ci->c = c;
    ci->state = CFS_CL_LOADED;
    return 0;
}

/* Write the decoded header back into its block, in the transaction. */
static int cl_sync(struct cfs_volume *v, uint64_t i)
{
    struct cfs_cluster *c = v->cl[i].c;
    uint64_t a = cfs_cluster_addr(v, i) + CFS_META;
    struct cfs_buf *b;
    int r = cfs_buf_new(v, a, CFS_META, CFS_BT_CLUSTER, &b);
    if (r < 0)
        return r;
    memcpy(c->h.uuid, v->uuid, 16);
    c->h.addr = a;
    c->owner_slot = v->slot;
    cfs_cluster_encode(b->data, c);
    cfs_buf_dirty(v, b);
    cfs_buf_put(v, b);
    return 0;
}

static void cl_init(struct cfs_cluster *c, uint64_t i, uint32_t nblocks)
{
    memset(c, 0, sizeof(*c));
    c->index = i;
    c->nblocks = nblocks;
    c->kind[0] = CFS_K_META;
    c->free_blocks = nblocks - 1;
}

/* Lay out a fresh cluster (its header goes through the journal). */
static int cl_layout(struct cfs_volume *v, uint64_t i)
{
    struct cfs_cluster *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    cl_init(c, i, cluster_nblocks(&v->sb, i));
    v->cl[i].c = c;
    v->cl[i].state = CFS_CL_LOADED;
    int r = cl_sync(v, i);
    if (r < 0)
        return r;
    struct cfs_buf *b;
    if ((r = cfs_buf_new(v, CFS_RMAP_OFF, CFS_META, CFS_BT_RMAP, &b)) < 0)
        return r;
    struct cfs_rmap m = {.laid_out = i + 1};
    memcpy(m.h.uuid, v->uuid, 16);
    m.h.addr = CFS_RMAP_OFF;
    cfs_rmap_encode(b->data, &m);
    cfs_buf_dirty(v, b);
    cfs_buf_put(v, b);
    v->laid_out = i + 1;
    return 0;
}

/* Lay out the next cluster; -ENOSPC when every one is. */
static int cl_extend(struct cfs_volume *v)
{
    if (v->laid_out >= v->sb.nclusters || v->rmap_err)
        return -ENOSPC;
    uint64_t i = v->laid_out;
    v->cl[i].state = CFS_CL_UNKNOWN;
    free(v->cl[i].c);
    v->cl[i].c = NULL;
    int r = cl_layout(v, i);
    if (r == 0)
        v->cur_cl = i;
    return r;
}

/* Ensure cluster i is usable: loaded, laid out. 1 = usable, 0 = skip. */
static int cl_ready(struct cfs_volume *v, uint64_t i)
{
    int r = cl_load(v, i);
    if (r == -ENOMEM || r == -EIO)
        return r;
    if (v->cl[i].state != CFS_CL_LOADED)
        return 0;
    return 1;
}

static uint64_t blk_addr(struct cfs_volume *v, uint64_t i, unsigned b)
{
    return cfs_cluster_addr(v, i) + (uint64_t)b * v->bs;
}

static int sub_get(const struct cfs_cluster *c, unsigned b, unsigned s)
{
    return (c->sub[b][s / 8] >> (s % 8)) & 1;
}

static void sub_set(struct cfs_cluster *c, unsigned b, unsigned s, int on)
{
    if (on)
        c->sub[b][s / 8] |= (uint8_t)(1u << (s % 8));
    else
        c->sub[b][s / 8] &= (uint8_t) ~(1u << (s % 8));
}

/* A free file block of cluster i not freed in the running transaction. */
static int cl_find_free(struct cfs_volume *v, uint64_t i)
{
    struct cfs_cluster *c = v->cl[i].c;
    if (!c->free_blocks)
        return -1;
    for (unsigned b = 1; b < c->nblocks; b++)
        if (c->kind[b] == CFS_K_FREE && !cfs_addrset_has(&v->freed, blk_addr(v, i, b)))
            return (int)b;
    return -1;
}

int cfs_alloc_block(struct cfs_volume *v, uint64_t *addr)
{
again:;
    uint64_t n = v->laid_out;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t i = (v->cur_cl + k) % n;
        int r = cl_ready(v, i);
        if (r < 0)
            return r;
        if (r == 0)
            continue;
        int b = cl_find_free(v, i);
        if (b < 0)
            continue;
        struct cfs_cluster *c = v->cl[i].c;
        c->kind[b] = CFS_K_DATA;
        c->free_blocks--;
        r = cl_sync(v, i);
        if (r < 0)
            return r;
        v->cur_cl = i;
        *addr = blk_addr(v, i, (unsigned)b);
        return 0;
    }
    int e = cl_extend(v);
    if (e == 0)
        goto again;
    if (e != -ENOSPC)
        return e;
    log_err("%s: no free file block (volume full)", lun_name(v->lun));
    return -ENOSPC;
}

static int alloc_slot(struct cfs_volume *v, uint8_t kind, uint64_t *addr)
{
again:;
    uint64_t n = v->laid_out;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t i = (v->cur_cl + k) % n;
        int r = cl_ready(v, i);
        if (r < 0)
            return r;
        if (r == 0)
            continue;
        struct cfs_cluster *c = v->cl[i].c;
        uint32_t *fr = kind == CFS_K_SMALL ? &c->free_small : &c->free_inodes;
        if (*fr) {
            for (unsigned b = 1; b < c->nblocks; b++) {
                if (c->kind[b] != kind)
                    continue;
                for (unsigned s = 0; s < v->spp; s++) {
                    uint64_t a = blk_addr(v, i, b) + (uint64_t)s * CFS_SMALL;
                    if (!sub_get(c, b, s) && !cfs_addrset_has(&v->freed, a)) {
                        sub_set(c, b, s, 1);
                        (*fr)--;
                        if ((r = cl_sync(v, i)) < 0)
                            return r;
                        v->cur_cl = i;
                        *addr = a;
                        return 0;
                    }
                }
            }
        }
        int b = cl_find_free(v, i);
        if (b < 0)
            continue;
        c->kind[b] = kind;
        memset(c->sub[b], 0, sizeof(c->sub[b]));
        c->free_blocks--;
        sub_set(c, (unsigned)b, 0, 1);
        *fr += v->spp - 1;
        if ((r = cl_sync(v, i)) < 0)
            return r;
        v->cur_cl = i;
        *addr = blk_addr(v, i, (unsigned)b);
        return 0;
    }
    int e = cl_extend(v);
    if (e == 0)
        goto again;
    if (e != -ENOSPC)
        return e;
    log_err("%s: no free %s (volume full)", lun_name(v->lun),
            kind == CFS_K_SMALL ? "small block" : "inode slot");
    return -ENOSPC;
}

int cfs_alloc_small(struct cfs_volume *v, uint64_t *addr)
{
    return alloc_slot(v, CFS_K_SMALL, addr);
}

int cfs_alloc_inode(struct cfs_volume *v, uint64_t *ino)
{
    uint64_t a;
    int r = alloc_slot(v, CFS_K_INODE, &a);
    if (r == 0)
        *ino = a / CFS_INODE_SLOT;
    return r;
}

/* Locate addr: cluster i, block b, slot s. */
static int locate(struct cfs_volume *v, uint64_t addr, uint64_t *i, unsigned *b, unsigned *s)
{
    if (addr < v->sb.data_off || addr >= v->sb.volume_bytes)
        return -EINVAL;
    uint64_t rel = addr - v->sb.data_off;
    *i = rel / v->cl_bytes;
    uint64_t in = rel % v->cl_bytes;
    *b = (unsigned)(in >> v->bshift);
    *s = (unsigned)((in & (v->bs - 1)) / CFS_SMALL);
    if (*i >= v->sb.nclusters)
        return -EINVAL;
    int r = cl_load(v, *i);
    if (r < 0)
        return r;
    if (v->cl[*i].state != CFS_CL_LOADED)
        return -EUCLEAN;
    return 0;
}

int cfs_free_block(struct cfs_volume *v, uint64_t addr)
{
    uint64_t i;
    unsigned b, s;
    int r = locate(v, addr, &i, &b, &s);
    struct cfs_cluster *c = r == 0 ? v->cl[i].c : NULL;
    if (r < 0 || s || c->kind[b] != CFS_K_DATA) {
        log_err("%s: freeing file block at byte %" PRIu64 " that is not an allocated data block "
                "(%s)",
                lun_name(v->lun), addr, r < 0 ? strerror(-r) : "wrong kind in its cluster");
        return -EUCLEAN;
    }
    c->kind[b] = CFS_K_FREE;
    c->free_blocks++;
    if ((r = cfs_addrset_add(&v->freed, addr)) < 0)
        return r;
    if (v->unmap) {
        if (v->nunmaps == v->unmaps_cap) {
            size_t nc = v->unmaps_cap ? v->unmaps_cap * 2 : 64;
            uint64_t *nu = realloc(v->unmaps, nc * sizeof(uint64_t));
            if (nu) {
                v->unmaps = nu;
                v->unmaps_cap = nc;
            }
        }
        if (v->nunmaps < v->unmaps_cap)
            v->unmaps[v->nunmaps++] = addr;
    }
    return cl_sync(v, i);
}

static int free_slot(struct cfs_volume *v, uint64_t addr, uint8_t kind)
{
    uint64_t i;
    unsigned b, s;
    int r = locate(v, addr, &i, &b, &s);
    struct cfs_cluster *c = r == 0 ? v->cl[i].c : NULL;
    if (r < 0 || addr % CFS_SMALL || c->kind[b] != kind || !sub_get(c, b, s)) {
        log_err("%s: freeing %s at byte %" PRIu64 " that is not allocated (%s)", lun_name(v->lun),
                kind == CFS_K_SMALL ? "small block" : "inode slot", addr,
                r < 0 ? strerror(-r) : "bit clear or wrong kind in its cluster");
        return -EUCLEAN;
    }
    uint32_t *fr = kind == CFS_K_SMALL ? &c->free_small : &c->free_inodes;
    sub_set(c, b, s, 0);
    (*fr)++;
    if ((r = cfs_addrset_add(&v->freed, addr)) < 0)
        return r;
    bool empty = true;
    for (unsigned x = 0; x < v->spp && empty; x++)
        if (sub_get(c, b, x))
            empty = false;
    if (empty) {
        c->kind[b] = CFS_K_FREE;
        c->free_blocks++;
        *fr -= v->spp;
        if ((r = cfs_addrset_add(&v->freed, blk_addr(v, i, b))) < 0)
            return r;
    }
    return cl_sync(v, i);
}

int cfs_free_small(struct cfs_volume *v, uint64_t addr)
{
    cfs_buf_drop(v, addr);
    return free_slot(v, addr, CFS_K_SMALL);
}

int cfs_free_inode(struct cfs_volume *v, uint64_t ino)
{
    cfs_buf_drop(v, ino * CFS_INODE_SLOT + CFS_META);
    return free_slot(v, ino * CFS_INODE_SLOT, CFS_K_INODE);
}

int cfs_alloc_count(struct cfs_volume *v, uint64_t *free_blocks, uint64_t *free_small,
                    uint64_t *free_inodes, uint64_t *laid_out)
{
    uint64_t fb = 0, fs = 0, fi = 0, lo = 0;
    for (uint64_t i = 0; i < v->sb.nclusters; i++) {
        int r = cl_load(v, i);
        if (r == -ENOMEM || r == -EIO)
            return r;
        if (v->cl[i].state == CL_FRESH) {
            fb += cluster_nblocks(&v->sb, i) - 1;
        } else if (v->cl[i].state == CFS_CL_LOADED) {
            fb += v->cl[i].c->free_blocks;
            fs += v->cl[i].c->free_small;
            fi += v->cl[i].c->free_inodes;
            lo++;
        }
    }
    *free_blocks = fb;
    *free_small = fs;
    *free_inodes = fi;
    *laid_out = lo;
    return 0;
}

int cfs_cluster_format_first(struct lun *lun, const struct cfs_super *sb, uint64_t *root_ino)
{
    uint8_t *buf = aligned_alloc(4096, 2 * CFS_META);
    struct cfs_cluster *c = malloc(sizeof(*c));
    struct cfs_dinode *d = calloc(1, sizeof(*d));
    int r = -ENOMEM;
    if (!buf || !c || !d)
        goto out;
    uint64_t a = sb->data_off;
    cl_init(c, 0, cluster_nblocks(sb, 0));
    c->kind[1] = CFS_K_INODE;
    c->sub[1][0] = 1;
    c->free_blocks--;
    c->free_inodes = sb->block_size / CFS_SMALL - 1;
    memcpy(c->h.uuid, sb->h.uuid, 16);
    c->h.addr = a + CFS_META;
    memset(buf, 0, 2 * CFS_META);
    cfs_cluster_encode(buf + CFS_META, c);
    r = cfs_dev_write_lun(lun, a, buf, 2 * CFS_META);
    if (r < 0)
        goto out;
    struct cfs_rmap m = {.laid_out = 1};
    memcpy(m.h.uuid, sb->h.uuid, 16);
    m.h.addr = CFS_RMAP_OFF;
    cfs_rmap_encode(buf, &m);
    if ((r = cfs_dev_write_lun(lun, CFS_RMAP_OFF, buf, CFS_META)) < 0)
        goto out;
    uint64_t ino = (a + sb->block_size) / CFS_INODE_SLOT;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
    memcpy(d->h.uuid, sb->h.uuid, 16);
    d->h.addr = ino * CFS_INODE_SLOT + CFS_META;
    d->ino = ino;
    d->generation = 1;
    d->mode = S_IFDIR | 0755;
    d->nlink = 2;
    d->parent = ino;
    d->map_shift = CFS_SMALL_SHIFT;
    d->atime_ns = d->mtime_ns = d->ctime_ns = d->btime_ns = now;
    memset(buf, 0, 2 * CFS_META);
    cfs_inode_encode(buf + CFS_META, d);
    cfs_block_seal(buf + CFS_META, CFS_META);
    r = cfs_dev_write_lun(lun, ino * CFS_INODE_SLOT, buf, 2 * CFS_META);
    *root_ino = ino;
out:
    free(buf);
    free(c);
    free(d);
    return r;
}

/* ---- for check ------------------------------------------------------------- */

int cfs_alloc_scan(struct cfs_volume *v, cfs_alloc_scan_fn fn, void *ctx)
{
    for (uint64_t i = 0; i < v->sb.nclusters; i++) {
        int r = cl_load(v, i);
        if (r == -ENOMEM)
            return r;
        uint64_t ca = cfs_cluster_addr(v, i);
        if (r < 0 || v->cl[i].state == CFS_CL_BAD) {
            if ((r = fn(ctx, ca + CFS_META, CFS_K_META, r < 0 ? r : -EUCLEAN)) < 0)
                return r;
            continue;
        }
        if (v->cl[i].state != CFS_CL_LOADED)
            continue;
        struct cfs_cluster *c = v->cl[i].c;
        uint32_t nfree = 0, fs = 0, fi = 0;
        for (unsigned b = 1; b < c->nblocks; b++) {
            uint64_t a = blk_addr(v, i, b);
            switch (c->kind[b]) {
            case CFS_K_FREE:
                nfree++;
                break;
            case CFS_K_DATA:
                if ((r = fn(ctx, a, CFS_K_DATA, 0)) < 0)
                    return r;
                break;
            case CFS_K_SMALL:
            case CFS_K_INODE:
                for (unsigned s = 0; s < v->spp; s++) {
                    if (!sub_get(c, b, s)) {
                        {
                            if (c->kind[b] == CFS_K_SMALL)
                                fs++;
                            else
                                fi++;
                        }
                        continue;
                    }
                    if ((r = fn(ctx, a + (uint64_t)s * CFS_SMALL, c->kind[b], 0)) < 0)
                        return r;
                }
                break;
            default:
                if ((r = fn(ctx, a, c->kind[b], -EUCLEAN)) < 0)
                    return r;
            }
        }
        if (nfree != c->free_blocks || fs != c->free_small || fi != c->free_inodes) {
            /* counters disagree with the bitmap: report through the callback */
            if ((r = fn(ctx, ca + CFS_META, CFS_K_META, -ERANGE)) < 0)
                return r;
        }
    }
    return 0;
}

int cfs_alloc_fix_counts(struct cfs_volume *v, uint64_t cluster_addr)
{
    uint64_t i = (cluster_addr - v->sb.data_off) / v->cl_bytes;
    if (i >= v->sb.nclusters || v->cl[i].state != CFS_CL_LOADED)
        return -EINVAL;
    struct cfs_cluster *c = v->cl[i].c;
    uint32_t nfree = 0, fs = 0, fi = 0;
    for (unsigned b = 1; b < c->nblocks; b++) {
        if (c->kind[b] == CFS_K_FREE)
            nfree++;
        if (c->kind[b] == CFS_K_SMALL || c->kind[b] == CFS_K_INODE)
            for (unsigned s = 0; s < v->spp; s++)
                if (!sub_get(c, b, s)) {
                    if (c->kind[b] == CFS_K_SMALL)
                        fs++;
                    else
                        fi++;
                }
    }
    c->free_blocks = nfree;
    c->free_small = fs;
    c->free_inodes = fi;
    return cl_sync(v, i);
}

int cfs_alloc_set(struct cfs_volume *v, uint64_t addr, uint8_t kind, bool on)
{
    if (!on) {
        if (kind == CFS_K_DATA)
            return cfs_free_block(v, addr);
        return free_slot(v, addr, kind);
    }
    uint64_t i;
    unsigned b, s;
    int r = locate(v, addr, &i, &b, &s);
    if (r < 0)
        return r;
    struct cfs_cluster *c = v->cl[i].c;
    if (kind == CFS_K_DATA) {
        if (c->kind[b] != CFS_K_FREE)
            return -EEXIST;
        c->kind[b] = CFS_K_DATA;
        c->free_blocks--;
        return cl_sync(v, i);
    }
    uint32_t *fr = kind == CFS_K_SMALL ? &c->free_small : &c->free_inodes;
    if (c->kind[b] == CFS_K_FREE) {
        c->kind[b] = kind;
        memset(c->sub[b], 0, sizeof(c->sub[b]));
        c->free_blocks--;
        *fr += v->spp;
    }
    if (c->kind[b] != kind || sub_get(c, b, s))
        return -EEXIST;
    sub_set(c, b, s, 1);
    (*fr)--;
    return cl_sync(v, i);
}
