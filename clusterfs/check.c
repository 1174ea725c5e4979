/* clusterfs check: the volume's structures against each other.
 *
 * Design notes
 * ------------
 * - Two views are built and compared: what the resource cluster headers
 *   say is allocated (every data block, small-block slot and inode slot),
 *   and what is referenced from the root: every inode reachable through
 *   directory entries, its block map (data blocks, pointer blocks) and, for
 *   a directory, its directory blocks. A unit referenced twice is doubly
 *   allocated; referenced but marked free is a bitmap error; allocated but
 *   unreferenced is leaked (an inode: an orphan, unless it is on a host's
 *   orphan list: unlinked while open).
 * - Every decode error is reported with the structure and its byte
 *   address (the decoders log it; check quotes the message) and never
 *   stops the walk: the rest of the tree is still checked.
 * - Repair, in the running transaction of a local read-write open (so a
 *   crash during a repair leaves the volume as before or as after): free
 *   leaked units, mark used units allocated, fix link counts, entry counts
 *   and cluster counters, drop dangling entries, free orphan inodes with
 *   their blocks, rewrite a bad superblock copy from the good one.
 *   Doubly allocated blocks and unreadable cluster headers or directory
 *   blocks are reported and left (exit 4): fixing them loses data, and the
 *   choice is the administrator's.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs_internal.h"
#include "log.h"
#include "lun.h"

/* addr -> (kind, refs) */
struct umap {
    uint64_t *key;
    uint8_t *kind, *refs;
    size_t cap, n;
};

static size_t um_hash(uint64_t a, size_t cap)
{
    a ^= a >> 29;
    a *= 0xbf58476d1ce4e5b9ull;
    a ^= a >> 32;
    return (size_t)a & (cap - 1);
}

static int um_slot(struct umap *m, uint64_t a, size_t *out)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 4096;
        uint64_t *nk = calloc(nc, 8);
        uint8_t *nki = calloc(nc, 1), *nr = calloc(nc, 1);
        if (!nk || !nki || !nr) {
            free(nk);
            free(nki);
            free(nr);
            return -ENOMEM;
        }
        for (size_t i = 0; i < m->cap; i++)
            if (m->key[i]) {
                size_t j = um_hash(m->key[i], nc);
                while (nk[j])
                    j = (j + 1) & (nc - 1);
                nk[j] = m->key[i];
                nki[j] = m->kind[i];
                nr[j] = m->refs[i];
            }
        free(m->key);
        free(m->kind);
        free(m->refs);
        m->key = nk;
        m->kind = nki;
        m->refs = nr;
        m->cap = nc;
    }
    size_t j = um_hash(a, m->cap);
    while (m->key[j] && m->key[j] != a)
        j = (j + 1) & (m->cap - 1);
    if (!m->key[j]) {
        m->key[j] = a;
        m->n++;
    }
    *out = j;
    return 0;
}

static bool um_find(const struct umap *m, uint64_t a, size_t *out)
{
    if (!m->cap)
        return false;
    size_t j = um_hash(a, m->cap);
    while (m->key[j]) {
        if (m->key[j] == a) {
            *out = j;
            return true;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return false;
}

static void um_free(struct umap *m)
{
    free(m->key);
    free(m->kind);
    free(m->refs);
}

struct iinfo {
    uint64_t ino, parent_seen;
    uint32_t links, subdirs, nlink;
    uint64_t entries_found, dir_entries;
    bool dir, visited;
};

struct ck {
    struct cfs_volume *v;
    unsigned flags;
    cfs_check_msg_fn fn;
    void *ctx;
    struct cfs_check_report *rep;
    struct umap alloc; /* from the bitmaps: kind; refs unused */
    struct umap ref;   /* referenced: kind; refs count */
    struct iinfo *in;
    size_t nin, capin;
    struct umap inidx; /* ino -> index in `in` (stored in key/kind via side table) */
    size_t *inpos;
    uint64_t *orphans;
    size_t norphans;
    int err;
};

static void report(struct ck *c, bool fixed, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report(struct ck *c, bool fixed, const char *what, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->rep->problems++;
    if (fixed)
        c->rep->fixed++;
    else
        c->rep->left++;
    if (c->fn)
        c->fn(c->ctx, what, msg, fixed);
}

static bool repairing(const struct ck *c)
{
    return c->flags & CFS_CHECK_REPAIR;
}

static int alloc_cb(void *ctx, uint64_t addr, uint8_t kind, int err)
{
    struct ck *c = ctx;
    if (err == -ERANGE) {
        bool fixed = repairing(c) && cfs_alloc_fix_counts(c->v, addr - CFS_META) == 0;
        report(c, fixed, "cluster counters",
               "resource cluster header at byte %" PRIu64 ": free counters disagree with its "
               "bitmap",
               addr);
        return 0;
    }
    if (err < 0) {
        report(c, false, "bad cluster header", "resource cluster header at byte %" PRIu64 ": %s",
               addr, err == -EBADMSG ? "bad CRC32C" : strerror(-err));
        return 0;
    }
    size_t j;
    int r = um_slot(&c->alloc, addr, &j);
    if (r < 0)
        return r;
    c->alloc.kind[j] = kind;
    return 0;
}

/* Count a reference to a unit. */
static int ref(struct ck *c, uint64_t addr, uint8_t kind, const char *owner_fmt, uint64_t owner)
{
    size_t j;
    int r = um_slot(&c->ref, addr, &j);
    if (r < 0)
        return r;
    if (c->ref.refs[j]) {
        char o[64];
        snprintf(o, sizeof(o), owner_fmt, owner);
        report(c, false, "doubly allocated",
               "%s at byte %" PRIu64 " is referenced more than once (again by %s)",
               kind == CFS_K_DATA    ? "file block"
               : kind == CFS_K_INODE ? "inode slot"
                                     : "small block",
               addr, o);
    } else {
        c->ref.kind[j] = kind;
    }
    if (c->ref.refs[j] < 255)
        c->ref.refs[j]++;
    return 0;
}

static struct iinfo *iinfo_get(struct ck *c, uint64_t ino, bool create)
{
    size_t j;
    if (um_find(&c->inidx, ino, &j))
        return &c->in[c->inpos[j]];
    if (!create)
        return NULL;
    if (c->nin == c->capin) {
        size_t nc = c->capin ? c->capin * 2 : 256;
        struct iinfo *ni = realloc(c->in, nc * sizeof(*ni));
        if (!ni)
            return NULL;
        c->in = ni;
        c->capin = nc;
    }
    size_t oldcap = c->inidx.cap;
    if (um_slot(&c->inidx, ino, &j) < 0)
        return NULL;
    if (c->inidx.cap != oldcap) {
        /* rebuilt: rebuild the side table */
        size_t *np = calloc(c->inidx.cap, sizeof(size_t));
        if (!np)
            return NULL;
        for (size_t i = 0; i < c->nin; i++) {
            size_t k;
            um_find(&c->inidx, c->in[i].ino, &k);
            np[k] = i;
        }
        free(c->inpos);
        c->inpos = np;
        um_find(&c->inidx, ino, &j);
    }
    c->inpos[j] = c->nin;
    struct iinfo *ii = &c->in[c->nin++];
    memset(ii, 0, sizeof(*ii));
    ii->ino = ino;
    return ii;
}

struct map_ctx {
    struct ck *c;
    uint8_t kind;
};

static int map_data_cb(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr,
                       void *ctx)
{
    struct map_ctx *m = ctx;
    if (m->kind == CFS_K_DATA)
        m->c->rep->data_blocks++;
    else
        m->c->rep->small_blocks++;
    int r = ref(m->c, cfs_ptr_addr(*ptr), m->kind, "inode %" PRIu64, ip->d.ino);
    return r < 0 ? r : 0;
}

static int map_meta_cb(struct cfs_volume *v, uint64_t addr, void *ctx)
{
    struct ck *c = ctx;
    c->rep->small_blocks++;
    return ref(c, addr, CFS_K_SMALL, "a pointer block at byte %" PRIu64, addr);
}

/* Reference everything an inode owns. */
static int own_blocks(struct ck *c, struct cfs_inode *ip)
{
    int r = ref(c, ip->d.ino * CFS_INODE_SLOT, CFS_K_INODE, "inode %" PRIu64, ip->d.ino);
    if (r < 0 || !ip->d.map_shift)
        return r;
    struct map_ctx m = {c, ip->d.map_shift == CFS_SMALL_SHIFT ? CFS_K_SMALL : CFS_K_DATA};
    log_clear_last_error();
    r = cfs_bmap_walk(c->v, ip, 0, UINT64_MAX, map_data_cb, &m);
    if (r == 0)
        r = cfs_bmap_walk_meta(c->v, ip, map_meta_cb, c);
    if (r < 0 && r != -ENOMEM && r != -EIO) {
        report(c, false, "bad block map", "inode %" PRIu64 ": block map unreadable: %s",
               (uint64_t)ip->d.ino, log_last_error()[0] ? log_last_error() : strerror(-r));
        return 0;
    }
    return r;
}

struct dent {
    char name[CFS_NAME_MAX + 1];
    uint64_t ino;
    unsigned type;
};
struct dlist {
    struct dent *e;
    size_t n, cap;
};

static int collect_cb(void *ctx, const char *name, cfs_ino_t ino, unsigned dtype, uint64_t off)
{
    struct dlist *l = ctx;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        struct dent *ne = realloc(l->e, nc * sizeof(*ne));
        if (!ne)
            return 1;
        l->e = ne;
        l->cap = nc;
    }
    snprintf(l->e[l->n].name, sizeof(l->e[l->n].name), "%s", name);
    l->e[l->n].ino = ino;
    l->e[l->n].type = dtype;
    l->n++;
    return 0;
}

static int walk_dir(struct ck *c, uint64_t dino);

/* Visit the inode an entry names. Under v->mtx. */
static int visit(struct ck *c, struct cfs_inode *dp, const char *name, uint64_t ino, unsigned dtype,
                 uint64_t *stack, size_t *nstack, size_t capstack)
{
    struct cfs_volume *v = c->v;
    size_t j;
    bool allocated =
        um_find(&c->alloc, ino * CFS_INODE_SLOT, &j) && c->alloc.kind[j] == CFS_K_INODE;
    struct cfs_inode *ip = NULL;
    int r = allocated ? (log_clear_last_error(), cfs_inode_get(v, ino, &ip)) : -ENOENT;
    if (r < 0) {
        bool fixed = false;
        if (repairing(c) && r != -ENOMEM && r != -EIO) {
            fixed = cfs_dir_remove(v, dp, name) == 0;
            if (fixed)
                cfs_inode_dirty(v, dp);
        }
        report(c, fixed, "dangling entry",
               "directory %" PRIu64 ": entry '%s' names inode %" PRIu64 ", %s", (uint64_t)dp->d.ino,
               name, ino,
               !allocated ? "which is not allocated"
                          : (log_last_error()[0] ? log_last_error() : strerror(-r)));
        if (fixed) {
            struct iinfo *di = iinfo_get(c, dp->d.ino, false);
            if (di) { /* cfs_dir_remove kept the inode's count right */
                di->dir_entries--;
                di->entries_found--;
            }
        }
        return r == -ENOMEM || r == -EIO ? r : 0;
    }
    struct iinfo *ii = iinfo_get(c, ino, true);
    if (!ii) {
        cfs_inode_put(v, ip);
        return -ENOMEM;
    }
    ii->links++;
    if (IFTODT(ip->d.mode) != dtype)
        report(c, false, "entry type",
               "directory %" PRIu64 ": entry '%s' says type %u, inode %" PRIu64 " is type %u",
               (uint64_t)dp->d.ino, name, dtype, ino, IFTODT(ip->d.mode));
    if (!ii->visited) {
        ii->visited = true;
        ii->nlink = ip->d.nlink;
        ii->dir = S_ISDIR(ip->d.mode);
        ii->dir_entries = ip->d.dir_entries;
        c->rep->inodes++;
        if (ii->dir)
            c->rep->directories++;
        else
            c->rep->files++;
        if ((r = own_blocks(c, ip)) < 0) {
            cfs_inode_put(v, ip);
            return r;
        }
        if (ii->dir) {
            struct iinfo *pi = iinfo_get(c, dp->d.ino, false);
            if (pi)
                pi->subdirs++;
            ii->parent_seen = dp->d.ino;
            if (ip->d.parent != dp->d.ino) {
                bool fixed = repairing(c);
                if (fixed) {
                    ip->d.parent = dp->d.ino;
                    cfs_inode_dirty(v, ip);
                }
                report(c, fixed, "parent",
                       "directory %" PRIu64 ": parent says %" PRIu64
                       ", found in directory %" PRIu64,
                       ino, (uint64_t)ip->d.parent, (uint64_t)dp->d.ino);
            }
            if (*nstack < capstack)
                stack[(*nstack)++] = ino;
        }
    } else if (ii->dir) {
        report(c, false, "directory linked twice",
               "directory %" PRIu64 " is entered in directory %" PRIu64 " and in %" PRIu64, ino,
               ii->parent_seen, (uint64_t)dp->d.ino);
    }
    cfs_inode_put(v, ip);
    return 0;
}

static int walk_dir(struct ck *c, uint64_t root)
{
    struct cfs_volume *v = c->v;
    size_t capstack = 1u << 20, nstack = 0;
    uint64_t *stack = malloc(capstack * sizeof(uint64_t));
    if (!stack)
        return -ENOMEM;
    stack[nstack++] = root;
    int r = 0;
    while (nstack && r >= 0) {
        uint64_t dino = stack[--nstack];
        struct cfs_inode *dp;
        if ((r = cfs_inode_get(v, dino, &dp)) < 0) {
            report(c, false, "bad inode", "directory inode %" PRIu64 ": %s", dino,
                   log_last_error()[0] ? log_last_error() : strerror(-r));
            r = 0;
            continue;
        }
        struct dlist l = {0};
        log_clear_last_error();
        r = cfs_dir_iterate(v, dp, 0, collect_cb, &l);
        if (r < 0 && r != -ENOMEM && r != -EIO) {
            report(c, false, "bad directory", "directory %" PRIu64 ": %s", dino,
                   log_last_error()[0] ? log_last_error() : strerror(-r));
            r = 0;
        }
        struct iinfo *di = iinfo_get(c, dino, true);
        if (di)
            di->entries_found = l.n;
        for (size_t i = 0; i < l.n && r >= 0; i++)
            r = visit(c, dp, l.e[i].name, l.e[i].ino, l.e[i].type, stack, &nstack, capstack);
        free(l.e);
        cfs_inode_put(v, dp);
    }
    free(stack);
    return r;
}

static int check_supers(struct ck *c)
{
    struct cfs_volume *v = c->v;
    uint8_t *buf = aligned_alloc(4096, 2 * CFS_META);
    if (!buf)
        return -ENOMEM;
    int r = cfs_dev_read(v, 0, buf, 2 * CFS_META);
    if (r < 0) {
        free(buf);
        return r;
    }
    for (int k = 0; k < 2; k++) {
        struct cfs_super s;
        uint64_t a = k ? CFS_SUPER_B_OFF : 0;
        log_clear_last_error();
        int e = cfs_super_decode(buf + k * CFS_META, a, &s);
        if (e == 0 && (memcmp(s.h.uuid, v->uuid, 16) || s.volume_bytes != v->sb.volume_bytes ||
                       s.data_off != v->sb.data_off || s.block_size != v->sb.block_size))
            e = -ESTALE;
        if (e == 0)
            continue;
        bool fixed = false;
        if (repairing(c)) {
            struct cfs_super g = v->sb;
            g.h.addr = a;
            cfs_super_encode(buf + k * CFS_META, &g);
            fixed =
                cfs_dev_write(v, a, buf + k * CFS_META, CFS_META) == 0 && lun_flush(v->lun) == 0;
        }
        report(c, fixed, "superblock", "superblock %c at byte %" PRIu64 ": %s", k ? 'B' : 'A', a,
               e == -ESTALE ? "differs from the other copy"
                            : (log_last_error()[0] ? log_last_error() : strerror(-e)));
    }
    free(buf);
    return 0;
}

static int load_orphans(struct ck *c)
{
    struct cfs_volume *v = c->v;
    uint8_t *buf = aligned_alloc(4096, CFS_META);
    struct cfs_host *h = malloc(sizeof(*h));
    if (!buf || !h) {
        free(buf);
        free(h);
        return -ENOMEM;
    }
    for (uint32_t s = 0; s < v->sb.max_hosts; s++) {
        uint64_t a = v->sb.journal_off + (uint64_t)s * v->sb.journal_bytes + CFS_META;
        if (cfs_dev_read(v, a, buf, CFS_META) < 0)
            continue;
        int e = cfs_host_decode(buf, v->uuid, a, h);
        if (e < 0) {
            report(c, false, "host block", "host block of slot %u at byte %" PRIu64 ": %s", s, a,
                   strerror(-e));
            continue;
        }
        for (uint32_t i = 0; i < h->norphans; i++) {
            uint64_t *n = realloc(c->orphans, (c->norphans + 1) * sizeof(uint64_t));
            if (!n)
                break;
            c->orphans = n;
            c->orphans[c->norphans++] = h->orphans[i];
        }
    }
    free(buf);
    free(h);
    return 0;
}

static bool on_orphan_list(const struct ck *c, uint64_t ino)
{
    for (size_t i = 0; i < c->norphans; i++)
        if (c->orphans[i] == ino)
            return true;
    return false;
}

int cfsi_check(struct cfs_volume *v, unsigned flags, cfs_check_msg_fn fn, void *ctx,
               struct cfs_check_report *rep)
{
    struct cfs_check_report dummy;
    if (!rep)
        rep = &dummy;
    memset(rep, 0, sizeof(*rep));
    if ((flags & CFS_CHECK_REPAIR) && v->ro)
        return -EROFS;
    struct ck c = {.v = v, .flags = flags, .fn = fn, .ctx = ctx, .rep = rep};
    pthread_mutex_lock(&v->mtx);
    int r = v->fatal;
    if (r == 0)
        r = cfs_txn_commit(v);
    if (r == 0)
        r = check_supers(&c);
    if (r == 0 && v->rmap_err)
        report(&c, false, "resource map",
               "resource map at byte %u: %s (every cluster was checked as laid out)", CFS_RMAP_OFF,
               strerror(-v->rmap_err));
    if (r == 0)
        r = load_orphans(&c);
    if (r == 0)
        r = cfs_alloc_scan(v, alloc_cb, &c);
    /* the root */
    struct cfs_inode *root = NULL;
    if (r == 0 && (r = cfs_inode_get(v, v->sb.root_ino, &root)) < 0) {
        report(&c, false, "root", "root directory inode %" PRIu64 ": %s", v->sb.root_ino,
               strerror(-r));
        r = 0;
    }
    if (root) {
        struct iinfo *ri = iinfo_get(&c, root->d.ino, true);
        if (ri) {
            ri->visited = true;
            ri->dir = true;
            ri->nlink = root->d.nlink;
            ri->dir_entries = root->d.dir_entries;
            ri->links = 1; /* its own ".." */
        }
        rep->inodes++;
        rep->directories++;
        r = own_blocks(&c, root);
        cfs_inode_put(v, root);
        if (r == 0)
            r = walk_dir(&c, v->sb.root_ino);
    }
    if (r < 0)
        goto out;
    /* Inodes allocated but not reached: orphans. */
    for (size_t j = 0; j < c.alloc.cap; j++) {
        if (!c.alloc.key[j] || c.alloc.kind[j] != CFS_K_INODE)
            continue;
        uint64_t ino = c.alloc.key[j] / CFS_INODE_SLOT;
        size_t k;
        if (um_find(&c.ref, c.alloc.key[j], &k))
            continue;
        struct cfs_inode *ip;
        int e = cfs_inode_get(v, ino, &ip);
        if (e < 0) {
            bool fixed = repairing(&c) && e != -EIO &&
                         cfs_alloc_set(v, c.alloc.key[j], CFS_K_INODE, false) == 0;
            report(&c, fixed, "orphan inode", "inode slot %" PRIu64 " is allocated but %s", ino,
                   e == -ENOENT ? "holds no inode" : strerror(-e));
            continue;
        }
        if ((e = own_blocks(&c, ip)) < 0) {
            cfs_inode_put(v, ip);
            r = e;
            goto out;
        }
        if (ip->d.nlink == 0 && on_orphan_list(&c, ino)) {
            cfs_inode_put(v, ip);
            continue; /* unlinked while open: freed at its last close */
        }
        bool fixed = false;
        if (repairing(&c)) {
            ip->d.nlink = 0; /* freed with its blocks when this reference goes */
            cfs_inode_dirty(v, ip);
            fixed = true;
        }
        report(&c, fixed, "orphan inode",
               "inode %" PRIu64 " (nlink %u, %" PRIu64 " bytes) is in no directory", ino,
               ip->d.nlink, ip->d.size);
        cfs_inode_put(v, ip);
    }
    /* Referenced vs allocated. */
    for (size_t j = 0; j < c.ref.cap; j++) {
        if (!c.ref.key[j])
            continue;
        size_t k;
        uint64_t a = c.ref.key[j];
        if (!um_find(&c.alloc, a, &k)) {
            bool fixed = repairing(&c) && cfs_alloc_set(v, a, c.ref.kind[j], true) == 0;
            report(&c, fixed, "used but free",
                   "%s at byte %" PRIu64 " is in use but marked free in its cluster",
                   c.ref.kind[j] == CFS_K_DATA ? "file block" : "small block", a);
        } else if (c.alloc.kind[k] != c.ref.kind[j]) {
            report(&c, false, "wrong kind",
                   "block at byte %" PRIu64 " is used as kind %u but allocated as kind %u", a,
                   c.ref.kind[j], c.alloc.kind[k]);
        }
    }
    for (size_t j = 0; j < c.alloc.cap; j++) {
        if (!c.alloc.key[j] || c.alloc.kind[j] == CFS_K_INODE)
            continue;
        size_t k;
        uint64_t a = c.alloc.key[j];
        if (um_find(&c.ref, a, &k))
            continue;
        bool fixed = repairing(&c) && cfs_alloc_set(v, a, c.alloc.kind[j], false) == 0;
        report(&c, fixed, "leaked block", "%s at byte %" PRIu64 " is allocated but unused",
               c.alloc.kind[j] == CFS_K_DATA ? "file block" : "small block", a);
    }
    /* Link counts and entry counts. */
    for (size_t i = 0; i < c.nin; i++) {
        struct iinfo *ii = &c.in[i];
        if (!ii->visited)
            continue;
        uint32_t want = ii->dir ? 2 + ii->subdirs : ii->links;
        bool badn = ii->nlink != want;
        bool bade = ii->dir && ii->dir_entries != ii->entries_found;
        if (!badn && !bade)
            continue;
        struct cfs_inode *ip;
        bool fixed = false;
        if (repairing(&c) && cfs_inode_get(v, ii->ino, &ip) == 0) {
            ip->d.nlink = want;
            if (ii->dir)
                ip->d.dir_entries = ii->entries_found;
            cfs_inode_dirty(v, ip);
            cfs_inode_put(v, ip);
            fixed = true;
        }
        if (badn)
            report(&c, fixed, "link count", "inode %" PRIu64 ": link count %u, found %u", ii->ino,
                   ii->nlink, want);
        if (bade)
            report(&c, fixed, "entry count",
                   "directory %" PRIu64 ": says %" PRIu64 " entries, holds %" PRIu64, ii->ino,
                   ii->dir_entries, ii->entries_found);
    }
    if (repairing(&c) && rep->fixed)
        r = cfs_txn_commit(v);
out:
    pthread_mutex_unlock(&v->mtx);
    um_free(&c.alloc);
    um_free(&c.ref);
    um_free(&c.inidx);
    free(c.inpos);
    free(c.in);
    free(c.orphans);
    if (r < 0)
        return r;
    return rep->left ? 4 : rep->fixed ? 1 : 0;
}
