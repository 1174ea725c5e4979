/* clusterfs format | status | check: the volume on a LUN. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "lockspace.h"
#include "log.h"
#include "lun.h"
#include "opt.h"
#include "tools.h"
#include "util.h"
#include "volume.h"

static int open_luns(char **uris, int n, uint32_t bs, bool ro, struct lun **out)
{
    struct lun_options o;
    lun_options_init(&o);
    o.read_only = ro;
    if (bs)
        o.file_block_size = bs;
    int r = n == 1 ? lun_open(uris[0], &o, out)
                   : lun_open_paths((const char *const *)uris, (unsigned)n, &o, out);
    if (r < 0)
        log_err("%s%s: cannot open: %s", uris[0], n > 1 ? " (and its other paths)" : "",
                strerror(-r));
    return r;
}

static void uuid_str(const uint8_t u[16], char *out)
{
    for (int i = 0, o = 0; i < 16; i++) {
        o += sprintf(out + o, "%02x", u[i]);
        if (i == 3 || i == 5 || i == 7 || i == 9)
            out[o++] = '-';
    }
}

/* ---- format ----------------------------------------------------------------- */

static void format_usage(FILE *f)
{
    fprintf(f, "usage: clusterfs format [--label L] [--max-hosts N] [--block-size SIZE]\n"
               "                        [--io-timeout S] [--journal-size SIZE] [--size SIZE]\n"
               "                        [--lun-block-size 512|4096] [--force] LUN...\n"
               "\n"
               "Lay a clustered volume on the whole LUN (several paths of one LUN may be given).\n"
               "Resources are laid out on demand, so formatting takes the same few milliseconds\n"
               "whatever the size. Refuses a LUN that holds a volume or a lockspace (unless\n"
               "--force) and one too small for the host journals.\n"
               "\n"
               "  --label L          up to 63 bytes\n"
               "  --max-hosts N      hosts that may mount it at once (default 64, at most 4096)\n"
               "  --block-size SIZE  file block, 64K .. 1M, a power of two (default 1M)\n"
               "  --io-timeout S     the lockspace's io_timeout in seconds (default 2)\n"
               "  --journal-size SIZE  per host (default 8M, at least 1M)\n"
               "  --size SIZE        create (or grow) a file LUN of this size first\n"
               "  --lun-block-size N logical block size of a file LUN (512 or 4096)\n"
               "  --force            overwrite an existing volume\n");
}

int cmd_format(int argc, char **argv)
{
    static const struct option lo[] = {{"label", 1, 0, 'l'},        {"max-hosts", 1, 0, 'H'},
                                       {"block-size", 1, 0, 'b'},   {"io-timeout", 1, 0, 'i'},
                                       {"size", 1, 0, 's'},         {"force", 0, 0, 'f'},
                                       {"journal-size", 1, 0, 'j'}, {"lun-block-size", 1, 0, 'L'},
                                       {"help", 0, 0, 'h'},         {0, 0, 0, 0}};
    struct cfs_format_params p = {0};
    uint64_t size = 0, v64;
    uint32_t lbs = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'l':
            p.label = optarg;
            break;
        case 'H':
            if (opt_uint("--max-hosts", optarg, 1, 4096, &p.max_hosts) < 0)
                return 2;
            break;
        case 'b':
            if (opt_size("--block-size", optarg, 64 << 10, 1 << 20, &v64) < 0)
                return 2;
            p.block_size = (uint32_t)v64;
            break;
        case 'j':
            if (opt_size("--journal-size", optarg, 1 << 20, 1ull << 40, &p.journal_bytes) < 0)
                return 2;
            break;
        case 'i':
            if (opt_duration_ms("--io-timeout", optarg, 1000, 10, 600000, &p.io_timeout_ms) < 0)
                return 2;
            break;
        case 's':
            if (opt_size("--size", optarg, 1, UINT64_MAX, &size) < 0)
                return 2;
            break;
        case 'L':
            if (opt_block_size("--lun-block-size", optarg, &lbs) < 0)
                return 2;
            break;
        case 'f':
            p.force = true;
            break;
        case 'h':
            format_usage(stdout);
            return 0;
        default:
            format_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        format_usage(stderr);
        return 2;
    }
    if (size) {
        if (argc - optind != 1 ||
            (strstr(argv[optind], "://") && strncmp(argv[optind], "file://", 7))) {
            log_err("format: --size creates a file LUN: give one file path");
            return 2;
        }
        const char *path = argv[optind] + (strncmp(argv[optind], "file://", 7) ? 0 : 7);
        int fd = open(path, O_RDWR | O_CREAT, 0644);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            log_err("format: %s: cannot create: %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return 1;
        }
        if (!S_ISREG(st.st_mode)) {
            log_err("format: %s: --size is for files, this is not a regular file", path);
            close(fd);
            return 2;
        }
        if ((uint64_t)st.st_size > size && !p.force) {
            log_err("format: %s: is %" PRIu64 " bytes, larger than --size; use --force to shrink "
                    "it",
                    path, (uint64_t)st.st_size);
            close(fd);
            return 1;
        }
        if (ftruncate(fd, (off_t)size) < 0) {
            log_err("format: %s: cannot size to %" PRIu64 " bytes: %s", path, size,
                    strerror(errno));
            close(fd);
            return 1;
        }
        close(fd);
    }
    struct lun *lun;
    if (open_luns(argv + optind, argc - optind, lbs, false, &lun) < 0)
        return 1;
    uint64_t t0 = now_ns();
    int r = cfs_format(lun, &p);
    uint64_t t1 = now_ns();
    if (r == 0) {
        struct cfs_volume *v;
        struct cfs_open_opts oo = {.read_only = true};
        struct cfs_volume_info vi;
        if (cfs_volume_open(lun, &oo, &v) == 0) {
            if (cfs_volume_info(v, &vi) == 0) {
                char u[40], sz[32];
                uuid_str(vi.uuid, u);
                printf("%s: clusterfs volume '%s' uuid %s: %s, %" PRIu64 " KiB blocks, %" PRIu64
                       " hosts, %" PRIu64 " KiB journal per host; formatted in %.1f ms\n",
                       lun_name(lun), vi.label, u, format_size(vi.volume_bytes, sz, sizeof(sz)),
                       vi.block_size >> 10, vi.max_hosts, vi.journal_bytes >> 10,
                       (double)(t1 - t0) / 1e6);
            }
            cfs_volume_close(v);
        }
    }
    lun_close(lun);
    return r < 0 ? 1 : 0;
}

/* ---- status ----------------------------------------------------------------- */

static void status_usage(FILE *f)
{
    fprintf(f, "usage: clusterfs status [--json] LUN...\n"
               "\n"
               "Label, UUID, version, size and free space of the volume; the hosts of its\n"
               "lockspace (slot, name, state, heartbeat age as this observer sees it in one\n"
               "read) and the journals holding transactions not yet replayed.\n");
}

int cmd_status(int argc, char **argv)
{
    static const struct option lo[] = {
        {"json", 0, 0, 'j'}, {"lun-block-size", 1, 0, 'L'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    bool js = false;
    uint32_t lbs = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'j':
            js = true;
            break;
        case 'L':
            if (opt_block_size("--lun-block-size", optarg, &lbs) < 0)
                return 2;
            break;
        case 'h':
            status_usage(stdout);
            return 0;
        default:
            status_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        status_usage(stderr);
        return 2;
    }
    struct lun *lun;
    if (open_luns(argv + optind, argc - optind, lbs, true, &lun) < 0)
        return 1;
    struct cfs_volume *v;
    struct cfs_open_opts oo = {.read_only = true};
    int r = cfs_volume_open(lun, &oo, &v);
    if (r < 0) {
        lun_close(lun);
        return 1;
    }
    struct cfs_volume_info vi;
    r = cfs_volume_info(v, &vi);
    struct lockspace *ls = NULL;
    struct ls_status st = {0};
    struct ls_open_opts lo2 = {.no_fencing = true};
    int lr = lockspace_open(lun, vi.ls_offset_blocks, &lo2, &ls);
    if (lr == 0)
        lr = lockspace_status(ls, 1, &st);
    char u[40], sz[32], fr[32];
    uuid_str(vi.uuid, u);
    struct json j;
    if (js) {
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "lun", lun_name(lun));
        json_str(&j, "label", vi.label);
        json_str(&j, "uuid", u);
        char ver[16];
        snprintf(ver, sizeof(ver), "%u.%u", vi.version_major, vi.version_minor);
        json_str(&j, "version", ver);
        json_u64(&j, "size_bytes", vi.volume_bytes);
        json_u64(&j, "free_bytes", vi.free_bytes);
        json_u64(&j, "block_size", vi.block_size);
        json_u64(&j, "max_hosts", vi.max_hosts);
        json_u64(&j, "io_timeout_ms", vi.io_timeout_ms);
        json_u64(&j, "clusters", vi.nclusters);
        json_u64(&j, "clusters_laid_out", vi.clusters_laid_out);
        json_arr_begin(&j, "hosts");
    } else {
        printf("%s: clusterfs volume '%s'\n  uuid %s, version %u.%u, features 0x%x/0x%x/0x%x\n"
               "  size %s, free %s, %" PRIu64 " KiB blocks, %" PRIu64 " of %" PRIu64
               " resource clusters laid out\n  max hosts %" PRIu64 ", io_timeout %" PRIu64
               " ms, journal %" PRIu64 " KiB per host\n",
               lun_name(lun), vi.label, u, vi.version_major, vi.version_minor, vi.feat_compat,
               vi.feat_incompat, vi.feat_ro_compat, format_size(vi.volume_bytes, sz, sizeof(sz)),
               format_size(vi.free_bytes, fr, sizeof(fr)), vi.block_size >> 10,
               vi.clusters_laid_out, vi.nclusters, vi.max_hosts, vi.io_timeout_ms,
               vi.journal_bytes >> 10);
        printf("  %-5s %-20s %-10s %-6s %-14s %s\n", "SLOT", "HOST", "STATE", "GEN",
               "HEARTBEAT AGE", "JOURNAL");
    }
    unsigned shown = 0;
    for (uint32_t s = 0; s < vi.max_hosts; s++) {
        uint64_t pend = 0;
        int pr = cfs_volume_journal_pending(v, s, &pend);
        const struct ls_status_host *h = NULL;
        for (unsigned i = 0; lr == 0 && i < st.nhosts; i++)
            if (st.hosts[i].info.slot == s)
                h = &st.hosts[i];
        if (!h && pr == 0 && !pend)
            continue;
        shown++;
        char jbuf[64];
        if (pr < 0)
            snprintf(jbuf, sizeof(jbuf), "unreadable (%s)", strerror(-pr));
        else if (pend)
            snprintf(jbuf, sizeof(jbuf), "%" PRIu64 " transaction(s) pending replay", pend);
        else
            snprintf(jbuf, sizeof(jbuf), "clean");
        if (js) {
            json_obj_begin(&j, NULL);
            json_u64(&j, "slot", s);
            json_str(&j, "name", h ? h->info.name : NULL);
            json_str(&j, "state", h ? ls_host_state_name(h->state) : "free");
            if (h) {
                json_u64(&j, "generation", h->info.generation);
                json_u64(&j, "heartbeat_age_ms", h->age_ms);
                json_bool(&j, "age_is_lower_bound", !h->changed);
            }
            json_u64(&j, "journal_pending", pend);
            if (pr < 0)
                json_str(&j, "journal_error", strerror(-pr));
            json_obj_end(&j);
        } else {
            printf("  %-5u %-20s %-10s %-6u %s%-12.1f %s\n", s, h ? h->info.name : "-",
                   h ? ls_host_state_name(h->state) : "free", h ? h->info.generation : 0,
                   h && !h->changed ? ">=" : "  ", h ? (double)h->age_ms / 1000.0 : 0.0, jbuf);
        }
    }
    if (js) {
        json_arr_end(&j);
        if (lr < 0)
            json_str(&j, "lockspace_error", strerror(-lr));
        json_obj_end(&j);
        json_finish(&j);
    } else {
        if (!shown)
            printf("  (no hosts, every journal clean)\n");
        if (lr < 0)
            printf("  lockspace unreadable: %s\n", strerror(-lr));
    }
    if (lr == 0)
        ls_status_free(&st);
    if (ls)
        lockspace_close(ls);
    cfs_volume_close(v);
    lun_close(lun);
    return r < 0 ? 1 : 0;
}

/* ---- check -------------------------------------------------------------------- */

static void check_usage(FILE *f)
{
    fprintf(f, "usage: clusterfs check [--repair] [--json] LUN...\n"
               "\n"
               "Check the volume: superblock copies, resource cluster headers and bitmaps,\n"
               "every inode, block map and directory reachable from the root, link counts,\n"
               "leaked / doubly allocated blocks, orphan inodes, dangling entries.\n"
               "--repair replays the journal first, fixes what it can, says what it could\n"
               "not; it refuses while a host holds a heartbeat slot.\n"
               "Exit status as fsck's: 0 clean, 1 problems fixed, 4 problems left,\n"
               "8 the check could not run.\n");
}

struct ck_out {
    bool js;
    struct json *j;
    const char *lun;
};

static void check_msg(void *ctx, const char *what, const char *msg, bool fixed)
{
    struct ck_out *o = ctx;
    if (o->js) {
        json_obj_begin(o->j, NULL);
        json_str(o->j, "problem", what);
        json_str(o->j, "message", msg);
        json_bool(o->j, "fixed", fixed);
        json_obj_end(o->j);
    } else {
        printf("%s: %s: %s%s\n", o->lun, what, msg, fixed ? " [fixed]" : "");
    }
}

int cmd_volume_check(int argc, char **argv)
{
    static const struct option lo[] = {{"json", 0, 0, 'j'},
                                       {"repair", 0, 0, 'r'},
                                       {"lun-block-size", 1, 0, 'L'},
                                       {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
    bool js = false, repair = false;
    uint32_t lbs = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'j':
            js = true;
            break;
        case 'r':
            repair = true;
            break;
        case 'L':
            if (opt_block_size("--lun-block-size", optarg, &lbs) < 0)
                return 2;
            break;
        case 'h':
            check_usage(stdout);
            return 0;
        default:
            check_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        check_usage(stderr);
        return 2;
    }
    struct lun *lun;
    if (open_luns(argv + optind, argc - optind, lbs, !repair, &lun) < 0)
        return 8;
    struct cfs_volume *v;
    struct cfs_open_opts ro = {.read_only = true};
    int r = cfs_volume_open(lun, &ro, &v);
    if (r < 0) {
        lun_close(lun);
        return 8;
    }
    struct cfs_volume_info vi;
    cfs_volume_info(v, &vi);
    /* Another host's heartbeat: a repair would race it. */
    struct lockspace *ls;
    struct ls_open_opts lo2 = {.no_fencing = true};
    if (lockspace_open(lun, vi.ls_offset_blocks, &lo2, &ls) == 0) {
        struct ls_status st;
        if (lockspace_status(ls, 1, &st) == 0) {
            for (unsigned i = 0; repair && i < st.nhosts; i++)
                if (st.hosts[i].state != LS_HOST_FREE) {
                    log_err("check: %s: host %s holds heartbeat slot %u (%s): refusing to repair "
                            "a volume in use; unmount it there (or wait until it is dead and "
                            "recovered)",
                            lun_name(lun), st.hosts[i].info.name, st.hosts[i].info.slot,
                            ls_host_state_name(st.hosts[i].state));
                    r = -EBUSY;
                    break;
                }
            ls_status_free(&st);
        }
        lockspace_close(ls);
    }
    uint64_t pending_total = 0;
    for (uint32_t s = 0; s < vi.max_hosts; s++) {
        uint64_t p = 0;
        if (cfs_volume_journal_pending(v, s, &p) == 0)
            pending_total += p;
    }
    cfs_volume_close(v);
    if (r < 0) {
        lun_close(lun);
        return 8;
    }
    struct cfs_open_opts oo = {.read_only = !repair, .local = repair};
    if ((r = cfs_volume_open(lun, &oo, &v)) < 0) { /* --repair: replays the journal */
        lun_close(lun);
        return 8;
    }
    /* --repair: replay every other slot's pending journal first (no host is
     * live: checked above), as e2fsck replays ext4's. */
    uint64_t replayed = 0;
    for (uint32_t s = 1; repair && s < vi.max_hosts; s++) {
        uint64_t n = 0;
        if (cfs_volume_journal_pending(v, s, &n) < 0 || !n)
            continue;
        if ((r = cfs_volume_recover_slot(v, s, &n)) < 0) {
            log_err("check: %s: replay of host slot %u's journal failed: %s", lun_name(lun), s,
                    strerror(-r));
            cfs_volume_close(v);
            lun_close(lun);
            return 8;
        }
        replayed += n;
        if (!js)
            printf("%s: replayed %" PRIu64 " transaction(s) of host slot %u's journal\n",
                   lun_name(lun), n, s);
    }
    struct json j;
    struct ck_out out = {.js = js, .j = &j, .lun = lun_name(lun)};
    if (js) {
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "lun", lun_name(lun));
        json_bool(&j, "repair", repair);
        json_u64(&j, "journal_transactions_replayed", replayed);
        json_arr_begin(&j, "problems");
    }
    struct cfs_check_report rep;
    r = cfs_check(v, repair ? CFS_CHECK_REPAIR : 0, check_msg, &out, &rep);
    if (r >= 0 && !repair && pending_total) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "%" PRIu64 " committed journal transaction(s) not yet replayed (the check above "
                 "is of the volume without them); run with --repair to replay",
                 pending_total);
        check_msg(&out, "journal", msg, false);
        rep.problems++;
        rep.left++;
        r = 4;
    }
    int ex = r < 0 ? 8 : r;
    if (js) {
        json_arr_end(&j);
        json_u64(&j, "problem_count", rep.problems);
        json_u64(&j, "fixed", rep.fixed);
        json_u64(&j, "left", rep.left);
        json_u64(&j, "inodes", rep.inodes);
        json_u64(&j, "directories", rep.directories);
        json_u64(&j, "files", rep.files);
        json_u64(&j, "exit", (uint64_t)ex);
        if (r < 0)
            json_str(&j, "error", strerror(-r));
        json_obj_end(&j);
        json_finish(&j);
    } else if (r >= 0) {
        printf("%s: %u problem(s), %u fixed, %u left; %" PRIu64 " inodes (%" PRIu64
               " directories, %" PRIu64 " files)\n",
               lun_name(lun), rep.problems, rep.fixed, rep.left, rep.inodes, rep.directories,
               rep.files);
    } else {
        log_err("check: %s: could not run: %s", lun_name(lun), strerror(-r));
    }
    cfs_volume_close(v);
    lun_close(lun);
    return ex;
}
