/* Power cut at every write of a metadata workload (littlefs / sqlite
 * style): for cut = 1, 2, ... N (N = the writes of the whole workload), the
 * workload runs on a fault-injecting LUN that drops every write after the
 * cut-th; then the "machine restarts", the volume is opened (journal
 * replay), and
 *   - check finds it clean;
 *   - the tree is exactly the state after the last step whose fsync
 *     returned before the cut, or the state after the next step (whose
 *     commit may have landed while its fsync was in flight).
 * The same again with writes held back and reordered between flushes, as a
 * volatile write cache may. CFS_CRASH_STRIDE=k tests every k-th cut point
 * (default 1: every one).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cmocka.h>

#include "fault.h"
#include "log.h"
#include "lun.h"
#include "volume.h"

#define MiB (1ull << 20)
#define MAXE 256

/* The model: a flat list of paths. */
struct ment {
    char path[160];
    mode_t type;
    uint64_t size;
    uint8_t *data; /* size bytes (files), NULL for a hole-only / empty */
};
struct state {
    struct ment e[MAXE];
    unsigned n;
};

static struct ment *m_find(struct state *s, const char *path)
{
    for (unsigned i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].path, path))
            return &s->e[i];
    return NULL;
}

static void m_del(struct state *s, const char *path)
{
    struct ment *e = m_find(s, path);
    if (!e)
        return;
    free(e->data);
    *e = s->e[--s->n];
}

static struct ment *m_add(struct state *s, const char *path, mode_t type)
{
    struct ment *e = &s->e[s->n++];
    memset(e, 0, sizeof(*e));
    snprintf(e->path, sizeof(e->path), "%.150s", path);
    e->type = type;
    return e;
}

static void m_write(struct ment *e, const uint8_t *buf, uint64_t len, uint64_t off)
{
    if (off + len > e->size) {
        e->data = realloc(e->data, off + len);
        memset(e->data + e->size, 0, off + len - e->size);
        e->size = off + len;
    }
    memcpy(e->data + off, buf, len);
}

static void m_copy(struct state *dst, const struct state *src)
{
    dst->n = src->n;
    for (unsigned i = 0; i < src->n; i++) {
        dst->e[i] = src->e[i];
        if (src->e[i].data) {
            dst->e[i].data = malloc(src->e[i].size);
            memcpy(dst->e[i].data, src->e[i].data, src->e[i].size);
        }
    }
}

static void m_free(struct state *s)
{
    for (unsigned i = 0; i < s->n; i++)
        free(s->e[i].data);
    s->n = 0;
}

/* ---- the volume side --------------------------------------------------------- */

static int resolve(struct cfs_volume *v, const char *path, cfs_ino_t *parent, const char **leaf)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", path);
    cfs_ino_t cur = cfs_root(v);
    char *save, *tok = strtok_r(buf + 1, "/", &save), *next;
    while (tok && (next = strtok_r(NULL, "/", &save))) {
        struct cfs_attr a;
        int r = cfs_lookup(v, cur, tok, &a);
        if (r < 0)
            return r;
        cfs_forget(v, a.ino, 1);
        cur = a.ino;
        tok = next;
    }
    *parent = cur;
    *leaf = path + (tok - buf);
    return 0;
}

static void pattern(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 13 + (i >> 11));
}

#define NSTEPS 16

/* Run step k on the volume (if v) and on the model. Returns 0 or -errno. */
static int step(struct cfs_volume *v, struct state *m, unsigned k)
{
    static uint8_t buf[3 * MiB];
    cfs_ino_t p, p2;
    const char *leaf, *leaf2;
    struct cfs_attr a;
    struct cfs_file *fh;
    int r = 0;
#define DO(expr)                                                                                   \
    do {                                                                                           \
        if (v && (r = (expr)) < 0)                                                                 \
            return r;                                                                              \
    } while (0)
#define RES(path, pp, ll)                                                                          \
    do {                                                                                           \
        if (v && (r = resolve(v, path, &pp, &ll)) < 0)                                             \
            return r;                                                                              \
    } while (0)
    switch (k) {
    case 0:
        RES("/a", p, leaf);
        DO(cfs_mkdir(v, p, leaf, 0755, 0, 0, &a));
        m_add(m, "/a", S_IFDIR);
        break;
    case 1: {
        RES("/a/f1", p, leaf);
        pattern(buf, 2 * MiB + 100, 1);
        DO(cfs_create(v, p, leaf, 0644, O_RDWR, 0, 0, &a, &fh));
        if (v) {
            ssize_t w = cfs_write(fh, buf, 2 * MiB + 100, 0);
            cfs_release(fh);
            if (w < 0)
                return (int)w;
        }
        m_write(m_add(m, "/a/f1", S_IFREG), buf, 2 * MiB + 100, 0);
        break;
    }
    case 2:
        RES("/b", p, leaf);
        pattern(buf, 500, 2);
        DO(cfs_create(v, p, leaf, 0644, O_RDWR, 0, 0, &a, &fh));
        if (v) {
            ssize_t w = cfs_write(fh, buf, 500, 0);
            cfs_release(fh);
            if (w < 0)
                return (int)w;
        }
        m_write(m_add(m, "/b", S_IFREG), buf, 500, 0);
        break;
    case 3: /* across directories */
        RES("/a/f1", p, leaf);
        RES("/c", p2, leaf2);
        DO(cfs_rename(v, p, leaf, p2, leaf2, 0));
        snprintf(m_find(m, "/a/f1")->path, 64, "/c");
        break;
    case 4: /* truncate to a block boundary (no partial block zeroing) */
        RES("/c", p, leaf);
        if (v) {
            if ((r = cfs_lookup(v, p, leaf, &a)) < 0)
                return r;
            cfs_forget(v, a.ino, 1);
        }
        DO(cfs_truncate(v, a.ino, MiB));
        m_find(m, "/c")->size = MiB;
        break;
    case 5:
        RES("/a/sub", p, leaf);
        DO(cfs_mkdir(v, p, leaf, 0755, 0, 0, &a));
        m_add(m, "/a/sub", S_IFDIR);
        break;
    case 6:
        RES("/b", p, leaf);
        RES("/a/sub/b", p2, leaf2);
        DO(cfs_rename(v, p, leaf, p2, leaf2, 0));
        snprintf(m_find(m, "/b")->path, 64, "/a/sub/b");
        break;
    case 7:
        RES("/c", p, leaf);
        DO(cfs_unlink(v, p, leaf));
        m_del(m, "/c");
        break;
    case 8: /* sparse */
        RES("/d", p, leaf);
        pattern(buf, 5000, 8);
        DO(cfs_create(v, p, leaf, 0644, O_RDWR, 0, 0, &a, &fh));
        if (v) {
            ssize_t w = cfs_write(fh, buf, 5000, MiB);
            cfs_release(fh);
            if (w < 0)
                return (int)w;
        }
        m_write(m_add(m, "/d", S_IFREG), buf, 5000, MiB);
        break;
    case 9: /* rename over */
        RES("/d", p, leaf);
        RES("/a/sub/b", p2, leaf2);
        DO(cfs_rename(v, p, leaf, p2, leaf2, 0));
        m_del(m, "/a/sub/b");
        snprintf(m_find(m, "/d")->path, 64, "/a/sub/b");
        break;
    case 10:
        RES("/x", p, leaf);
        DO(cfs_mkdir(v, p, leaf, 0755, 0, 0, &a));
        DO(cfs_rmdir(v, p, leaf));
        RES("/fifo", p, leaf);
        DO(cfs_mknod(v, p, leaf, S_IFIFO | 0644, 0, 0, 0, &a));
        m_add(m, "/fifo", S_IFIFO);
        break;
    case 11: /* 150 entries: the directory splits */
        for (unsigned i = 0; i < 150; i++) {
            char path[64];
            snprintf(path, sizeof(path), "/a/n%u", i);
            RES(path, p, leaf);
            DO(cfs_mknod(v, p, leaf, S_IFREG | 0644, 0, 0, 0, &a));
            m_add(m, path, S_IFREG);
        }
        break;
    case 12: /* punch a whole block */
        RES("/a/sub/b", p, leaf);
        if (v) {
            if ((r = cfs_lookup(v, p, leaf, &a)) < 0)
                return r;
            if ((r = cfs_open(v, a.ino, O_RDWR, &fh)) < 0)
                return r;
            r = cfs_fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, MiB);
            cfs_release(fh);
            cfs_forget(v, a.ino, 1);
            if (r < 0)
                return r;
        }
        memset(m_find(m, "/a/sub/b")->data + MiB, 0, 5000);
        break;
    case 13:
        for (unsigned i = 0; i < 150; i += 2) {
            char path[64];
            snprintf(path, sizeof(path), "/a/n%u", i);
            RES(path, p, leaf);
            DO(cfs_unlink(v, p, leaf));
            m_del(m, path);
        }
        break;
    case 14:
        RES("/a/sub", p, leaf);
        RES("/sub2", p2, leaf2);
        DO(cfs_rename(v, p, leaf, p2, leaf2, 0));
        for (unsigned i = 0; i < m->n; i++)
            if (!strncmp(m->e[i].path, "/a/sub", 6)) {
                char t[64];
                snprintf(t, sizeof(t), "/sub2%s", m->e[i].path + 6);
                snprintf(m->e[i].path, 64, "%s", t);
            }
        break;
    case 15:
        RES("/a/n1", p, leaf);
        RES("/sub2/hard", p2, leaf2);
        if (v) {
            if ((r = cfs_lookup(v, p, leaf, &a)) < 0)
                return r;
            cfs_forget(v, a.ino, 1);
        }
        DO(cfs_link(v, a.ino, p2, leaf2, &a));
        m_add(m, "/sub2/hard", S_IFREG);
        break;
    }
    return 0;
#undef DO
#undef RES
}

struct cap {
    char name[64];
    cfs_ino_t ino;
    uint64_t off;
    int got;
};

static int cap_cb(void *ctx, const char *nm, cfs_ino_t i, unsigned dt, uint64_t o)
{
    struct cap *cc = ctx;
    if (cc->got)
        return 1;
    snprintf(cc->name, sizeof(cc->name), "%s", nm);
    cc->ino = i;
    cc->off = o;
    cc->got = 1;
    return 0;
}

/* The whole tree below dir, files with their contents. */
static int walk_tree(struct cfs_volume *v, cfs_ino_t dir, const char *prefix, struct state *out)
{
    struct {
        char name[64];
        cfs_ino_t ino;
    } ents[MAXE];
    unsigned n = 0;
    int r;
    uint64_t off = 0;
    for (;;) { /* one entry per call: resumes from cookies */
        struct cap c = {0};
        if ((r = cfs_readdir(v, dir, off, cap_cb, &c)) < 0)
            return r;
        if (!c.got)
            break;
        off = c.off;
        if (!strcmp(c.name, ".") || !strcmp(c.name, ".."))
            continue;
        if (n == MAXE)
            return -E2BIG;
        snprintf(ents[n].name, 64, "%s", c.name);
        ents[n++].ino = c.ino;
    }
    for (unsigned i = 0; i < n; i++) {
        char path[160];
        snprintf(path, sizeof(path), "%.60s/%.60s", prefix, ents[i].name);
        struct cfs_attr a;
        if ((r = cfs_getattr(v, ents[i].ino, &a)) < 0)
            return r;
        if (out->n == MAXE)
            return -E2BIG;
        struct ment *e = m_add(out, path, a.mode & S_IFMT);
        if (S_ISREG(a.mode) && a.size) {
            struct cfs_file *fh;
            if ((r = cfs_open(v, a.ino, O_RDONLY, &fh)) < 0)
                return r;
            e->data = malloc(a.size);
            e->size = a.size;
            ssize_t got = cfs_read(fh, e->data, a.size, 0);
            cfs_release(fh);
            if (got != (ssize_t)a.size)
                return got < 0 ? (int)got : -EIO;
        }
        if (S_ISDIR(a.mode) && (r = walk_tree(v, a.ino, path, out)) < 0)
            return r;
    }
    return 0;
}

static bool same(const struct state *want, const struct state *got)
{
    if (want->n != got->n)
        return false;
    for (unsigned i = 0; i < want->n; i++) {
        const struct ment *w = &want->e[i], *g = NULL;
        for (unsigned j = 0; j < got->n; j++)
            if (!strcmp(got->e[j].path, w->path))
                g = &got->e[j];
        if (!g || g->type != w->type)
            return false;
        if (w->type == S_IFREG) {
            if (g->size != w->size)
                return false;
            for (uint64_t b = 0; b < w->size; b++) {
                uint8_t wb = w->data ? w->data[b] : 0, gb = g->data ? g->data[b] : 0;
                if (wb != gb)
                    return false;
            }
        }
    }
    return true;
}

static void describe(const char *what, const struct state *s)
{
    fprintf(stderr, "%s (%u entries):", what, s->n);
    for (unsigned i = 0; i < s->n && i < 12; i++)
        fprintf(stderr, " %s(%llu)", s->e[i].path, (unsigned long long)s->e[i].size);
    fprintf(stderr, "\n");
}

static void print_problem(void *ctx, const char *what, const char *msg, bool fixed)
{
    fprintf(stderr, "check: %s: %s\n", what, msg);
}

struct fx {
    char path[64];
    struct state snap[NSTEPS + 1];
};

/* One run with a power cut after `cut` writes (0 = never). Returns the
 * number of writes the workload issued (for cut 0), fails the test on a
 * bad outcome. */
static uint64_t run_once(struct fx *f, unsigned cut, unsigned reorder)
{
    struct lun_options o;
    lun_options_init(&o);
    struct lun *plain;
    assert_int_equal(lun_open(f->path, &o, &plain), 0);
    struct cfs_format_params fp = {.max_hosts = 2, .journal_bytes = 4 * MiB, .force = true};
    assert_int_equal(cfs_format(plain, &fp), 0);
    lun_close(plain);

    struct lun *lun;
    struct lun_fault *ctl;
    assert_int_equal(lun_open_fault(f->path, &o, &lun, &ctl), 0);
    struct cfs_volume *v;
    struct cfs_open_opts oo = {.local = true, .commit_interval_ms = 3600 * 1000};
    assert_int_equal(cfs_volume_open(lun, &oo, &v), 0);
    struct lun_fault_stats st0, st1;
    lun_fault_get_stats(ctl, &st0);
    if (reorder)
        lun_fault_set_reorder(ctl, reorder);
    if (cut)
        lun_fault_power_cut(ctl, cut);
    unsigned acked = 0;
    int saved = log_get_level();
    if (cut)
        log_set_level(LOG_LVL_ERR);
    for (unsigned k = 0; k < NSTEPS; k++) {
        static struct state scratch;
        m_copy(&scratch, &f->snap[k]);
        int sr = step(v, &scratch, k);
        m_free(&scratch);
        if (sr < 0)
            break;
        if (cfs_sync(v) < 0)
            break;
        if (!cut || !lun_fault_power_is_cut(ctl))
            acked = k + 1;
    }
    lun_fault_get_stats(ctl, &st1);
    cfs_volume_close(v); /* its writes are dropped after the cut */
    log_set_level((enum log_level)saved);
    if (!cut) {
        assert_int_equal(acked, NSTEPS);
        lun_close(lun);
        return st1.issued_writes - st0.issued_writes;
    }
    assert_int_equal(lun_fault_restart(ctl), 0);
    assert_int_equal(cfs_volume_open(lun, &oo, &v), 0);
    struct cfs_check_report rep;
    int cr = cfs_check(v, 0, print_problem, NULL, &rep);
    struct state got = {0};
    int wr = walk_tree(v, cfs_root(v), "", &got);
    bool ok = wr == 0 &&
              (same(&f->snap[acked], &got) || (acked < NSTEPS && same(&f->snap[acked + 1], &got)));
    if (cr != 0 || !ok) {
        fprintf(stderr, "cut after write %u (reorder %u): check %d, walk %d, acked %u steps\n", cut,
                reorder, cr, wr, acked);
        describe("found", &got);
        describe("expected", &f->snap[acked]);
    }
    m_free(&got);
    assert_int_equal(cr, 0);
    assert_true(ok);
    assert_int_equal(cfs_volume_close(v), 0);
    lun_close(lun);
    return 0;
}

static void power_cut_every_write(unsigned reorder)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->path, sizeof(f->path), "%s/test-crash-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    int fd = mkstemp(f->path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 160 * MiB), 0);
    close(fd);
    for (unsigned k = 0; k < NSTEPS; k++) {
        m_copy(&f->snap[k + 1], &f->snap[k]);
        step(NULL, &f->snap[k + 1], k);
    }
    uint64_t n = run_once(f, 0, reorder);
    const char *e = getenv("CFS_CRASH_STRIDE");
    unsigned stride = e ? (unsigned)atoi(e) : 1;
    if (!stride)
        stride = 1;
    fprintf(stderr, "workload: %u steps, %llu writes; cutting after every %u%s write\n", NSTEPS,
            (unsigned long long)n, stride, stride == 1 ? "" : "th");
    for (unsigned cut = 1; cut <= n + 1; cut += stride)
        run_once(f, cut, reorder);
    for (unsigned k = 0; k <= NSTEPS; k++)
        m_free(&f->snap[k]);
    unlink(f->path);
    free(f);
}

static void test_power_cut_after_every_write(void **state)
{
    power_cut_every_write(0);
}

static void test_power_cut_with_reordered_writes(void **state)
{
    power_cut_every_write(8);
}

/* A host (journal slot 1) dies after its commit reached the journal but
 * before its home writes, with a file unlinked while open: another host
 * (slot 0) sees neither change until it recovers slot 1's journal, which
 * then shows the committed file and frees the orphan; check is clean. */
static void test_dead_slot_journal_and_orphans_recovered(void **state)
{
    char path[64];
    snprintf(path, sizeof(path), "%s/test-crash-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 160 * MiB), 0);
    close(fd);
    struct lun_options o;
    lun_options_init(&o);
    struct lun *lun;
    assert_int_equal(lun_open(path, &o, &lun), 0);
    struct cfs_format_params fp = {.max_hosts = 2, .journal_bytes = 4 * MiB};
    assert_int_equal(cfs_format(lun, &fp), 0);
    struct statvfs s0, s1;
    struct cfs_open_opts o0 = {.local = true};
    struct cfs_volume *v;
    assert_int_equal(cfs_volume_open(lun, &o0, &v), 0);
    assert_int_equal(cfs_statfs(v, &s0), 0);
    assert_int_equal(cfs_volume_close(v), 0);
    lun_close(lun);

    struct lun_fault *ctl;
    assert_int_equal(lun_open_fault(path, &o, &lun, &ctl), 0);
    struct cfs_open_opts o1 = {.local = true, .slot = 1, .commit_interval_ms = 3600 * 1000};
    assert_int_equal(cfs_volume_open(lun, &o1, &v), 0);
    cfs_ino_t root = cfs_root(v);
    struct cfs_attr a, t;
    struct cfs_file *fh, *tmp;
    static uint8_t buf[3 * MiB];
    pattern(buf, sizeof(buf), 5);
    assert_int_equal(cfs_create(v, root, "kept", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    assert_int_equal(cfs_write(fh, buf, 5000, 0), 5000);
    cfs_release(fh);
    assert_int_equal(cfs_create(v, root, "tmp", 0644, O_RDWR, 0, 0, &t, &tmp), 0);
    assert_int_equal(cfs_write(tmp, buf, 3 * MiB, 0), (ssize_t)(3 * MiB));
    assert_int_equal(cfs_unlink(v, root, "tmp"), 0);
    assert_int_equal(cfs_sync(v), 0);
    assert_int_equal(cfs_mknod(v, root, "late", S_IFREG | 0644, 0, 0, 0, &a), 0);
    lun_fault_power_cut(ctl, 2); /* the journal body and the commit block, no home write */
    assert_int_equal(cfs_sync(v), 0);
    assert_true(lun_fault_power_is_cut(ctl));
    log_set_level(LOG_LVL_ERR);
    cfs_release(tmp);
    cfs_volume_close(v);
    log_set_level(LOG_LVL_WARN);
    assert_int_equal(lun_fault_restart(ctl), 0);

    assert_int_equal(cfs_volume_open(lun, &o0, &v), 0);
    uint64_t n;
    /* both commits: the first was written home too, the second was not */
    assert_int_equal(cfs_volume_journal_pending(v, 1, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(cfs_lookup(v, root, "late", &a), -ENOENT);
    assert_int_equal(cfs_volume_recover_slot(v, 1, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(cfs_volume_journal_pending(v, 1, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(cfs_lookup(v, root, "late", &a), 0);
    assert_int_equal(cfs_lookup(v, root, "kept", &a), 0);
    assert_int_equal(a.size, 5000);
    assert_int_equal(cfs_lookup(v, root, "tmp", &a), -ENOENT);
    assert_int_equal(cfs_getattr(v, t.ino, &a), -ENOENT); /* the orphan is gone */
    assert_int_equal(cfs_statfs(v, &s1), 0);
    /* its 3 blocks are free again; one block is the pool of 8 KiB blocks
     * that holds the root's directory block and "kept"'s data */
    assert_int_equal(s1.f_bfree, s0.f_bfree - 1);
    struct cfs_check_report rep;
    assert_int_equal(cfs_check(v, 0, print_problem, NULL, &rep), 0);
    assert_int_equal(cfs_volume_close(v), 0);
    lun_close(lun);
    unlink(path);
}

int main(void)
{
    log_set_program("test-crash");
    log_set_level(LOG_LVL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_power_cut_after_every_write),
        cmocka_unit_test(test_power_cut_with_reordered_writes),
        cmocka_unit_test(test_dead_slot_journal_and_orphans_recovered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
