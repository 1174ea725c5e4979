/* volhost: one host of a test cluster sharing a volume (tests/volume).
 *
 *   volhost LUN NAME work N    mkdir /shared and /NAME; for i < N: create
 *                              /shared/NAME-i (4 KiB), create /NAME/p-i;
 *                              i % 3 == 0: rename /NAME/p-i to
 *                              /shared/NAME-r-i; i % 5 == 0: unlink
 *                              /shared/NAME-i. Prints "DONE".
 *   volhost LUN NAME race NAME2 create /shared/NAME2 with O_EXCL: prints
 *                              "CREATED" or "EXISTS"
 *   volhost LUN NAME list      the tree, one "path size" line per entry,
 *                              in name order
 *   volhost LUN NAME hold [S]  create /NAME-open, write 3 MiB to it, keep it
 *                              open, prints "HOLDING"; reads it back every
 *                              100 ms for S seconds (default: until killed),
 *                              then closes it and prints "RELEASED"
 *   volhost LUN NAME rm PATH   unlink /PATH; prints "REMOVED"
 *   volhost LUN NAME die-holding FILE
 *                              inside one operation (holding the metadata
 *                              lock): create /FILE, commit it to the
 *                              journal, then SIGKILL itself (test of the
 *                              recovery of a host that died holding the lock)
 *
 * Each process is one host: its own LUN session, its own heartbeat slot and
 * journal. The io_timeout is the volume's (format it with a short one).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <signal.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "cfs_internal.h"
#include "volume.h"

static struct cfs_volume *v;

static int must(int r, const char *what)
{
    if (r < 0) {
        fprintf(stderr, "volhost: %s: %s\n", what, strerror(-r));
        exit(1);
    }
    return r;
}

static cfs_ino_t mkdir_p(cfs_ino_t parent, const char *name)
{
    struct cfs_attr a;
    int r = cfs_mkdir(v, parent, name, 0755, 0, 0, &a);
    if (r == -EEXIST)
        r = cfs_lookup(v, parent, name, &a);
    must(r, name);
    return a.ino;
}

static void create_file(cfs_ino_t dir, const char *name, size_t size)
{
    static char buf[4096];
    memset(buf, name[0], sizeof(buf));
    struct cfs_attr a;
    struct cfs_file *fh;
    must(cfs_create(v, dir, name, 0644, O_RDWR | O_EXCL, 0, 0, &a, &fh), name);
    if (size)
        must((int)cfs_write(fh, buf, size, 0), "write");
    must(cfs_release(fh), "release");
    cfs_forget(v, a.ino, 1);
}

struct ent {
    char name[256];
    cfs_ino_t ino;
    uint64_t off;
    int got;
};

static int one(void *ctx, const char *name, cfs_ino_t ino, unsigned dt, uint64_t off)
{
    struct ent *e = ctx;
    if (e->got)
        return 1;
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->ino = ino;
    e->off = off;
    e->got = 1;
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list(cfs_ino_t dir, const char *prefix)
{
    char **names = NULL;
    cfs_ino_t *inos = NULL;
    size_t n = 0;
    uint64_t off = 0;
    for (;;) {
        struct ent e = {0};
        must(cfs_readdir(v, dir, off, one, &e), "readdir");
        if (!e.got)
            break;
        off = e.off;
        if (!strcmp(e.name, ".") || !strcmp(e.name, ".."))
            continue;
        names = realloc(names, (n + 1) * sizeof(*names));
        inos = realloc(inos, (n + 1) * sizeof(*inos));
        names[n] = malloc(strlen(prefix) + strlen(e.name) + 2 + 20);
        sprintf(names[n], "%s/%s", prefix, e.name);
        inos[n++] = e.ino;
    }
    /* sort names, keep inos aligned: sort an index */
    char **sorted = malloc(n * sizeof(*sorted));
    memcpy(sorted, names, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp);
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        while (names[k] != sorted[i])
            k++;
        struct cfs_attr a;
        must(cfs_getattr(v, inos[k], &a), sorted[i]);
        printf("%s %llu\n", sorted[i], (unsigned long long)a.size);
        if (S_ISDIR(a.mode))
            list(inos[k], sorted[i]);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(inos);
    free(sorted);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: volhost LUN NAME work N | race NAME2 | list | hold\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    log_set_program(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct lun_options o;
    lun_options_init(&o);
    o.host_name = argv[2];
    struct lun *lun;
    must(lun_open(argv[1], &o, &lun), "open LUN");
    struct cfs_open_opts oo = {.host_name = argv[2]};
    must(cfs_volume_open(lun, &oo, &v), "open volume");
    cfs_ino_t root = cfs_root(v);
    const char *cmd = argv[3];
    if (!strcmp(cmd, "work") && argc > 4) {
        int n = atoi(argv[4]);
        cfs_ino_t shared = mkdir_p(root, "shared"), mine = mkdir_p(root, argv[2]);
        char name[300], name2[300];
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof(name), "%s-%d", argv[2], i);
            create_file(shared, name, 4096);
            snprintf(name, sizeof(name), "p-%d", i);
            create_file(mine, name, 100);
            if (i % 3 == 0) {
                snprintf(name2, sizeof(name2), "%s-r-%d", argv[2], i);
                must(cfs_rename(v, mine, name, shared, name2, 0), "rename");
            }
            if (i % 5 == 0) {
                snprintf(name, sizeof(name), "%s-%d", argv[2], i);
                must(cfs_unlink(v, shared, name), "unlink");
            }
        }
        must(cfs_sync(v), "sync");
        printf("DONE\n");
    } else if (!strcmp(cmd, "race") && argc > 4) {
        cfs_ino_t shared = mkdir_p(root, "shared");
        struct cfs_attr a;
        struct cfs_file *fh;
        int r = cfs_create(v, shared, argv[4], 0644, O_RDWR | O_EXCL, 0, 0, &a, &fh);
        if (r == -EEXIST) {
            printf("EXISTS\n");
        } else {
            must(r, "create");
            cfs_release(fh);
            printf("CREATED\n");
        }
    } else if (!strcmp(cmd, "list")) {
        list(root, "");
    } else if (!strcmp(cmd, "hold")) {
        struct cfs_attr a;
        struct cfs_file *fh;
        char name[300];
        static char w[3 << 20], r[3 << 20];
        for (size_t i = 0; i < sizeof(w); i++)
            w[i] = (char)(i * 7 + (i >> 12));
        snprintf(name, sizeof(name), "%s-open", argv[2]);
        must(cfs_create(v, root, name, 0644, O_RDWR, 0, 0, &a, &fh), "create");
        must((int)cfs_write(fh, w, sizeof(w), 0), "write");
        must(cfs_fsync(fh, false), "fsync");
        printf("HOLDING\n");
        long rounds = argc > 4 ? atol(argv[4]) * 10 : -1;
        for (long i = 0; rounds < 0 || i < rounds; i++) {
            usleep(100000);
            if (cfs_read(fh, r, sizeof(r), 0) != (ssize_t)sizeof(r) || memcmp(r, w, sizeof(r))) {
                fprintf(stderr, "volhost: %s: read back differs\n", name);
                return 1;
            }
        }
        must(cfs_release(fh), "release");
        cfs_forget(v, a.ino, 1);
        printf("RELEASED\n");
    } else if (!strcmp(cmd, "die-holding") && argc > 4) {
        struct cfs_attr a;
        must(cfs_op_begin(v), "lock");
        must(cfsi_mknod(v, root, argv[4], S_IFREG | 0644, 0, 0, 0, &a), argv[4]);
        pthread_mutex_lock(&v->mtx);
        must(cfs_txn_commit(v), "commit");
        pthread_mutex_unlock(&v->mtx);
        printf("DYING\n");
        fflush(stdout);
        raise(SIGKILL);
    } else if (!strcmp(cmd, "rm") && argc > 4) {
        must(cfs_unlink(v, root, argv[4]), argv[4]);
        printf("REMOVED\n");
    } else {
        fprintf(stderr, "volhost: unknown command %s\n", cmd);
        return 2;
    }
    must(cfs_volume_close(v), "close");
    lun_close(lun);
    return 0;
}
