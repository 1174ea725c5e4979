/* The volume as a whole: format, superblock, open / close, statfs, sync.
 *
 * Design notes
 * ------------
 * - Format writes a fixed, small set of blocks whatever the size: two
 *   superblocks, the lockspace, each host's journal header and host block,
 *   the first resource cluster's header and the root directory's inode.
 *   Every other cluster is laid out the first time a host allocates from it
 *   (its header is then written through the journal like any metadata): a
 *   header that reads as zeroes, or carries another volume's UUID, is a
 *   cluster never used. So a 1 TiB volume formats in the time of a few
 *   dozen small writes, as VMFS-6 grows its resource files on demand.
 * - A forced format first zeroes both superblocks and flushes, and writes
 *   superblock B then A last: a crash in the middle leaves no superblock
 *   that describes half-written regions.
 * - Open reads superblock A and falls back to B (logging why A was
 *   refused); it refuses an unknown incompat feature, a newer major
 *   version, a LUN whose block size differs from the one formatted.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cfs_internal.h"
#include "le.h"
#include "lockspace.h"
#include "log.h"
#include "lun.h"
#include "util.h"

int cfs_dev_read_lun(struct lun *lun, uint64_t addr, void *buf, size_t len)
{
    uint32_t lbs = lun_block_size(lun);
    if (addr % lbs || len % lbs)
        return -EINVAL;
    return lun_read(lun, addr / lbs, (uint32_t)(len / lbs), buf);
}

int cfs_dev_write_lun(struct lun *lun, uint64_t addr, const void *buf, size_t len)
{
    uint32_t lbs = lun_block_size(lun);
    if (addr % lbs || len % lbs)
        return -EINVAL;
    return lun_write(lun, addr / lbs, (uint32_t)(len / lbs), buf, 0);
}

int cfs_dev_read(struct cfs_volume *v, uint64_t addr, void *buf, size_t len)
{
    int r = cfs_dev_read_lun(v->lun, addr, buf, len);
    if (r < 0)
        log_err("%s: read of %zu bytes at byte %" PRIu64 " failed: %s", lun_name(v->lun), len, addr,
                strerror(-r));
    return r;
}

int cfs_dev_write(struct cfs_volume *v, uint64_t addr, const void *buf, size_t len)
{
    if (v->ro)
        return -EROFS;
    int r = cfs_locks_check_write(v); /* a fenced host writes nothing */
    if (r < 0) {
        log_err("%s: write at byte %" PRIu64 " refused: this host is fenced", lun_name(v->lun),
                addr);
        return r;
    }
    r = cfs_dev_write_lun(v->lun, addr, buf, len);
    if (r < 0)
        log_err("%s: write of %zu bytes at byte %" PRIu64 " failed: %s", lun_name(v->lun), len,
                addr, strerror(-r));
    return r;
}

/* Read superblock A, else B. *which = 0 (A) or 1 (B). */
int cfs_super_read(struct lun *lun, struct cfs_super *sb, int *which)
{
    uint8_t *buf = malloc(CFS_META);
    if (!buf)
        return -ENOMEM;
    int ra = cfs_dev_read_lun(lun, 0, buf, CFS_META);
    if (ra == 0)
        ra = cfs_super_decode(buf, 0, sb);
    if (ra == 0) {
        if (which)
            *which = 0;
        free(buf);
        return 0;
    }
    int rb = cfs_dev_read_lun(lun, CFS_SUPER_B_OFF, buf, CFS_META);
    if (rb == 0)
        rb = cfs_super_decode(buf, CFS_SUPER_B_OFF, sb);
    free(buf);
    if (rb == 0) {
        log_warn("%s: superblock A unusable (%s); using superblock B at byte %u", lun_name(lun),
                 strerror(-ra), CFS_SUPER_B_OFF);
        if (which)
            *which = 1;
        return 0;
    }
    return ra;
}

static bool looks_like_lockspace(const uint8_t *b)
{
    return b[0] == 'C' && b[1] == 'F' && b[2] == 'L' && b[3] == 'S';
}

int cfs_format(struct lun *lun, const struct cfs_format_params *p)
{
    const struct lun_info *li = lun_get_info(lun);
    const char *ln = lun_name(lun);
    uint32_t lbs = li->block_size;
    uint64_t lun_bytes = li->num_blocks * (uint64_t)lbs;
    uint32_t bs = p->block_size ? p->block_size : CFS_BLOCK_DEFAULT;
    uint32_t hosts = p->max_hosts ? p->max_hosts : CFS_HOSTS_DEFAULT;
    uint64_t jbytes = p->journal_bytes ? p->journal_bytes : CFS_JOURNAL_DEFAULT;
    if (bs < CFS_BLOCK_MIN || bs > CFS_BLOCK_MAX || (bs & (bs - 1))) {
        log_err("%s: block size %u not supported (64 KiB .. 1 MiB, a power of two)", ln, bs);
        return -EINVAL;
    }
    if (hosts > CFS_HOSTS_MAX) {
        log_err("%s: --max-hosts %u: at most %u", ln, hosts, CFS_HOSTS_MAX);
        return -EINVAL;
    }
    if (jbytes < CFS_JOURNAL_MIN || jbytes % CFS_META) {
        log_err("%s: journal size %" PRIu64 " bytes: at least %u, a multiple of 4 KiB", ln, jbytes,
                CFS_JOURNAL_MIN);
        return -EINVAL;
    }
    if (p->label && strlen(p->label) > 63) {
        log_err("%s: label '%s' longer than 63 bytes", ln, p->label);
        return -EINVAL;
    }

    uint8_t *buf = calloc(1, 2 * CFS_SMALL);
    if (!buf)
        return -ENOMEM;
    int r = cfs_dev_read_lun(lun, 0, buf, 2 * CFS_META);
    if (r < 0) {
        log_err("%s: cannot read the first blocks: %s", ln, strerror(-r));
        goto out;
    }
    if (!p->force) {
        struct cfs_super old;
        bool ma = le32_get(buf) == CFS_MAGIC, mb = le32_get(buf + CFS_META) == CFS_MAGIC;
        if (ma || mb) {
            bool ok = (ma && cfs_super_decode(buf, 0, &old) == 0) ||
                      (mb && cfs_super_decode(buf + CFS_META, CFS_SUPER_B_OFF, &old) == 0);
            if (ok)
                log_err("%s: already holds a clusterfs volume (label '%s', uuid "
                        "%02x%02x%02x%02x...); use --force to overwrite it",
                        ln, old.label, old.h.uuid[0], old.h.uuid[1], old.h.uuid[2], old.h.uuid[3]);
            else
                log_err("%s: holds a damaged clusterfs volume (see above; 'clusterfs check' "
                        "may repair it); use --force to overwrite it",
                        ln);
            r = -EEXIST;
            goto out;
        }
        if (looks_like_lockspace(buf)) {
            log_err("%s: holds a lockspace at block 0 (clusterfs locks init); use --force to "
                    "overwrite it",
                    ln);
            r = -EEXIST;
            goto out;
        }
    }

    struct ls_format_params lp = {
        .io_timeout_ms = p->io_timeout_ms, .max_hosts = hosts, .max_locks = 16};
    struct ls_timeouts lt;
    if (ls_timeouts_derive(p->io_timeout_ms ? p->io_timeout_ms : LS_DEFAULT_IO_TIMEOUT_MS, &lt) <
        0) {
        log_err("%s: io timeout %u ms out of range", ln, p->io_timeout_ms);
        r = -EINVAL;
        goto out;
    }
    struct cfs_super sb = {0};
    sb.version_minor = CFS_VERSION_MINOR;
    sb.feat_incompat = CFS_FEAT_INCOMPAT_SUPP;
    snprintf(sb.label, sizeof(sb.label), "%s", p->label ? p->label : "");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sb.created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    sb.lun_block_size = lbs;
    sb.block_size = bs;
    sb.small_size = CFS_SMALL;
    sb.inode_size = CFS_INODE_SLOT;
    sb.max_hosts = hosts;
    sb.io_timeout_ms = lt.io_timeout_ms;
    sb.ls_off = CFS_LS_OFF;
    sb.ls_bytes = ROUND_UP(lockspace_size_blocks(&lp) * lbs, 65536ull);
    sb.journal_off = ROUND_UP(sb.ls_off + sb.ls_bytes, 1ull << 20);
    sb.journal_bytes = jbytes;
    sb.data_off = ROUND_UP(sb.journal_off + jbytes * hosts, (uint64_t)bs);
    sb.cluster_blocks = CFS_CLUSTER_BLOCKS;
    uint64_t need = sb.data_off + 4ull * bs;
    if (lun_bytes < need) {
        char have_s[32], need_s[32];
        log_err("%s: too small for a volume: %s, needs at least %s (%u host journals of %" PRIu64
                " KiB + 4 blocks of %u KiB); try a smaller --max-hosts",
                ln, format_size(lun_bytes, have_s, sizeof(have_s)),
                format_size(need, need_s, sizeof(need_s)), hosts, jbytes >> 10, bs >> 10);
        r = -ENOSPC;
        goto out;
    }
    uint64_t nblocks = (lun_bytes - sb.data_off) / bs;
    uint64_t cl_bytes = (uint64_t)CFS_CLUSTER_BLOCKS * bs;
    sb.nclusters = DIV_ROUND_UP(nblocks, CFS_CLUSTER_BLOCKS);
    if (nblocks % CFS_CLUSTER_BLOCKS == 1)
        sb.nclusters--; /* a last cluster of one block would hold only its header */
    sb.volume_bytes = sb.data_off + nblocks * bs;
    (void)cl_bytes;
    sb.super_gen = 1;
    if (getrandom(sb.h.uuid, 16, 0) != 16) {
        r = -EIO;
        goto out;
    }

    /* Invalidate old superblocks first. */
    memset(buf, 0, 2 * CFS_META);
    r = cfs_dev_write_lun(lun, 0, buf, 2 * CFS_META);
    if (r == 0)
        r = lun_flush(lun);
    if (r < 0) {
        log_err("%s: cannot write the superblocks: %s%s", ln, strerror(-r),
                r == -EBADE ? " (a persistent reservation excludes this initiator: hosts are "
                              "still registered, or left their reservation behind)"
                            : "");
        goto out;
    }
    r = lockspace_format(lun, sb.ls_off / lbs, &lp);
    if (r < 0)
        goto out;
    for (uint32_t s = 0; s < hosts && r == 0; s++)
        r = cfs_journal_format(lun, &sb, s);
    if (r < 0) {
        log_err("%s: cannot write the host journals: %s", ln, strerror(-r));
        goto out;
    }
    r = cfs_cluster_format_first(lun, &sb, &sb.root_ino);
    if (r < 0) {
        log_err("%s: cannot write the first resource cluster: %s", ln, strerror(-r));
        goto out;
    }
    r = lun_flush(lun);
    if (r < 0)
        goto out;
    cfs_super_encode(buf, &sb);
    uint8_t *b2 = buf + CFS_SMALL;
    struct cfs_super sbb = sb;
    sbb.h.addr = CFS_SUPER_B_OFF;
    cfs_super_encode(b2, &sbb);
    r = cfs_dev_write_lun(lun, CFS_SUPER_B_OFF, b2, CFS_META);
    if (r == 0)
        r = lun_flush(lun);
    if (r == 0)
        r = cfs_dev_write_lun(lun, 0, buf, CFS_META);
    if (r == 0)
        r = lun_flush(lun);
    if (r < 0)
        log_err("%s: cannot write the superblocks: %s", ln, strerror(-r));
out:
    free(buf);
    return r;
}

/* ---- open / close ---------------------------------------------------------- */

static void *commit_thread(void *arg)
{
    struct cfs_volume *v = arg;
    pthread_mutex_lock(&v->mtx);
    while (!v->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ms = v->opts.commit_interval_ms;
        ts.tv_sec += (time_t)(ms / 1000);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&v->cond, &v->mtx, &ts);
        if (v->stop)
            break;
        if (!v->fatal && (v->ndirty || v->ndirty_inodes || v->host_dirty))
            cfs_txn_commit(v);
    }
    pthread_mutex_unlock(&v->mtx);
    return NULL;
}

int cfs_volume_open(struct lun *lun, const struct cfs_open_opts *o, struct cfs_volume **out)
{
    const char *ln = lun_name(lun);
    struct cfs_open_opts opts = {0};
    if (o)
        opts = *o;
    if (!opts.commit_interval_ms)
        opts.commit_interval_ms = 1000;
    if (!opts.cache_bytes)
        opts.cache_bytes = 64ull << 20;
    struct cfs_volume *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->lun = lun;
    v->opts = opts;
    v->ro = opts.read_only;
    pthread_mutex_init(&v->mtx, NULL);
    pthread_cond_init(&v->cond, NULL);
    int r = cfs_super_read(lun, &v->sb, NULL);
    if (r < 0) {
        log_err("%s: no usable clusterfs superblock (%s)", ln, strerror(-r));
        goto fail;
    }
    const struct cfs_super *sb = &v->sb;
    if (sb->feat_incompat & ~CFS_FEAT_INCOMPAT_SUPP) {
        log_err("%s: volume uses features this build does not know (incompat 0x%x)", ln,
                sb->feat_incompat & ~CFS_FEAT_INCOMPAT_SUPP);
        r = -EPROTO;
        goto fail;
    }
    if ((sb->feat_ro_compat & ~CFS_FEAT_RO_COMPAT_SUPP) && !v->ro) {
        log_err("%s: volume uses read-only-compatible features this build does not know "
                "(0x%x): mount read-only",
                ln, sb->feat_ro_compat & ~CFS_FEAT_RO_COMPAT_SUPP);
        r = -EROFS;
        goto fail;
    }
    v->lbs = lun_block_size(lun);
    if (v->lbs != sb->lun_block_size) {
        log_err("%s: formatted with %u-byte blocks, the LUN now has %u-byte blocks", ln,
                sb->lun_block_size, v->lbs);
        r = -EINVAL;
        goto fail;
    }
    uint64_t lun_bytes = lun_get_info(lun)->num_blocks * (uint64_t)v->lbs;
    if (lun_bytes < sb->volume_bytes) {
        log_err("%s: LUN is %" PRIu64 " bytes, the volume %" PRIu64 " bytes: LUN shrunk?", ln,
                lun_bytes, sb->volume_bytes);
        r = -EINVAL;
        goto fail;
    }
    memcpy(v->uuid, sb->h.uuid, 16);
    v->bs = sb->block_size;
    v->bshift = (unsigned)__builtin_ctz(v->bs);
    v->spp = v->bs / CFS_SMALL;
    v->cl_bytes = (uint64_t)CFS_CLUSTER_BLOCKS * v->bs;
    v->unmap = lun_get_info(lun)->caps.unmap;
    v->slot = opts.slot;
    if (v->slot >= sb->max_hosts) {
        log_err("%s: journal slot %u: the volume has %u host slots", ln, v->slot, sb->max_hosts);
        r = -EINVAL;
        goto fail;
    }
    r = cfs_buf_init(v);
    if (r == 0)
        r = cfs_alloc_init(v);
    bool multi = !opts.local && !v->ro;
    if (r == 0 && multi && (r = cfs_locks_join(v)) < 0)
        log_err("%s: cannot join the volume's lockspace: %s", ln, strerror(-r));
    if (r < 0)
        goto fail;
    /* With several hosts the journal and the orphans are handled under
     * the metadata lock. */
    if (multi && (r = cfs_op_begin(v)) < 0)
        goto fail_leave;
    r = cfs_journal_open(v, !v->ro);
    if (r == 0 && !v->ro) {
        pthread_mutex_lock(&v->mtx);
        r = cfs_orphans_process(v);
        if (r == 0)
            r = cfs_txn_commit(v);
        pthread_mutex_unlock(&v->mtx);
    }
    if (multi)
        cfs_op_end(v);
    if (r < 0)
        goto fail_leave;
    /* Several hosts: every operation commits before it releases the lock. */
    if (!v->ro && !multi && pthread_create(&v->thr, NULL, commit_thread, v) == 0)
        v->thr_started = true;
    *out = v;
    return 0;
fail_leave:
    cfs_locks_leave(v);
fail:
    cfs_inode_fini(v);
    cfs_alloc_fini(v);
    cfs_buf_fini(v);
    pthread_mutex_destroy(&v->mtx);
    pthread_cond_destroy(&v->cond);
    free(v);
    return r;
}

int cfs_volume_close(struct cfs_volume *v)
{
    if (!v)
        return 0;
    pthread_mutex_lock(&v->mtx);
    v->stop = true;
    pthread_cond_broadcast(&v->cond);
    pthread_mutex_unlock(&v->mtx);
    if (v->thr_started)
        pthread_join(v->thr, NULL);
    int r = 0;
    if (!v->ro) {
        int b = cfs_op_begin(v);
        pthread_mutex_lock(&v->mtx);
        r = v->fatal ? v->fatal : b;
        if (r == 0)
            r = cfs_txn_commit(v);
        if (r == 0)
            r = cfs_journal_checkpoint(v);
        pthread_mutex_unlock(&v->mtx);
        if (b == 0)
            cfs_op_end(v);
    }
    cfs_locks_leave(v);
    cfs_inode_fini(v);
    cfs_alloc_fini(v);
    cfs_buf_fini(v);
    free(v->unmaps);
    free(v->freed.slots);
    pthread_mutex_destroy(&v->mtx);
    pthread_cond_destroy(&v->cond);
    free(v);
    return r;
}

cfs_ino_t cfs_root(const struct cfs_volume *v)
{
    return v->sb.root_ino;
}

int cfsi_volume_info(struct cfs_volume *v, struct cfs_volume_info *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(out->label, v->sb.label, strnlen(v->sb.label, sizeof(out->label) - 1));
    memcpy(out->uuid, v->uuid, 16);
    out->version_major = CFS_VERSION_MAJOR;
    out->version_minor = v->sb.version_minor;
    out->feat_compat = v->sb.feat_compat;
    out->feat_incompat = v->sb.feat_incompat;
    out->feat_ro_compat = v->sb.feat_ro_compat;
    out->volume_bytes = v->sb.volume_bytes;
    out->block_size = v->bs;
    out->max_hosts = v->sb.max_hosts;
    out->io_timeout_ms = v->sb.io_timeout_ms;
    out->journal_bytes = v->sb.journal_bytes;
    out->nclusters = v->sb.nclusters;
    out->root = v->sb.root_ino;
    out->ls_offset_blocks = v->sb.ls_off / v->lbs;
    uint64_t fb, fs, fi, lo;
    pthread_mutex_lock(&v->mtx);
    int r = cfs_alloc_count(v, &fb, &fs, &fi, &lo);
    pthread_mutex_unlock(&v->mtx);
    if (r < 0)
        return r;
    out->free_bytes = fb * v->bs;
    out->clusters_laid_out = lo;
    return 0;
}

int cfsi_statfs(struct cfs_volume *v, struct statvfs *st)
{
    uint64_t fb, fs, fi, lo;
    pthread_mutex_lock(&v->mtx);
    int r = cfs_alloc_count(v, &fb, &fs, &fi, &lo);
    pthread_mutex_unlock(&v->mtx);
    if (r < 0)
        return r;
    memset(st, 0, sizeof(*st));
    st->f_bsize = v->bs;
    st->f_frsize = v->bs;
    uint64_t total = (v->sb.volume_bytes - v->sb.data_off) / v->bs;
    st->f_blocks = total - v->sb.nclusters; /* minus each cluster's header block */
    st->f_bfree = fb;
    st->f_bavail = fb;
    /* Every free file block can become a pool of inode slots. */
    st->f_files = st->f_blocks * v->spp;
    st->f_ffree = fb * v->spp + fi;
    st->f_favail = st->f_ffree;
    st->f_namemax = CFS_NAME_MAX;
    memcpy(&st->f_fsid, v->uuid, sizeof(st->f_fsid) < 8 ? sizeof(st->f_fsid) : 8);
    return 0;
}

int cfsi_sync(struct cfs_volume *v)
{
    pthread_mutex_lock(&v->mtx);
    int r = v->fatal;
    if (r == 0)
        r = cfs_txn_commit(v);
    if (r == 0)
        r = lun_flush(v->lun);
    pthread_mutex_unlock(&v->mtx);
    return r;
}

int cfs_volume_journal_pending(struct cfs_volume *v, uint32_t slot, uint64_t *ntxn)
{
    if (slot >= v->sb.max_hosts)
        return -EINVAL;
    return cfs_journal_pending(v->lun, &v->sb, slot, ntxn);
}

int cfs_cache_drop(struct cfs_volume *v)
{
    if (v->ndirty || v->ndirty_inodes || v->host_dirty)
        return -EBUSY;
    cfs_buf_drop_all(v);
    int r = cfs_alloc_reload(v);
    if (r == 0)
        r = cfs_inode_reload_all(v);
    return r;
}

int cfsi_volume_recover_slot(struct cfs_volume *v, uint32_t slot, uint64_t *ntxn)
{
    if (slot >= v->sb.max_hosts || slot == v->slot)
        return -EINVAL;
    pthread_mutex_lock(&v->mtx);
    int r = v->ro ? -EROFS : v->fatal;
    uint64_t n = 0;
    if (r == 0)
        r = cfs_txn_commit(v);
    if (r == 0)
        r = cfs_journal_replay(v->lun, &v->sb, slot, true, &n, NULL, NULL);
    if (r == 0)
        r = cfs_cache_drop(v);
    /* Its orphans: unlinked while open there, nobody has them open now. */
    uint64_t ha = v->sb.journal_off + (uint64_t)slot * v->sb.journal_bytes + CFS_META;
    struct cfs_buf *b = NULL;
    struct cfs_host *h = r == 0 ? malloc(sizeof(*h)) : NULL;
    if (r == 0 && !h)
        r = -ENOMEM;
    if (r == 0)
        r = cfs_buf_get(v, ha, CFS_META, CFS_BT_HOST, &b);
    if (r == 0) {
        r = cfs_host_decode(b->data, v->uuid, ha, h);
        cfs_buf_put(v, b);
    }
    for (uint32_t i = 0; r == 0 && i < h->norphans; i++) {
        struct cfs_inode *ip;
        if (cfs_inode_get(v, h->orphans[i], &ip) == 0)
            cfs_inode_put(v, ip); /* nlink 0 and no reference: freed */
    }
    if (r == 0 && h->norphans) {
        h->norphans = 0;
        memcpy(h->h.uuid, v->uuid, 16);
        h->h.addr = ha;
        if ((r = cfs_buf_new(v, ha, CFS_META, CFS_BT_HOST, &b)) == 0) {
            cfs_host_encode(b->data, h);
            cfs_buf_dirty(v, b);
            cfs_buf_put(v, b);
        }
    }
    free(h);
    if (r == 0)
        r = cfs_txn_commit(v);
    pthread_mutex_unlock(&v->mtx);
    if (r == 0 && ntxn)
        *ntxn = n;
    return r;
}
