/* clusterfs lun info: what sg_inq / esxcli storage core device list say
 * about a LUN -- identity, capacity, block sizes, capabilities, paths.
 *
 * Several arguments that reach the same LUN are one LUN with several paths
 * (cfs_group.c groups them), so every path shows its state (active,
 * standby, failed), counters and own probed capabilities, with the same
 * per-path lines as `clusterfs paths` (cfs_paths.c). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cfs_group.h"
#include "cfs_paths.h"
#include "json.h"
#include "log.h"
#include "lun.h"
#include "opt.h"
#include "tools.h"
#include "util.h"

static void lun_usage(FILE *f)
{
    fprintf(f, "usage: clusterfs lun info [OPTIONS] LUN...\n"
               "\n"
               "Show identity (VPD 0x83 / 0x80), capacity, block sizes, maximum transfer and\n"
               "capabilities of each LUN, and its paths.\n"
               "\n"
               "options:\n"
               "  --json               print a JSON array, one object per LUN\n"
               "  -h, --help           this help\n" OPT_LUN_HELP "\n"
               "A LUN is iscsi://[user[%%password]@]host[:port]/target-iqn/lun,\n"
               "file:///path[?block_size=4096], or a path to a file or block device.\n");
}

static const char *cfs_yesno(bool b)
{
    return b ? "yes" : "no";
}

static void cfs_lun_print_text(struct lun *lun)
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

static int cmd_lun_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        OPT_LUN_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    struct lun_options opts;
    lun_options_init(&opts);
    opts.read_only = true;
    bool json = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int r = opt_lun_parse(c, optarg, &opts);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'h':
            lun_usage(stdout);
            return 0;
        default:
            if (optopt > 0 && optopt < 0x100)
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
    struct cfs_lun_args la;
    int status = cfs_lun_args_group((const char *const *)argv + optind, (unsigned)(argc - optind),
                                    &opts, &la);
    if (status < 0)
        return 1;
    /* One report per LUN, in the order of first appearance. */
    struct json j;
    if (json) {
        json_init(&j, stdout);
        json_arr_begin(&j, NULL);
    }
    for (unsigned g = 0; g < la.n; g++) {
        if (!cfs_lun_args_is_lun(&la, g))
            continue;
        struct lun *lun;
        if (cfs_lun_args_open(&la, g, &lun) < 0) {
            status = 1;
            continue;
        }
        if (json)
            cfs_lun_print_json(&j, lun);
        else
            cfs_lun_print_text(lun);
        lun_close(lun);
    }
    if (json) {
        json_arr_end(&j);
        json_finish(&j);
    }
    cfs_lun_args_free(&la);
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
