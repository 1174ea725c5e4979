/* Unit tests of snapshots and clones (vdisk/snapshot.c, vdisk/clone.c).
 *
 * test_snapshot_model_random_ops: a deterministic random sequence of
 * writes, zero writes, snapshot creates, reverts and deletes, linked clones
 * (written to, then removed) on a 4 MiB disk, mirrored in an in-memory
 * model; deleting a snapshot a live clone sits on must be refused naming
 * the clone. After every step the live disk, every clone and every
 * snapshot's frozen file (opened read-only through vd_open) must read
 * exactly as the model says, and every few steps every file passes
 * vd_check. SNAP_SEED / SNAP_STEPS override the seed and the step count.
 * The other tests pin the refusals: duplicate names, unknown names, frozen
 * files, existing clone destinations, snapshots with linked clones.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "snapshot.h"
#include "util.h"
#include "vdisk.h"
#include "vdisk_internal.h"

#define DISK (4u << 20)
#define GRAIN 65536u
#define MAX_SNAPS 7

static char tmpdir[256];

static void quiet(enum log_level level, const char *msg, void *opaque)
{
}

static int setup(void **state)
{
    /* tmpfs when there is one: the model checks contents, not durability */
    snprintf(tmpdir, sizeof(tmpdir), "/dev/shm/test-snapshot.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-snapshot.XXXXXX");
        assert_non_null(mkdtemp(tmpdir));
    }
    if (!getenv("SNAP_VERBOSE"))
        log_set_sink(quiet, NULL);
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static char *tpath(const char *name)
{
    static char buf[8][320];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 320, "%s/%s", tmpdir, name);
    return p;
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint64_t rnd_below(uint64_t n)
{
    return rnd() % n;
}

/* Read the whole image at path (read-only) and compare with want. */
static void expect_image(const char *path, const uint8_t *want, const char *what, int step)
{
    struct vd_image *img;
    int rc = vd_open(path, VD_OPEN_RDONLY, &img);
    if (rc < 0)
        fail_msg("step %d: %s: open %s: %s (%s)", step, what, path, strerror(-rc),
                 log_last_error());
    assert_int_equal(vd_size(img), DISK);
    uint8_t *got = malloc(DISK);
    assert_non_null(got);
    assert_int_equal(vd_pread(img, got, DISK, 0), 0);
    if (memcmp(got, want, DISK) != 0) {
        size_t i = 0;
        while (got[i] == want[i])
            i++;
        fail_msg("step %d: %s (%s) differs from the model at offset %zu: %02x, want %02x", step,
                 what, path, i, got[i], want[i]);
    }
    free(got);
    vd_close(img);
}

static void expect_check_clean(const char *path, int step)
{
    struct vd_check_report r;
    assert_int_equal(vd_check(path, false, NULL, &r), 0);
    if (r.errors)
        fail_msg("step %d: vd_check %s: %u errors (%s)", step, path, r.errors, log_last_error());
}

struct msnap {
    int id;
    char name[40];
    char file[64];
    uint8_t *data;
    int clone; /* index into clones[] of a live linked clone on it, or -1 */
};

struct mclone {
    char path[320];
    uint8_t *data; /* NULL: slot free */
};

#define MAX_CLONES 2

static void model_write(const char *disk, uint8_t *cur, bool zero)
{
    uint64_t off, len;
    if (rnd_below(3) == 0) { /* whole grains */
        off = rnd_below(DISK / GRAIN) * GRAIN;
        len = (1 + rnd_below(4)) * GRAIN;
    } else {
        off = rnd_below(DISK);
        len = 1 + rnd_below(200000);
    }
    if (len > DISK - off)
        len = DISK - off;
    struct vd_image *img;
    assert_int_equal(vd_open(disk, 0, &img), 0);
    if (zero) {
        assert_int_equal(vd_write_zeroes(img, off, len, 0), 0);
        memset(cur + off, 0, len);
    } else {
        uint8_t *b = malloc(len);
        assert_non_null(b);
        uint8_t pat = (uint8_t)rnd();
        for (uint64_t i = 0; i < len; i++)
            b[i] = (uint8_t)(pat + i * 7 + (i >> 9));
        assert_int_equal(vd_pwrite(img, b, len, off, 0), 0);
        memcpy(cur + off, b, len);
        free(b);
    }
    assert_int_equal(vd_close(img), 0);
}

/* Record the newest snapshot of disk (just made by a create or a linked
 * clone) in the model, with a copy of `cur`. */
static void model_add_snap(const char *disk, struct msnap *s, const uint8_t *cur, int step)
{
    struct vd_snap_list l;
    assert_int_equal(vd_snapshot_list(disk, &l), 0);
    assert_true(l.n > 0);
    const struct vd_snap *v = &l.s[l.n - 1]; /* highest id */
    if (l.current != v->id)
        fail_msg("step %d: live disk sits on %d, not on the new snapshot %d", step, l.current,
                 v->id);
    s->id = v->id;
    snprintf(s->name, sizeof(s->name), "%s", v->name);
    snprintf(s->file, sizeof(s->file), "%s", v->file);
    vd_snap_list_free(&l);
    s->data = malloc(DISK);
    assert_non_null(s->data);
    memcpy(s->data, cur, DISK);
    s->clone = -1;
}

static void test_snapshot_model_random_ops(void **state)
{
    const char *seed_env = getenv("SNAP_SEED"), *steps_env = getenv("SNAP_STEPS");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : 0x5eed5eed1234ull;
    int steps = steps_env ? atoi(steps_env) : 300;
    rng_state = seed ? seed : 1;
    printf("seed 0x%" PRIx64 ", %d steps\n", seed, steps);
    char disk[320];
    snprintf(disk, sizeof(disk), "%s", tpath("disk.vmdk"));
    struct vd_create_opts o = {.size = DISK, .type = VD_TYPE_THIN};
    assert_int_equal(vmdk_create(disk, &o), 0);
    uint8_t *cur = calloc(1, DISK);
    assert_non_null(cur);
    struct msnap snaps[MAX_SNAPS];
    struct mclone clones[MAX_CLONES] = {0};
    int n = 0, next_name = 1, next_clone = 1;
    int counts[7] = {0};
    for (int step = 0; step < steps; step++) {
        unsigned op = (unsigned)rnd_below(100);
        int free_clone = -1, live_clone = -1;
        for (int i = 0; i < MAX_CLONES; i++) {
            if (!clones[i].data && free_clone < 0)
                free_clone = i;
            if (clones[i].data && (live_clone < 0 || rnd_below(2)))
                live_clone = i;
        }
        if (op < 40) {
            model_write(disk, cur, false);
            counts[0]++;
        } else if (op < 48) {
            model_write(disk, cur, true);
            counts[0]++;
        } else if (op < 52 && live_clone >= 0) {
            model_write(clones[live_clone].path, clones[live_clone].data, rnd_below(4) == 0);
            counts[0]++;
        } else if (op < 61 && n < MAX_SNAPS) {
            char name[40];
            snprintf(name, sizeof(name), "snap%d", next_name++);
            int rc = vd_snapshot_create(disk, name, NULL);
            if (rc < 0)
                fail_msg("step %d: snapshot create %s: %s (%s)", step, name, strerror(-rc),
                         log_last_error());
            model_add_snap(disk, &snaps[n], cur, step);
            assert_string_equal(snaps[n].name, name);
            n++;
            counts[1]++;
        } else if (op < 71 && n < MAX_SNAPS && free_clone >= 0) {
            struct mclone *c = &clones[free_clone];
            char base[32];
            snprintf(base, sizeof(base), "clone%d.vmdk", next_clone++);
            snprintf(c->path, sizeof(c->path), "%s", tpath(base));
            struct vd_clone_opts co = {.linked = true, .type = VD_TYPE_THIN};
            int rc = vd_clone(disk, c->path, &co);
            if (rc < 0)
                fail_msg("step %d: linked clone %s: %s (%s)", step, c->path, strerror(-rc),
                         log_last_error());
            model_add_snap(disk, &snaps[n], cur, step);
            snaps[n].clone = free_clone;
            n++;
            c->data = malloc(DISK);
            assert_non_null(c->data);
            memcpy(c->data, cur, DISK);
            counts[4]++;
        } else if (op < 73 && live_clone >= 0) {
            /* a linked clone is deleted by removing its file */
            assert_int_equal(unlink(clones[live_clone].path), 0);
            free(clones[live_clone].data);
            clones[live_clone].data = NULL;
            for (int i = 0; i < n; i++)
                if (snaps[i].clone == live_clone)
                    snaps[i].clone = -1;
            counts[5]++;
        } else if (op < 85 && n > 0) {
            struct msnap *s = &snaps[rnd_below((uint64_t)n)];
            int rc = vd_snapshot_revert(disk, s->name);
            if (rc < 0)
                fail_msg("step %d: revert to %s: %s (%s)", step, s->name, strerror(-rc),
                         log_last_error());
            memcpy(cur, s->data, DISK);
            counts[2]++;
        } else if (n > 0) {
            int k = (int)rnd_below((uint64_t)n);
            struct msnap *s = &snaps[k];
            int rc = vd_snapshot_delete(disk, s->name);
            if (s->clone >= 0) {
                if (rc != -EBUSY || !strstr(log_last_error(), clones[s->clone].path))
                    fail_msg("step %d: delete %s with linked clone %s: %d (%s)", step, s->name,
                             clones[s->clone].path, rc, log_last_error());
                counts[6]++;
            } else {
                if (rc < 0)
                    fail_msg("step %d: delete %s: %s (%s)", step, s->name, strerror(-rc),
                             log_last_error());
                struct stat st;
                assert_int_equal(stat(tpath(s->file), &st), -1);
                free(s->data);
                memmove(s, s + 1, sizeof(*s) * (size_t)(n - k - 1));
                n--;
                counts[3]++;
            }
        } else {
            model_write(disk, cur, false);
            counts[0]++;
        }
        expect_image(disk, cur, "live disk", step);
        for (int i = 0; i < n; i++) {
            expect_image(tpath(snaps[i].file), snaps[i].data, snaps[i].name, step);
            struct stat st;
            assert_int_equal(stat(tpath(snaps[i].file), &st), 0);
            assert_int_equal(st.st_mode & 0222, 0); /* frozen files stay read-only */
        }
        for (int i = 0; i < MAX_CLONES; i++)
            if (clones[i].data)
                expect_image(clones[i].path, clones[i].data, "linked clone", step);
        if (step % 25 == 24) {
            expect_check_clean(disk, step);
            for (int i = 0; i < n; i++)
                expect_check_clean(tpath(snaps[i].file), step);
            for (int i = 0; i < MAX_CLONES; i++)
                if (clones[i].data)
                    expect_check_clean(clones[i].path, step);
        }
    }
    printf("%d writes, %d creates, %d reverts, %d deletes, %d linked clones (%d removed, %d "
           "deletes refused for them)\n",
           counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6]);
    assert_true(counts[1] > 10 && counts[2] > 10 && counts[3] > 10 && counts[4] > 3 &&
                counts[6] > 0);
    /* nothing is left behind but the disk, the live snapshots and clones */
    int live_clones = 0;
    for (int i = 0; i < MAX_CLONES; i++)
        if (clones[i].data) {
            live_clones++;
            free(clones[i].data);
        }
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            files++;
        else if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            fail_msg("temporary file %s left behind", de->d_name);
    closedir(d);
    assert_int_equal(files, n + 1 + live_clones);
    for (int i = 0; i < n; i++)
        free(snaps[i].data);
    free(cur);
}

static void test_snapshot_refusals(void **state)
{
    const char *disk = tpath("r.vmdk");
    struct vd_create_opts o = {.size = 1 << 20, .type = VD_TYPE_THIN};
    assert_int_equal(vmdk_create(disk, &o), 0);
    assert_int_equal(vd_snapshot_create(disk, "a", NULL), 0);
    assert_int_equal(vd_snapshot_create(disk, "a", NULL), -EEXIST);
    assert_non_null(strstr(log_last_error(), "exists already"));
    assert_int_equal(vd_snapshot_create(disk, "bad\"name", NULL), -EINVAL);
    assert_int_equal(vd_snapshot_revert(disk, "nope"), -ENOENT);
    assert_non_null(strstr(log_last_error(), "no snapshot named \"nope\""));
    assert_int_equal(vd_snapshot_delete(disk, "nope"), -ENOENT);
    /* the frozen file refuses snapshots even when made writable */
    const char *frozen = tpath("r-000001.vmdk");
    assert_int_equal(vd_snapshot_create(frozen, "b", NULL), -EROFS);
    assert_non_null(strstr(log_last_error(), "read-only"));
    assert_int_equal(chmod(frozen, 0644), 0);
    assert_int_equal(vd_snapshot_create(frozen, "b", NULL), -EROFS);
    assert_non_null(strstr(log_last_error(), "frozen"));
    struct vd_image *img = NULL;
    assert_int_equal(vd_open(frozen, 0, &img), -EROFS); /* frozen: read-only only */
    assert_non_null(strstr(log_last_error(), "frozen"));
    assert_int_equal(vd_open(frozen, VD_OPEN_RDONLY, &img), 0);
    vd_close(img);
    assert_int_equal(chmod(frozen, 0444), 0);
    /* a symbolic link would be replaced instead of the disk */
    assert_int_equal(symlink("r.vmdk", tpath("link.vmdk")), 0);
    assert_int_equal(vd_snapshot_create(tpath("link.vmdk"), "l", NULL), -EINVAL);
    assert_non_null(strstr(log_last_error(), "symbolic link"));
    assert_int_equal(unlink(tpath("link.vmdk")), 0);
    /* a second operation in the same folder waits its turn: -EBUSY */
    int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY);
    assert_true(dfd >= 0);
    assert_int_equal(flock(dfd, LOCK_EX), 0);
    assert_int_equal(vd_snapshot_create(disk, "c", NULL), -EBUSY);
    assert_non_null(strstr(log_last_error(), "another snapshot or clone operation"));
    close(dfd);
    assert_int_equal(vd_snapshot_create(disk, "c", NULL), 0);
    /* clone never overwrites */
    struct vd_clone_opts co = {.type = VD_TYPE_THIN};
    assert_int_equal(vd_clone(disk, frozen, &co), -EEXIST);
    co.linked = true;
    assert_int_equal(vd_clone(disk, disk, &co), -EEXIST);
    assert_non_null(strstr(log_last_error(), "exists already"));
}

static void test_linked_clone_blocks_delete_until_removed(void **state)
{
    const char *disk = tpath("src.vmdk"), *lc = tpath("lc.vmdk"), *full = tpath("full.vmdk");
    struct vd_create_opts o = {.size = 2 << 20, .type = VD_TYPE_THIN};
    assert_int_equal(vmdk_create(disk, &o), 0);
    struct vd_image *img;
    uint8_t a[4096], b[4096], got[4096];
    memset(a, 0xa1, sizeof(a));
    memset(b, 0xb2, sizeof(b));
    assert_int_equal(vd_open(disk, 0, &img), 0);
    assert_int_equal(vd_pwrite(img, a, sizeof(a), 12345, 0), 0);
    assert_int_equal(vd_close(img), 0);
    struct vd_clone_opts co = {.linked = true, .type = VD_TYPE_THIN};
    assert_int_equal(vd_clone(disk, lc, &co), 0);
    /* both continue independently on the frozen state */
    assert_int_equal(vd_open(lc, 0, &img), 0);
    assert_int_equal(vd_pread(img, got, sizeof(got), 12345), 0);
    assert_memory_equal(got, a, sizeof(a));
    assert_int_equal(vd_pwrite(img, b, sizeof(b), 12345, 0), 0);
    assert_int_equal(vd_close(img), 0);
    assert_int_equal(vd_open(disk, 0, &img), 0);
    assert_int_equal(vd_pread(img, got, sizeof(got), 12345), 0);
    assert_memory_equal(got, a, sizeof(a));
    assert_int_equal(vd_close(img), 0);
    /* the frozen state cannot go while the clone needs it; the clone is named */
    struct vd_snap_list l;
    assert_int_equal(vd_snapshot_list(disk, &l), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.s[0].name, "clone:lc.vmdk");
    char name[80];
    snprintf(name, sizeof(name), "%s", l.s[0].name);
    vd_snap_list_free(&l);
    assert_int_equal(vd_snapshot_delete(disk, name), -EBUSY);
    assert_non_null(strstr(log_last_error(), "lc.vmdk"));
    /* a snapshot of the clone still depends on the frozen file */
    assert_int_equal(vd_snapshot_create(lc, "c1", NULL), 0);
    assert_int_equal(vd_snapshot_delete(disk, name), -EBUSY);
    /* a full clone flattens the chain */
    co.linked = false;
    assert_int_equal(vd_clone(lc, full, &co), 0);
    assert_int_equal(vd_open(full, VD_OPEN_RDONLY, &img), 0);
    assert_null(vd_parent(img));
    assert_int_equal(vd_pread(img, got, sizeof(got), 12345), 0);
    assert_memory_equal(got, b, sizeof(b));
    assert_int_equal(vd_close(img), 0);
    /* once the clone (and its snapshot) are gone, delete consolidates */
    assert_int_equal(unlink(lc), 0);
    assert_int_equal(unlink(tpath("lc-000001.vmdk")), 0);
    assert_int_equal(vd_snapshot_delete(disk, name), 0);
    assert_int_equal(vd_open(disk, VD_OPEN_RDONLY, &img), 0);
    assert_null(vd_parent(img));
    assert_int_equal(vd_pread(img, got, sizeof(got), 12345), 0);
    assert_memory_equal(got, a, sizeof(a));
    assert_int_equal(vd_close(img), 0);
}

/* ------------------------------------------- snapshots of an open disk */

#define LIVE_THREADS 4
#define LIVE_REGION (1u << 20)

struct live_worker {
    struct vd_image *img;
    int t;
    uint8_t *shadow; /* what the region must read as */
    int *stop;       /* atomic */
    int err;
    unsigned writes;
};

/* Write, read back, flush now and then, in its own region, until stopped:
 * every call must succeed and every read must see the thread's own last
 * write, across the switches the main thread makes meanwhile. */
static void *live_worker_main(void *arg)
{
    struct live_worker *w = arg;
    uint8_t buf[16384], got[16384];
    unsigned seed = 1234u + (unsigned)w->t;
    uint64_t base = (uint64_t)w->t * LIVE_REGION;
    while (!__atomic_load_n(w->stop, __ATOMIC_ACQUIRE) && !w->err) {
        uint64_t off = (uint64_t)(rand_r(&seed) % (LIVE_REGION / 512 - 32)) * 512;
        size_t len = 512 * (1 + (size_t)rand_r(&seed) % 32);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)(w->writes * 31 + k + (size_t)w->t);
        int rc = vd_pwrite(w->img, buf, len, base + off, w->writes % 5 == 0 ? VD_FUA : 0);
        if (rc == 0)
            memcpy(w->shadow + off, buf, len);
        if (rc == 0)
            rc = vd_pread(w->img, got, len, base + off);
        if (rc == 0 && memcmp(got, buf, len) != 0)
            rc = -EILSEQ;
        if (rc == 0 && w->writes % 8 == 7)
            rc = vd_flush(w->img);
        w->err = rc;
        w->writes++;
    }
    return NULL;
}

/* issue 13 item 1: vd_snapshot_*_open switch a disk that threads are
 * reading and writing: no request fails, every thread reads its own last
 * write throughout, and the chain is right afterwards */
static void test_snapshot_open_switches_under_concurrent_io(void **state)
{
    const char *disk = tpath("live.vmdk");
    struct vd_create_opts o = {.size = LIVE_THREADS * LIVE_REGION, .type = VD_TYPE_THIN};
    assert_int_equal(vmdk_create(disk, &o), 0);
    struct vd_image *img;
    assert_int_equal(vd_open(disk, 0, &img), 0);
    int stop = 0;
    struct live_worker w[LIVE_THREADS];
    pthread_t th[LIVE_THREADS];
    for (int t = 0; t < LIVE_THREADS; t++) {
        w[t] = (struct live_worker){.img = img, .t = t, .stop = &stop};
        w[t].shadow = calloc(1, LIVE_REGION);
        assert_non_null(w[t].shadow);
        assert_int_equal(pthread_create(&th[t], NULL, live_worker_main, &w[t]), 0);
    }
    char name[32];
    int id = 0, steps = getenv("LIVE_SNAP_STEPS") ? atoi(getenv("LIVE_SNAP_STEPS")) : 12;
    for (int i = 1; i <= steps; i++) {
        usleep(2000);
        snprintf(name, sizeof(name), "s%d", i);
        assert_int_equal(vd_snapshot_create_open(img, name, &id), 0);
        assert_int_equal(id, i);
        if (i % 4 == 0) { /* consolidate an older one into its child */
            snprintf(name, sizeof(name), "s%d", i - 2);
            assert_int_equal(vd_snapshot_delete_open(img, name), 0);
        }
    }
    /* a revert drops the live delta: stop the writers first, then check it */
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int t = 0; t < LIVE_THREADS; t++) {
        assert_int_equal(pthread_join(th[t], NULL), 0);
        assert_int_equal(w[t].err, 0);
        assert_true(w[t].writes > 0);
    }
    uint8_t *b = malloc(LIVE_REGION);
    assert_non_null(b);
    for (int t = 0; t < LIVE_THREADS; t++) {
        assert_int_equal(vd_pread(img, b, LIVE_REGION, (uint64_t)t * LIVE_REGION), 0);
        assert_memory_equal(b, w[t].shadow, LIVE_REGION);
    }
    assert_int_equal(vd_snapshot_create_open(img, "last", &id), 0);
    memset(b, 0x77, 4096);
    assert_int_equal(vd_pwrite(img, b, 4096, 0, 0), 0);
    assert_int_equal(vd_snapshot_revert_open(img, "last"), 0);
    assert_int_equal(vd_pread(img, b, 4096, 0), 0);
    assert_memory_equal(b, w[0].shadow, 4096); /* the write after "last" is gone */
    assert_int_equal(vd_close(img), 0);
    /* reopened from scratch (with image locks: none left behind) */
    assert_int_equal(vd_open(disk, 0, &img), 0);
    for (int t = 0; t < LIVE_THREADS; t++) {
        assert_int_equal(vd_pread(img, b, LIVE_REGION, (uint64_t)t * LIVE_REGION), 0);
        assert_memory_equal(b, w[t].shadow, LIVE_REGION);
    }
    assert_int_equal(vd_close(img), 0);
    struct vd_snap_list l;
    assert_int_equal(vd_snapshot_list(disk, &l), 0);
    assert_int_equal(l.n, steps - steps / 4 + 1);
    for (int i = 0; i < l.n; i++) {
        struct vd_check_report r;
        assert_int_equal(vd_check(tpath(l.s[i].file), 0, NULL, &r), 0);
        assert_int_equal(r.errors, 0);
    }
    vd_snap_list_free(&l);
    for (int t = 0; t < LIVE_THREADS; t++)
        free(w[t].shadow);
    free(b);
}

/* The header says ids are never reused: deleting the newest snapshot used
 * to give its id (and its file name) to the next one. */
static void test_snapshot_ids_never_reused(void **state)
{
    const char *disk = tpath("ids.vmdk");
    struct vd_create_opts o = {.size = 1 << 20, .type = VD_TYPE_THIN};
    assert_int_equal(vmdk_create(disk, &o), 0);
    int id;
    assert_int_equal(vd_snapshot_create(disk, "a", &id), 0);
    assert_int_equal(id, 1);
    assert_int_equal(vd_snapshot_create(disk, "b", &id), 0);
    assert_int_equal(id, 2);
    assert_int_equal(vd_snapshot_delete(disk, "b"), 0);
    assert_int_equal(vd_snapshot_create(disk, "c", &id), 0);
    assert_int_equal(id, 3);
    struct stat st;
    assert_int_equal(stat(tpath("ids-000003.vmdk"), &st), 0);
    /* all deleted: still not reused */
    assert_int_equal(vd_snapshot_delete(disk, "c"), 0);
    assert_int_equal(vd_snapshot_delete(disk, "a"), 0);
    assert_int_equal(vd_snapshot_create(disk, "d", &id), 0);
    assert_int_equal(id, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_model_random_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_open_switches_under_concurrent_io, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_ids_never_reused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_linked_clone_blocks_delete_until_removed, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
