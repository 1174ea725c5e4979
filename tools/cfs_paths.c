/* clusterfs paths: the paths of one LUN, their state and statistics, in
 * the manner of `multipath -ll`. No mount exists yet, so the command opens
 * the LUN through the given paths itself (read-only), optionally drives
 * some reads through the selection policy, and prints what it sees. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfs_paths.h"
#include "json.h"
#include "log.h"
#include "lun.h"
#include "opt.h"
#include "tools.h"
#include "util.h"

static void paths_usage(FILE *f)
{
    fprintf(f, "usage: clusterfs paths [OPTIONS] LUN...\n"
               "\n"
               "Open one LUN through every LUN argument (the same LUN through different\n"
               "portals; identities must match) and show each path's state (active,\n"
               "standby, failed), I/O counters, errors and latency percentiles.\n"
               "\n"
               "options:\n"
               "  --json               print one JSON object\n"
               "  --reads N            first issue N reads of 4 KiB through the policy\n"
               "  -h, --help           this help\n" OPT_LUN_HELP);
}

static void paths_log_quiet(enum log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    if (level > LOG_LVL_WARN)
        fprintf(stderr, "%s: %s\n", log_program(), msg);
}

void cfs_path_print_text(struct lun *lun, unsigned i, const char *indent)
{
    struct lun_path_stats st;
    unsigned n = lun_num_paths(lun);
    if (lun_path_get_stats(lun, i, &st) < 0)
        return;
    printf("%s%s %u %-5s %s %s%s reads=%llu writes=%llu other=%llu bytes=%llu errors=%llu "
           "failures=%llu lat_p50=%lluus lat_p99=%lluus pings=%llu nop_misses=%llu\n",
           indent, i + 1 == n ? "`-" : "|-", i, lun_path_kind(lun, i), lun_path_name(lun, i),
           lun_path_state_name(st.state), st.held ? "(held)" : "", (unsigned long long)st.reads,
           (unsigned long long)st.writes, (unsigned long long)st.others,
           (unsigned long long)(st.read_bytes + st.write_bytes), (unsigned long long)st.errors,
           (unsigned long long)st.failures,
           (unsigned long long)lun_lat_percentile(st.lat_hist, 0.5),
           (unsigned long long)lun_lat_percentile(st.lat_hist, 0.99), (unsigned long long)st.pings,
           (unsigned long long)st.nop_misses);
    if (st.last_error[0])
        printf("%s      last failure: %s\n", indent, st.last_error);
}

void cfs_path_json_fields(struct json *j, struct lun *lun, unsigned i)
{
    struct lun_path_stats st;
    if (lun_path_get_stats(lun, i, &st) < 0)
        return;
    json_u64(j, "index", i);
    json_str(j, "kind", lun_path_kind(lun, i));
    json_str(j, "name", lun_path_name(lun, i));
    json_str(j, "state", lun_path_state_name(st.state));
    json_bool(j, "held", st.held);
    json_u64(j, "inflight", st.inflight);
    json_u64(j, "reads", st.reads);
    json_u64(j, "writes", st.writes);
    json_u64(j, "others", st.others);
    json_u64(j, "read_bytes", st.read_bytes);
    json_u64(j, "write_bytes", st.write_bytes);
    json_u64(j, "errors", st.errors);
    json_u64(j, "failures", st.failures);
    json_u64(j, "state_age_ms", st.state_age_ms);
    json_u64(j, "lat_p50_us", lun_lat_percentile(st.lat_hist, 0.5));
    json_u64(j, "lat_p99_us", lun_lat_percentile(st.lat_hist, 0.99));
    json_u64(j, "pings", st.pings);
    json_u64(j, "nop_misses", st.nop_misses);
    json_str(j, "last_error", st.last_error);
}

static void paths_print_text(struct lun *lun)
{
    const struct lun_info *in = lun_get_info(lun);
    char sz[32];
    unsigned n = lun_num_paths(lun);
    printf("%s %s,%s size=%s policy=%s paths=%u queued=%u%s\n", in->id, in->vendor, in->product,
           format_size(in->num_blocks * in->block_size, sz, sizeof sz),
           lun_policy_name(lun_get_policy(lun)), n, lun_queued_ios(lun),
           lun_is_fenced(lun) ? " FENCED" : "");
    for (unsigned i = 0; i < n; i++)
        cfs_path_print_text(lun, i, "");
}

static void paths_print_json(struct lun *lun)
{
    const struct lun_info *in = lun_get_info(lun);
    struct json j;
    json_init(&j, stdout);
    json_obj_begin(&j, NULL);
    json_str(&j, "lun", lun_name(lun));
    json_str(&j, "id", in->id);
    json_str(&j, "vendor", in->vendor);
    json_str(&j, "product", in->product);
    json_u64(&j, "capacity_bytes", in->num_blocks * in->block_size);
    json_str(&j, "policy", lun_policy_name(lun_get_policy(lun)));
    json_u64(&j, "queued", lun_queued_ios(lun));
    json_bool(&j, "fenced", lun_is_fenced(lun));
    json_arr_begin(&j, "paths");
    for (unsigned i = 0; i < lun_num_paths(lun); i++) {
        json_obj_begin(&j, NULL);
        cfs_path_json_fields(&j, lun, i);
        json_obj_end(&j);
    }
    json_arr_end(&j);
    json_obj_end(&j);
    json_finish(&j);
}

int cmd_paths(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"reads", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        OPT_LUN_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    struct lun_options opts;
    lun_options_init(&opts);
    opts.read_only = true;
    opts.multipath = true;
    bool json = false;
    unsigned reads = 0;
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
        case 'n':
            if (opt_uint("--reads", optarg, 0, 10000000, &reads) < 0)
                return 2;
            break;
        case 'h':
            paths_usage(stdout);
            return 0;
        default:
            log_err("paths: unknown or incomplete option '%s' (try 'clusterfs paths --help')",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind >= argc) {
        log_err("paths: no LUN given (try 'clusterfs paths --help')");
        return 2;
    }
    struct lun *lun = NULL;
    log_clear_last_error();
    log_set_sink(paths_log_quiet, NULL);
    int rc =
        lun_open_paths((const char *const *)argv + optind, (unsigned)(argc - optind), &opts, &lun);
    log_set_sink(NULL, NULL);
    if (rc < 0) {
        const char *msg = log_last_error();
        fprintf(stderr, "%s: %s\n", log_program(), msg[0] ? msg : strerror(-rc));
        return 1;
    }
    int status = 0;
    if (reads) {
        uint32_t bs = lun_block_size(lun);
        uint32_t nb = 4096 / bs ? 4096 / bs : 1;
        uint64_t span = lun_get_info(lun)->num_blocks / nb;
        void *buf = malloc((size_t)nb * bs);
        for (unsigned k = 0; buf && k < reads; k++) {
            rc = lun_read(lun, (k % (span ? span : 1)) * nb, nb, buf);
            if (rc < 0) {
                fprintf(stderr, "%s: %s: read failed: %s\n", log_program(), lun_name(lun),
                        strerror(-rc));
                status = 1;
                break;
            }
        }
        free(buf);
    }
    if (json)
        paths_print_json(lun);
    else
        paths_print_text(lun);
    lun_close(lun);
    return status;
}
