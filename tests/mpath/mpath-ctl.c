/* mpath-ctl: open one LUN through several paths and run a small script
 * (stdin, one command a line) against its path states, for multipath
 * integration tests that need a long-lived initiator.
 *
 *   mpath-ctl [--check-interval MS] [--nop-interval MS|off] [--nop-missed N]
 *             [--timeout MS] [--policy P] URI... < script
 *
 * Commands ('#' starts a comment):
 *   mark                 start the clock
 *   stop PID / cont PID  SIGSTOP (and mark) / SIGCONT a process
 *   sh CMD...            run a shell command; it must succeed
 *   wait I STATE MS      path I reaches STATE (active, standby, failed) within
 *                        MS; prints the time since the mark
 *   within MS            the last `wait` ended at most MS after the mark
 *   stay I STATE MS      path I stays in STATE for MS
 *   err I TEXT...        path I's last failure contains TEXT
 *   waiterr I MS TEXT... ... within MS
 *   until I FIELD N MS   FIELD reaches at least N within MS
 *   expect I FIELD OP N  FIELD (pings nop_misses reads failures inflight) OP (== >= <=) N
 *   cap I CAP yes|no     path I's probed capability (unmap, compare_and_write,
 *                        persistent_reservations, write_same, sync_cache, fua)
 *   noinfo I             path I was never probed (unreachable since open)
 *   read N               N reads of 4 KiB through the policy, all succeed
 *   print I              the path's state and counters
 * Exit 0 when every command held; prints FAIL and exits 1 at the first that
 * did not.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "util.h"

static struct lun *g_lun;
static unsigned g_line;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "FAIL (script line %u): ", g_line);                                        \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        if (g_lun)                                                                                 \
            lun_close(g_lun);                                                                      \
        exit(1);                                                                                   \
    } while (0)

static enum lun_path_state parse_state(const char *s)
{
    if (s && !strcmp(s, "active"))
        return LUN_PATH_ACTIVE;
    if (s && !strcmp(s, "standby"))
        return LUN_PATH_STANDBY;
    if (s && !strcmp(s, "failed"))
        return LUN_PATH_FAILED;
    FAIL("unknown state '%s'", s ? s : "");
}

static unsigned parse_num(const char *s)
{
    char *end;
    if (!s)
        FAIL("missing number");
    unsigned long v = strtoul(s, &end, 10);
    if (*end || !*s)
        FAIL("'%s' is not a number", s);
    return (unsigned)v;
}

static struct lun_path_stats stats(unsigned i)
{
    struct lun_path_stats st;
    if (lun_path_get_stats(g_lun, i, &st) < 0)
        FAIL("no path %u", i);
    return st;
}

static uint64_t field(const struct lun_path_stats *st, const char *f)
{
    if (!strcmp(f, "pings"))
        return st->pings;
    if (!strcmp(f, "nop_misses"))
        return st->nop_misses;
    if (!strcmp(f, "reads"))
        return st->reads;
    if (!strcmp(f, "failures"))
        return st->failures;
    if (!strcmp(f, "inflight"))
        return st->inflight;
    FAIL("unknown field '%s'", f);
}

static bool cap(const struct lun_caps *c, const char *name)
{
    if (!strcmp(name, "unmap"))
        return c->unmap;
    if (!strcmp(name, "compare_and_write"))
        return c->compare_and_write;
    if (!strcmp(name, "persistent_reservations"))
        return c->persistent_reservations;
    if (!strcmp(name, "write_same"))
        return c->write_same;
    if (!strcmp(name, "sync_cache"))
        return c->sync_cache;
    if (!strcmp(name, "fua"))
        return c->fua;
    FAIL("unknown capability '%s'", name);
}

static void print_path(unsigned i)
{
    struct lun_path_stats st = stats(i);
    printf("path %u %s%s reads=%llu failures=%llu pings=%llu nop_misses=%llu inflight=%u "
           "last='%s'\n",
           i, lun_path_state_name(st.state), st.held ? "(held)" : "", (unsigned long long)st.reads,
           (unsigned long long)st.failures, (unsigned long long)st.pings,
           (unsigned long long)st.nop_misses, st.inflight, st.last_error);
}

int main(int argc, char **argv)
{
    struct lun_options o;
    lun_options_init(&o);
    o.multipath = true;
    int a = 1;
    for (; a + 1 < argc && !strncmp(argv[a], "--", 2); a += 2) {
        const char *opt = argv[a], *v = argv[a + 1];
        if (!strcmp(opt, "--check-interval"))
            o.check_interval_ms = parse_num(v);
        else if (!strcmp(opt, "--nop-interval"))
            o.nop_interval_ms = !strcmp(v, "off") ? LUN_NOP_OFF : parse_num(v);
        else if (!strcmp(opt, "--nop-missed"))
            o.nop_max_missed = parse_num(v);
        else if (!strcmp(opt, "--timeout"))
            o.timeout_ms = o.connect_timeout_ms = parse_num(v);
        else if (!strcmp(opt, "--policy")) {
            if (lun_policy_parse(v, &o.policy) < 0)
                return 2;
        } else {
            fprintf(stderr, "mpath-ctl: unknown option %s\n", opt);
            return 2;
        }
    }
    if (a >= argc) {
        fprintf(stderr, "usage: mpath-ctl [options] URI... < script\n");
        return 2;
    }
    int rc = lun_open_paths((const char *const *)argv + a, (unsigned)(argc - a), &o, &g_lun);
    if (rc < 0) {
        fprintf(stderr, "FAIL: open: %s\n", strerror(-rc));
        return 1;
    }
    uint64_t mark = now_ns(), last_wait_ms = 0;
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        g_line++;
        line[strcspn(line, "\n")] = 0;
        char *rest = line + strspn(line, " \t");
        if (!*rest || *rest == '#')
            continue;
        char args[1024];
        size_t clen = strcspn(rest, " \t");
        snprintf(args, sizeof args, "%s", rest[clen] ? rest + clen + 1 : "");
        char *cmd = strtok(rest, " \t");
        if (!strcmp(cmd, "mark")) {
            mark = now_ns();
        } else if (!strcmp(cmd, "stop") || !strcmp(cmd, "cont")) {
            pid_t pid = (pid_t)parse_num(strtok(NULL, " \t"));
            bool stop = !strcmp(cmd, "stop");
            if (kill(pid, stop ? SIGSTOP : SIGCONT) != 0)
                FAIL("kill %d: %s", (int)pid, strerror(errno));
            if (stop)
                mark = now_ns();
        } else if (!strcmp(cmd, "sh")) {
            if (system(args) != 0)
                FAIL("command failed: %s", args);
        } else if (!strcmp(cmd, "wait") || !strcmp(cmd, "stay")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            const char *sname = strtok(NULL, " \t");
            enum lun_path_state want = parse_state(sname);
            unsigned ms = parse_num(strtok(NULL, " \t"));
            uint64_t end = now_ns() + (uint64_t)ms * 1000000;
            bool waiting = !strcmp(cmd, "wait");
            for (;;) {
                struct lun_path_stats st = stats(i);
                if (waiting && st.state == want) {
                    last_wait_ms = (now_ns() - mark) / 1000000;
                    printf("path %u %s after %llu ms\n", i, sname,
                           (unsigned long long)last_wait_ms);
                    break;
                }
                if (!waiting && st.state != want)
                    FAIL("path %u left %s (now %s: %s)", i, sname, lun_path_state_name(st.state),
                         st.last_error);
                if (now_ns() >= end) {
                    if (waiting)
                        FAIL("path %u not %s within %u ms (%s, last failure '%s')", i, sname, ms,
                             lun_path_state_name(st.state), st.last_error);
                    break;
                }
                usleep(5000);
            }
        } else if (!strcmp(cmd, "until")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            const char *f = strtok(NULL, " \t");
            unsigned n = parse_num(strtok(NULL, " \t"));
            unsigned ms = parse_num(strtok(NULL, " \t"));
            if (!f)
                FAIL("until I FIELD N MS");
            uint64_t end = now_ns() + (uint64_t)ms * 1000000;
            struct lun_path_stats st = stats(i);
            while (field(&st, f) < n) {
                if (now_ns() >= end)
                    FAIL("path %u: %s = %llu, not %u within %u ms", i, f,
                         (unsigned long long)field(&st, f), n, ms);
                usleep(5000);
                st = stats(i);
            }
        } else if (!strcmp(cmd, "within")) {
            unsigned ms = parse_num(strtok(NULL, " \t"));
            if (last_wait_ms > ms)
                FAIL("took %llu ms, budget %u ms", (unsigned long long)last_wait_ms, ms);
        } else if (!strcmp(cmd, "waiterr")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            unsigned ms = parse_num(strtok(NULL, " \t"));
            char *text = strtok(NULL, "");
            uint64_t end = now_ns() + (uint64_t)ms * 1000000;
            struct lun_path_stats st = stats(i);
            while (!text || !strstr(st.last_error, text)) {
                if (now_ns() >= end)
                    FAIL("path %u: last failure '%s', not '%s' within %u ms", i, st.last_error,
                         text ? text : "", ms);
                usleep(5000);
                st = stats(i);
            }
            printf("path %u: %s (%s)\n", i, st.last_error, lun_path_state_name(st.state));
        } else if (!strcmp(cmd, "err")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            char *text = strtok(NULL, "");
            struct lun_path_stats st = stats(i);
            if (!text || !strstr(st.last_error, text))
                FAIL("path %u last failure '%s' lacks '%s'", i, st.last_error, text ? text : "");
        } else if (!strcmp(cmd, "expect")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            const char *f = strtok(NULL, " \t"), *op = strtok(NULL, " \t");
            unsigned n = parse_num(strtok(NULL, " \t"));
            if (!f || !op)
                FAIL("expect I FIELD OP N");
            struct lun_path_stats st = stats(i);
            uint64_t v = field(&st, f);
            bool ok = !strcmp(op, "==")   ? v == n
                      : !strcmp(op, ">=") ? v >= n
                      : !strcmp(op, "<=") ? v <= n
                                          : false;
            if (!ok)
                FAIL("path %u: %s = %llu, expected %s %u", i, f, (unsigned long long)v, op, n);
        } else if (!strcmp(cmd, "cap")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            const char *name = strtok(NULL, " \t"), *yn = strtok(NULL, " \t");
            struct lun_info in;
            if (lun_path_get_info(g_lun, i, &in) < 0)
                FAIL("path %u was never probed", i);
            if (!name || !yn || cap(&in.caps, name) != !strcmp(yn, "yes"))
                FAIL("path %u: %s is not %s", i, name ? name : "?", yn ? yn : "?");
        } else if (!strcmp(cmd, "noinfo")) {
            unsigned i = parse_num(strtok(NULL, " \t"));
            struct lun_info in;
            if (lun_path_get_info(g_lun, i, &in) != -ENOENT)
                FAIL("path %u has probe results", i);
        } else if (!strcmp(cmd, "read")) {
            unsigned n = parse_num(strtok(NULL, " \t"));
            uint32_t bs = lun_block_size(g_lun), nb = 4096 / bs ? 4096 / bs : 1;
            void *buf = malloc(4096 > bs ? 4096 : bs);
            for (unsigned k = 0; k < n; k++) {
                rc = lun_read(g_lun, (uint64_t)k * nb % lun_get_info(g_lun)->num_blocks, nb, buf);
                if (rc < 0)
                    FAIL("read %u: %s", k, strerror(-rc));
            }
            free(buf);
        } else if (!strcmp(cmd, "print")) {
            print_path(parse_num(strtok(NULL, " \t")));
        } else {
            FAIL("unknown command '%s'", cmd);
        }
        fflush(stdout);
    }
    lun_close(g_lun);
    printf("OK\n");
    return 0;
}
