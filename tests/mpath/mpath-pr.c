/* mpath-pr: persistent-reservation keys across path reconnects on tgt.
 *
 *   mpath-pr URI1 URI2 CUT_CMD RESTORE_CMD
 *
 * Host A opens the LUN through URI1 and URI2 (initiator host-a, fixed
 * policy preferring path 2 = URI2), host B through URI1 (host-b). Both
 * register; A holds Write Exclusive - All Registrants. CUT_CMD / RESTORE_CMD
 * (shell commands) cut and restore the portal of URI2.
 *
 *  1. Path 2 is cut and restored: it reconnects (a new session), A's key is
 *     re-registered on it and the register check is asked before it carries
 *     writes: A's writes through it succeed (an unregistered nexus would get
 *     RESERVATION CONFLICT under the reservation).
 *  2. B preempts A's key: A's next write fails with -EBADE and A reports
 *     itself fenced. Path 2 is cut and restored again: it does NOT register
 *     again (tgt would accept it and let A write): READ KEYS shows no key of
 *     A, and A's writes still fail with -EBADE.
 * Exit 0 on success; prints what failed otherwise.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "util.h"

#define KEY_A 0xAAAA0001ULL
#define KEY_B 0xBBBB0002ULL

static _Atomic unsigned checks;

static int check_gen(void *opaque)
{
    (void)opaque;
    checks++;
    return 1;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "FAIL: " __VA_ARGS__);                                                     \
        fprintf(stderr, "\n");                                                                     \
        exit(1);                                                                                   \
    } while (0)

static bool wait_state(struct lun *lun, unsigned i, enum lun_path_state want, unsigned ms)
{
    for (unsigned t = 0; t < ms; t += 20) {
        struct lun_path_stats st;
        lun_path_get_stats(lun, i, &st);
        if (st.state == want)
            return true;
        usleep(20000);
    }
    return false;
}

static unsigned count_key(struct lun *lun, uint64_t key)
{
    struct lun_pr_state *ps = calloc(1, sizeof *ps);
    int rc = lun_pr_read(lun, ps);
    if (rc < 0)
        FAIL("READ KEYS: %s", strerror(-rc));
    unsigned n = 0;
    for (unsigned i = 0; i < ps->nkeys; i++)
        n += ps->keys[i] == key;
    free(ps);
    return n;
}

static void cut_and_restore(struct lun *a, const char *cut, const char *restore)
{
    if (system(cut) != 0)
        FAIL("cut command failed: %s", cut);
    if (!wait_state(a, 1, LUN_PATH_FAILED, 10000))
        FAIL("path 2 not failed after the cut");
    sleep(1);
    if (system(restore) != 0)
        FAIL("restore command failed: %s", restore);
    if (!wait_state(a, 1, LUN_PATH_ACTIVE, 15000))
        FAIL("path 2 not back (fixed policy, preferred) after the restore");
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: mpath-pr URI1 URI2 CUT_CMD RESTORE_CMD\n");
        return 2;
    }
    log_set_program("mpath-pr");
    struct lun_options oa, ob;
    lun_options_init(&oa);
    oa.initiator_name = "iqn.2026-11.org.clusterfs.test:host-a";
    oa.policy = LUN_POLICY_FIXED;
    oa.preferred_path = 1;
    oa.check_timeout_ms = 5000;
    lun_options_init(&ob);
    ob.initiator_name = "iqn.2026-11.org.clusterfs.test:host-b";
    struct lun *a, *b;
    const char *ua[2] = {argv[1], argv[2]};
    int rc = lun_open_paths(ua, 2, &oa, &a);
    if (rc < 0)
        FAIL("open A: %s", strerror(-rc));
    rc = lun_open(argv[1], &ob, &b);
    if (rc < 0)
        FAIL("open B: %s", strerror(-rc));
    lun_set_register_check(a, check_gen, NULL);
    uint32_t bs = lun_block_size(a);
    uint8_t *buf = calloc(1, bs);

    if ((rc = lun_pr_register(a, KEY_A)) < 0)
        FAIL("register A: %s", strerror(-rc));
    if ((rc = lun_pr_register(b, KEY_B)) < 0)
        FAIL("register B: %s", strerror(-rc));
    if ((rc = lun_pr_reserve(a, KEY_A, LUN_PR_WE_ALL_REGISTRANTS)) < 0)
        FAIL("reserve: %s", strerror(-rc));
    if (count_key(b, KEY_A) != 2)
        FAIL("A's key should be registered on its 2 paths, READ KEYS shows %u",
             count_key(b, KEY_A));
    if ((rc = lun_write(a, 0, 1, buf, 0)) < 0)
        FAIL("A's first write: %s", strerror(-rc));
    printf("registered on both paths, reservation WE-AR held, A writes\n");

    /* 1. Reconnect: re-registration + check before writes. */
    unsigned c0 = checks;
    cut_and_restore(a, argv[3], argv[4]);
    if (checks == c0)
        FAIL("the register check was not asked when path 2 came back");
    if (count_key(b, KEY_A) < 2)
        FAIL("A's key not re-registered on the reconnected path (READ KEYS: %u)",
             count_key(b, KEY_A));
    struct lun_path_stats s1;
    lun_path_get_stats(a, 1, &s1);
    uint64_t w = s1.writes;
    for (int i = 0; i < 10; i++)
        if ((rc = lun_write(a, (uint64_t)i, 1, buf, 0)) < 0)
            FAIL("A's write %d after the reconnect: %s", i, strerror(-rc));
    lun_path_get_stats(a, 1, &s1);
    if (s1.writes < w + 10)
        FAIL("A's writes did not go through the reconnected preferred path");
    if (lun_is_fenced(a))
        FAIL("A reports fenced without reason");
    printf("path 2 reconnected, key re-registered after the check (%u checks), writes flow on it\n",
           checks - c0);

    /* 2. B fences A. */
    if ((rc = lun_pr_preempt(b, KEY_B, KEY_A, LUN_PR_WE_ALL_REGISTRANTS, false)) < 0)
        FAIL("B preempts A: %s", strerror(-rc));
    rc = lun_write(a, 0, 1, buf, 0);
    if (rc != -EBADE)
        FAIL("A's write after the preempt: got %d (%s), want -EBADE", rc, strerror(-rc));
    if (!lun_is_fenced(a))
        FAIL("A does not report itself fenced after 2A/03");
    printf("B preempted A: A's write -EBADE, A fenced\n");
    cut_and_restore(a, argv[3], argv[4]);
    if (count_key(b, KEY_A) != 0)
        FAIL("a fenced host re-registered its key on reconnect (READ KEYS: %u)",
             count_key(b, KEY_A));
    for (int i = 0; i < 3; i++) {
        rc = lun_write(a, 0, 1, buf, 0);
        if (rc != -EBADE)
            FAIL("fenced A's write after the reconnect: got %d (%s), want -EBADE", rc,
                 strerror(-rc));
    }
    printf("after reconnect the fenced host did not re-register; its writes stay refused\n");
    lun_pr_clear(b, KEY_B);
    free(buf);
    lun_close(a);
    lun_close(b);
    printf("PASS\n");
    return 0;
}
