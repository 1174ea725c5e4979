/* clusterfs locks: the hosts and held locks of a lockspace, as this observer
 * sees them; clusterfs locks init: lay a lockspace on a LUN. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfs_group.h"
#include "json.h"
#include "lockspace.h"
#include "log.h"
#include "lun.h"
#include "opt.h"
#include "tools.h"
#include "util.h"

static void locks_usage(FILE *f)
{
    fprintf(
        f, "usage: clusterfs locks [--json] [--offset N] [--samples N | --settle] LUN...\n"
           "       clusterfs locks init [--offset N] [--io-timeout T] [--hosts N] [--locks N] LUN\n"
           "\n"
           "Show the hosts of the lockspace at block --offset (default 0) of each LUN\n"
           "(name, slot, state, heartbeat age as this observer measures it) and its\n"
           "held locks (mode, owners, version). LUN arguments that reach the same LUN\n"
           "(same identity) are its paths: one lockspace, shown once. The heartbeat\n"
           "region is read --samples times (default 2), one renewal period apart: a\n"
           "host is 'live' once its slot changed while we watched, 'unknown' before,\n"
           "'dead' only after the dead time. --settle samples until no host is\n"
           "'unknown' (at most the dead time plus two renewals), so dead hosts show as\n"
           "'dead'. HEARTBEAT AGE is the time since this observer saw the slot change;\n"
           "'>=' when it never saw it change (the age is then only a lower bound).\n"
           "\n"
           "init lays a fresh lockspace: --io-timeout (default 2 s; a bare number is\n"
           "seconds, or 500ms; every other timeout derives from it), heartbeat slots\n"
           "--hosts (default 256, 1..4096), lock records --locks (default 64). Only on\n"
           "a LUN no host uses.\n"
           "\n"
           "options:\n"
           "  --json               JSON output\n"
           "  -h, --help           this help\n" OPT_LUN_HELP);
}

static int open_lun(const char *uri, const struct lun_options *o, struct lun **out)
{
    int r = lun_open(uri, o, out);
    if (r < 0)
        fprintf(stderr, "clusterfs locks: %s: cannot open: %s\n", uri, strerror(-r));
    return r;
}

static int locks_init(int argc, char **argv)
{
    static const struct option lo[] = {{"offset", 1, 0, 'o'}, {"io-timeout", 1, 0, 'i'},
                                       {"hosts", 1, 0, 'H'},  {"locks", 1, 0, 'L'},
                                       {"help", 0, 0, 'h'},   OPT_LUN_LONGOPTS,
                                       {0, 0, 0, 0}};
    uint64_t offset = 0;
    struct lun_options o;
    lun_options_init(&o);
    struct ls_format_params p = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        int r = opt_lun_parse(c, optarg, &o);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        switch (c) {
        case 'o':
            if (opt_u64("--offset", optarg, 0, UINT64_MAX / 2, &offset) < 0)
                return 2;
            break;
        case 'i':
            if (opt_duration_ms("--io-timeout", optarg, 1000, 10, 600000, &p.io_timeout_ms) < 0)
                return 2;
            break;
        case 'H':
            if (opt_uint("--hosts", optarg, LS_MAX_HOSTS_MIN, LS_MAX_HOSTS_MAX, &p.max_hosts) < 0)
                return 2;
            break;
        case 'L':
            if (opt_uint("--locks", optarg, 1, 1000000, &p.max_locks) < 0)
                return 2;
            break;
        case 'h':
            locks_usage(stdout);
            return 0;
        default:
            locks_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 1) {
        locks_usage(stderr);
        return 2;
    }
    struct lun *lun;
    if (open_lun(argv[optind], &o, &lun) < 0)
        return 1;
    int r = lockspace_format(lun, offset, &p);
    if (r == 0) {
        struct ls_timeouts t;
        ls_timeouts_derive(p.io_timeout_ms ? p.io_timeout_ms : LS_DEFAULT_IO_TIMEOUT_MS, &t);
        printf("%s: lockspace at block %" PRIu64 ": %" PRIu64 " blocks, io_timeout %u ms "
               "(renew %u ms, self-fence %u ms, dead %u ms)\n",
               lun_name(lun), offset, lockspace_size_blocks(&p), t.io_timeout_ms, t.renew_ms,
               t.fence_ms, t.dead_ms);
    }
    lun_close(lun);
    return r < 0;
}

static const char *owner_name(const struct ls_status *st, uint32_t slot)
{
    for (unsigned i = 0; i < st->nhosts; i++)
        if (st->hosts[i].info.slot == slot)
            return st->hosts[i].info.name;
    return "?";
}

static void print_text(struct lun *lun, uint64_t offset, const struct ls_status *st)
{
    printf("%s: lockspace at block %" PRIu64 ": io_timeout %u ms, dead after %u ms, %u slots, "
           "%s\n",
           lun_name(lun), offset, st->timeouts.io_timeout_ms, st->timeouts.dead_ms, st->max_hosts,
           st->caw ? "compare-and-write" : "paxos fallback (no COMPARE AND WRITE)");
    if (st->pr_fencing)
        printf("  fencing: persistent reservations (a dead host's key is preempted before its "
               "recovery)\n");
    else
        printf("  fencing: none -- the LUN has no persistent reservations: a dead or paused "
               "host is not cut off, safety rests on timing alone\n");
    if (lun_num_paths(lun) > 1)
        printf("  paths: %u (%s)\n", lun_num_paths(lun), lun_policy_name(lun_get_policy(lun)));
    printf("  %-5s %-20s %-10s %-10s %-10s %s\n", "SLOT", "HOST", "STATE", "GEN", "COUNTER",
           "HEARTBEAT AGE");
    for (unsigned i = 0; i < st->nhosts; i++) {
        const struct ls_status_host *h = &st->hosts[i];
        if (h->state == LS_HOST_CORRUPT) {
            printf("  %-5u %-20s %-10s %-10s %-10s -\n", h->info.slot, "-", "corrupt", "-", "-");
            continue;
        }
        /* Unknown / recovering (never seen change): the age is a lower bound. */
        bool lower = h->state == LS_HOST_UNKNOWN || !h->changed;
        printf("  %-5u %-20s %-10s %-10u %-10" PRIu64 " %s%.1fs\n", h->info.slot, h->info.name,
               ls_host_state_name(h->state), h->info.generation, h->counter,
               lower && !h->self ? ">=" : "", (double)h->age_ms / 1000.0);
    }
    if (!st->nhosts)
        printf("  (no hosts)\n");
    printf("  %-5s %-16s %-13s %-8s %s\n", "LOCK", "NAME", "MODE", "VERSION", "OWNERS");
    for (unsigned i = 0; i < st->nlocks; i++) {
        const struct ls_status_lock *l = &st->locks[i];
        if (l->error) {
            printf("  %-5u %-16s %-13s %-8s (%s)\n", l->index, "-", "corrupt", "-",
                   strerror(-l->error));
            continue;
        }
        printf("  %-5u %-16s %-13s %-8" PRIu64 " ", l->index, l->name, ls_lock_mode_name(l->mode),
               l->version);
        for (unsigned k = 0; k < l->nowners; k++)
            printf("%s%s(slot %u gen %u)", k ? ", " : "", owner_name(st, l->owner_slot[k]),
                   l->owner_slot[k], l->owner_gen[k]);
        printf("\n");
    }
    if (!st->nlocks)
        printf("  (no locks held)\n");
}

static void print_json(struct json *j, struct lun *lun, uint64_t offset, const struct ls_status *st)
{
    json_obj_begin(j, NULL);
    json_str(j, "lun", lun_name(lun));
    json_arr_begin(j, "paths");
    for (unsigned i = 0; i < lun_num_paths(lun); i++)
        json_str(j, NULL, lun_path_name(lun, i));
    json_arr_end(j);
    json_u64(j, "offset", offset);
    json_u64(j, "io_timeout_ms", st->timeouts.io_timeout_ms);
    json_u64(j, "renew_ms", st->timeouts.renew_ms);
    json_u64(j, "fence_ms", st->timeouts.fence_ms);
    json_u64(j, "dead_ms", st->timeouts.dead_ms);
    json_u64(j, "max_hosts", st->max_hosts);
    json_str(j, "atomic", st->caw ? "compare-and-write" : "paxos");
    json_str(j, "fencing", st->pr_fencing ? "persistent-reservations" : "none");
    json_arr_begin(j, "hosts");
    for (unsigned i = 0; i < st->nhosts; i++) {
        const struct ls_status_host *h = &st->hosts[i];
        json_obj_begin(j, NULL);
        json_u64(j, "slot", h->info.slot);
        json_str(j, "name", h->info.name);
        json_str(j, "state", ls_host_state_name(h->state));
        json_u64(j, "generation", h->info.generation);
        json_u64(j, "counter", h->counter);
        json_u64(j, "heartbeat_age_ms", h->age_ms);
        json_bool(j, "age_is_lower_bound",
                  (h->state == LS_HOST_UNKNOWN || !h->changed) && !h->self);
        json_obj_end(j);
    }
    json_arr_end(j);
    json_arr_begin(j, "locks");
    for (unsigned i = 0; i < st->nlocks; i++) {
        const struct ls_status_lock *l = &st->locks[i];
        json_obj_begin(j, NULL);
        json_u64(j, "index", l->index);
        json_u64(j, "lba", l->lba);
        if (l->error) {
            json_str(j, "error", strerror(-l->error));
        } else {
            json_str(j, "name", l->name);
            json_str(j, "mode", ls_lock_mode_name(l->mode));
            json_u64(j, "version", l->version);
            json_arr_begin(j, "owners");
            for (unsigned k = 0; k < l->nowners; k++) {
                json_obj_begin(j, NULL);
                json_u64(j, "slot", l->owner_slot[k]);
                json_u64(j, "generation", l->owner_gen[k]);
                json_str(j, "name", owner_name(st, l->owner_slot[k]));
                json_obj_end(j);
            }
            json_arr_end(j);
        }
        json_obj_end(j);
    }
    json_arr_end(j);
    json_obj_end(j);
}

int cmd_locks(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "init"))
        return locks_init(argc - 1, argv + 1);
    static const struct option lo[] = {
        {"json", 0, 0, 'j'},   {"offset", 1, 0, 'o'}, {"samples", 1, 0, 's'},
        {"settle", 0, 0, 'S'}, {"help", 0, 0, 'h'},   OPT_LUN_LONGOPTS,
        {0, 0, 0, 0}};
    bool json = false;
    uint64_t offset = 0;
    unsigned samples = 2;
    struct lun_options o;
    lun_options_init(&o);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        int r = opt_lun_parse(c, optarg, &o);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'o':
            if (opt_u64("--offset", optarg, 0, UINT64_MAX / 2, &offset) < 0)
                return 2;
            break;
        case 's':
            if (opt_uint("--samples", optarg, 1, 1000, &samples) < 0)
                return 2;
            break;
        case 'S':
            samples = LS_STATUS_SETTLE;
            break;
        case 'h':
            locks_usage(stdout);
            return 0;
        default:
            locks_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        locks_usage(stderr);
        return 2;
    }
    /* Paths of one LUN are one LUN: one lockspace, shown once. */
    struct cfs_lun_args la;
    int rc =
        cfs_lun_args_group((const char *const *)argv + optind, (unsigned)(argc - optind), &o, &la);
    if (rc < 0)
        return 1;
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
            rc = 1;
            continue;
        }
        struct ls_open_opts oo = {.no_fencing = true};
        struct lockspace *ls;
        int r = lockspace_open(lun, offset, &oo, &ls);
        if (r == 0) {
            struct ls_status st;
            r = lockspace_status(ls, samples, &st);
            if (r == 0) {
                if (json)
                    print_json(&j, lun, offset, &st);
                else
                    print_text(lun, offset, &st);
                ls_status_free(&st);
            }
            lockspace_close(ls);
        }
        if (r < 0) {
            fprintf(stderr, "clusterfs locks: %s: %s\n", lun_name(lun), strerror(-r));
            rc = 1;
        }
        lun_close(lun);
    }
    if (json) {
        json_arr_end(&j);
        json_finish(&j);
    }
    cfs_lun_args_free(&la);
    return rc;
}
