/* lockhost: one host of a test cluster, for tests/locking and bench/locking.
 *
 *   lockhost prep   [opts] URI...   format a lockspace and the guarded blocks
 *   lockhost hammer [opts] URI...   N rounds: lock, counter += 1, unlock
 *   lockhost hold   [opts] URI...   take the lock, then write the data block
 *                                   every 50 ms until fenced or killed
 *   lockhost take   [opts] URI...   take the lock (wait), write the data
 *                                   block, wait --linger ms, check it is
 *                                   still ours
 *   lockhost check  [opts] URI...   counter == --expect, guards intact
 *   lockhost join   [opts] URI...   join (a free slot, else a dead host's),
 *                                   stay --linger ms (default 1000), leave
 *   lockhost prkeys URI...          print the registered PR keys ("KEY 0x...")
 *   lockhost bench  [opts] URI...   uncontended acquire+release latency, I/Os
 *
 * Options: --offset N (lockspace block, default 8), --name NAME,
 * --hosts N (prep: heartbeat slots, default 256; others: must match),
 * --io-timeout MS, --rounds N, --lock I, --expect N, --linger MS,
 * --timeout MS, --paxos (prep: lay a paxos lockspace; others: refuse a
 * CAW one), --raw (hold: write without
 * the self-fence check, to show the target refuses a fenced host),
 * --no-fencing, --think MS (hammer: hold the lock MS per round),
 * --pause-at-write (hold/take: SIGSTOP ourselves right after
 * the first data write passed its fence check, "PAUSED-AT-WRITE").
 * Several URIs = several paths to the LUN.
 *
 * The guarded area, 8 blocks before the end of the LUN: block G (guard), C (counter: le64
 * at 0, then 0xA5 bytes), G again, D (data: "<name> <seq>"), G again.
 * Lines on stdout: "JOINED slot S caw|paxos gen G key K", "ACQUIRED <ms>",
 * "RECOVERED <name> slot S gen G" (the recovery hook), "FENCED <reason>",
 * "WRITE-REFUSED <errno>", "RESULT ...". Exit 0 on success.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "le.h"
#include "util.h"
#include "log.h"
#include "lun.h"
#include "lockspace.h"

static struct {
    uint64_t offset;
    const char *name;
    uint32_t io_ms;
    unsigned rounds, lock, linger_ms;
    uint64_t expect;
    int timeout_ms;
    bool paxos, raw, no_fencing, pause_at_write;
    unsigned think_ms;
    uint32_t hosts;
} opt = {.offset = 8, .name = "host", .rounds = 1000, .timeout_ms = -1, .linger_ms = 1000};

static volatile int fenced_flag;

static void on_fenced(struct lockspace *ls, enum ls_fence_reason why, void *opaque)
{
    fenced_flag = (int)why;
    printf("FENCED %d\n", (int)why);
    fflush(stdout);
}

/* The recovery hook: one line per call, so tests can count them. With
 * reservations it also says whether the dead host's key is still
 * registered (it must not be: fencing comes before the hook). */
static int on_recover(struct lockspace *ls, const struct ls_host_info *dead, void *opaque)
{
    struct lun *lun = opaque;
    int reg = -1;
    if (dead->pr_key && lockspace_has_pr_fencing(ls)) {
        struct lun_pr_state *st = calloc(1, sizeof(*st));
        if (st && lun_pr_read(lun, st) == 0) {
            reg = 0;
            for (unsigned i = 0; i < st->nkeys; i++)
                if (st->keys[i] == dead->pr_key)
                    reg = 1;
        }
        free(st);
    }
    printf("RECOVERED %s slot %u gen %u key 0x%016" PRIx64 " registered %d\n", dead->name,
           dead->slot, dead->generation, dead->pr_key, reg);
    fflush(stdout);
    return 0;
}

/* --pause-at-write: stop this process (SIGSTOP, as a paused VM host) right
 * after the first guarded data write passed its fence check, before it is
 * sent. The test breaks the lock meanwhile, then resumes us. The stop waits
 * until the renewal thread, too, sits in the hook before its next write: no
 * thread is then inside an I/O (a process stopped inside the file LUN's
 * COMPARE AND WRITE emulation would hold a byte-range lock that blocks other
 * hosts' reads, which no real disk does). */
static pthread_mutex_t pause_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pause_cv = PTHREAD_COND_INITIALIZER;
static int pause_state; /* 0 armed, 1 data write waiting, 2 renewal parked, 3 resumed */

static void pause_hook(struct lockspace *ls, enum ls_test_point where, uint64_t lba, void *opaque)
{
    pthread_mutex_lock(&pause_mu);
    if (where == LS_TP_DATA_WRITE && pause_state == 0) {
        pause_state = 1;
        while (pause_state == 1)
            pthread_cond_wait(&pause_cv, &pause_mu);
        printf("PAUSED-AT-WRITE\n");
        fflush(stdout);
        raise(SIGSTOP);
        pause_state = 3;
        pthread_cond_broadcast(&pause_cv);
    } else if (where != LS_TP_DATA_WRITE && pause_state == 1) {
        pause_state = 2; /* park here until the data thread resumed */
        pthread_cond_broadcast(&pause_cv);
        while (pause_state != 3)
            pthread_cond_wait(&pause_cv, &pause_mu);
    }
    pthread_mutex_unlock(&pause_mu);
}

static uint64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct area {
    uint64_t guard1, counter, guard2, data, guard3;
};

/* At the end of the LUN, clear of any lockspace. */
static void area_of(struct lun *lun, struct area *a)
{
    uint64_t base = lun_get_info(lun)->num_blocks - 8;
    a->guard1 = base;
    a->counter = base + 1;
    a->guard2 = base + 2;
    a->data = base + 3;
    a->guard3 = base + 4;
}

int main(int argc, char **argv)
{
    log_set_program("lockhost");
    /* Never outlive the test script that started us. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        return 1;
    static const struct option lo[] = {{"offset", 1, 0, 'o'},
                                       {"name", 1, 0, 'n'},
                                       {"io-timeout", 1, 0, 'i'},
                                       {"rounds", 1, 0, 'r'},
                                       {"lock", 1, 0, 'l'},
                                       {"expect", 1, 0, 'e'},
                                       {"linger", 1, 0, 'g'},
                                       {"timeout", 1, 0, 't'},
                                       {"paxos", 0, 0, 'p'},
                                       {"raw", 0, 0, 'w'},
                                       {"no-fencing", 0, 0, 'f'},
                                       {"hosts", 1, 0, 'H'},
                                       {"pause-at-write", 0, 0, 'P'},
                                       {"think", 1, 0, 'T'},
                                       {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'o':
            opt.offset = strtoull(optarg, NULL, 0);
            break;
        case 'n':
            opt.name = optarg;
            break;
        case 'i':
            opt.io_ms = (uint32_t)strtoul(optarg, NULL, 0);
            break;
        case 'r':
            opt.rounds = (unsigned)strtoul(optarg, NULL, 0);
            break;
        case 'l':
            opt.lock = (unsigned)strtoul(optarg, NULL, 0);
            break;
        case 'e':
            opt.expect = strtoull(optarg, NULL, 0);
            break;
        case 'g':
            opt.linger_ms = (unsigned)strtoul(optarg, NULL, 0);
            break;
        case 't':
            opt.timeout_ms = atoi(optarg);
            break;
        case 'p':
            opt.paxos = true;
            break;
        case 'w':
            opt.raw = true;
            break;
        case 'f':
            opt.no_fencing = true;
            break;
        case 'H':
            opt.hosts = (uint32_t)strtoul(optarg, NULL, 0);
            break;
        case 'P':
            opt.pause_at_write = true;
            break;
        case 'T':
            opt.think_ms = (unsigned)strtoul(optarg, NULL, 0);
            break;
        default:
            return 2;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: lockhost prep|hammer|hold|take|check|bench [opts] URI...\n");
        return 2;
    }
    const char *cmd = argv[optind];
    const char *const *uris = (const char *const *)&argv[optind + 1];
    unsigned nuris = (unsigned)(argc - optind - 1);

    struct lun_options lopts;
    lun_options_init(&lopts);
    char iqn[160];
    snprintf(iqn, sizeof(iqn), "iqn.2026-11.org.clusterfs:lockhost-%s-%d", opt.name, getpid());
    lopts.initiator_name = iqn;
    lopts.host_name = opt.name;
    if (opt.io_ms)
        lopts.timeout_ms = opt.io_ms;
    struct lun *lun;
    int r =
        nuris == 1 ? lun_open(uris[0], &lopts, &lun) : lun_open_paths(uris, nuris, &lopts, &lun);
    if (r < 0) {
        fprintf(stderr, "lockhost: cannot open %s: %s\n", uris[0], strerror(-r));
        return 1;
    }
    uint32_t bs = lun_block_size(lun);
    struct ls_format_params fp = {.io_timeout_ms = opt.io_ms,
                                  .max_hosts = opt.hosts ? opt.hosts : 256,
                                  .max_locks = 16,
                                  .atomic = opt.paxos ? LS_ATOMIC_PAXOS : LS_ATOMIC_AUTO};
    uint8_t *blk = calloc(2, bs), *blk2 = blk + bs;
    struct area ar;
    area_of(lun, &ar);
    int rc = 1;

    if (!strcmp(cmd, "prep")) {
        if ((r = lockspace_format(lun, opt.offset, &fp)) < 0)
            goto out;
        memset(blk, 0x5a, bs);
        r = lun_write(lun, ar.guard1, 1, blk, 0);
        r = r ?: lun_write(lun, ar.guard2, 1, blk, 0);
        r = r ?: lun_write(lun, ar.guard3, 1, blk, 0);
        memset(blk, 0xa5, bs);
        le64_put(blk, 0);
        r = r ?: lun_write(lun, ar.counter, 1, blk, 0);
        memset(blk, 0, bs);
        r = r ?: lun_write(lun, ar.data, 1, blk, 0);
        rc = r < 0;
        goto out;
    }
    if (!strcmp(cmd, "prkeys")) {
        struct lun_pr_state *st = calloc(1, sizeof(*st));
        if (!st || (r = lun_pr_read(lun, st)) < 0) {
            free(st);
            goto out;
        }
        for (unsigned i = 0; i < st->nkeys; i++)
            printf("KEY 0x%016" PRIx64 "\n", st->keys[i]);
        free(st);
        rc = 0;
        goto out;
    }
    if (!strcmp(cmd, "check")) {
        memset(blk2, 0x5a, bs);
        uint64_t g[3] = {ar.guard1, ar.guard2, ar.guard3};
        rc = 0;
        for (int i = 0; i < 3; i++) {
            if (lun_read(lun, g[i], 1, blk) < 0 || memcmp(blk, blk2, bs)) {
                printf("RESULT guard block %" PRIu64 " damaged\n", g[i]);
                rc = 1;
            }
        }
        if (lun_read(lun, ar.counter, 1, blk) < 0) {
            rc = 1;
            goto out;
        }
        uint64_t n = le64_get(blk);
        for (uint32_t i = 8; i < bs; i++)
            if (blk[i] != 0xa5) {
                printf("RESULT counter block damaged at byte %u\n", i);
                rc = 1;
                break;
            }
        printf("RESULT counter %" PRIu64 " expected %" PRIu64 "\n", n, opt.expect);
        if (n != opt.expect)
            rc = 1;
        goto out;
    }

    struct ls_open_opts oo = {.host_name = opt.name,
                              .io_timeout_ms = opt.io_ms,
                              .max_hosts = opt.hosts,
                              .force_paxos = opt.paxos,
                              .no_fencing = opt.no_fencing,
                              .fenced = on_fenced,
                              .recover = on_recover,
                              .opaque = lun};
    struct lockspace *ls;
    if ((r = lockspace_open(lun, opt.offset, &oo, &ls)) < 0)
        goto out;
    if ((r = lockspace_join(ls)) < 0) {
        lockspace_close(ls);
        goto out;
    }
    printf("JOINED slot %u %s gen %u key 0x%016" PRIx64 "\n", lockspace_slot(ls),
           lockspace_uses_caw(ls) ? "caw" : "paxos", lockspace_generation(ls),
           lockspace_pr_key(ls));
    fflush(stdout);
    uint64_t lba = lockspace_lock_lba(ls, opt.lock);

    if (!strcmp(cmd, "join")) {
        uint64_t until = ms_now() + opt.linger_ms;
        while (!fenced_flag && ms_now() < until)
            usleep(20000);
        rc = fenced_flag ? 1 : 0;
    } else if (!strcmp(cmd, "hammer")) {
        rc = 0;
        for (unsigned i = 0; i < opt.rounds && rc == 0; i++) {
            if ((r = lock_acquire(ls, lba, LS_LOCK_EXCLUSIVE, opt.timeout_ms)) < 0) {
                rc = 1;
                break;
            }
            if ((r = lun_read(lun, ar.counter, 1, blk)) < 0) {
                rc = 1;
                break;
            }
            for (uint32_t k = 8; k < bs; k++)
                if (blk[k] != 0xa5) {
                    printf("RESULT counter block damaged at byte %u in round %u\n", k, i);
                    rc = 1;
                    break;
                }
            le64_put(blk, le64_get(blk) + 1);
            if (opt.think_ms)
                usleep(opt.think_ms * 1000); /* work done under the lock */
            if (rc || (r = ls_write(ls, ar.counter, 1, blk, 0)) < 0 ||
                (r = lock_release(ls, lba)) < 0)
                rc = 1;
        }
        printf("RESULT hammer %s after %u rounds (%" PRIu64 " I/Os)\n", rc ? "failed" : "done",
               opt.rounds, lockspace_io_count(ls));
    } else if (!strcmp(cmd, "hold") || !strcmp(cmd, "take")) {
        uint64_t t0 = ms_now();
        if ((r = lock_acquire(ls, lba, LS_LOCK_EXCLUSIVE, opt.timeout_ms)) < 0) {
            printf("RESULT not acquired: %s\n", strerror(-r));
            goto leave;
        }
        printf("ACQUIRED %" PRIu64 "\n", ms_now() - t0);
        fflush(stdout);
        if (opt.pause_at_write)
            lockspace_set_test_hook(ls, pause_hook, NULL);
        bool hold = !strcmp(cmd, "hold");
        uint64_t until = ms_now() + opt.linger_ms;
        for (unsigned seq = 0;; seq++) {
            memset(blk, 0, bs);
            snprintf((char *)blk, bs, "%s %u", opt.name, hold ? seq : 0);
            if (!opt.raw && lockspace_check_write(ls) < 0) {
                if (hold) {
                    pause(); /* fenced: stay alive, write nothing */
                    continue;
                }
                break;
            }
            /* --raw: straight to the LUN, no check and no deadline (only
             * the target's fencing can stop it); else through the gate. */
            r = opt.raw ? lun_write(lun, ar.data, 1, blk, 0) : ls_write(ls, ar.data, 1, blk, 0);
            if (r < 0 && !opt.raw && r != -EBADE && lockspace_check_write(ls) == 0) {
                /* A transport error (a stalled target, a path down) while
                 * still within our lease: not a refusal, try again. */
                printf("WRITE-RETRY %d\n", -r);
                fflush(stdout);
                usleep(50000);
                continue;
            }
            if (r < 0) {
                printf("WRITE-REFUSED %d\n", -r);
                fflush(stdout);
                if (hold) {
                    pause();
                    continue;
                }
                break;
            }
            if (!hold && seq == 0) {
                printf("WROTE\n");
                fflush(stdout);
            }
            if (!hold && ms_now() >= until)
                break;
            usleep(50000);
        }
        if (!hold) {
            /* The data block must still be ours. */
            if ((r = lun_read(lun, ar.data, 1, blk2)) == 0 && !strcmp((char *)blk2, (char *)blk)) {
                printf("RESULT data intact\n");
                rc = 0;
            } else {
                printf("RESULT data overwritten: '%.40s'\n", (char *)blk2);
            }
            lock_release(ls, lba);
        }
    } else if (!strcmp(cmd, "bench")) {
        uint64_t io0 = lockspace_io_count(ls), t0 = now_ns();
        for (unsigned i = 0; i < opt.rounds; i++) {
            if (lock_acquire(ls, lba, LS_LOCK_EXCLUSIVE, 0) < 0 || lock_release(ls, lba) < 0)
                goto leave;
        }
        uint64_t t1 = now_ns(), io1 = lockspace_io_count(ls);
        /* acquire alone */
        uint64_t a0 = lockspace_io_count(ls);
        lock_acquire(ls, lba, LS_LOCK_EXCLUSIVE, 0);
        uint64_t a1 = lockspace_io_count(ls);
        lock_release(ls, lba);
        printf("RESULT bench method %s rounds %u us_per_acq_rel %.1f ios_per_acq_rel %.2f "
               "ios_per_acquire %" PRIu64 " peak_rss_kib %" PRIu64 "\n",
               lockspace_uses_caw(ls) ? "caw" : "paxos", opt.rounds,
               (double)(t1 - t0) / 1000.0 / opt.rounds, (double)(io1 - io0) / opt.rounds, a1 - a0,
               peak_rss_kib());
        rc = 0;
    } else {
        fprintf(stderr, "lockhost: unknown command %s\n", cmd);
        rc = 2;
    }
leave:
    if (!fenced_flag)
        lockspace_leave(ls);
    lockspace_close(ls);
out:
    if (r < 0 && rc == 1)
        fprintf(stderr, "lockhost %s: %s: %s\n", opt.name, cmd, strerror(-r));
    free(blk);
    lun_close(lun);
    fflush(stdout);
    return rc;
}
