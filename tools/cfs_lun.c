/* clusterfs lun info: what sg_inq / esxcli storage core device list say
 * about a LUN -- identity, capacity, block sizes, capabilities, paths.
 *
 * Several arguments that reach the same LUN (same VPD 0x83 identity) are
 * one LUN with several paths: each argument is opened alone first to learn
 * its identity, then each group is opened through the multipath engine
 * (lun_open_paths), so every path shows its state (active, standby,
 * failed), counters and own probed capabilities, with the same per-path
 * lines as `clusterfs paths` (cfs_paths.c). An iSCSI argument whose portal
 * cannot be reached joins the group whose URIs name the same target IQN
 * and LUN number, as a failed path. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cfs_paths.h"
#include "json.h"
#include "log.h"
#include "lun.h"
#include "tools.h"
#include "util.h"

static void lun_usage(FILE *f)
{
    fprintf(
        f, "usage: clusterfs lun info [OPTIONS] LUN...\n"
           "\n"
           "Show identity (VPD 0x83 / 0x80), capacity, block sizes, maximum transfer and\n"
           "capabilities of each LUN, and its paths.\n"
           "\n"
           "options:\n"
           "  --json              print a JSON array, one object per LUN\n"
           "  --block-size N      logical block size of file LUNs: 512 (default) or 4096\n"
           "  --initiator IQN     iSCSI initiator name (default iqn.2026-11.org.clusterfs:<host>)\n"
           "  --timeout MS        per-command and login timeout in milliseconds (default 5000)\n"
           "  -h, --help          this help\n"
           "\n"
           "A LUN is iscsi://[user[%%password]@]host[:port]/target-iqn/lun,\n"
           "file:///path[?block_size=4096], or a path to a file or block device.\n");
}

/* Messages logged while opening a LUN are collected, not printed: the
 * command prints one line per failed LUN. */
static void cfs_lun_log_quiet(enum log_level level, const char *msg, void *opaque)
{
    if (level > LOG_LVL_WARN)
        fprintf(stderr, "%s: %s\n", log_program(), msg);
}

/* The reason part of msg: without a leading "<uri>: " (or the file path's). */
static const char *cfs_lun_reason(const char *uri, const char *msg)
{
    const char *cands[3] = {uri, NULL, NULL};
    char *plain = NULL;
    if (!strncmp(uri, "file://", 7)) {
        const char *p = uri + 7;
        if (!strncmp(p, "localhost/", 10))
            p += 9;
        plain = strndup(p, strcspn(p, "?"));
        cands[1] = plain;
    }
    const char *reason = msg;
    for (int i = 0; i < 3; i++) {
        const char *c = cands[i];
        if (!c)
            continue;
        size_t n = strlen(c);
        if (n && !strncmp(msg, c, n) && msg[n] == ':' && msg[n + 1] == ' ') {
            reason = msg + n + 2;
            break;
        }
    }
    /* iSCSI messages name the URI without its password. */
    const char *at = strstr(uri, "://");
    if (reason == msg && at) {
        const char *colon = strstr(msg, ": ");
        if (colon && !strncmp(msg, uri, (size_t)(at - uri) + 3))
            reason = colon + 2;
    }
    free(plain);
    return reason;
}

static const char *cfs_yesno(bool b)
{
    return b ? "yes" : "no";
}

static void cfs_lun_print_text(const char *uri, struct lun *lun)
{
    const struct lun_info *in = lun_get_info(lun);
    char sz[32];
    uint64_t bytes = in->num_blocks * in->block_size;
    printf("%s\n", lun_name(lun));
    printf("   Vendor:                   %s\n", in->vendor);
    printf("   Product:                  %s\n", in->product);
    printf("   Revision:                 %s\n", in->revision);
    printf("   Identity (VPD 0x83):      %s\n", in->id);
    printf("   Serial (VPD 0x80):        %s\n", in->serial[0] ? in->serial : "-");
    printf("   Capacity:                 %llu bytes (%llu blocks, %s)\n", (unsigned long long)bytes,
           (unsigned long long)in->num_blocks, format_size(bytes, sz, sizeof sz));
    printf("   Logical block size:       %u\n", in->block_size);
    printf("   Physical block size:      %u\n", in->physical_block_size);
    if (in->max_transfer_blocks)
        printf("   Max transfer:             %u blocks\n", in->max_transfer_blocks);
    else
        printf("   Max transfer:             no limit reported\n");
    printf("   Compare and write (ATS):  %s\n", cfs_yesno(in->caps.compare_and_write));
    printf("   Persistent reservations:  %s\n", cfs_yesno(in->caps.persistent_reservations));
    printf("   PR type 7 (WE all reg.):  %s\n", cfs_yesno(in->caps.pr_we_all_registrants));
    printf("   PR preempt and abort:     %s\n", cfs_yesno(in->caps.pr_preempt_abort));
    printf("   Unmap:                    %s\n", cfs_yesno(in->caps.unmap));
    printf("   Write same:               %s%s\n", cfs_yesno(in->caps.write_same),
           in->caps.write_same_unmap ? " (with unmap)" : "");
    printf("   Synchronize cache:        %s\n", cfs_yesno(in->caps.sync_cache));
    printf("   FUA:                      %s\n", cfs_yesno(in->caps.fua));
    unsigned n = lun_num_paths(lun);
    if (lun_is_multipath(lun))
        printf("   Paths:                    %u (policy %s)%s\n", n,
               lun_policy_name(lun_get_policy(lun)), lun_is_fenced(lun) ? " FENCED" : "");
    else
        printf("   Paths:                    %u\n", n);
    for (unsigned i = 0; i < n; i++) {
        cfs_path_print_text(lun, i, "      ");
        struct lun_info pi;
        if (lun_path_get_info(lun, i, &pi) < 0) {
            printf("            not probed: never answered since the LUN was opened\n");
            continue;
        }
        printf("            id=%s ats=%s pr=%s pr-we-ar=%s pr-preempt-abort=%s unmap=%s "
               "write-same=%s sync-cache=%s fua=%s\n",
               pi.id, cfs_yesno(pi.caps.compare_and_write),
               cfs_yesno(pi.caps.persistent_reservations), cfs_yesno(pi.caps.pr_we_all_registrants),
               cfs_yesno(pi.caps.pr_preempt_abort), cfs_yesno(pi.caps.unmap),
               cfs_yesno(pi.caps.write_same), cfs_yesno(pi.caps.sync_cache),
               cfs_yesno(pi.caps.fua));
    }
}

static void cfs_lun_caps_json(struct json *j, const char *key, const struct lun_caps *c)
{
    json_obj_begin(j, key);
    json_bool(j, "compare_and_write", c->compare_and_write);
    json_bool(j, "persistent_reservations", c->persistent_reservations);
    json_bool(j, "pr_we_all_registrants", c->pr_we_all_registrants);
    json_bool(j, "pr_preempt_abort", c->pr_preempt_abort);
    json_bool(j, "unmap", c->unmap);
    json_bool(j, "write_same", c->write_same);
    json_bool(j, "write_same_unmap", c->write_same_unmap);
    json_bool(j, "sync_cache", c->sync_cache);
    json_bool(j, "fua", c->fua);
    json_obj_end(j);
}

static void cfs_lun_print_json(struct json *j, struct lun *lun)
{
    const struct lun_info *in = lun_get_info(lun);
    json_obj_begin(j, NULL);
    json_str(j, "lun", lun_name(lun));
    json_str(j, "vendor", in->vendor);
    json_str(j, "product", in->product);
    json_str(j, "revision", in->revision);
    json_str(j, "id", in->id);
    json_str(j, "serial", in->serial);
    json_u64(j, "capacity_bytes", in->num_blocks * in->block_size);
    json_u64(j, "num_blocks", in->num_blocks);
    json_u64(j, "block_size", in->block_size);
    json_u64(j, "physical_block_size", in->physical_block_size);
    json_u64(j, "max_transfer_blocks", in->max_transfer_blocks);
    json_u64(j, "max_unmap_blocks", in->max_unmap_blocks);
    cfs_lun_caps_json(j, "caps", &in->caps);
    json_bool(j, "multipath", lun_is_multipath(lun));
    json_str(j, "policy", lun_policy_name(lun_get_policy(lun)));
    json_bool(j, "fenced", lun_is_fenced(lun));
    json_arr_begin(j, "paths");
    for (unsigned i = 0; i < lun_num_paths(lun); i++) {
        json_obj_begin(j, NULL);
        cfs_path_json_fields(j, lun, i);
        struct lun_info pi;
        if (lun_path_get_info(lun, i, &pi) == 0) {
            json_str(j, "id", pi.id);
            cfs_lun_caps_json(j, "caps", &pi.caps);
        } else {
            json_null(j, "id");
            json_null(j, "caps");
        }
        json_obj_end(j);
    }
    json_arr_end(j);
    json_obj_end(j);
}

/* One LUN argument of `lun info`. */
struct cfs_lun_arg {
    const char *uri;
    struct lun *lun; /* opened alone; NULL if that failed or once reported */
    int rc;
    char *msg; /* the open's error message */
    int group; /* index of the first argument of its LUN; -1 = none */
};

/* The portal could not be reached (not a configuration error). */
static bool cfs_lun_unreachable(int rc)
{
    return rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -ENETUNREACH || rc == -ETIMEDOUT ||
           rc == -ENOTCONN || rc == -ECONNRESET;
}

/* Two iSCSI URIs naming the same target IQN and LUN number (any portal). */
static bool cfs_lun_same_target(const char *a, const char *b)
{
    if (strncasecmp(a, "iscsi://", 8) || strncasecmp(b, "iscsi://", 8))
        return false;
    const char *ta = strchr(a + 8, '/'), *tb = strchr(b + 8, '/');
    return ta && tb && !strcmp(ta, tb);
}

static int cmd_lun_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"block-size", required_argument, NULL, 'b'},
        {"initiator", required_argument, NULL, 'i'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct lun_options opts;
    lun_options_init(&opts);
    opts.read_only = true;
    bool json = false;
    int c;
    uint64_t v;
    char *end;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'b':
            if (parse_size(optarg, &v) < 0 || (v != 512 && v != 4096)) {
                log_err("--block-size: '%s' not supported (512 or 4096)", optarg);
                return 2;
            }
            opts.file_block_size = (uint32_t)v;
            break;
        case 'i':
            if (!*optarg) {
                log_err("--initiator: empty name");
                return 2;
            }
            opts.initiator_name = optarg;
            break;
        case 't':
            errno = 0;
            v = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-' || v == 0 || v > 3600000) {
                log_err("--timeout: '%s' is not a time in milliseconds (1..3600000)", optarg);
                return 2;
            }
            opts.timeout_ms = (unsigned)v;
            opts.connect_timeout_ms = (unsigned)v;
            break;
        case 'h':
            lun_usage(stdout);
            return 0;
        default:
            if (optopt)
                log_err("lun info: unknown or incomplete option '-%c' (try 'clusterfs lun --help')",
                        optopt);
            else
                log_err("lun info: unknown or incomplete option '%s' (try 'clusterfs lun --help')",
                        argv[optind - 1]);
            return 2;
        }
    }
    if (optind >= argc) {
        log_err("lun info: no LUN given (try 'clusterfs lun --help')");
        return 2;
    }
    unsigned n = (unsigned)(argc - optind);
    struct cfs_lun_arg *args = calloc(n, sizeof *args);
    if (!args) {
        log_err("lun info: out of memory");
        return 1;
    }
    int status = 0;
    /* 1. Each argument alone: its identity, or why it failed. */
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        a->uri = argv[optind + (int)i];
        a->group = -1;
        log_clear_last_error();
        log_set_sink(cfs_lun_log_quiet, NULL);
        a->rc = lun_open(a->uri, &opts, &a->lun);
        log_set_sink(NULL, NULL);
        if (a->rc < 0) {
            const char *msg = log_last_error();
            a->msg = strdup(msg[0] ? msg : "");
        }
    }
    /* 2. Groups: same identity; an unreachable iSCSI URI joins the group
     * naming the same target and LUN number. */
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        if (!a->lun)
            continue;
        a->group = (int)i;
        for (unsigned k = 0; k < i; k++) {
            if (args[k].lun && args[k].group == (int)k &&
                !strcmp(lun_get_info(args[k].lun)->id, lun_get_info(a->lun)->id)) {
                a->group = (int)k;
                break;
            }
        }
    }
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        if (a->lun || !cfs_lun_unreachable(a->rc))
            continue;
        for (unsigned k = 0; k < n; k++) {
            if (args[k].lun && cfs_lun_same_target(a->uri, args[k].uri)) {
                a->group = args[k].group;
                break;
            }
        }
    }
    /* 3. Arguments that belong to no LUN: one line each. */
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        if (a->group >= 0)
            continue;
        /* One line: "clusterfs: <uri>: <reason>", password removed. */
        char *name = lun_uri_redact(a->uri);
        const char *msg = a->msg ? a->msg : "";
        const char *reason = msg[0] ? cfs_lun_reason(a->uri, msg) : strerror(-a->rc);
        if (name && reason == msg)
            reason = cfs_lun_reason(name, msg);
        fprintf(stderr, "%s: %s: %s\n", log_program(), name ? name : a->uri, reason);
        free(name);
        status = 1;
    }
    /* 4. One report per LUN, in the order of first appearance. */
    struct json j;
    if (json) {
        json_init(&j, stdout);
        json_arr_begin(&j, NULL);
    }
    for (unsigned g = 0; g < n; g++) {
        if (args[g].group != (int)g)
            continue;
        const char *uris[n];
        unsigned m = 0;
        for (unsigned i = g; i < n; i++)
            if (args[i].group == (int)g)
                uris[m++] = args[i].uri;
        struct lun *lun = args[g].lun;
        if (m > 1) {
            for (unsigned i = g; i < n; i++) {
                if (args[i].group == (int)g && args[i].lun) {
                    lun_close(args[i].lun);
                    args[i].lun = NULL;
                }
            }
            lun = NULL;
            log_clear_last_error();
            log_set_sink(cfs_lun_log_quiet, NULL);
            int rc = lun_open_paths(uris, m, &opts, &lun);
            log_set_sink(NULL, NULL);
            if (rc < 0) {
                const char *msg = log_last_error();
                char *name = lun_uri_redact(uris[0]);
                fprintf(stderr, "%s: %s: %s\n", log_program(), name ? name : uris[0],
                        msg[0] ? msg : strerror(-rc));
                free(name);
                status = 1;
                continue;
            }
        }
        if (json)
            cfs_lun_print_json(&j, lun);
        else
            cfs_lun_print_text(uris[0], lun);
        lun_close(lun);
        args[g].lun = NULL;
    }
    if (json) {
        json_arr_end(&j);
        json_finish(&j);
    }
    for (unsigned i = 0; i < n; i++) {
        lun_close(args[i].lun);
        free(args[i].msg);
    }
    free(args);
    return status;
}

int cmd_lun(int argc, char **argv)
{
    if (argc < 2) {
        lun_usage(stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help") || !strcmp(sub, "help")) {
        lun_usage(stdout);
        return 0;
    }
    if (!strcmp(sub, "info"))
        return cmd_lun_info(argc - 1, argv + 1);
    log_err("lun: unknown subcommand '%s' (try 'clusterfs lun --help')", sub);
    return 2;
}
