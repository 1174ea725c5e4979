/* Unit tests of the lockspace: formats, liveness, timeouts, lock-record
 * transitions (pure), then locks on file LUNs with several lockspace
 * handles in one process standing for several hosts, both atomic methods. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "crc32c.h"
#include "le.h"
#include "log.h"
#include "lun.h"
#include "ls_internal.h"
#include "fault.h"
#include <pthread.h>

/* ---- pure ---------------------------------------------------------------- */

static void test_timeouts_satisfy_safety_inequality(void **state)
{
    struct ls_timeouts t;
    assert_int_equal(ls_timeouts_derive(2000, &t), 0);
    assert_int_equal(t.renew_ms, 2000);
    assert_int_equal(t.fence_ms, 8000);
    assert_int_equal(t.dead_ms, 12000);
    for (uint32_t io = 10; io < 100000; io = io * 3 + 7) {
        assert_int_equal(ls_timeouts_derive(io, &t), 0);
        /* no break before the owner stopped writing + in-flight I/O */
        assert_true(t.dead_ms > t.fence_ms + t.io_timeout_ms);
        /* renewals fit several times in the fence window */
        assert_true(t.fence_ms >= 3 * t.renew_ms);
    }
    assert_int_equal(ls_timeouts_derive(0, &t), -EINVAL);
    assert_int_equal(ls_timeouts_derive(700000, &t), -EINVAL);
}

static void test_hb_roundtrip_and_corruption(void **state)
{
    uint8_t buf[LS_REC_SIZE];
    struct ls_hb a = {.state = LS_SLOT_LIVE,
                      .slot = 7,
                      .generation = 3,
                      .counter = 99,
                      .pr_key = 0x1122334455667788ull,
                      .io_timeout_ms = 2000,
                      .rec_slot = LS_NO_SLOT,
                      .journal_lba = 12345};
    memset(a.uuid, 0xab, 16);
    strcpy(a.name, "esx1");
    ls_hb_encode(buf, &a);
    assert_int_equal(le32_get(buf), LS_MAGIC_HB);
    assert_int_equal(le64_get(buf + 16), 99);
    assert_int_equal(le32_get(buf + LS_CRC_OFF), crc32c(buf, LS_CRC_OFF));
    struct ls_hb b;
    assert_int_equal(ls_hb_decode(buf, &b, "slot", 1), 0);
    assert_int_equal(b.slot, 7);
    assert_int_equal(b.generation, 3);
    assert_int_equal(b.counter, 99);
    assert_true(b.pr_key == a.pr_key);
    assert_int_equal(b.journal_lba, 12345);
    assert_string_equal(b.name, "esx1");
    assert_memory_equal(b.uuid, a.uuid, 16);

    log_set_level(LOG_LVL_ERR - 1 < 0 ? LOG_LVL_ERR : LOG_LVL_ERR);
    buf[100] ^= 1;
    assert_int_equal(ls_hb_decode(buf, &b, "slot", 5), -EBADMSG);
    assert_non_null(strstr(log_last_error(), "bad CRC32C"));
    assert_non_null(strstr(log_last_error(), "lba 5"));
    buf[100] ^= 1;
    buf[0] ^= 0xff;
    assert_int_equal(ls_hb_decode(buf, &b, "slot", 5), -EUCLEAN);
    assert_non_null(strstr(log_last_error(), "bad magic"));
    memset(buf, 0, sizeof(buf));
    assert_int_equal(ls_hb_decode(buf, &b, "slot", 5), -EUCLEAN);
    assert_non_null(strstr(log_last_error(), "not formatted"));
}

static void test_lockrec_roundtrip_64_owners(void **state)
{
    uint8_t buf[LS_REC_SIZE];
    struct ls_lockrec r = {.mode = LS_LOCK_FREE};
    strcpy(r.name, "inode-42");
    for (uint32_t i = 0; i < LS_LOCK_MAX_OWNERS; i++)
        assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_SHARED, i, 1000 + i), 0);
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_SHARED, 100, 1), -ENOSPC);
    assert_int_equal(r.version, 64);
    ls_lockrec_encode(buf, &r);
    struct ls_lockrec d;
    assert_int_equal(ls_lockrec_decode(buf, &d, "lock", 9), 0);
    assert_int_equal(d.nowners, 64);
    assert_int_equal(d.mode, LS_LOCK_SHARED);
    assert_int_equal(d.owners[63].slot, 63);
    assert_int_equal(d.owners[63].gen, 1063);
    assert_string_equal(d.name, "inode-42");
    assert_int_equal(d.version, 64);
    /* inconsistent record: exclusive with 2 owners */
    buf[6] = LS_LOCK_EXCLUSIVE;
    le32_put(buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
    assert_int_equal(ls_lockrec_decode(buf, &d, "lock", 9), -EUCLEAN);
}

static void test_header_leader_dblock_roundtrip(void **state)
{
    uint8_t buf[LS_REC_SIZE];
    struct ls_header h = {.block_size = 4096,
                          .io_timeout_ms = 500,
                          .max_hosts = 256,
                          .max_locks = 64,
                          .hb_off = 1,
                          .paxos_off = 257,
                          .locks_off = 514,
                          .total_blocks = 578};
    ls_header_encode(buf, &h);
    struct ls_header h2;
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), 0);
    assert_int_equal(h2.locks_off, 514);
    assert_int_equal(h2.io_timeout_ms, 500);
    le16_put(buf + 4, 2); /* newer major */
    le32_put(buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), -EPROTO);
    struct ls_leader l = {.held = 1, .lver = 77, .owner_slot = 3, .owner_gen = 9}, l2;
    ls_leader_encode(buf, &l);
    assert_int_equal(ls_leader_decode(buf, &l2, "leader", 0), 0);
    assert_int_equal(l2.lver, 77);
    assert_int_equal(l2.owner_gen, 9);
    struct ls_dblock d = {.lver = 5, .mbal = 0x30002, .bal = 0x30002, .inp_slot = 1, .inp_gen = 4},
                     d2;
    ls_dblock_encode(buf, &d);
    assert_int_equal(ls_dblock_decode(buf, &d2, "dblock", 0), 0);
    assert_int_equal(d2.mbal, 0x30002);
    assert_int_equal(d2.inp_gen, 4);
}

static void test_mode_compatibility(void **state)
{
    assert_true(ls_mode_compatible(LS_LOCK_FREE, LS_LOCK_EXCLUSIVE));
    assert_false(ls_mode_compatible(LS_LOCK_EXCLUSIVE, LS_LOCK_EXCLUSIVE));
    assert_false(ls_mode_compatible(LS_LOCK_EXCLUSIVE, LS_LOCK_SHARED));
    assert_false(ls_mode_compatible(LS_LOCK_SHARED, LS_LOCK_EXCLUSIVE));
    assert_true(ls_mode_compatible(LS_LOCK_SHARED, LS_LOCK_SHARED));
    assert_false(ls_mode_compatible(LS_LOCK_SHARED, LS_LOCK_MULTI_WRITER));
    assert_true(ls_mode_compatible(LS_LOCK_MULTI_WRITER, LS_LOCK_MULTI_WRITER));
    assert_false(ls_mode_compatible(LS_LOCK_MULTI_WRITER, LS_LOCK_EXCLUSIVE));
}

static void test_lockrec_transitions_bump_version(void **state)
{
    struct ls_lockrec r = {.mode = LS_LOCK_FREE};
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_EXCLUSIVE, 1, 5), 0);
    assert_int_equal(r.version, 1);
    assert_int_equal(r.writer_slot, 1);
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_EXCLUSIVE, 1, 5), 1); /* already */
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_EXCLUSIVE, 2, 5), -EBUSY);
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_SHARED, 1, 6), -EBUSY); /* other gen */
    assert_int_equal(ls_lockrec_remove_owner(&r, 2, 5, 2, 5), -ENOENT);
    assert_int_equal(ls_lockrec_remove_owner(&r, 1, 5, 2, 7), 0);
    assert_int_equal(r.mode, LS_LOCK_FREE);
    assert_int_equal(r.version, 2);
    assert_int_equal(r.writer_slot, 2);
    assert_int_equal(r.writer_gen, 7);
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_MULTI_WRITER, 1, 5), 0);
    assert_int_equal(ls_lockrec_add_owner(&r, LS_LOCK_MULTI_WRITER, 2, 5), 0);
    assert_int_equal(ls_lockrec_remove_owner(&r, 1, 5, 1, 5), 0);
    assert_int_equal(r.mode, LS_LOCK_MULTI_WRITER);
    assert_int_equal(r.nowners, 1);
    assert_int_equal(r.owners[0].slot, 2);
}

static void test_liveness_on_observer_clock(void **state)
{
    const uint64_t MS = 1000000, dead = 12000 * MS;
    struct ls_peer p = {0};
    struct ls_hb hb = {.state = LS_SLOT_LIVE, .generation = 1, .counter = 10};
    /* a new observer starts the peer as unknown */
    ls_peer_update(&p, &hb, false, 0, 1 * MS, dead);
    assert_int_equal(p.state, LS_HOST_UNKNOWN);
    /* unchanged, but not for the dead time yet */
    ls_peer_update(&p, &hb, false, 11000 * MS, 11001 * MS, dead);
    assert_int_equal(p.state, LS_HOST_UNKNOWN);
    /* counter changes: live, timer restarts at the read's completion */
    hb.counter = 11;
    ls_peer_update(&p, &hb, false, 11500 * MS, 11502 * MS, dead);
    assert_int_equal(p.state, LS_HOST_LIVE);
    assert_int_equal(p.first_seen_ns, 11502 * MS);
    /* a read that started just before first_seen + dead: still live */
    ls_peer_update(&p, &hb, false, 23501 * MS, 23600 * MS, dead);
    assert_int_equal(p.state, LS_HOST_LIVE);
    /* a read that started at first_seen + dead: dead */
    ls_peer_update(&p, &hb, false, 23502 * MS, 23503 * MS, dead);
    assert_int_equal(p.state, LS_HOST_DEAD);
    /* any change (new generation) brings it back */
    hb.generation = 2;
    ls_peer_update(&p, &hb, false, 24000 * MS, 24001 * MS, dead);
    assert_int_equal(p.state, LS_HOST_LIVE);
    /* corrupt: never free, never dead */
    ls_peer_update(&p, &hb, true, 99000 * MS, 99001 * MS, dead);
    assert_int_equal(p.state, LS_HOST_CORRUPT);
    ls_peer_update(&p, &hb, true, 999000 * MS, 999001 * MS, dead);
    assert_int_equal(p.state, LS_HOST_CORRUPT);
    /* after corruption the peer starts again as unknown */
    ls_peer_update(&p, &hb, false, 999100 * MS, 999101 * MS, dead);
    assert_int_equal(p.state, LS_HOST_UNKNOWN);
    hb.state = LS_SLOT_FREE;
    ls_peer_update(&p, &hb, false, 999200 * MS, 999201 * MS, dead);
    assert_int_equal(p.state, LS_HOST_FREE);
}

/* ---- file LUNs ----------------------------------------------------------- */

struct fixture {
    char path[64];
    struct lun *lun[3];
    uint32_t bs;
};

static int setup_bs(void **state, uint32_t bs)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->path, sizeof(f->path), "/tmp/test-locking-XXXXXX");
    int fd = mkstemp(f->path);
    if (fd < 0 || ftruncate(fd, 16 << 20) < 0)
        return -1;
    close(fd);
    f->bs = bs;
    struct lun_options o;
    lun_options_init(&o);
    o.file_block_size = bs;
    o.timeout_ms = 1000;
    for (int i = 0; i < 3; i++)
        if (lun_open(f->path, &o, &f->lun[i]) < 0)
            return -1;
    *state = f;
    return 0;
}
static int setup512(void **state)
{
    return setup_bs(state, 512);
}
static int setup4k(void **state)
{
    return setup_bs(state, 4096);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < 3; i++)
        lun_close(f->lun[i]);
    unlink(f->path);
    free(f);
    return 0;
}

static struct lockspace *host(struct fixture *f, int i, bool paxos, bool join)
{
    char name[16];
    snprintf(name, sizeof(name), "host%d", i);
    struct ls_open_opts o = {.host_name = name, .force_paxos = paxos};
    struct lockspace *ls = NULL;
    assert_int_equal(lockspace_open(f->lun[i], 8, &o, &ls), 0);
    if (join)
        assert_int_equal(lockspace_join(ls), 0);
    return ls;
}

static void format(struct fixture *f, uint32_t io_ms)
{
    struct ls_format_params p = {.io_timeout_ms = io_ms, .max_hosts = 32, .max_locks = 16};
    assert_int_equal(lockspace_format(f->lun[0], 8, &p), 0);
}

static void modes_between_hosts(struct fixture *f, bool paxos)
{
    format(f, 1000);
    struct lockspace *a = host(f, 0, paxos, true), *b = host(f, 1, paxos, true);
    assert_int_not_equal(lockspace_slot(a), lockspace_slot(b));
    assert_int_equal(lockspace_uses_caw(a), !paxos);
    uint64_t l0 = lockspace_lock_lba(a, 0), l1 = lockspace_lock_lba(a, 1);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    log_clear_last_error();
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 0), -EBUSY);
    assert_non_null(strstr(log_last_error(), "host0"));
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_SHARED, 50), -ETIMEDOUT);
    assert_int_equal(lock_release(a, l0), 0);
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    assert_int_equal(lock_release(b, l0), 0);
    /* shared: both; exclusive refused */
    assert_int_equal(lock_acquire(a, l1, LS_LOCK_SHARED, 0), 0);
    assert_int_equal(lock_acquire(b, l1, LS_LOCK_SHARED, 0), 0);
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_MULTI_WRITER, 0), 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_MULTI_WRITER, 0), 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_SHARED, 0), -EBUSY);
    struct ls_status st;
    assert_int_equal(lockspace_status(a, 1, &st), 0);
    assert_int_equal(st.nhosts, 2);
    assert_int_equal(st.nlocks, 2);
    assert_int_equal(st.locks[0].mode, LS_LOCK_MULTI_WRITER);
    assert_int_equal(st.locks[0].nowners, 2);
    assert_int_equal(st.locks[1].mode, LS_LOCK_SHARED);
    ls_status_free(&st);
    /* leave releases everything */
    assert_int_equal(lockspace_leave(a), 0);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(a);
    lockspace_close(b);
    struct lockspace *c = host(f, 2, paxos, true);
    assert_int_equal(lock_acquire(c, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    assert_int_equal(lock_acquire(c, l1, LS_LOCK_EXCLUSIVE, 0), 0);
    assert_int_equal(lockspace_leave(c), 0);
    lockspace_close(c);
}

static void test_lock_modes_caw(void **state)
{
    modes_between_hosts(*state, false);
}
static void test_lock_modes_paxos(void **state)
{
    modes_between_hosts(*state, true);
}

static int recovered;
static int recover_hook(struct lockspace *ls, const struct ls_host_info *dead, void *opaque)
{
    recovered++;
    assert_string_equal(dead->name, "host0");
    return 0;
}

static void break_after_death(struct fixture *f, bool paxos)
{
    format(f, 800);
    struct lockspace *a = host(f, 0, paxos, true);
    struct ls_open_opts o = {.host_name = "host1", .force_paxos = paxos, .recover = recover_hook};
    struct lockspace *b;
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &b), 0);
    assert_int_equal(lockspace_join(b), 0);
    uint32_t aslot = lockspace_slot(a), agen = lockspace_generation(a);
    uint64_t l0 = lockspace_lock_lba(a, 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    lockspace_abandon(a); /* "kill -9" */
    recovered = 0;
    uint64_t t0 = ls_now_ns();
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 10000), 0);
    uint64_t ms = (ls_now_ns() - t0) / 1000000;
    assert_true(ms >= lockspace_timeouts(b)->dead_ms - 2 * lockspace_timeouts(b)->renew_ms);
    assert_int_equal(recovered, 1);
    /* the dead host's slot was cleared with generation + 1 */
    uint8_t *blk = calloc(1, f->bs);
    assert_int_equal(lun_read(f->lun[2], 8 + 1 + aslot, 1, blk), 0);
    struct ls_hb hb;
    assert_int_equal(ls_hb_decode(blk, &hb, "slot", 0), 0);
    assert_int_equal(hb.state, LS_SLOT_FREE);
    assert_int_equal(hb.generation, agen + 1);
    free(blk);
    lockspace_close(a);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(b);
}

static void test_lock_break_after_holder_killed_caw(void **state)
{
    break_after_death(*state, false);
}
static void test_lock_break_after_holder_killed_paxos(void **state)
{
    break_after_death(*state, true);
}

static int fenced_why;
static void on_fenced(struct lockspace *ls, enum ls_fence_reason why, void *opaque)
{
    fenced_why = (int)why;
}

static void test_slot_lost_fences_host(void **state)
{
    struct fixture *f = *state;
    format(f, 800);
    struct ls_open_opts o = {.host_name = "host0", .fenced = on_fenced};
    struct lockspace *a;
    assert_int_equal(lockspace_open(f->lun[0], 8, &o, &a), 0);
    assert_int_equal(lockspace_join(a), 0);
    fenced_why = 0;
    /* another host clears our slot with generation + 1 */
    uint8_t *blk = calloc(1, f->bs);
    struct ls_hb hb = {.state = LS_SLOT_FREE,
                       .slot = lockspace_slot(a),
                       .generation = lockspace_generation(a) + 1,
                       .rec_slot = LS_NO_SLOT};
    ls_hb_encode(blk, &hb);
    /* right after a renewal, so that it does not race with the next one */
    uint8_t *cur = calloc(1, f->bs);
    struct ls_hb h0, h1;
    assert_int_equal(lun_read(f->lun[1], 8 + 1 + lockspace_slot(a), 1, cur), 0);
    assert_int_equal(ls_hb_decode(cur, &h0, "slot", 0), 0);
    do {
        usleep(2000);
        assert_int_equal(lun_read(f->lun[1], 8 + 1 + lockspace_slot(a), 1, cur), 0);
        assert_int_equal(ls_hb_decode(cur, &h1, "slot", 0), 0);
    } while (h1.counter == h0.counter);
    free(cur);
    assert_int_equal(lun_write(f->lun[1], 8 + 1 + lockspace_slot(a), 1, blk, 0), 0);
    for (int i = 0; i < 500 && !fenced_why; i++)
        usleep(10000);
    assert_int_equal(fenced_why, LS_FENCE_SLOT_LOST);
    assert_int_equal(lockspace_check_write(a), -EIO);
    assert_int_equal(lock_acquire(a, lockspace_lock_lba(a, 0), LS_LOCK_EXCLUSIVE, 0), -EIO);
    /* its own slot was not overwritten by a late renewal */
    usleep(300000);
    struct ls_hb now;
    assert_int_equal(lun_read(f->lun[1], 8 + 1 + lockspace_slot(a), 1, blk), 0);
    assert_int_equal(ls_hb_decode(blk, &now, "slot", 0), 0);
    assert_int_equal(now.state, LS_SLOT_FREE);
    free(blk);
    lockspace_close(a);
}

static void test_mount_with_other_parameters_refused(void **state)
{
    struct fixture *f = *state;
    format(f, 1000);
    struct ls_open_opts o = {.io_timeout_ms = 2000};
    struct lockspace *a = NULL;
    assert_int_equal(lockspace_open(f->lun[0], 8, &o, &a), -EINVAL);
    assert_non_null(strstr(log_last_error(), "differ"));
    assert_null(a);
    /* another slot count (format() lays 32) */
    struct ls_open_opts o2 = {.max_hosts = 64};
    assert_int_equal(lockspace_open(f->lun[0], 8, &o2, &a), -EINVAL);
    assert_non_null(strstr(log_last_error(), "max hosts 64 vs 32"));
    assert_non_null(strstr(log_last_error(), "lockspace at block 8"));
    assert_null(a);
    /* the same parameters are accepted */
    struct ls_open_opts o3 = {.io_timeout_ms = 1000, .max_hosts = 32};
    assert_int_equal(lockspace_open(f->lun[0], 8, &o3, &a), 0);
    lockspace_close(a);
}

static void test_corrupt_lock_record_is_an_error_not_free(void **state)
{
    struct fixture *f = *state;
    format(f, 1000);
    struct lockspace *a = host(f, 0, false, true);
    uint64_t l0 = lockspace_lock_lba(a, 0);
    uint8_t *blk = calloc(1, f->bs);
    assert_int_equal(lun_read(f->lun[1], l0, 1, blk), 0);
    blk[30] ^= 0x40; /* inside the name: CRC mismatch */
    assert_int_equal(lun_write(f->lun[1], l0, 1, blk, 0), 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), -EBADMSG);
    assert_non_null(strstr(log_last_error(), "bad CRC32C"));
    memset(blk, 0, f->bs);
    assert_int_equal(lun_write(f->lun[1], l0, 1, blk, 0), 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), -EUCLEAN);
    assert_non_null(strstr(log_last_error(), "bad magic"));
    /* the block was left alone */
    assert_int_equal(lun_read(f->lun[1], l0, 1, blk), 0);
    for (uint32_t i = 0; i < f->bs; i++)
        assert_int_equal(blk[i], 0);
    free(blk);
    assert_int_equal(lockspace_leave(a), 0);
    lockspace_close(a);
}

/* Two hosts race to break the same dead host: exactly one recovers it. */
static int race_recovered;
static int race_hook(struct lockspace *ls, const struct ls_host_info *dead, void *opaque)
{
    __atomic_add_fetch(&race_recovered, 1, __ATOMIC_SEQ_CST);
    usleep(20000);
    return 0;
}
struct racer {
    struct lockspace *ls;
    uint64_t lba;
    int rc;
};
static void *racer_run(void *arg)
{
    struct racer *r = arg;
    r->rc = lock_acquire(r->ls, r->lba, LS_LOCK_SHARED, 15000);
    return NULL;
}

static void race_break(struct fixture *f, bool paxos)
{
    format(f, 800);
    struct lockspace *a = host(f, 0, paxos, true), *hs[2];
    for (int i = 0; i < 2; i++) {
        struct ls_open_opts o = {
            .host_name = i ? "host2" : "host1", .force_paxos = paxos, .recover = race_hook};
        assert_int_equal(lockspace_open(f->lun[i + 1], 8, &o, &hs[i]), 0);
        assert_int_equal(lockspace_join(hs[i]), 0);
    }
    uint64_t l0 = lockspace_lock_lba(a, 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    lockspace_abandon(a);
    race_recovered = 0;
    struct racer r[2] = {{hs[0], l0, -1}, {hs[1], l0, -1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, racer_run, &r[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(r[0].rc, 0);
    assert_int_equal(r[1].rc, 0); /* both get the shared lock in the end */
    assert_int_equal(race_recovered, 1);
    lockspace_close(a);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(lockspace_leave(hs[i]), 0);
        lockspace_close(hs[i]);
    }
}
static void test_racing_breakers_recover_once_caw(void **state)
{
    race_break(*state, false);
}
static void test_racing_breakers_recover_once_paxos(void **state)
{
    race_break(*state, true);
}

/* A CAW that fails with a timeout is resolved by reading back, then sent again. */
static void test_timed_out_caw_resolved_by_read_back(void **state)
{
    struct fixture *f = *state;
    format(f, 250);
    struct lun_options o;
    lun_options_init(&o);
    o.file_block_size = f->bs;
    struct lun *fl;
    struct lun_fault *ctl;
    char uri[96];
    snprintf(uri, sizeof(uri), "%s", f->path);
    assert_int_equal(lun_open_fault(uri, &o, &fl, &ctl), 0);
    struct ls_open_opts oo = {.host_name = "host0"};
    struct lockspace *a;
    assert_int_equal(lockspace_open(fl, 8, &oo, &a), 0);
    assert_int_equal(lockspace_join(a), 0);
    lockspace_abandon(a); /* no renewal writes to disturb the write count */
    a->fenced = false;
    a->deadline_ns = ls_now_ns() + 60ull * 1000000000ull;
    uint64_t l0 = lockspace_lock_lba(a, 0);
    lun_fault_fail_write(ctl, 1, false, -ETIMEDOUT, 0, 0, 0);
    uint64_t io0 = lockspace_io_count(a);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    /* read, CAW (timed out), read back, CAW again */
    assert_int_equal(lockspace_io_count(a) - io0, 4);
    uint8_t *blk = calloc(1, f->bs);
    assert_int_equal(lun_read(f->lun[0], l0, 1, blk), 0);
    struct ls_lockrec lr;
    assert_int_equal(ls_lockrec_decode(blk, &lr, "lock", l0), 0);
    assert_int_equal(lr.nowners, 1);
    assert_int_equal(lr.owners[0].slot, lockspace_slot(a));
    assert_int_equal(lr.version, 1);
    free(blk);
    lockspace_close(a);
    lun_close(fl);
}

/* A slot being recovered by a live host is waited for; once that recoverer
 * is dead too, the slot is taken over and recovered once more. */
static void test_recovery_by_live_host_waited_for_then_taken_over(void **state)
{
    struct fixture *f = *state;
    format(f, 500);
    struct lockspace *a = host(f, 0, false, true), *c = host(f, 2, false, true), *b;
    struct ls_open_opts o = {.host_name = "host1", .recover = recover_hook};
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &b), 0);
    assert_int_equal(lockspace_join(b), 0);
    uint64_t l0 = lockspace_lock_lba(a, 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    lockspace_abandon(a);
    /* c marks a's slot as being recovered by c (a long journal replay) */
    uint8_t *blk = calloc(1, f->bs);
    uint64_t slba = 8 + 1 + lockspace_slot(a);
    struct ls_hb hb;
    assert_int_equal(lun_read(f->lun[2], slba, 1, blk), 0);
    assert_int_equal(ls_hb_decode(blk, &hb, "slot", slba), 0);
    hb.state = LS_SLOT_RECOVERING;
    hb.rec_slot = lockspace_slot(c);
    hb.rec_gen = lockspace_generation(c);
    ls_hb_encode(blk, &hb);
    assert_int_equal(lun_write(f->lun[2], slba, 1, blk, 0), 0);
    recovered = 0;
    const struct ls_timeouts *t = lockspace_timeouts(b);
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, (int)(t->dead_ms + 2 * t->renew_ms)),
                     -ETIMEDOUT);
    assert_int_equal(recovered, 0);
    lockspace_abandon(c); /* the recoverer dies too */
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, (int)(3 * t->dead_ms)), 0);
    assert_int_equal(recovered, 1);
    assert_int_equal(lun_read(f->lun[2], slba, 1, blk), 0);
    assert_int_equal(ls_hb_decode(blk, &hb, "slot", slba), 0);
    assert_int_equal(hb.state, LS_SLOT_FREE);
    free(blk);
    lockspace_close(a);
    lockspace_close(c);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(b);
}

/* A dead host that holds no lock is recovered by the housekeeping call. */
static void test_recover_dead_frees_slot(void **state)
{
    struct fixture *f = *state;
    format(f, 500);
    struct lockspace *a = host(f, 0, false, true), *b;
    struct ls_open_opts o = {.host_name = "host1", .recover = recover_hook};
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &b), 0);
    assert_int_equal(lockspace_join(b), 0);
    uint32_t aslot = lockspace_slot(a), agen = lockspace_generation(a);
    assert_int_equal(lockspace_recover_dead(b), 0); /* nobody dead yet */
    lockspace_abandon(a);
    recovered = 0;
    int n = 0;
    for (int i = 0; i < 100 && n == 0; i++) {
        usleep(100000);
        n = lockspace_recover_dead(b);
        assert_true(n >= 0);
    }
    assert_int_equal(n, 1);
    assert_int_equal(recovered, 1);
    uint8_t *blk = calloc(1, f->bs);
    struct ls_hb hb;
    assert_int_equal(lun_read(f->lun[2], 8 + 1 + aslot, 1, blk), 0);
    assert_int_equal(ls_hb_decode(blk, &hb, "slot", 0), 0);
    assert_int_equal(hb.state, LS_SLOT_FREE);
    assert_int_equal(hb.generation, agen + 1);
    free(blk);
    lockspace_close(a);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(b);
}

#define T(fn)                                                                                      \
    cmocka_unit_test_setup_teardown(fn, setup512, teardown),                                       \
        cmocka_unit_test_setup_teardown(fn, setup4k, teardown)

int main(int argc, char **argv)
{
    log_set_program("test-locking");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timeouts_satisfy_safety_inequality),
        cmocka_unit_test(test_hb_roundtrip_and_corruption),
        cmocka_unit_test(test_lockrec_roundtrip_64_owners),
        cmocka_unit_test(test_header_leader_dblock_roundtrip),
        cmocka_unit_test(test_mode_compatibility),
        cmocka_unit_test(test_lockrec_transitions_bump_version),
        cmocka_unit_test(test_liveness_on_observer_clock),
        T(test_lock_modes_caw),
        T(test_lock_modes_paxos),
        T(test_slot_lost_fences_host),
        T(test_mount_with_other_parameters_refused),
        T(test_corrupt_lock_record_is_an_error_not_free),
        T(test_timed_out_caw_resolved_by_read_back),
    };
    /* The tests that wait for a dead time, run as a second meson test. */
    const struct CMUnitTest break_tests[] = {
        cmocka_unit_test_setup_teardown(test_lock_break_after_holder_killed_caw, setup512,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lock_break_after_holder_killed_paxos, setup4k,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_racing_breakers_recover_once_caw, setup4k, teardown),
        cmocka_unit_test_setup_teardown(test_racing_breakers_recover_once_paxos, setup512,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_recovery_by_live_host_waited_for_then_taken_over,
                                        setup4k, teardown),
        cmocka_unit_test_setup_teardown(test_recover_dead_frees_slot, setup512, teardown),
    };
    if (argc > 1 && !strcmp(argv[1], "break"))
        return cmocka_run_group_tests(break_tests, NULL, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
