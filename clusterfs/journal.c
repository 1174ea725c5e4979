/* The host's redo journal: transactions of whole metadata block images.
 *
 * Design notes
 * ------------
 * - Each host writes only its own journal (slot i of the journal region),
 *   so hosts never contend on it; a dead host's journal is replayed by the
 *   host that recovers it, while the dead host's locks stay held.
 * - Physical redo logging, as jbd2: a transaction is one or more descriptor
 *   blocks (home address and length of up to 248 images each), each
 *   followed by its images, then a commit block carrying the CRC32C of
 *   every block of the transaction before it. All carry the volume UUID and
 *   the transaction's sequence number.
 * - Commit: write descriptors and images, FLUSH (this also makes the file
 *   data written in place before the commit durable: ordered mode), write
 *   the commit block, FLUSH. Only then are the blocks written home (no
 *   flush). Two flushes per commit; the commit thread and fsync batch many
 *   operations into one transaction (group commit).
 * - A torn commit: if the commit block landed but an image did not (a
 *   volatile cache may reorder), its CRC does not match and replay stops
 *   there; that transaction was never acknowledged (its second flush had
 *   not returned).
 * - Replay from the on-disk tail: verify each transaction (sequence, CRC)
 *   and write its images home, in order, until the first that does not
 *   verify. Replaying twice writes the same images again: idempotent.
 *   Stale blocks beyond the end carry an older sequence (or another
 *   volume's UUID) and stop the scan.
 * - Checkpoint: when the ring is full (and at a clean close) FLUSH (home
 *   writes durable), rewrite the journal header with tail = head, FLUSH.
 *   The header is the only block written outside a transaction.
 * - Blocks freed in the running transaction are not reused until it
 *   committed (v->freed), so a crash can never leave a block referenced by
 *   the old state and overwritten by the new; their UNMAP goes to the LUN
 *   after the commit.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfs_internal.h"
#include "crc32c.h"
#include "le.h"
#include "log.h"
#include "lun.h"
#include "util.h"

#define TXN_SOFT_LIMIT (1u << 20) /* commit once this much metadata is dirty */

static uint64_t j_off_of(const struct cfs_super *sb, uint32_t slot)
{
    return sb->journal_off + (uint64_t)slot * sb->journal_bytes;
}

static uint64_t ring_of(const struct cfs_super *sb)
{
    return sb->journal_bytes / CFS_META - CFS_J_RING_START;
}

static uint64_t ring_addr(uint64_t joff, uint64_t pos)
{
    return joff + (CFS_J_RING_START + pos) * CFS_META;
}

static int ring_io(struct lun *lun, uint64_t joff, uint64_t ring, uint64_t pos, void *buf,
                   uint64_t n, bool write)
{
    pos %= ring;
    while (n) {
        uint64_t k = MIN(n, ring - pos);
        int r = write ? cfs_dev_write_lun(lun, ring_addr(joff, pos), buf, k * CFS_META)
                      : cfs_dev_read_lun(lun, ring_addr(joff, pos), buf, k * CFS_META);
        if (r < 0)
            return r;
        buf = (uint8_t *)buf + k * CFS_META;
        n -= k;
        pos = 0;
    }
    return 0;
}

void cfs_txn_stamp(struct cfs_volume *v, void *buf, uint32_t size)
{
    uint8_t *b = buf;
    le64_put(b + offsetof(struct cfs_mhdr_disk, seq), v->j_seq);
    /* The fencing token of the lock this was written under. */
    uint32_t slot, gen;
    uint64_t ver;
    cfs_locks_token(v, &slot, &gen, &ver);
    le32_put(b + offsetof(struct cfs_mhdr_disk, fence_slot), slot);
    le32_put(b + offsetof(struct cfs_mhdr_disk, fence_gen), gen);
    le64_put(b + offsetof(struct cfs_mhdr_disk, fence_ver), ver);
    cfs_block_seal(buf, size);
}

int cfs_journal_format(struct lun *lun, const struct cfs_super *sb, uint32_t slot)
{
    uint8_t *buf = calloc(1, 2 * CFS_META);
    if (!buf)
        return -ENOMEM;
    uint64_t joff = j_off_of(sb, slot);
    struct cfs_jhead jh = {.slot = slot, .tail_seq = 1, .tail_pos = 0};
    memcpy(jh.h.uuid, sb->h.uuid, 16);
    jh.h.addr = joff;
    cfs_jhead_encode(buf, &jh);
    struct cfs_host *ho = calloc(1, sizeof(*ho));
    if (!ho) {
        free(buf);
        return -ENOMEM;
    }
    ho->slot = slot;
    memcpy(ho->h.uuid, sb->h.uuid, 16);
    ho->h.addr = joff + CFS_META;
    cfs_host_encode(buf + CFS_META, ho);
    free(ho);
    int r = cfs_dev_write_lun(lun, joff, buf, 2 * CFS_META);
    free(buf);
    return r;
}

static int jhead_write(struct lun *lun, const struct cfs_super *sb, uint32_t slot, uint64_t seq,
                       uint64_t pos)
{
    uint8_t *buf = aligned_alloc(4096, CFS_META);
    if (!buf)
        return -ENOMEM;
    uint64_t joff = j_off_of(sb, slot);
    struct cfs_jhead jh = {.slot = slot, .tail_seq = seq, .tail_pos = pos};
    memcpy(jh.h.uuid, sb->h.uuid, 16);
    jh.h.addr = joff;
    jh.h.seq = seq;
    cfs_jhead_encode(buf, &jh);
    int r = cfs_dev_write_lun(lun, joff, buf, CFS_META);
    free(buf);
    return r;
}

/* One transaction read back from the ring. */
struct jtxn {
    uint8_t *body; /* descriptors and images, in ring order */
    uint64_t nblocks, cap;
    uint64_t nimg;
    uint64_t *addr;
    uint32_t *len;
    uint64_t *off; /* byte offset of image i in body */
};

static void jtxn_free(struct jtxn *t)
{
    free(t->body);
    free(t->addr);
    free(t->len);
    free(t->off);
    memset(t, 0, sizeof(*t));
}

static int jtxn_reserve(struct jtxn *t, uint64_t nb)
{
    if (t->nblocks + nb <= t->cap)
        return 0;
    uint64_t nc = MAX(t->cap * 2, t->nblocks + nb + 16);
    uint8_t *n = realloc(t->body, nc * CFS_META);
    if (!n)
        return -ENOMEM;
    t->body = n;
    t->cap = nc;
    return 0;
}

/* Read the transaction `seq` at ring position `pos`. Returns 1 and the
 * transaction's length in blocks if it is complete and verifies, 0 if not
 * (the end of the log), -errno on an I/O error. */
static int jtxn_read(struct lun *lun, const struct cfs_super *sb, uint32_t slot, uint64_t pos,
                     uint64_t seq, struct jtxn *t, uint64_t *len)
{
    uint64_t joff = j_off_of(sb, slot), ring = ring_of(sb);
    const uint8_t *uuid = sb->h.uuid;
    uint8_t *blk = aligned_alloc(4096, CFS_META);
    struct cfs_jdesc *d = malloc(sizeof(*d));
    int ret = 0;
    if (!blk || !d) {
        ret = -ENOMEM;
        goto out;
    }
    memset(t, 0, sizeof(*t));
    uint64_t p = pos;
    cfs_decode_quiet++;
    for (;;) {
        if (t->nblocks + 1 > ring)
            break;
        int r = ring_io(lun, joff, ring, p, blk, 1, false);
        if (r < 0) {
            ret = r;
            break;
        }
        uint64_t a = ring_addr(joff, p % ring);
        if (cfs_jdesc_decode(blk, uuid, a, d) == 0 && d->h.seq == seq) {
            uint64_t nimg_blocks = 0;
            for (uint32_t i = 0; i < d->nrec; i++)
                nimg_blocks += d->len[i] / CFS_META;
            if (t->nblocks + 1 + nimg_blocks + 1 > ring)
                break;
            if ((r = jtxn_reserve(t, 1 + nimg_blocks)) < 0) {
                ret = r;
                break;
            }
            memcpy(t->body + t->nblocks * CFS_META, blk, CFS_META);
            uint64_t img0 = t->nblocks + 1;
            r = ring_io(lun, joff, ring, p + 1, t->body + img0 * CFS_META, nimg_blocks, false);
            if (r < 0) {
                ret = r;
                break;
            }
            uint64_t *na = realloc(t->addr, (t->nimg + d->nrec) * sizeof(uint64_t));
            uint32_t *nl = na ? realloc(t->len, (t->nimg + d->nrec) * sizeof(uint32_t)) : NULL;
            uint64_t *no = nl ? realloc(t->off, (t->nimg + d->nrec) * sizeof(uint64_t)) : NULL;
            if (na)
                t->addr = na;
            if (nl)
                t->len = nl;
            if (!no) {
                ret = -ENOMEM;
                break;
            }
            t->off = no;
            uint64_t o = img0 * CFS_META;
            for (uint32_t i = 0; i < d->nrec; i++) {
                t->addr[t->nimg] = d->addr[i];
                t->len[t->nimg] = d->len[i];
                t->off[t->nimg] = o;
                o += d->len[i];
                t->nimg++;
            }
            t->nblocks += 1 + nimg_blocks;
            p += 1 + nimg_blocks;
            continue;
        }
        struct cfs_jcommit c;
        if (t->nblocks && cfs_jcommit_decode(blk, uuid, a, &c) == 0 && c.h.seq == seq &&
            c.nblocks == t->nblocks && c.body_crc == crc32c(t->body, t->nblocks * CFS_META)) {
            *len = t->nblocks + 1;
            ret = 1;
        }
        break;
    }
    cfs_decode_quiet--;
out:
    free(blk);
    free(d);
    if (ret != 1)
        jtxn_free(t);
    return ret;
}

int cfs_journal_pending(struct lun *lun, const struct cfs_super *sb, uint32_t slot, uint64_t *ntxn)
{
    return cfs_journal_replay(lun, sb, slot, false, ntxn, NULL, NULL);
}

int cfs_journal_replay(struct lun *lun, const struct cfs_super *sb, uint32_t slot, bool apply,
                       uint64_t *ntxn, uint64_t *end_pos, uint64_t *end_seq)
{
    uint64_t joff = j_off_of(sb, slot), ring = ring_of(sb);
    uint8_t *blk = aligned_alloc(4096, CFS_META);
    if (!blk)
        return -ENOMEM;
    struct cfs_jhead jh;
    int r = cfs_dev_read_lun(lun, joff, blk, CFS_META);
    if (r == 0)
        r = cfs_jhead_decode(blk, sb->h.uuid, joff, &jh);
    free(blk);
    if (r < 0) {
        log_err("%s: journal of host slot %u at byte %" PRIu64 ": unreadable header (%s)",
                lun_name(lun), slot, joff, strerror(-r));
        return r == -ENODATA || r == -ESTALE ? -EUCLEAN : r;
    }
    uint64_t pos = jh.tail_pos % ring, seq = jh.tail_seq, n = 0;
    for (;;) {
        struct jtxn t = {0};
        uint64_t len;
        r = jtxn_read(lun, sb, slot, pos, seq, &t, &len);
        if (r <= 0)
            break;
        for (uint64_t i = 0; apply && i < t.nimg && r >= 0; i++)
            r = cfs_dev_write_lun(lun, t.addr[i], t.body + t.off[i], t.len[i]);
        jtxn_free(&t);
        if (r < 0)
            break;
        pos = (pos + len) % ring;
        seq++;
        n++;
    }
    if (r < 0) {
        log_err("%s: replay of host slot %u's journal failed: %s", lun_name(lun), slot,
                strerror(-r));
        return r;
    }
    if (apply) {
        /* Home writes durable, then the journal empty: replaying it again
         * later could revert what other hosts wrote since. */
        r = lun_flush(lun);
        if (r == 0 && (n || jh.tail_pos != pos))
            r = jhead_write(lun, sb, slot, seq, pos);
        if (r == 0)
            r = lun_flush(lun);
        if (r < 0)
            return r;
        if (n)
            log_info("%s: replayed %" PRIu64 " transaction(s) of host slot %u's journal",
                     lun_name(lun), n, slot);
    }
    if (ntxn)
        *ntxn = n;
    if (end_pos)
        *end_pos = pos;
    if (end_seq)
        *end_seq = seq;
    return 0;
}

int cfs_journal_open(struct cfs_volume *v, bool replay)
{
    struct lun *lun = v->lun;
    v->j_off = j_off_of(&v->sb, v->slot);
    v->j_ring = ring_of(&v->sb);
    uint64_t n, pos, seq;
    int r = cfs_journal_replay(lun, &v->sb, v->slot, replay, &n, &pos, &seq);
    if (r < 0)
        return r;
    if (n && !replay)
        log_warn("%s: journal of host slot %u holds %" PRIu64
                 " committed transaction(s) not yet replayed (read-only open)",
                 lun_name(lun), v->slot, n);
    v->j_head = pos;
    v->j_seq = seq;
    v->j_used = 0;
    uint8_t *blk = aligned_alloc(4096, CFS_META);
    if (!blk)
        return -ENOMEM;
    /* The host block (orphan list), as replay left it. */
    r = cfs_dev_read(v, v->j_off + CFS_META, blk, CFS_META);
    if (r == 0)
        r = cfs_host_decode(blk, v->uuid, v->j_off + CFS_META, &v->host);
    free(blk);
    if (r < 0) {
        log_err("%s: host block of slot %u unreadable (%s)", lun_name(lun), v->slot, strerror(-r));
        return r == -ENODATA || r == -ESTALE ? -EUCLEAN : r;
    }
    return 0;
}

int cfs_journal_checkpoint(struct cfs_volume *v)
{
    int r = lun_flush(v->lun);
    if (r == 0)
        r = jhead_write(v->lun, &v->sb, v->slot, v->j_seq, v->j_head);
    if (r == 0)
        r = lun_flush(v->lun);
    if (r < 0) {
        log_err("%s: journal checkpoint failed: %s", lun_name(v->lun), strerror(-r));
        return r;
    }
    v->j_used = 0;
    return 0;
}

static int set_fatal(struct cfs_volume *v, int r, const char *what)
{
    log_err("%s: %s failed (%s): no more changes are accepted on this volume; it is consistent "
            "on disk up to the last commit",
            lun_name(v->lun), what, strerror(-r));
    v->fatal = r;
    return r;
}

int cfs_txn_commit(struct cfs_volume *v)
{
    if (v->fatal)
        return v->fatal;
    if (v->ro)
        return 0;
    /* Inodes and the host block into their block images. */
    while (v->dirty_inodes) {
        struct cfs_inode *ip = v->dirty_inodes;
        v->dirty_inodes = ip->dnext;
        ip->dnext = NULL;
        v->ndirty_inodes--;
        ip->dirty = false;
        struct cfs_buf *b;
        uint64_t a = ip->d.ino * CFS_INODE_SLOT + CFS_META;
        int r = cfs_buf_new(v, a, CFS_META, CFS_BT_INODE, &b);
        if (r < 0)
            return set_fatal(v, r, "commit");
        memcpy(ip->d.h.uuid, v->uuid, 16);
        ip->d.h.addr = a;
        cfs_inode_encode(b->data, &ip->d);
        cfs_buf_dirty(v, b);
        cfs_buf_put(v, b);
        cfs_inode_clean(v, ip);
    }
    if (v->host_dirty) {
        struct cfs_buf *b;
        int r = cfs_buf_new(v, v->j_off + CFS_META, CFS_META, CFS_BT_HOST, &b);
        if (r < 0)
            return set_fatal(v, r, "commit");
        memcpy(v->host.h.uuid, v->uuid, 16);
        v->host.h.addr = v->j_off + CFS_META;
        v->host.slot = v->slot;
        cfs_host_encode(b->data, &v->host);
        cfs_buf_dirty(v, b);
        cfs_buf_put(v, b);
        v->host_dirty = false;
    }
    if (!v->ndirty) {
        cfs_addrset_clear(&v->freed);
        v->nunmaps = 0;
        return 0;
    }
    /* Lay out: [desc, images...]... commit. */
    uint64_t ndesc = DIV_ROUND_UP(v->ndirty, CFS_JDESC_MAX);
    uint64_t body = ndesc + v->dirty_bytes / CFS_META;
    uint64_t total = body + 1;
    if (total > v->j_ring)
        return set_fatal(v, -EFBIG, "commit (transaction larger than the journal)");
    if (v->j_used + total > v->j_ring) {
        int r = cfs_journal_checkpoint(v);
        if (r < 0)
            return set_fatal(v, r, "checkpoint");
    }
    uint8_t *jb = aligned_alloc(4096, total * CFS_META);
    struct cfs_jdesc *d = malloc(sizeof(*d));
    struct cfs_buf **list = malloc(v->ndirty * sizeof(*list));
    if (!jb || !d || !list) {
        free(jb);
        free(d);
        free(list);
        return set_fatal(v, -ENOMEM, "commit");
    }
    unsigned n = 0;
    for (struct cfs_buf *b = v->dirty_bufs; b; b = b->dnext)
        list[n++] = b;
    uint64_t o = 0;
    for (unsigned i = 0; i < n;) {
        unsigned k = MIN(n - i, CFS_JDESC_MAX);
        memset(d, 0, sizeof(*d));
        memcpy(d->h.uuid, v->uuid, 16);
        d->h.addr = ring_addr(v->j_off, (v->j_head + o) % v->j_ring);
        d->h.seq = v->j_seq;
        d->nrec = k;
        for (unsigned x = 0; x < k; x++) {
            d->addr[x] = list[i + x]->addr;
            d->len[x] = list[i + x]->size;
        }
        cfs_jdesc_encode(jb + o * CFS_META, d);
        o++;
        for (unsigned x = 0; x < k; x++) {
            struct cfs_buf *b = list[i + x];
            cfs_txn_stamp(v, b->data, b->size);
            memcpy(jb + o * CFS_META, b->data, b->size);
            o += b->size / CFS_META;
        }
        i += k;
    }
    struct cfs_jcommit c = {0};
    memcpy(c.h.uuid, v->uuid, 16);
    c.h.addr = ring_addr(v->j_off, (v->j_head + body) % v->j_ring);
    c.h.seq = v->j_seq;
    c.nblocks = (uint32_t)body;
    c.body_crc = crc32c(jb, body * CFS_META);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c.commit_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    cfs_jcommit_encode(jb + body * CFS_META, &c);

    int r = ring_io(v->lun, v->j_off, v->j_ring, v->j_head, jb, body, true);
    if (r == 0)
        r = lun_flush(v->lun);
    if (r == 0)
        r = ring_io(v->lun, v->j_off, v->j_ring, v->j_head + body, jb + body * CFS_META, 1, true);
    if (r == 0)
        r = lun_flush(v->lun);
    free(jb);
    free(d);
    if (r < 0) {
        free(list);
        return set_fatal(v, r, "journal commit");
    }
    v->j_head = (v->j_head + total) % v->j_ring;
    v->j_used += total;
    v->j_seq++;
    v->j_commits++;
    /* Home writes. */
    for (unsigned i = 0; i < n && r == 0; i++)
        r = cfs_dev_write(v, list[i]->addr, list[i]->data, list[i]->size);
    for (unsigned i = 0; i < n; i++) {
        list[i]->dirty = false;
        list[i]->dnext = NULL;
        cfs_buf_put(v, list[i]);
    }
    free(list);
    v->dirty_bufs = NULL;
    v->ndirty = 0;
    v->dirty_bytes = 0;
    cfs_addrset_clear(&v->freed);
    if (v->unmap)
        for (size_t i = 0; i < v->nunmaps; i++)
            lun_unmap(v->lun, v->unmaps[i] / v->lbs, v->bs / v->lbs); /* best effort */
    v->nunmaps = 0;
    if (r < 0)
        return set_fatal(v, r, "home write after commit");
    return 0;
}

int cfs_txn_maybe_commit(struct cfs_volume *v)
{
    if (v->dirty_bytes + (uint64_t)v->ndirty_inodes * CFS_META >= TXN_SOFT_LIMIT ||
        (v->dirty_bytes + (uint64_t)v->ndirty_inodes * CFS_META) / CFS_META + 64 >= v->j_ring / 4)
        return cfs_txn_commit(v);
    return 0;
}
