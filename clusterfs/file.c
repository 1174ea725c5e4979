/* File data: read, write, truncate, fallocate, SEEK_DATA / SEEK_HOLE.
 *
 * Design notes
 * ------------
 * - Files up to 1 KiB live in the inode (inline, journaled with it); up to
 *   64 KiB in 8 KiB small blocks; past that in file blocks (1 MiB by
 *   default), as VMFS-5 keeps small files in sub-blocks. Growing past a
 *   step copies the data into the new unit (at most 64 KiB), written whole
 *   before the map points at it. Past the inode, data goes straight to the
 *   LUN, in place, never through the journal.
 * - A block is allocated "unwritten" (its pointer flag: reads as zeroes)
 *   in the same transaction as its bitmap bit; the data is then written
 *   whole (the caller's bytes and zeroes around them: one large I/O, and
 *   no stale bytes of an earlier file can ever show), and the flag cleared.
 *   A crash in between leaves an allocated block that reads as zeroes, not
 *   a leak and not old data. The commit's first flush makes the data
 *   durable before the commit block that points at it (ordered mode).
 * - Blocks already written are overwritten in place; writes that do not
 *   cover whole LUN blocks read-modify-write the edge blocks.
 * - inode->io: reads take it shared, writes exclusive (one writer per
 *   file at a time; reads run in parallel with each other and with other
 *   files' I/O).
 *   Truncate, fallocate and punch take it exclusive too, so no read or
 *   write runs on a block while it is freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfs_internal.h"
#include "log.h"
#include "lun.h"
#include "util.h"

#define FREE_BUDGET 4096u
#define SMALL_FILE_MAX (64u << 10)

/* Data I/O at any byte alignment (edges read-modify-written). */
static int data_io(struct cfs_volume *v, uint64_t addr, void *buf, size_t len, bool write)
{
    uint64_t a0 = addr / v->lbs * v->lbs, a1 = ROUND_UP(addr + len, (uint64_t)v->lbs);
    if (a0 == addr && a1 == addr + len)
        return write ? cfs_dev_write(v, addr, buf, len) : cfs_dev_read(v, addr, buf, len);
    uint8_t *bb = aligned_alloc(4096, ROUND_UP(a1 - a0, 4096));
    if (!bb)
        return -ENOMEM;
    int r;
    if (!write) {
        r = cfs_dev_read(v, a0, bb, a1 - a0);
        if (r == 0)
            memcpy(buf, bb + (addr - a0), len);
    } else {
        r = cfs_dev_read(v, a0, bb, v->lbs);
        if (r == 0 && a1 - v->lbs > a0)
            r = cfs_dev_read(v, a1 - v->lbs, bb + (a1 - v->lbs - a0), v->lbs);
        if (r == 0) {
            memcpy(bb + (addr - a0), buf, len);
            r = cfs_dev_write(v, a0, bb, a1 - a0);
        }
    }
    free(bb);
    return r;
}

static int zero_bytes(struct cfs_volume *v, uint64_t addr, size_t len)
{
    void *z = calloc(1, len);
    if (!z)
        return -ENOMEM;
    int r = data_io(v, addr, z, len, true);
    free(z);
    return r;
}

static bool is_blockmapped(const struct cfs_inode *ip)
{
    return ip->d.map_shift != 0;
}

#define USHIFT(ip) ((unsigned)(ip)->d.map_shift)
#define USIZE(ip) (1ull << (ip)->d.map_shift)

/* Files up to this size that outgrow the inode use 8 KiB small blocks. */
static uint64_t small_max(const struct cfs_volume *v)
{
    return MIN((uint64_t)SMALL_FILE_MAX, (uint64_t)v->bs);
}

static int alloc_unit(struct cfs_volume *v, const struct cfs_inode *ip, uint64_t *a)
{
    return USHIFT(ip) == CFS_SMALL_SHIFT ? cfs_alloc_small(v, a) : cfs_alloc_block(v, a);
}

static int free_unit(struct cfs_volume *v, const struct cfs_inode *ip, uint64_t a)
{
    return USHIFT(ip) == CFS_SMALL_SHIFT ? cfs_free_small(v, a) : cfs_free_block(v, a);
}

/* Make the file's map able to hold `end` bytes: inline -> small blocks ->
 * file blocks, copying what it holds (at most small_max() bytes) into the
 * new unit, written whole before the map points at it. Under v->mtx with
 * the inode's io lock exclusive. */
static int ensure_mode(struct cfs_volume *v, struct cfs_inode *ip, uint64_t end)
{
    unsigned sh = USHIFT(ip);
    if (sh == v->bshift || (sh == 0 && end <= CFS_INLINE_MAX) ||
        (sh == CFS_SMALL_SHIFT && end <= small_max(v)))
        return 0;
    unsigned nsh = end <= small_max(v) ? CFS_SMALL_SHIFT : v->bshift;
    uint64_t nu = 1ull << nsh;
    uint8_t *buf = aligned_alloc(4096, nu);
    if (!buf)
        return -ENOMEM;
    memset(buf, 0, nu);
    bool content = false;
    int r = 0;
    if (sh == 0) {
        memcpy(buf, ip->d.inline_data, ip->d.size);
        content = ip->d.size > 0;
    } else { /* small -> file block: at most small_max() bytes */
        for (uint64_t i = 0; i < small_max(v) / CFS_SMALL && r == 0; i++) {
            uint64_t ptr;
            r = cfs_bmap_get(v, ip, i, &ptr);
            if (r == 0 && ptr) {
                content = true;
                if (!(ptr & CFS_PTR_UNWRITTEN))
                    r = cfs_dev_read(v, cfs_ptr_addr(ptr), buf + i * CFS_SMALL, CFS_SMALL);
            }
        }
    }
    uint64_t a = 0;
    if (r == 0 && content) {
        r = nsh == CFS_SMALL_SHIFT ? cfs_alloc_small(v, &a) : cfs_alloc_block(v, &a);
        if (r == 0 && (r = cfs_dev_write(v, a, buf, nu)) < 0)
            nsh == CFS_SMALL_SHIFT ? cfs_free_small(v, a) : cfs_free_block(v, a);
    }
    free(buf);
    if (r < 0)
        return r;
    if (sh == CFS_SMALL_SHIFT) { /* free the small blocks (still in small mode) */
        while ((r = cfs_bmap_free_from(v, ip, 0, FREE_BUDGET)) == 1)
            ;
        if (r < 0)
            return r;
    }
    ip->d.map_shift = (uint8_t)nsh;
    ip->d.map_height = 0;
    ip->d.map_root = content ? cfs_ptr_make(a, 0) : 0;
    if (content)
        ip->d.blocks += nu;
    memset(ip->d.inline_data, 0, sizeof(ip->d.inline_data));
    cfs_inode_dirty(v, ip);
    return 0;
}

ssize_t cfs_file_pwrite(struct cfs_volume *v, struct cfs_inode *ip, const void *buf, size_t size,
                        uint64_t off)
{
    if (!size)
        return 0;
    uint64_t end = off + size;
    if (end < off || end > (62ull << 40) + ((uint64_t)v->bs << 10))
        return -EFBIG;
    pthread_mutex_lock(&v->mtx);
    int r = v->fatal;
    if (r == 0 && !is_blockmapped(ip) && end <= CFS_INLINE_MAX) {
        memcpy(ip->d.inline_data + off, buf, size);
        if (end > ip->d.size)
            ip->d.size = end;
        ip->d.mtime_ns = ip->d.ctime_ns = cfs_now_ns();
        cfs_inode_dirty(v, ip);
        r = cfs_txn_maybe_commit(v);
        pthread_mutex_unlock(&v->mtx);
        return r < 0 ? r : (ssize_t)size;
    }
    if (r == 0)
        r = ensure_mode(v, ip, end);
    pthread_mutex_unlock(&v->mtx);
    if (r < 0)
        return r;
    const uint8_t *src = buf;
    const uint64_t us = USIZE(ip); /* stable: the io lock is held exclusive */
    uint8_t *blk = NULL;
    size_t done = 0;
    while (done < size) {
        uint64_t pos = off + done;
        uint64_t bi = pos >> USHIFT(ip), boff = pos & (us - 1);
        size_t n = (size_t)MIN((uint64_t)(size - done), us - boff);
        uint64_t ptr;
        bool fresh;
        pthread_mutex_lock(&v->mtx);
        r = v->fatal;
        if (r == 0)
            r = cfs_bmap_get(v, ip, bi, &ptr);
        if (r == 0 && !ptr) {
            uint64_t a;
            r = alloc_unit(v, ip, &a);
            if (r == 0) {
                ptr = cfs_ptr_make(a, 1);
                r = cfs_bmap_set(v, ip, bi, ptr);
                if (r == 0) {
                    ip->d.blocks += us;
                    cfs_inode_dirty(v, ip);
                } else {
                    free_unit(v, ip, a);
                }
            }
        }
        pthread_mutex_unlock(&v->mtx);
        if (r < 0)
            break;
        fresh = ptr & CFS_PTR_UNWRITTEN;
        uint64_t a = cfs_ptr_addr(ptr);
        if (fresh) {
            if (n == us) {
                r = cfs_dev_write(v, a, src + done, n);
            } else {
                if (!blk && !(blk = aligned_alloc(4096, us))) {
                    r = -ENOMEM;
                    break;
                }
                memset(blk, 0, us);
                memcpy(blk + boff, src + done, n);
                r = cfs_dev_write(v, a, blk, us);
            }
            if (r == 0) {
                pthread_mutex_lock(&v->mtx);
                r = v->fatal ? v->fatal : cfs_bmap_set(v, ip, bi, cfs_ptr_make(a, 0));
                pthread_mutex_unlock(&v->mtx);
            }
        } else {
            r = data_io(v, a + boff, (void *)(src + done), n, true);
        }
        if (r < 0)
            break;
        done += n;
    }
    free(blk);
    pthread_mutex_lock(&v->mtx);
    if (done) {
        if (off + done > ip->d.size)
            ip->d.size = off + done;
        ip->d.mtime_ns = ip->d.ctime_ns = cfs_now_ns();
        cfs_inode_dirty(v, ip);
    }
    int cr = v->fatal ? 0 : cfs_txn_maybe_commit(v);
    pthread_mutex_unlock(&v->mtx);
    if (done)
        return (ssize_t)done;
    return r < 0 ? r : cr;
}

ssize_t cfs_file_pread(struct cfs_volume *v, struct cfs_inode *ip, void *buf, size_t size,
                       uint64_t off)
{
    pthread_mutex_lock(&v->mtx);
    uint64_t fsize = ip->d.size;
    if (off >= fsize || !size) {
        pthread_mutex_unlock(&v->mtx);
        return 0;
    }
    if (size > fsize - off)
        size = (size_t)(fsize - off);
    if (!is_blockmapped(ip)) {
        memcpy(buf, ip->d.inline_data + off, size);
        pthread_mutex_unlock(&v->mtx);
        return (ssize_t)size;
    }
    const unsigned ush = USHIFT(ip); /* stable: the io lock is held shared */
    const uint64_t us = 1ull << ush;
    pthread_mutex_unlock(&v->mtx);
    uint8_t *dst = buf;
    size_t done = 0;
    int r = 0;
    while (done < size) {
        uint64_t pos = off + done;
        uint64_t bi = pos >> ush, boff = pos & (us - 1);
        size_t n = (size_t)MIN((uint64_t)(size - done), us - boff);
        uint64_t ptr;
        pthread_mutex_lock(&v->mtx);
        r = cfs_bmap_get(v, ip, bi, &ptr);
        pthread_mutex_unlock(&v->mtx);
        if (r < 0)
            break;
        if (!ptr || (ptr & CFS_PTR_UNWRITTEN))
            memset(dst + done, 0, n);
        else if ((r = data_io(v, cfs_ptr_addr(ptr) + boff, dst + done, n, false)) < 0)
            break;
        done += n;
    }
    if (done)
        return (ssize_t)done;
    return r;
}

struct punch_ctx {
    uint64_t n;
    bool unwrite; /* zero range: keep the block, mark it unwritten */
};

static int punch_cb(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr,
                    void *ctx)
{
    struct punch_ctx *pc = ctx;
    if (pc->n >= FREE_BUDGET)
        return 1;
    if (pc->unwrite) {
        *ptr |= CFS_PTR_UNWRITTEN;
        pc->n++;
        return 0;
    }
    int r = free_unit(v, ip, cfs_ptr_addr(*ptr));
    if (r < 0)
        return r;
    ip->d.blocks -= USIZE(ip);
    *ptr = 0;
    pc->n++;
    return 0;
}

/* Free (or mark unwritten) whole blocks [first, end), committing between
 * budgets so that no transaction outgrows the journal. Under v->mtx. */
static int blocks_range(struct cfs_volume *v, struct cfs_inode *ip, uint64_t first, uint64_t end,
                        bool unwrite)
{
    for (;;) {
        struct punch_ctx pc = {.unwrite = unwrite};
        int r = cfs_bmap_walk(v, ip, first, end, punch_cb, &pc);
        if (r < 0)
            return r;
        if (r == 0)
            return 0;
        if ((r = cfs_txn_commit(v)) < 0)
            return r;
    }
}

/* Zero bytes [from, to) inside one block, on disk, if it holds data. */
static int zero_in_block(struct cfs_volume *v, struct cfs_inode *ip, uint64_t from, uint64_t to)
{
    if (from >= to)
        return 0;
    uint64_t ptr;
    int r = cfs_bmap_get(v, ip, from >> USHIFT(ip), &ptr);
    if (r < 0 || !ptr || (ptr & CFS_PTR_UNWRITTEN))
        return r;
    return zero_bytes(v, cfs_ptr_addr(ptr) + (from & (USIZE(ip) - 1)), (size_t)(to - from));
}

int cfs_file_truncate_locked(struct cfs_volume *v, struct cfs_inode *ip, uint64_t size)
{
    if (size > (62ull << 40) + ((uint64_t)v->bs << 10))
        return -EFBIG;
    int r = 0;
    if (!is_blockmapped(ip) && size <= CFS_INLINE_MAX) {
        if (size < ip->d.size)
            memset(ip->d.inline_data + size, 0, ip->d.size - size);
        goto done;
    }
    if (size > ip->d.size && (r = ensure_mode(v, ip, size)) < 0)
        return r;
    if (size < ip->d.size) {
        uint64_t old = ip->d.size;
        ip->d.size = size; /* first: a crash mid-way leaves a shorter file, never garbage */
        cfs_inode_dirty(v, ip);
        uint64_t us = USIZE(ip);
        uint64_t first = DIV_ROUND_UP(size, us);
        if ((r = blocks_range(v, ip, first, UINT64_MAX, false)) < 0)
            return r;
        if (size & (us - 1))
            r = zero_in_block(v, ip, size, MIN(old, ROUND_UP(size, us)));
        if (r < 0)
            return r;
        if (size == 0 && !ip->d.map_root && !S_ISDIR(ip->d.mode)) {
            ip->d.map_shift = 0; /* back to inline */
            ip->d.map_height = 0;
        }
    }
done:
    ip->d.size = size;
    ip->d.mtime_ns = ip->d.ctime_ns = cfs_now_ns();
    cfs_inode_dirty(v, ip);
    return 0;
}

int cfs_file_free_all(struct cfs_volume *v, struct cfs_inode *ip)
{
    if (is_blockmapped(ip)) {
        int r;
        while ((r = cfs_bmap_free_from(v, ip, 0, FREE_BUDGET)) == 1)
            if ((r = cfs_txn_commit(v)) < 0)
                return r;
        if (r < 0)
            return r;
    }
    ip->d.map_root = 0;
    ip->d.map_height = 0;
    memset(ip->d.inline_data, 0, sizeof(ip->d.inline_data));
    cfs_inode_dirty(v, ip);
    return 0;
}

int cfsi_fallocate(struct cfs_file *f, int mode, uint64_t off, uint64_t len)
{
    struct cfs_volume *v = f->v;
    struct cfs_inode *ip = f->ip;
    const int known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
    if ((mode & ~known) || ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE)) ||
        ((mode & FALLOC_FL_PUNCH_HOLE) && (mode & FALLOC_FL_ZERO_RANGE)))
        return -EOPNOTSUPP;
    if (!len)
        return -EINVAL;
    if ((f->flags & O_ACCMODE) == O_RDONLY)
        return -EBADF;
    uint64_t end = off + len;
    if (end < off || end > (62ull << 40) + ((uint64_t)v->bs << 10))
        return -EFBIG;
    if (!S_ISREG(ip->d.mode))
        return -ENODEV;
    pthread_rwlock_wrlock(&ip->io);
    pthread_mutex_lock(&v->mtx);
    int r = v->fatal;
    bool keep = mode & FALLOC_FL_KEEP_SIZE;
    if (r)
        goto out;
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
        if (!keep && end > ip->d.size && (r = ensure_mode(v, ip, end)) < 0)
            goto out;
        if (!is_blockmapped(ip)) {
            uint64_t zend = MIN(end, (uint64_t)CFS_INLINE_MAX);
            if (off < zend)
                memset(ip->d.inline_data + off, 0, zend - off);
        } else {
            uint64_t first = DIV_ROUND_UP(off, USIZE(ip)), last = end >> USHIFT(ip);
            if (first > last) { /* within one block */
                r = zero_in_block(v, ip, off, end);
            } else {
                r = zero_in_block(v, ip, off, first << USHIFT(ip));
                if (r == 0)
                    r = zero_in_block(v, ip, last << USHIFT(ip), end);
                if (r == 0 && first < last)
                    r = blocks_range(v, ip, first, last, mode & FALLOC_FL_ZERO_RANGE);
            }
            if (r < 0)
                goto out;
        }
    } else {
        if ((r = ensure_mode(v, ip, MAX(end, ip->d.size))) < 0)
            goto out;
        if (is_blockmapped(ip)) {
            for (uint64_t bi = off >> USHIFT(ip); bi <= (end - 1) >> USHIFT(ip); bi++) {
                uint64_t ptr, a;
                if ((r = cfs_bmap_get(v, ip, bi, &ptr)) < 0)
                    goto out;
                if (ptr)
                    continue;
                if ((r = alloc_unit(v, ip, &a)) < 0)
                    goto out;
                if ((r = cfs_bmap_set(v, ip, bi, cfs_ptr_make(a, 1))) < 0) {
                    free_unit(v, ip, a);
                    goto out;
                }
                ip->d.blocks += USIZE(ip);
                cfs_inode_dirty(v, ip);
                if ((r = cfs_txn_maybe_commit(v)) < 0)
                    goto out;
            }
        }
    }
    if (!keep && end > ip->d.size)
        ip->d.size = end;
    ip->d.ctime_ns = cfs_now_ns();
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
        ip->d.mtime_ns = ip->d.ctime_ns;
    cfs_inode_dirty(v, ip);
    r = cfs_txn_maybe_commit(v);
out:
    pthread_mutex_unlock(&v->mtx);
    pthread_rwlock_unlock(&ip->io);
    return r;
}

struct seek_ctx {
    uint64_t next;  /* first index not yet known to be data */
    uint64_t found; /* SEEK_DATA: first data index; SEEK_HOLE: first hole index */
    bool data, done;
};

static int seek_cb(struct cfs_volume *v, struct cfs_inode *ip, uint64_t idx, uint64_t *ptr,
                   void *ctx)
{
    struct seek_ctx *s = ctx;
    bool written = !(*ptr & CFS_PTR_UNWRITTEN);
    if (s->data) {
        if (written) {
            s->found = idx;
            s->done = true;
            return 1;
        }
        return 0;
    }
    if (idx > s->next) {
        s->found = s->next;
        s->done = true;
        return 1;
    }
    if (!written) {
        s->found = idx;
        s->done = true;
        return 1;
    }
    s->next = idx + 1;
    return 0;
}

int64_t cfsi_lseek(struct cfs_file *f, int64_t off, int whence)
{
    struct cfs_volume *v = f->v;
    struct cfs_inode *ip = f->ip;
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    if (off < 0)
        return -ENXIO;
    pthread_mutex_lock(&v->mtx);
    uint64_t size = ip->d.size, o = (uint64_t)off;
    int64_t res;
    if (o >= size) {
        res = -ENXIO;
    } else if (!is_blockmapped(ip)) {
        res = whence == SEEK_DATA ? off : (int64_t)size;
    } else {
        unsigned sh = USHIFT(ip);
        struct seek_ctx s = {.next = o >> sh, .data = whence == SEEK_DATA};
        int r = cfs_bmap_walk(v, ip, o >> sh, UINT64_MAX, seek_cb, &s);
        if (r < 0) {
            res = r;
        } else if (whence == SEEK_DATA) {
            uint64_t p = s.done ? MAX(o, s.found << sh) : size;
            res = p >= size ? -ENXIO : (int64_t)p;
        } else {
            uint64_t hole = s.done ? s.found : s.next;
            uint64_t p = MAX(o, hole << sh);
            res = (int64_t)MIN(p, size);
        }
    }
    pthread_mutex_unlock(&v->mtx);
    return res;
}

/* ---- handles --------------------------------------------------------------- */

int cfsi_open(struct cfs_volume *v, cfs_ino_t ino, int flags, struct cfs_file **fh)
{
    struct cfs_file *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    pthread_mutex_lock(&v->mtx);
    struct cfs_inode *ip;
    int r = cfs_inode_get(v, ino, &ip);
    if (r < 0)
        goto fail;
    if (S_ISDIR(ip->d.mode) && (flags & O_ACCMODE) != O_RDONLY) {
        r = -EISDIR;
        cfs_inode_put(v, ip);
        goto fail;
    }
    if (v->ro && (flags & O_ACCMODE) != O_RDONLY) {
        r = -EROFS;
        cfs_inode_put(v, ip);
        goto fail;
    }
    ip->nopen++;
    if (S_ISREG(ip->d.mode) && (r = cfs_ilock_open(v, ip)) < 0) {
        ip->nopen--;
        cfs_inode_put(v, ip);
        goto fail;
    }
    cfs_inode_put(v, ip);
    pthread_mutex_unlock(&v->mtx);
    f->v = v;
    f->ip = ip;
    f->flags = flags;
    if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY && S_ISREG(ip->d.mode)) {
        pthread_rwlock_wrlock(&ip->io);
        pthread_mutex_lock(&v->mtx);
        r = v->fatal ? v->fatal : cfs_file_truncate_locked(v, ip, 0);
        pthread_mutex_unlock(&v->mtx);
        pthread_rwlock_unlock(&ip->io);
        if (r < 0) {
            cfs_release(f);
            return r;
        }
    }
    *fh = f;
    return 0;
fail:
    pthread_mutex_unlock(&v->mtx);
    free(f);
    return r;
}

int cfsi_release(struct cfs_file *f)
{
    if (!f)
        return 0;
    struct cfs_volume *v = f->v;
    pthread_mutex_lock(&v->mtx);
    f->ip->nopen--;
    if (S_ISREG(f->ip->d.mode))
        cfs_ilock_close(v, f->ip);
    f->ip->pins++;
    cfs_inode_put(v, f->ip); /* frees an unlinked inode after its last close */
    pthread_mutex_unlock(&v->mtx);
    free(f);
    return 0;
}

cfs_ino_t cfs_file_ino(const struct cfs_file *f)
{
    return f->ip->d.ino;
}

ssize_t cfsi_read(struct cfs_file *f, void *buf, size_t size, uint64_t off)
{
    if ((f->flags & O_ACCMODE) == O_WRONLY)
        return -EBADF;
    if (S_ISDIR(f->ip->d.mode))
        return -EISDIR;
    pthread_rwlock_rdlock(&f->ip->io);
    ssize_t r = cfs_file_pread(f->v, f->ip, buf, size, off);
    pthread_rwlock_unlock(&f->ip->io);
    return r;
}

ssize_t cfsi_write(struct cfs_file *f, const void *buf, size_t size, uint64_t off)
{
    if ((f->flags & O_ACCMODE) == O_RDONLY)
        return -EBADF;
    if (!S_ISREG(f->ip->d.mode))
        return -EINVAL;
    pthread_rwlock_wrlock(&f->ip->io);
    if (f->flags & O_APPEND) {
        pthread_mutex_lock(&f->v->mtx);
        off = f->ip->d.size;
        pthread_mutex_unlock(&f->v->mtx);
    }
    ssize_t r = cfs_file_pwrite(f->v, f->ip, buf, size, off);
    pthread_rwlock_unlock(&f->ip->io);
    return r;
}

int cfsi_fsync(struct cfs_file *f, bool datasync)
{
    (void)datasync; /* the commit flushes data and metadata together */
    return cfs_sync(f->v);
}
