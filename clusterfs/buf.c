/* The metadata block cache: 4 and 8 KiB blocks by byte address.
 *
 * A block is read and checked (CRC, type, UUID, self address) once, then
 * served from memory. Dirty blocks belong to the running transaction and
 * are never evicted; after the commit wrote them home they join the LRU of
 * clean, unreferenced blocks, which is trimmed to opts.cache_bytes.
 * Everything here runs under v->mtx. On a single host the cache is
 * authoritative for everything this host wrote; with several hosts a block
 * is trusted only while its lock is held (the lock layer drops it).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cfs_internal.h"
#include "log.h"

static size_t hash_addr(uint64_t a, size_t cap)
{
    a ^= a >> 33;
    a *= 0xff51afd7ed558ccdull;
    a ^= a >> 33;
    return (size_t)(a & (cap - 1));
}

int cfs_buf_init(struct cfs_volume *v)
{
    v->bh_cap = 4096;
    v->bh = calloc(v->bh_cap, sizeof(*v->bh));
    if (!v->bh)
        return -ENOMEM;
    v->lru.lnext = v->lru.lprev = &v->lru;
    v->cache_max = v->opts.cache_bytes;
    return 0;
}

static void lru_unlink(struct cfs_buf *b)
{
    if (b->lnext) {
        b->lnext->lprev = b->lprev;
        b->lprev->lnext = b->lnext;
        b->lnext = b->lprev = NULL;
    }
}

static void lru_push(struct cfs_volume *v, struct cfs_buf *b)
{
    b->lnext = &v->lru;
    b->lprev = v->lru.lprev;
    v->lru.lprev->lnext = b;
    v->lru.lprev = b;
}

static void buf_free(struct cfs_volume *v, struct cfs_buf *b)
{
    struct cfs_buf **pp = &v->bh[hash_addr(b->addr, v->bh_cap)];
    while (*pp && *pp != b)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = b->hnext;
    lru_unlink(b);
    v->nbufs--;
    v->cache_bytes -= b->size;
    free(b->data);
    free(b);
}

void cfs_buf_fini(struct cfs_volume *v)
{
    if (!v->bh)
        return;
    for (size_t i = 0; i < v->bh_cap; i++) {
        struct cfs_buf *b = v->bh[i];
        while (b) {
            struct cfs_buf *n = b->hnext;
            free(b->data);
            free(b);
            b = n;
        }
    }
    free(v->bh);
    v->bh = NULL;
}

static void grow(struct cfs_volume *v)
{
    if (v->nbufs < v->bh_cap * 2)
        return;
    size_t ncap = v->bh_cap * 4;
    struct cfs_buf **nh = calloc(ncap, sizeof(*nh));
    if (!nh)
        return;
    for (size_t i = 0; i < v->bh_cap; i++) {
        struct cfs_buf *b = v->bh[i];
        while (b) {
            struct cfs_buf *n = b->hnext;
            size_t h = hash_addr(b->addr, ncap);
            b->hnext = nh[h];
            nh[h] = b;
            b = n;
        }
    }
    free(v->bh);
    v->bh = nh;
    v->bh_cap = ncap;
}

static struct cfs_buf *find(struct cfs_volume *v, uint64_t addr)
{
    for (struct cfs_buf *b = v->bh[hash_addr(addr, v->bh_cap)]; b; b = b->hnext)
        if (b->addr == addr)
            return b;
    return NULL;
}

static struct cfs_buf *insert(struct cfs_volume *v, uint64_t addr, uint32_t size, unsigned type)
{
    struct cfs_buf *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->data = aligned_alloc(4096, size);
    if (!b->data) {
        free(b);
        return NULL;
    }
    b->addr = addr;
    b->size = size;
    b->type = (uint16_t)type;
    size_t h = hash_addr(addr, v->bh_cap);
    b->hnext = v->bh[h];
    v->bh[h] = b;
    v->nbufs++;
    v->cache_bytes += size;
    grow(v);
    return b;
}

void cfs_buf_trim(struct cfs_volume *v)
{
    while (v->cache_bytes > v->cache_max && v->lru.lnext != &v->lru)
        buf_free(v, v->lru.lnext);
}

int cfs_buf_get(struct cfs_volume *v, uint64_t addr, uint32_t size, unsigned type,
                struct cfs_buf **out)
{
    struct cfs_buf *b = find(v, addr);
    if (b) {
        if (b->size != size || b->type != type) {
            log_err("%s at byte %llu: cached as %s of %u bytes", cfs_btype_name(type),
                    (unsigned long long)addr, cfs_btype_name(b->type), b->size);
            return -EUCLEAN;
        }
        lru_unlink(b);
        b->refs++;
        *out = b;
        return 0;
    }
    b = insert(v, addr, size, type);
    if (!b)
        return -ENOMEM;
    int r = cfs_dev_read(v, addr, b->data, size);
    if (r == 0)
        r = cfs_block_check(b->data, size, type, v->uuid, addr, NULL);
    if (r < 0) {
        buf_free(v, b);
        return r;
    }
    b->refs = 1;
    *out = b;
    return 0;
}

int cfs_buf_new(struct cfs_volume *v, uint64_t addr, uint32_t size, unsigned type,
                struct cfs_buf **out)
{
    struct cfs_buf *b = find(v, addr);
    if (b && (b->size != size || b->type != type)) {
        if (b->refs || b->dirty) {
            log_err("%s at byte %llu: still in use as %s", cfs_btype_name(type),
                    (unsigned long long)addr, cfs_btype_name(b->type));
            return -EUCLEAN;
        }
        buf_free(v, b);
        b = NULL;
    }
    if (!b) {
        b = insert(v, addr, size, type);
        if (!b)
            return -ENOMEM;
    }
    lru_unlink(b);
    if (!b->dirty)
        memset(b->data, 0, size);
    b->refs++;
    *out = b;
    return 0;
}

void cfs_buf_put(struct cfs_volume *v, struct cfs_buf *b)
{
    if (!b)
        return;
    if (--b->refs == 0 && !b->dirty) {
        lru_push(v, b);
        cfs_buf_trim(v);
    }
}

void cfs_buf_dirty(struct cfs_volume *v, struct cfs_buf *b)
{
    if (b->dirty)
        return;
    b->dirty = true;
    b->refs++;
    b->dnext = v->dirty_bufs;
    v->dirty_bufs = b;
    v->ndirty++;
    v->dirty_bytes += b->size;
}

void cfs_buf_drop(struct cfs_volume *v, uint64_t addr)
{
    struct cfs_buf *b = find(v, addr);
    if (b && !b->refs && !b->dirty)
        buf_free(v, b);
}

void cfs_buf_drop_all(struct cfs_volume *v)
{
    for (size_t i = 0; i < v->bh_cap; i++) {
        struct cfs_buf *b = v->bh[i];
        while (b) {
            struct cfs_buf *n = b->hnext;
            if (!b->refs && !b->dirty)
                buf_free(v, b);
            b = n;
        }
    }
}
