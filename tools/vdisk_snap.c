/* vdisk snapshot create|list|revert|delete, vdisk clone: thin wrappers over
 * vdisk/vdisk.h. Exit status: 0 success, 1 failure, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "log.h"
#include "vdisk.h"
#include "tools.h"
#include "vdisk_ctl.h"
#include "util.h"

static void snap_usage(FILE *f)
{
    fprintf(f, "usage: vdisk snapshot create FILE NAME   freeze FILE's contents as NAME\n"
               "       vdisk snapshot list [--json] FILE\n"
               "       vdisk snapshot revert FILE NAME   drop the current state, go back to NAME\n"
               "       vdisk snapshot delete FILE NAME   merge NAME into its children\n"
               "FILE keeps its path; frozen states are FILE's stem + \"-NNNNNN.vmdk\".\n");
}

static void clone_usage(FILE *f)
{
    fprintf(f, "usage: vdisk clone [--linked] [--type thin|thick] [--progress] SRC DST\n"
               "  full clone (default): a standalone copy of what SRC reads, sparse-aware\n"
               "  --linked: freeze SRC's current state (SRC continues on a new delta) and\n"
               "            make DST a delta on the frozen image\n");
}

static const char *snap_name_of(const struct vd_snap_list *l, int id)
{
    for (int i = 0; i < l->n; i++)
        if (l->s[i].id == id)
            return l->s[i].name;
    return NULL;
}

static int snap_list(const char *path, bool json)
{
    struct vd_snap_list l;
    if (vd_snapshot_list(path, &l) < 0)
        return 1;
    if (json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "disk", path);
        if (l.current)
            json_u64(&j, "current", (uint64_t)l.current);
        else
            json_null(&j, "current");
        json_str(&j, "current_name", snap_name_of(&l, l.current));
        json_arr_begin(&j, "snapshots");
        for (int i = 0; i < l.n; i++) {
            const struct vd_snap *s = &l.s[i];
            char cid[16];
            snprintf(cid, sizeof(cid), "%08x", s->cid);
            json_obj_begin(&j, NULL);
            json_u64(&j, "id", (uint64_t)s->id);
            json_str(&j, "name", s->name);
            json_str(&j, "file", s->file);
            json_str(&j, "cid", cid);
            if (s->parent)
                json_u64(&j, "parent", (uint64_t)s->parent);
            else
                json_null(&j, "parent");
            json_str(&j, "parent_name", snap_name_of(&l, s->parent));
            json_i64(&j, "created", s->created);
            json_bool(&j, "current", s->id == l.current);
            json_obj_end(&j);
        }
        json_arr_end(&j);
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("%-4s %-24s %-20s %-8s %s\n", "ID", "NAME", "CREATED (UTC)", "PARENT", "FILE");
        for (int i = 0; i < l.n; i++) {
            const struct vd_snap *s = &l.s[i];
            char when[32] = "-";
            time_t t = (time_t)s->created;
            struct tm tm;
            if (gmtime_r(&t, &tm))
                strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
            char par[16] = "-";
            if (s->parent)
                snprintf(par, sizeof(par), "%d", s->parent);
            printf("%-4d %-24s %-20s %-8s %s%s\n", s->id, s->name, when, par, s->file,
                   s->id == l.current ? "  <- current state sits here" : "");
        }
        if (!l.n)
            printf("(no snapshots)\n");
    }
    vd_snap_list_free(&l);
    return 0;
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+jh", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'h':
            snap_usage(stdout);
            return 0;
        default:
            snap_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        snap_usage(stderr);
        return 2;
    }
    const char *sub = argv[optind++];
    /* options may also follow the subcommand */
    while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'h':
            snap_usage(stdout);
            return 0;
        default:
            snap_usage(stderr);
            return 2;
        }
    }
    int nargs = argc - optind;
    char **a = argv + optind;
    int rc;
    if (strcmp(sub, "list") == 0 && nargs == 1)
        return snap_list(a[0], json);
    if (nargs != 2 || json) {
        snap_usage(stderr);
        return 2;
    }
    bool known =
        strcmp(sub, "create") == 0 || strcmp(sub, "revert") == 0 || strcmp(sub, "delete") == 0;
    if (!known) {
        log_err("snapshot: unknown subcommand \"%s\" (create, list, revert, delete)", sub);
        return 2;
    }
    /* A disk that a vdisk server holds: the server does it, between two
     * requests. Otherwise here, under the disk's image lock (refused while
     * anyone else has the disk open). Never both. */
    int id = 0;
    int served = ctl_snapshot_request(a[0], sub, a[1], &rc, &id);
    if (served < 0)
        return 1;
    const char *how = served ? " (live, by the server holding it)" : "";
    if (strcmp(sub, "create") == 0) {
        if (!served)
            rc = vd_snapshot_create(a[0], a[1], &id);
        if (rc == 0)
            printf("%s: snapshot \"%s\" (id %d) created%s\n", a[0], a[1], id, how);
    } else if (strcmp(sub, "revert") == 0) {
        if (!served)
            rc = vd_snapshot_revert(a[0], a[1]);
        if (rc == 0)
            printf("%s: reverted to snapshot \"%s\"%s\n", a[0], a[1], how);
    } else {
        if (!served)
            rc = vd_snapshot_delete(a[0], a[1]);
        if (rc == 0)
            printf("%s: snapshot \"%s\" deleted%s\n", a[0], a[1], how);
    }
    return rc < 0 ? 1 : 0;
}

int cmd_clone(int argc, char **argv)
{
    static const struct option opts[] = {{"linked", no_argument, NULL, 'l'},
                                         {"type", required_argument, NULL, 't'},
                                         {"progress", no_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct vd_clone_opts o = {.type = VD_TYPE_THIN};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "lt:ph", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            o.linked = true;
            break;
        case 't':
            if (strcmp(optarg, "thin") == 0 || strcmp(optarg, "sparse") == 0) {
                o.type = VD_TYPE_THIN;
            } else if (strcmp(optarg, "thick") == 0 || strcmp(optarg, "flat") == 0) {
                o.type = VD_TYPE_THICK;
            } else {
                log_err("clone: unknown --type \"%s\" (thin, thick)", optarg);
                return 2;
            }
            break;
        case 'p':
            o.progress = true;
            break;
        case 'h':
            clone_usage(stdout);
            return 0;
        default:
            clone_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        clone_usage(stderr);
        return 2;
    }
    const char *src = argv[optind], *dst = argv[optind + 1];
    int rc = vd_clone(src, dst, &o);
    if (rc == 0)
        printf("%s: %s clone of %s\n", dst, o.linked ? "linked" : "full", src);
    return rc < 0 ? 1 : 0;
}
