/* Unit tests of the volume library on file LUNs (single host). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "lun.h"
#include "util.h"
#include "cfs_internal.h"
#include "volume.h"

#define MiB (1ull << 20)

struct fx {
    char path[64];
    struct lun *lun;
    struct cfs_volume *v;
    cfs_ino_t root;
};

static void lun_make(struct fx *f, uint64_t size, uint32_t lbs)
{
    /* tmpfs where there is one (flushes cost nothing there), for small LUNs */
    snprintf(f->path, sizeof(f->path), "%s/test-volume-XXXXXX",
             access("/dev/shm", W_OK) == 0 && size <= 512 * MiB ? "/dev/shm" : "/var/tmp");
    int fd = mkstemp(f->path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
    struct lun_options o;
    lun_options_init(&o);
    o.file_block_size = lbs;
    assert_int_equal(lun_open(f->path, &o, &f->lun), 0);
}

static void vol_open(struct fx *f)
{
    struct cfs_open_opts oo = {.local = true};
    assert_int_equal(cfs_volume_open(f->lun, &oo, &f->v), 0);
    f->root = cfs_root(f->v);
}

static void vol_reopen(struct fx *f)
{
    assert_int_equal(cfs_volume_close(f->v), 0);
    vol_open(f);
}

static int setup_bs(void **state, uint32_t lbs)
{
    struct fx *f = calloc(1, sizeof(*f));
    /* A big directory run (CFS_TEST_DIR_ENTRIES) needs 8 KiB per inode. */
    const char *e = getenv("CFS_TEST_DIR_ENTRIES");
    uint64_t n = e ? strtoull(e, NULL, 0) : 0;
    lun_make(f, n > 40000 ? 512 * MiB + n * 9 * 1024 : 512 * MiB, lbs);
    struct cfs_format_params p = {.label = "test", .max_hosts = 4, .journal_bytes = 2 * MiB};
    assert_int_equal(cfs_format(f->lun, &p), 0);
    vol_open(f);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_bs(state, 512);
}

static int setup4k(void **state)
{
    return setup_bs(state, 4096);
}

static void print_problem(void *ctx, const char *what, const char *msg, bool fixed)
{
    fprintf(stderr, "check: %s: %s%s\n", what, msg, fixed ? " (fixed)" : "");
}

/* Every test leaves a volume that check finds clean, before and after a
 * remount. */
static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->v) {
        struct cfs_check_report rep;
        assert_int_equal(cfs_check(f->v, 0, print_problem, NULL, &rep), 0);
        vol_reopen(f);
        assert_int_equal(cfs_check(f->v, 0, print_problem, NULL, &rep), 0);
        assert_true(rep.inodes >= 1);
        assert_int_equal(cfs_volume_close(f->v), 0);
    }
    lun_close(f->lun);
    unlink(f->path);
    free(f);
    return 0;
}

/* ---- format ----------------------------------------------------------------- */

static void test_format_refuses_existing_volume_and_small_lun(void **state)
{
    struct fx *f = *state;
    struct cfs_format_params p = {.max_hosts = 4};
    log_clear_last_error();
    assert_int_equal(cfs_format(f->lun, &p), -EEXIST);
    assert_non_null(strstr(log_last_error(), "already holds a clusterfs volume"));
    assert_non_null(strstr(log_last_error(), "label 'test'"));

    struct fx g = {0};
    lun_make(&g, 40 * MiB, 512);
    struct cfs_format_params q = {.max_hosts = 64};
    assert_int_equal(cfs_format(g.lun, &q), -ENOSPC);
    assert_non_null(strstr(log_last_error(), "too small"));
    q.max_hosts = 2;
    assert_int_equal(cfs_format(g.lun, &q), 0);
    q.force = true;
    assert_int_equal(cfs_format(g.lun, &q), 0);
    lun_close(g.lun);
    unlink(g.path);
}

static void test_format_root_and_statfs(void **state)
{
    struct fx *f = *state;
    struct cfs_attr a;
    assert_int_equal(cfs_getattr(f->v, f->root, &a), 0);
    assert_true(S_ISDIR(a.mode));
    assert_int_equal(a.nlink, 2);
    struct statvfs st;
    assert_int_equal(cfs_statfs(f->v, &st), 0);
    assert_int_equal(st.f_bsize, MiB);
    assert_int_equal(st.f_bfree, st.f_blocks - 1); /* the root inode's pool block */
    struct cfs_volume_info vi;
    assert_int_equal(cfs_volume_info(f->v, &vi), 0);
    assert_string_equal(vi.label, "test");
    assert_int_equal(vi.clusters_laid_out, 1);
}

/* A LUN that held other data: clusters past the resource map are free
 * whatever bytes are there (a first version took them for corrupt). */
static void test_format_over_old_data_all_space_usable(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_volume_close(f->v), 0);
    f->v = NULL;
    int fd = open(f->path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t *junk = malloc(MiB);
    memset(junk, 0xa5, MiB);
    for (uint64_t i = 0; i < 512; i++)
        assert_int_equal(pwrite(fd, junk, MiB, (off_t)(i * MiB)), (ssize_t)MiB);
    close(fd);
    struct cfs_format_params p = {.max_hosts = 2, .journal_bytes = 2 * MiB};
    assert_int_equal(cfs_format(f->lun, &p), 0);
    vol_open(f);
    struct statvfs st;
    assert_int_equal(cfs_statfs(f->v, &st), 0);
    uint64_t free0 = st.f_bfree;
    assert_true(free0 > 490);
    struct cfs_attr a;
    struct cfs_file *fh;
    assert_int_equal(cfs_create(f->v, f->root, "big", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    uint64_t n = free0 - 8; /* leave room for pointer and directory blocks */
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(cfs_write(fh, junk, MiB, i * MiB), (ssize_t)MiB);
    assert_int_equal(cfs_read(fh, junk, 4096, 3 * MiB), 4096);
    cfs_release(fh);
    struct cfs_volume_info vi;
    assert_int_equal(cfs_volume_info(f->v, &vi), 0);
    assert_int_equal(vi.clusters_laid_out, vi.nclusters);
    free(junk);
}

/* ---- namespace ------------------------------------------------------------------ */

struct listing {
    char names[256][64];
    cfs_ino_t inos[256];
    unsigned n, stop_after;
    uint64_t last_off;
};

static int list_cb(void *ctx, const char *name, cfs_ino_t ino, unsigned dtype, uint64_t off)
{
    struct listing *l = ctx;
    if (l->stop_after && l->n == l->stop_after)
        return 1;
    snprintf(l->names[l->n], 64, "%s", name);
    l->inos[l->n++] = ino;
    l->last_off = off;
    return 0;
}

static bool listed(const struct listing *l, const char *name)
{
    for (unsigned i = 0; i < l->n; i++)
        if (!strcmp(l->names[i], name))
            return true;
    return false;
}

static void test_namespace_ops(void **state)
{
    struct fx *f = *state;
    struct cfs_volume *v = f->v;
    struct cfs_attr a, d, b;
    struct cfs_file *fh;
    assert_int_equal(cfs_mkdir(v, f->root, "dir", 0750, 1, 2, &d), 0);
    assert_int_equal(d.uid, 1);
    assert_int_equal(cfs_mkdir(v, f->root, "dir", 0750, 0, 0, &a), -EEXIST);
    assert_int_equal(cfs_create(v, d.ino, "file", 0644, O_RDWR | O_EXCL, 0, 0, &a, &fh), 0);
    assert_int_equal(cfs_write(fh, "hello", 5, 0), 5);
    assert_int_equal(cfs_release(fh), 0);
    assert_int_equal(cfs_create(v, d.ino, "file", 0644, O_RDWR | O_EXCL, 0, 0, &b, &fh), -EEXIST);
    assert_int_equal(cfs_lookup(v, d.ino, "file", &b), 0);
    assert_int_equal(b.ino, a.ino);
    assert_int_equal(b.size, 5);
    assert_int_equal(cfs_lookup(v, d.ino, "nope", &b), -ENOENT);
    assert_int_equal(cfs_lookup(v, d.ino, "..", &b), 0);
    assert_int_equal(b.ino, f->root);
    /* link, symlink, fifo */
    assert_int_equal(cfs_link(v, a.ino, f->root, "hard", &b), 0);
    assert_int_equal(b.nlink, 2);
    assert_int_equal(cfs_link(v, d.ino, f->root, "dirlink", &b), -EPERM);
    assert_int_equal(cfs_symlink(v, f->root, "sym", "dir/file", 0, 0, &b), 0);
    char tgt[64];
    assert_int_equal(cfs_readlink(v, b.ino, tgt, sizeof(tgt)), 8);
    assert_string_equal(tgt, "dir/file");
    assert_int_equal(cfs_mknod(v, f->root, "fifo", S_IFIFO | 0600, 0, 0, 0, &b), 0);
    assert_true(S_ISFIFO(b.mode));
    /* readdir */
    struct listing l = {0};
    assert_int_equal(cfs_readdir(v, f->root, 0, list_cb, &l), 0);
    assert_int_equal(l.n, 6);
    assert_true(listed(&l, ".") && listed(&l, "..") && listed(&l, "dir") && listed(&l, "hard") &&
                listed(&l, "sym") && listed(&l, "fifo"));
    /* rename across directories, over an existing file, noreplace, exchange */
    assert_int_equal(cfs_rename(v, f->root, "hard", d.ino, "moved", 0), 0);
    assert_int_equal(cfs_lookup(v, d.ino, "moved", &b), 0);
    assert_int_equal(b.ino, a.ino);
    assert_int_equal(cfs_rename(v, d.ino, "moved", d.ino, "file", 0), 0); /* same inode */
    assert_int_equal(cfs_create(v, f->root, "other", 0644, O_RDWR, 0, 0, &b, &fh), 0);
    cfs_release(fh);
    assert_int_equal(cfs_rename(v, f->root, "other", d.ino, "file", RENAME_NOREPLACE), -EEXIST);
    assert_int_equal(cfs_rename(v, f->root, "other", d.ino, "file", 0), 0);
    assert_int_equal(cfs_lookup(v, d.ino, "file", &a), 0);
    assert_int_equal(a.ino, b.ino);
    assert_int_equal(cfs_rename(v, f->root, "sym", d.ino, "file", RENAME_EXCHANGE), 0);
    assert_int_equal(cfs_lookup(v, f->root, "sym", &a), 0);
    assert_int_equal(a.ino, b.ino);
    /* directories: into itself, over non-empty, rmdir */
    assert_int_equal(cfs_mkdir(v, d.ino, "sub", 0755, 0, 0, &b), 0);
    assert_int_equal(cfs_rename(v, f->root, "dir", b.ino, "loop", 0), -EINVAL);
    assert_int_equal(cfs_rmdir(v, f->root, "dir"), -ENOTEMPTY);
    assert_int_equal(cfs_unlink(v, f->root, "dir"), -EISDIR);
    assert_int_equal(cfs_rmdir(v, d.ino, "file"), -ENOTDIR);
    assert_int_equal(cfs_rename(v, d.ino, "sub", f->root, "sub2", 0), 0);
    assert_int_equal(cfs_getattr(v, f->root, &a), 0);
    assert_int_equal(a.nlink, 4);
    assert_int_equal(cfs_rmdir(v, f->root, "sub2"), 0);
    assert_int_equal(cfs_getattr(v, f->root, &a), 0);
    assert_int_equal(a.nlink, 3);
    /* setattr */
    struct cfs_attr in = {.mode = 0600, .uid = 7, .gid = 8};
    in.mtime.tv_sec = 1000;
    assert_int_equal(
        cfs_setattr(v, d.ino, &in, CFS_SET_MODE | CFS_SET_UID | CFS_SET_GID | CFS_SET_MTIME, &a),
        0);
    assert_int_equal(a.mode, S_IFDIR | 0600);
    assert_int_equal(a.uid, 7);
    assert_int_equal(a.mtime.tv_sec, 1000);
    /* xattrs */
    assert_int_equal(cfs_setxattr(v, d.ino, "user.a", "xyz", 3, 0), 0);
    assert_int_equal(cfs_setxattr(v, d.ino, "user.a", "x", 1, XATTR_CREATE), -EEXIST);
    assert_int_equal(cfs_setxattr(v, d.ino, "user.b", "x", 1, XATTR_REPLACE), -ENODATA);
    assert_int_equal(cfs_setxattr(v, d.ino, "user.b", "12345", 5, 0), 0);
    char val[16], names[64];
    assert_int_equal(cfs_getxattr(v, d.ino, "user.a", val, sizeof(val)), 3);
    assert_memory_equal(val, "xyz", 3);
    assert_int_equal(cfs_getxattr(v, d.ino, "user.b", val, 2), -ERANGE);
    assert_int_equal(cfs_listxattr(v, d.ino, names, sizeof(names)), 14);
    assert_int_equal(cfs_removexattr(v, d.ino, "user.a"), 0);
    assert_int_equal(cfs_getxattr(v, d.ino, "user.a", val, sizeof(val)), -ENODATA);
    char big[3000];
    memset(big, 'x', sizeof(big));
    assert_int_equal(cfs_setxattr(v, d.ino, "user.big", big, sizeof(big), 0), -E2BIG);
    /* everything survives a remount */
    vol_reopen(f);
    v = f->v;
    assert_int_equal(cfs_lookup(v, f->root, "dir", &d), 0);
    assert_int_equal(d.mode, S_IFDIR | 0600);
    assert_int_equal(cfs_getxattr(v, d.ino, "user.b", val, sizeof(val)), 5);
    assert_int_equal(cfs_lookup(v, d.ino, "file", &a), 0);
    assert_true(S_ISLNK(a.mode));
    assert_int_equal(cfs_lookup(v, f->root, "sym", &a), 0);
    assert_true(S_ISREG(a.mode));
    assert_int_equal(cfs_lookup(v, f->root, "fifo", &a), 0);
    assert_true(S_ISFIFO(a.mode));
}

/* ---- files ------------------------------------------------------------------------ */

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 9));
}

static void test_file_data_inline_blocks_sparse(void **state)
{
    struct fx *f = *state;
    struct cfs_volume *v = f->v;
    struct cfs_attr a;
    struct cfs_file *fh;
    assert_int_equal(cfs_create(v, f->root, "f", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    uint8_t *w = malloc(5 * MiB), *r = malloc(5 * MiB);
    fill(w, 5 * MiB, 1);
    /* inline */
    assert_int_equal(cfs_write(fh, w, 1000, 0), 1000);
    assert_int_equal(cfs_read(fh, r, 4096, 0), 1000);
    assert_memory_equal(r, w, 1000);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.blocks, 0);
    /* grows out of the inode */
    assert_int_equal(cfs_write(fh, w + 1000, 3000, 1000), 3000);
    assert_int_equal(cfs_read(fh, r, 8192, 0), 4000);
    assert_memory_equal(r, w, 4000);
    /* unaligned write across a block boundary, and a sparse far write */
    assert_int_equal(cfs_write(fh, w, 2 * MiB + 333, MiB - 77), 2 * MiB + 333);
    assert_int_equal(cfs_write(fh, w, 4096, 3ull << 30), 4096);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.size, (3ull << 30) + 4096);
    /* 5 blocks; height 2: the root and two level-1 pointer blocks */
    assert_int_equal(a.blocks, 5 * MiB / 512 + 3 * 8192 / 512);
    assert_int_equal(cfs_read(fh, r, 2 * MiB + 333, MiB - 77), 2 * MiB + 333);
    assert_memory_equal(r, w, 2 * MiB + 333);
    assert_int_equal(cfs_read(fh, r, 4000, 0), 4000);
    assert_memory_equal(r, w, 4000);
    assert_int_equal(cfs_read(fh, r, 1 * MiB, 2ull << 30), 1 * MiB); /* hole */
    for (size_t i = 0; i < MiB; i++)
        assert_int_equal(r[i], 0);
    /* SEEK_DATA / SEEK_HOLE */
    assert_int_equal(cfs_lseek(fh, 0, SEEK_DATA), 0);
    assert_int_equal(cfs_lseek(fh, 0, SEEK_HOLE), 4 * MiB); /* blocks 0..3 written */
    assert_int_equal(cfs_lseek(fh, 3 * MiB, SEEK_DATA), 3 * MiB);
    assert_int_equal(cfs_lseek(fh, 4 * MiB, SEEK_DATA), 3ull << 30);
    assert_int_equal(cfs_lseek(fh, (3ull << 30) + 10, SEEK_HOLE), (3ull << 30) + 4096);
    assert_int_equal(cfs_lseek(fh, (3ull << 30) + 4096, SEEK_DATA), -ENXIO);
    /* punch a hole and zero a range */
    assert_int_equal(cfs_fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 2 * MiB),
                     0);
    assert_int_equal(cfs_read(fh, r, 3 * MiB, 0), 3 * MiB);
    assert_memory_equal(r, w, 100);
    for (size_t i = 100; i < 2 * MiB + 100; i++)
        assert_int_equal(r[i], 0);
    assert_int_equal(cfs_lseek(fh, 0, SEEK_HOLE), MiB); /* block 1 freed */
    assert_int_equal(cfs_fallocate(fh, FALLOC_FL_ZERO_RANGE, 0, 3 * MiB), 0);
    assert_int_equal(cfs_read(fh, r, 3 * MiB, 0), 3 * MiB);
    for (size_t i = 0; i < 3 * MiB; i++)
        assert_int_equal(r[i], 0);
    /* preallocate beyond EOF, then truncate down and up */
    assert_int_equal(cfs_fallocate(fh, 0, 4ull << 30, 3 * MiB), 0);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.size, (4ull << 30) + 3 * MiB);
    assert_int_equal(cfs_truncate(v, a.ino, 5000), 0);
    assert_int_equal(cfs_write(fh, "x", 1, 9999), 1);
    assert_int_equal(cfs_read(fh, r, 20000, 0), 10000);
    for (size_t i = 0; i < 9999; i++)
        assert_int_equal(r[i], 0);
    assert_int_equal(cfs_truncate(v, a.ino, 0), 0);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.blocks, 0);
    cfs_release(fh);
    free(w);
    free(r);
}

/* Small files: 8 KiB small blocks up to 64 KiB, then one file block, the
 * data carried over at each step. */
static void test_small_file_uses_small_blocks_then_converts(void **state)
{
    struct fx *f = *state;
    struct cfs_volume *v = f->v;
    struct cfs_attr a;
    struct cfs_file *fh;
    uint8_t w[200000], r[200000];
    fill(w, sizeof(w), 9);
    assert_int_equal(cfs_create(v, f->root, "small", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    assert_int_equal(cfs_write(fh, w, 5000, 0), 5000);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.blocks, 8192 / 512);
    assert_int_equal(cfs_write(fh, w + 5000, 55000, 5000), 55000); /* 60000: 8 small blocks */
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.blocks, (8 * 8192 + 8192) / 512); /* + one pointer block */
    assert_int_equal(cfs_read(fh, r, sizeof(r), 0), 60000);
    assert_memory_equal(r, w, 60000);
    assert_int_equal(cfs_write(fh, w + 60000, 40000, 60000), 40000); /* 100000: a file block */
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.blocks, MiB / 512);
    assert_int_equal(cfs_read(fh, r, sizeof(r), 0), 100000);
    assert_memory_equal(r, w, 100000);
    cfs_release(fh);
    /* a sparse small file keeps its hole */
    assert_int_equal(cfs_create(v, f->root, "sparse", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    assert_int_equal(cfs_write(fh, w, 100, 30000), 100);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.blocks, (8192 + 8192) / 512);
    assert_int_equal(cfs_lseek(fh, 0, SEEK_DATA), 24576);
    assert_int_equal(cfs_read(fh, r, sizeof(r), 0), 30100);
    for (int i = 0; i < 30000; i++)
        assert_int_equal(r[i], 0);
    assert_memory_equal(r + 30000, w, 100);
    cfs_release(fh);
}

static void test_file_blocks_freed_after_last_close_of_unlinked(void **state)
{
    struct fx *f = *state;
    struct cfs_volume *v = f->v;
    struct statvfs s0, s1, s2;
    assert_int_equal(cfs_statfs(v, &s0), 0);
    struct cfs_attr a;
    struct cfs_file *fh;
    assert_int_equal(cfs_create(v, f->root, "tmp", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    uint8_t *w = malloc(8 * MiB), *r = malloc(8 * MiB);
    fill(w, 8 * MiB, 3);
    assert_int_equal(cfs_write(fh, w, 8 * MiB, 0), 8 * MiB);
    assert_int_equal(cfs_unlink(v, f->root, "tmp"), 0);
    assert_int_equal(cfs_lookup(v, f->root, "tmp", &a), -ENOENT);
    /* still readable and writable */
    assert_int_equal(cfs_write(fh, w, 4096, 8 * MiB), 4096);
    assert_int_equal(cfs_read(fh, r, 8 * MiB, 0), 8 * MiB);
    assert_memory_equal(r, w, 8 * MiB);
    assert_int_equal(cfs_statfs(v, &s1), 0);
    assert_true(s1.f_bfree + 9 <= s0.f_bfree);
    assert_int_equal(cfs_release(fh), 0);
    cfs_forget(v, a.ino, 1);
    assert_int_equal(cfs_sync(v), 0);
    assert_int_equal(cfs_statfs(v, &s2), 0);
    assert_int_equal(s2.f_bfree, s0.f_bfree);
    free(w);
    free(r);
}

/* ---- big directories ------------------------------------------------------------ */

struct count_ctx {
    uint8_t *seen;
    unsigned n, dup, bad, max;
    unsigned stop_every, calls;
    uint64_t off;
};

static int count_cb(void *ctx, const char *name, cfs_ino_t ino, unsigned dtype, uint64_t off)
{
    struct count_ctx *c = ctx;
    if (c->stop_every && c->calls++ == c->stop_every) {
        c->calls = 0;
        return 1;
    }
    c->off = off;
    if (name[0] == '.')
        return 0;
    unsigned i;
    if (sscanf(name, "entry-%u", &i) != 1 || i >= c->max) {
        c->bad++;
        return 0;
    }
    if (c->seen[i])
        c->dup++;
    c->seen[i] = 1;
    c->n++;
    return 0;
}

static void test_dir_many_entries_hashed(void **state)
{
    struct fx *f = *state;
    struct cfs_volume *v = f->v;
    const char *e = getenv("CFS_TEST_DIR_ENTRIES");
    unsigned n = e ? (unsigned)atoi(e) : 20000;
    struct cfs_attr d, a;
    assert_int_equal(cfs_mkdir(v, f->root, "big", 0755, 0, 0, &d), 0);
    char name[64];
    for (unsigned i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "entry-%u", i);
        assert_int_equal(cfs_mknod(v, d.ino, name, S_IFREG | 0644, 0, 0, 0, &a), 0);
        cfs_forget(v, a.ino, 1);
    }
    assert_int_equal(cfs_mknod(v, d.ino, "entry-7", S_IFREG | 0644, 0, 0, 0, &a), -EEXIST);
    for (unsigned i = 0; i < n; i += 7) {
        snprintf(name, sizeof(name), "entry-%u", i);
        assert_int_equal(cfs_lookup(v, d.ino, name, &a), 0);
        cfs_forget(v, a.ino, 1);
    }
    /* listing in small pieces, with inserts and removals in between */
    struct count_ctx c = {.seen = calloc(n + 1000, 1), .max = n + 1000, .stop_every = 97};
    uint64_t off = 0;
    unsigned extra = 0;
    for (;;) {
        unsigned before = c.n + c.dup + c.bad;
        c.calls = 0;
        assert_int_equal(cfs_readdir(v, d.ino, off, count_cb, &c), 0);
        if (c.n + c.dup + c.bad == before && c.off == off)
            break;
        off = c.off;
        if (extra < 1000) { /* names not present throughout: may or may not show */
            snprintf(name, sizeof(name), "entry-%u", n + extra++);
            assert_int_equal(cfs_mknod(v, d.ino, name, S_IFREG | 0644, 0, 0, 0, &a), 0);
            cfs_forget(v, a.ino, 1);
        }
    }
    assert_int_equal(c.dup, 0);
    assert_int_equal(c.bad, 0);
    for (unsigned i = 0; i < n; i++)
        assert_true(c.seen[i]);
    free(c.seen);
    for (unsigned i = 0; i < n + extra; i += 2) {
        snprintf(name, sizeof(name), "entry-%u", i);
        assert_int_equal(cfs_unlink(v, d.ino, name), 0);
    }
    vol_reopen(f);
    v = f->v;
    struct count_ctx c2 = {.seen = calloc(n + 1000, 1), .max = n + 1000};
    assert_int_equal(cfs_readdir(v, d.ino, 0, count_cb, &c2), 0);
    assert_int_equal(c2.n, (n + extra) / 2);
    assert_int_equal(c2.dup, 0);
    for (unsigned i = 1; i < n + extra; i += 2)
        assert_true(c2.seen[i]);
    free(c2.seen);
}

/* ---- random exerciser against an in-memory model ------------------------------- */

#define NF 6
#define MAXSZ (5 * MiB)
struct model {
    uint8_t *data[NF];
    uint64_t size[NF];
    bool exists[NF];
};

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void check_model(struct fx *f, struct model *m, uint8_t *buf)
{
    char name[16];
    for (unsigned i = 0; i < NF; i++) {
        snprintf(name, sizeof(name), "m%u", i);
        struct cfs_attr a;
        int r = cfs_lookup(f->v, f->root, name, &a);
        if (!m->exists[i]) {
            assert_int_equal(r, -ENOENT);
            continue;
        }
        assert_int_equal(r, 0);
        assert_int_equal(a.size, m->size[i]);
        struct cfs_file *fh;
        assert_int_equal(cfs_open(f->v, a.ino, O_RDONLY, &fh), 0);
        assert_int_equal(cfs_read(fh, buf, MAXSZ + MiB, 0), (ssize_t)m->size[i]);
        assert_memory_equal(buf, m->data[i], m->size[i]);
        cfs_release(fh);
        cfs_forget(f->v, a.ino, 1);
    }
}

static void test_random_ops_match_model(void **state)
{
    struct fx *f = *state;
    struct model m = {0};
    const char *e = getenv("CFS_TEST_EXERCISER_OPS");
    unsigned nops = e ? (unsigned)atoi(e) : 600;
    uint64_t seed = 0x1234567;
    uint8_t *buf = malloc(MAXSZ + MiB), *w = malloc(MAXSZ);
    for (unsigned i = 0; i < NF; i++)
        m.data[i] = calloc(1, MAXSZ);
    char name[16], name2[16];
    for (unsigned op = 0; op < nops; op++) {
        unsigned i = (unsigned)(rnd(&seed) % NF), kind = (unsigned)(rnd(&seed) % 10);
        snprintf(name, sizeof(name), "m%u", i);
        struct cfs_attr a;
        struct cfs_file *fh;
        if (!m.exists[i]) {
            assert_int_equal(cfs_create(f->v, f->root, name, 0644, O_RDWR, 0, 0, &a, &fh), 0);
            cfs_release(fh);
            cfs_forget(f->v, a.ino, 1);
            m.exists[i] = true;
            m.size[i] = 0;
            memset(m.data[i], 0, MAXSZ);
            continue;
        }
        assert_int_equal(cfs_lookup(f->v, f->root, name, &a), 0);
        assert_int_equal(cfs_open(f->v, a.ino, O_RDWR, &fh), 0);
        uint64_t off = rnd(&seed) % (MAXSZ - 1),
                 len = 1 + rnd(&seed) % (rnd(&seed) % 2 ? 3000 : 1500000);
        if (off + len > MAXSZ)
            len = MAXSZ - off;
        if (kind < 4) { /* write */
            for (uint64_t k = 0; k < len; k++)
                w[k] = (uint8_t)rnd(&seed);
            assert_int_equal(cfs_write(fh, w, len, off), (ssize_t)len);
            memcpy(m.data[i] + off, w, len);
            if (off + len > m.size[i])
                m.size[i] = off + len;
        } else if (kind == 4) { /* truncate */
            uint64_t ns = rnd(&seed) % MAXSZ;
            if (rnd(&seed) % 3 == 0)
                ns %= 2000;
            assert_int_equal(cfs_truncate(f->v, a.ino, ns), 0);
            if (ns < m.size[i])
                memset(m.data[i] + ns, 0, m.size[i] - ns);
            m.size[i] = ns;
        } else if (kind == 5) { /* punch */
            assert_int_equal(
                cfs_fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len), 0);
            if (off < m.size[i])
                memset(m.data[i] + off, 0, MIN(len, m.size[i] - off));
        } else if (kind == 6) { /* zero range, may extend */
            assert_int_equal(cfs_fallocate(fh, FALLOC_FL_ZERO_RANGE, off, len), 0);
            memset(m.data[i] + off, 0, len);
            if (off + len > m.size[i])
                m.size[i] = off + len;
        } else if (kind == 7) { /* rename over another */
            unsigned j = (unsigned)(rnd(&seed) % NF);
            snprintf(name2, sizeof(name2), "m%u", j);
            assert_int_equal(cfs_rename(f->v, f->root, name, f->root, name2, 0), 0);
            if (j != i) {
                uint8_t *t = m.data[j];
                m.data[j] = m.data[i];
                m.data[i] = t;
                m.size[j] = m.size[i];
                m.exists[j] = true;
                m.exists[i] = false;
            }
        } else if (kind == 8) { /* unlink */
            assert_int_equal(cfs_unlink(f->v, f->root, name), 0);
            m.exists[i] = false;
        } else { /* read back a range */
            uint64_t n = off < m.size[i] ? MIN(len, m.size[i] - off) : 0;
            assert_int_equal(cfs_read(fh, buf, len, off), (ssize_t)n);
            assert_memory_equal(buf, m.data[i] + off, n);
        }
        cfs_release(fh);
        cfs_forget(f->v, a.ino, 1);
        if (op % 150 == 149) {
            check_model(f, &m, buf);
            vol_reopen(f);
            check_model(f, &m, buf);
        }
    }
    check_model(f, &m, buf);
    for (unsigned i = 0; i < NF; i++)
        free(m.data[i]);
    free(buf);
    free(w);
}

/* ---- check and corruption ------------------------------------------------------ */

struct probs {
    char text[4096];
    unsigned n;
};

static void collect_problem(void *ctx, const char *what, const char *msg, bool fixed)
{
    struct probs *p = ctx;
    size_t l = strlen(p->text);
    snprintf(p->text + l, sizeof(p->text) - l, "%s: %s%s\n", what, msg, fixed ? " (fixed)" : "");
    p->n++;
}

static void flip_byte(struct fx *f, uint64_t addr)
{
    int fd = open(f->path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t c;
    assert_int_equal(pread(fd, &c, 1, (off_t)addr), 1);
    c ^= 0x5a;
    assert_int_equal(pwrite(fd, &c, 1, (off_t)addr), 1);
    fsync(fd);
    close(fd);
}

static void test_check_finds_and_repairs_leak_and_link_count(void **state)
{
    struct fx *f = *state;
    struct cfs_volume *v = f->v;
    struct cfs_attr a;
    struct cfs_file *fh;
    assert_int_equal(cfs_create(v, f->root, "x", 0644, O_RDWR, 0, 0, &a, &fh), 0);
    assert_int_equal(cfs_write(fh, "abc", 3, 5 * MiB), 3);
    cfs_release(fh);
    /* damage through the internals: a leaked block, a wrong link count */
    pthread_mutex_lock(&v->mtx);
    uint64_t leak;
    assert_int_equal(cfs_alloc_block(v, &leak), 0);
    struct cfs_inode *ip;
    assert_int_equal(cfs_inode_get(v, a.ino, &ip), 0);
    ip->d.nlink = 3;
    cfs_inode_dirty(v, ip);
    cfs_inode_put(v, ip);
    assert_int_equal(cfs_txn_commit(v), 0);
    pthread_mutex_unlock(&v->mtx);
    struct probs p = {0};
    struct cfs_check_report rep;
    assert_int_equal(cfs_check(v, 0, collect_problem, &p, &rep), 4);
    assert_int_equal(rep.problems, 2);
    char want[128];
    snprintf(want, sizeof(want), "file block at byte %llu is allocated but unused",
             (unsigned long long)leak);
    assert_non_null(strstr(p.text, want));
    snprintf(want, sizeof(want), "inode %llu: link count 3, found 1", (unsigned long long)a.ino);
    assert_non_null(strstr(p.text, want));
    memset(&p, 0, sizeof(p));
    assert_int_equal(cfs_check(v, CFS_CHECK_REPAIR, collect_problem, &p, &rep), 1);
    assert_int_equal(rep.fixed, 2);
    assert_int_equal(cfs_check(v, 0, NULL, NULL, &rep), 0);
    assert_int_equal(cfs_getattr(v, a.ino, &a), 0);
    assert_int_equal(a.nlink, 1);
}

static void test_corrupt_inode_named_and_repaired(void **state)
{
    struct fx *f = *state;
    struct cfs_attr a, b;
    assert_int_equal(cfs_mknod(f->v, f->root, "victim", S_IFREG | 0644, 0, 0, 0, &a), 0);
    assert_int_equal(cfs_mknod(f->v, f->root, "bystander", S_IFREG | 0644, 0, 0, 0, &b), 0);
    assert_int_equal(cfs_volume_close(f->v), 0);
    flip_byte(f, a.ino * CFS_INODE_SLOT + CFS_META + 200);
    vol_open(f);
    log_clear_last_error();
    struct cfs_attr x;
    assert_int_equal(cfs_lookup(f->v, f->root, "victim", &x), -EBADMSG);
    char want[128];
    snprintf(want, sizeof(want), "inode at byte %llu: bad CRC32C",
             (unsigned long long)(a.ino * CFS_INODE_SLOT + CFS_META));
    assert_non_null(strstr(log_last_error(), want));
    assert_int_equal(cfs_lookup(f->v, f->root, "bystander", &x), 0);
    struct probs p = {0};
    struct cfs_check_report rep;
    assert_int_equal(cfs_check(f->v, 0, collect_problem, &p, &rep), 4);
    assert_non_null(strstr(p.text, "dangling entry"));
    assert_non_null(strstr(p.text, want));
    assert_int_equal(cfs_check(f->v, CFS_CHECK_REPAIR, NULL, NULL, &rep), 1);
    assert_int_equal(cfs_check(f->v, 0, NULL, NULL, &rep), 0);
    assert_int_equal(cfs_lookup(f->v, f->root, "victim", &x), -ENOENT);
}

static void test_corrupt_dir_block_and_bitmap_reported(void **state)
{
    struct fx *f = *state;
    struct cfs_attr d, a;
    assert_int_equal(cfs_mkdir(f->v, f->root, "d", 0755, 0, 0, &d), 0);
    assert_int_equal(cfs_mknod(f->v, d.ino, "e", S_IFREG | 0644, 0, 0, 0, &a), 0);
    pthread_mutex_lock(&f->v->mtx);
    struct cfs_inode *dp;
    uint64_t ptr;
    assert_int_equal(cfs_inode_get(f->v, d.ino, &dp), 0);
    assert_int_equal(cfs_bmap_get(f->v, dp, 0, &ptr), 0);
    cfs_inode_put(f->v, dp);
    pthread_mutex_unlock(&f->v->mtx);
    uint64_t dblk = cfs_ptr_addr(ptr), cl = f->v->sb.data_off + CFS_META;
    assert_int_equal(cfs_volume_close(f->v), 0);
    flip_byte(f, dblk + 300);
    vol_open(f);
    log_clear_last_error();
    struct cfs_attr x;
    assert_int_equal(cfs_lookup(f->v, d.ino, "e", &x), -EBADMSG);
    char want[128];
    snprintf(want, sizeof(want), "directory block at byte %llu: bad CRC32C",
             (unsigned long long)dblk);
    assert_non_null(strstr(log_last_error(), want));
    struct probs p = {0};
    struct cfs_check_report rep;
    assert_int_equal(cfs_check(f->v, 0, collect_problem, &p, &rep), 4);
    assert_non_null(strstr(p.text, want));
    /* the bitmap of cluster 0 */
    assert_int_equal(cfs_volume_close(f->v), 0);
    flip_byte(f, cl + 200);
    vol_open(f);
    memset(&p, 0, sizeof(p));
    assert_int_equal(cfs_check(f->v, 0, collect_problem, &p, &rep), 4);
    snprintf(want, sizeof(want), "resource cluster header at byte %llu: bad CRC32C",
             (unsigned long long)cl);
    assert_non_null(strstr(p.text, want));
    assert_int_equal(cfs_volume_close(f->v), 0);
    f->v = NULL; /* left damaged: teardown must not expect it clean */
}

static void test_corrupt_superblock_uses_copy_and_repairs(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_volume_close(f->v), 0);
    flip_byte(f, 100);
    log_clear_last_error();
    vol_open(f);
    assert_non_null(strstr(log_last_error(), "superblock A unusable"));
    struct probs p = {0};
    struct cfs_check_report rep;
    assert_int_equal(cfs_check(f->v, CFS_CHECK_REPAIR, collect_problem, &p, &rep), 1);
    assert_non_null(strstr(p.text, "superblock A at byte 0: "));
    assert_non_null(strstr(p.text, "bad CRC32C"));
    assert_int_equal(cfs_check(f->v, 0, NULL, NULL, &rep), 0);
    /* both copies bad: a clear refusal */
    assert_int_equal(cfs_volume_close(f->v), 0);
    f->v = NULL;
    flip_byte(f, 100);
    flip_byte(f, CFS_SUPER_B_OFF + 100);
    struct cfs_open_opts oo = {.local = true};
    log_clear_last_error();
    assert_int_equal(cfs_volume_open(f->lun, &oo, &f->v), -EBADMSG);
    assert_non_null(strstr(log_last_error(), "no usable clusterfs superblock"));
    f->v = NULL;
}

int main(void)
{
    log_set_program("test-volume");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_format_refuses_existing_volume_and_small_lun, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_format_root_and_statfs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_over_old_data_all_space_usable, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_namespace_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_namespace_ops, setup4k, teardown),
        cmocka_unit_test_setup_teardown(test_file_data_inline_blocks_sparse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_data_inline_blocks_sparse, setup4k, teardown),
        cmocka_unit_test_setup_teardown(test_small_file_uses_small_blocks_then_converts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_small_file_uses_small_blocks_then_converts, setup4k,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_file_blocks_freed_after_last_close_of_unlinked, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dir_many_entries_hashed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_ops_match_model, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_ops_match_model, setup4k, teardown),
        cmocka_unit_test_setup_teardown(test_check_finds_and_repairs_leak_and_link_count, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_inode_named_and_repaired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_dir_block_and_bitmap_reported, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_superblock_uses_copy_and_repairs, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
