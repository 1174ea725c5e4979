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
#include <time.h>
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
                          .total_blocks = 578,
                          .atomic = LS_ATOMIC_PAXOS};
    ls_header_encode(buf, &h);
    struct ls_header h2;
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), 0);
    assert_int_equal(h2.locks_off, 514);
    assert_int_equal(h2.io_timeout_ms, 500);
    assert_int_equal(h2.atomic, LS_ATOMIC_PAXOS);
    assert_int_equal(le16_get(buf + 4), 2); /* header major 2: the method is recorded */
    assert_int_equal(le16_get(buf + 72), LS_ATOMIC_PAXOS);
    /* an unknown incompat feature is refused, an unknown compat one is not */
    le32_put(buf + 80, 0x10);
    le32_put(buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), 0);
    le32_put(buf + 76, 0x1);
    le32_put(buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), -EPROTO);
    assert_non_null(strstr(log_last_error(), "incompatible features"));
    le32_put(buf + 76, 0);
    le16_put(buf + 4, 3); /* newer major */
    le32_put(buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), -EPROTO);
    /* a version-1 header does not record the method: refused, saying why */
    le16_put(buf + 4, 1);
    le32_put(buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
    assert_int_equal(ls_header_decode(buf, &h2, "hdr", 0), -EPROTO);
    assert_non_null(strstr(log_last_error(), "atomic-step method"));
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

static void format_m(struct fixture *f, uint32_t io_ms, bool paxos)
{
    struct ls_format_params p = {.io_timeout_ms = io_ms,
                                 .max_hosts = 32,
                                 .max_locks = 16,
                                 .atomic = paxos ? LS_ATOMIC_PAXOS : LS_ATOMIC_CAW};
    assert_int_equal(lockspace_format(f->lun[0], 8, &p), 0);
}

static void format(struct fixture *f, uint32_t io_ms)
{
    format_m(f, io_ms, false);
}

static void modes_between_hosts(struct fixture *f, bool paxos)
{
    format_m(f, 1000, paxos);
    struct lockspace *a = host(f, 0, paxos, true), *b = host(f, 1, paxos, true);
    assert_int_not_equal(lockspace_slot(a), lockspace_slot(b));
    assert_int_equal(lockspace_uses_caw(a), !paxos);
    uint64_t l0 = lockspace_lock_lba(a, 0), l1 = lockspace_lock_lba(a, 1);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    log_clear_last_error();
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 0), -EBUSY);
    assert_non_null(strstr(log_last_error(), "host0"));
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_SHARED, 50), -ETIMEDOUT);
    struct ls_fence_token ta, tb;
    assert_int_equal(lock_fence_token(a, l0, &ta), 0);
    assert_int_equal(lock_fence_token(b, l0, &tb), -ENOENT);
    assert_int_equal(ta.slot, lockspace_slot(a));
    assert_int_equal(ta.generation, lockspace_generation(a));
    assert_int_equal(lock_release(a, l0), 0);
    assert_int_equal(lock_fence_token(a, l0, &ta), -ENOENT);
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    assert_int_equal(lock_fence_token(b, l0, &tb), 0);
    assert_true(tb.lock_version > ta.lock_version); /* a later holder's token is greater */
    assert_int_equal(tb.slot, lockspace_slot(b));
    assert_int_equal(lock_release(b, l0), 0);
    /* shared: both; exclusive refused */
    assert_int_equal(lock_acquire(a, l1, LS_LOCK_SHARED, 0), 0);
    assert_int_equal(lock_acquire(b, l1, LS_LOCK_SHARED, 0), 0);
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_MULTI_WRITER, 0), 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_MULTI_WRITER, 0), 0);
    /* a second acquire by the same host is refused, whatever the mode */
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_SHARED, 0), -EDEADLK);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_MULTI_WRITER, 0), -EDEADLK);
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
    format_m(f, 800, paxos);
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
    format_m(f, 800, paxos);
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

/* ---- issue 10: tests that fail on the code before it ------------------- */

/* Deadlines are measured on CLOCK_BOOTTIME (it keeps counting through a
 * suspend; CLOCK_MONOTONIC does not). Meaningful where the two differ: the
 * meson test `locking-clock` runs this in a time namespace whose boottime
 * is 100000 s ahead (unshare -T --boottime). */
static void test_deadline_clock_is_boottime(void **state)
{
    struct timespec b, m;
    clock_gettime(CLOCK_BOOTTIME, &b);
    clock_gettime(CLOCK_MONOTONIC, &m);
    uint64_t bt = (uint64_t)b.tv_sec * 1000000000ull + (uint64_t)b.tv_nsec;
    uint64_t mt = (uint64_t)m.tv_sec * 1000000000ull + (uint64_t)m.tv_nsec;
    uint64_t now = ls_now_ns();
    if (getenv("EXPECT_BOOTTIME_OFFSET"))
        assert_true(bt - mt > 1000000000ull * 1000); /* we do run with an offset */
    assert_true(now >= bt && now - bt < 1000000000ull);
}

/* The derived timeouts against numbers computed by hand from the documented
 * rules (renew T, fence 4T, dead 6T, mutex hold 3T, steal 5T), not against
 * the function's own formula. */
static void test_derived_timeouts_match_hand_computed_values(void **state)
{
    static const uint32_t want[][6] = {
        /* io, renew, fence, dead, mutex hold, mutex steal */
        {10, 10, 40, 60, 30, 50},
        {333, 333, 1332, 1998, 999, 1665},
        {500, 500, 2000, 3000, 1500, 2500},
        {2000, 2000, 8000, 12000, 6000, 10000},
        {600000, 600000, 2400000, 3600000, 1800000, 3000000},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        struct ls_timeouts t;
        assert_int_equal(ls_timeouts_derive(want[i][0], &t), 0);
        assert_int_equal(t.io_timeout_ms, want[i][0]);
        assert_int_equal(t.renew_ms, want[i][1]);
        assert_int_equal(t.fence_ms, want[i][2]);
        assert_int_equal(t.dead_ms, want[i][3]);
        assert_int_equal(t.mutex_hold_ms, want[i][4]);
        assert_int_equal(t.mutex_steal_ms, want[i][5]);
    }
    struct ls_timeouts t;
    assert_int_equal(ls_timeouts_derive(9, &t), -EINVAL);
    assert_int_equal(ls_timeouts_derive(600001, &t), -EINVAL);
}

/* The method is recorded at format time: a host that cannot (or will not)
 * use COMPARE AND WRITE refuses a CAW lockspace; a paxos lockspace is used
 * with paxos even by a host whose LUN has CAW. */
static void test_mixed_method_hosts_refused(void **state)
{
    struct fixture *f = *state;
    format_m(f, 1000, false);
    struct ls_open_opts o = {.host_name = "px", .force_paxos = true};
    struct lockspace *a = NULL;
    log_clear_last_error();
    assert_int_equal(lockspace_open(f->lun[0], 8, &o, &a), -EOPNOTSUPP);
    assert_null(a);
    assert_non_null(strstr(log_last_error(), "uses COMPARE AND WRITE"));
    format_m(f, 1000, true);
    struct ls_open_opts o2 = {.host_name = "cw"};
    assert_int_equal(lockspace_open(f->lun[0], 8, &o2, &a), 0);
    assert_false(lockspace_uses_caw(a));
    lockspace_close(a);
    /* a file LUN has no persistent reservations: said loudly at join */
    assert_int_equal(lockspace_open(f->lun[0], 8, &o2, &a), 0);
    log_clear_last_error();
    assert_int_equal(lockspace_join(a), 0);
    assert_false(lockspace_has_pr_fencing(a));
    assert_non_null(strstr(log_last_error(), "NO FENCING"));
    uint64_t dl;
    assert_int_equal(lockspace_write_deadline(a, &dl), 0);
    assert_true(dl > ls_now_ns() && dl <= ls_now_ns() + 4000ull * 1000000ull);
    assert_int_equal(lockspace_leave(a), 0);
    lockspace_close(a);
}

/* A test hook that blocks the writes of one host at chosen points until
 * released: the host is "paused" exactly between its check and its write. */
struct gate {
    pthread_mutex_t m;
    pthread_cond_t c;
    unsigned points; /* bit (1 << ls_test_point) blocks that point */
    bool open;
    int waiting;
};
static struct gate gate_g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, true, 0};
static void gate_hook(struct lockspace *ls, enum ls_test_point where, uint64_t lba, void *opaque)
{
    struct gate *g = opaque;
    pthread_mutex_lock(&g->m);
    if (g->points & (1u << where)) {
        g->waiting++;
        pthread_cond_broadcast(&g->c);
        while (!g->open)
            pthread_cond_wait(&g->c, &g->m);
        g->waiting--;
    }
    pthread_mutex_unlock(&g->m);
}
static void gate_close(struct gate *g, unsigned points)
{
    pthread_mutex_lock(&g->m);
    g->points = points;
    g->open = false;
    pthread_mutex_unlock(&g->m);
}
static void gate_wait_blocked(struct gate *g, int n)
{
    pthread_mutex_lock(&g->m);
    while (g->waiting < n)
        pthread_cond_wait(&g->c, &g->m);
    pthread_mutex_unlock(&g->m);
}
static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->m);
    g->open = true;
    g->points = 0;
    pthread_cond_broadcast(&g->c);
    pthread_mutex_unlock(&g->m);
}
static void gate_drain(struct gate *g)
{
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&g->m);
        int w = g->waiting;
        pthread_mutex_unlock(&g->m);
        if (!w)
            return;
        usleep(1000);
    }
}

/* A host paused in its renewal thread after the check and before the write
 * (past its lease) is recovered by another host; when it resumes, its
 * renewal must not overwrite the breaker's work (slot stays free gen + 1). */
static void renewal_after_break(struct fixture *f, bool paxos)
{
    format_m(f, 250, paxos);
    struct lockspace *a = host(f, 0, paxos, true), *b;
    struct ls_open_opts o = {.host_name = "host1", .force_paxos = paxos, .recover = recover_hook};
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &b), 0);
    assert_int_equal(lockspace_join(b), 0);
    uint32_t aslot = lockspace_slot(a), agen = lockspace_generation(a);
    lockspace_set_test_hook(a, gate_hook, &gate_g);
    gate_close(&gate_g, 1u << LS_TP_RENEW);
    gate_wait_blocked(&gate_g, 1);
    recovered = 0;
    int n = 0;
    for (int i = 0; i < 200 && n == 0; i++) {
        usleep(50000);
        n = lockspace_recover_dead(b);
        assert_true(n >= 0);
    }
    assert_int_equal(n, 1);
    gate_open(&gate_g);
    usleep(300000); /* the resumed renewal, and one more period */
    uint8_t *blk = calloc(1, f->bs);
    struct ls_hb hb;
    assert_int_equal(lun_read(f->lun[2], 8 + 1 + aslot, 1, blk), 0);
    assert_int_equal(ls_hb_decode(blk, &hb, "slot", 0), 0);
    assert_int_equal(hb.state, LS_SLOT_FREE);
    assert_int_equal(hb.generation, agen + 1);
    assert_int_equal(lockspace_check_write(a), -EIO);
    free(blk);
    lockspace_close(a);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(b);
}
static void test_resumed_renewal_does_not_overwrite_recovery_caw(void **state)
{
    renewal_after_break(*state, false);
}
static void test_resumed_renewal_does_not_overwrite_recovery_paxos(void **state)
{
    renewal_after_break(*state, true);
}

/* The holder is paused exactly between its fence check and its data write
 * (all its writes, renewal included, as SIGSTOP would): another host breaks
 * the lock and writes; the resumed write must not land. */
struct writer {
    struct lockspace *ls;
    uint64_t lba;
    void *buf;
    int rc;
};
static void *writer_run(void *arg)
{
    struct writer *w = arg;
    w->rc = ls_write(w->ls, w->lba, 1, w->buf, 0);
    return NULL;
}
static void paused_write(struct fixture *f, bool paxos)
{
    format_m(f, 250, paxos);
    struct lockspace *a = host(f, 0, paxos, true), *b;
    struct ls_open_opts o = {.host_name = "host1", .force_paxos = paxos, .recover = recover_hook};
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &b), 0);
    assert_int_equal(lockspace_join(b), 0);
    uint64_t l0 = lockspace_lock_lba(a, 0), data = 4000;
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    uint8_t *ba = calloc(2, f->bs), *bb = ba + f->bs;
    memset(ba, 'A', f->bs);
    memset(bb, 'B', f->bs);
    lockspace_set_test_hook(a, gate_hook, &gate_g);
    gate_close(&gate_g, (1u << LS_TP_DATA_WRITE) | (1u << LS_TP_RENEW));
    struct writer w = {a, data, ba, 1};
    pthread_t t;
    pthread_create(&t, NULL, writer_run, &w);
    gate_wait_blocked(&gate_g, 1); /* the data write passed its check */
    recovered = 0;
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 20000), 0);
    assert_int_equal(recovered, 1);
    assert_int_equal(ls_write(b, data, 1, bb, 0), 0);
    gate_open(&gate_g);
    pthread_join(t, NULL);
    assert_true(w.rc < 0);
    uint8_t *cur = calloc(1, f->bs);
    assert_int_equal(lun_read(f->lun[2], data, 1, cur), 0);
    assert_memory_equal(cur, bb, f->bs);
    free(cur);
    free(ba);
    gate_drain(&gate_g);
    lockspace_close(a);
    assert_int_equal(lock_release(b, l0), 0);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(b);
}
static void test_paused_write_after_check_does_not_land_caw(void **state)
{
    paused_write(*state, false);
}
static void test_paused_write_after_check_does_not_land_paxos(void **state)
{
    paused_write(*state, true);
}

/* Two delta-lease writers over one block: the second one paused after its
 * read and check; the first completes and wins. The second's write must
 * not be sent late (it would win too after its own wait). */
struct delta_arg {
    struct lockspace *ls;
    uint64_t lba;
    const void *expect, *data;
    int rc;
};
static void *delta_run(void *arg)
{
    struct delta_arg *d = arg;
    uint8_t found[4096];
    d->rc = ls_delta_write(d->ls, d->lba, d->expect, d->data, found);
    return NULL;
}
static void test_delta_race_has_one_winner(void **state)
{
    struct fixture *f = *state;
    format_m(f, 200, true);
    struct lockspace *a = host(f, 0, true, true), *b = host(f, 1, true, true);
    uint64_t lba = 3000;
    uint8_t *e = calloc(3, f->bs), *da = e + f->bs, *db = e + 2 * f->bs;
    memset(e, 'E', f->bs);
    memset(da, 'A', f->bs);
    memset(db, 'B', f->bs);
    assert_int_equal(lun_write(f->lun[2], lba, 1, e, 0), 0);
    lockspace_set_test_hook(b, gate_hook, &gate_g);
    gate_close(&gate_g, 1u << LS_TP_DELTA);
    struct delta_arg db_arg = {b, lba, e, db, 1};
    pthread_t t;
    pthread_create(&t, NULL, delta_run, &db_arg);
    gate_wait_blocked(&gate_g, 1);
    struct delta_arg da_arg = {a, lba, e, da, 1};
    delta_run(&da_arg);
    assert_int_equal(da_arg.rc, 0);
    gate_open(&gate_g);
    pthread_join(t, NULL);
    assert_int_equal(db_arg.rc, -EILSEQ);
    uint8_t *cur = calloc(1, f->bs);
    assert_int_equal(lun_read(f->lun[2], lba, 1, cur), 0);
    assert_memory_equal(cur, da, f->bs);
    free(cur);
    free(e);
    lockspace_set_test_hook(b, NULL, NULL);
    assert_int_equal(lockspace_leave(a), 0);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(a);
    lockspace_close(b);
}

/* A contender whose cached heartbeat view is older than the mutex holder
 * (it shows the holder's slot free at the previous generation) must not
 * take the paxos mutex over: only a free slot at >= the holder's
 * generation, or a greater generation, means gone. */
struct mutex_arg {
    struct lockspace *ls;
    int rc;
    volatile bool done;
};
static void *mutex_run(void *arg)
{
    struct mutex_arg *m = arg;
    m->rc = ls_mutex_acquire(m->ls);
    m->done = true;
    return NULL;
}
static void test_stale_view_does_not_take_paxos_mutex(void **state)
{
    struct fixture *f = *state;
    format_m(f, 1000, true);
    struct lockspace *a = host(f, 0, true, true), *b = host(f, 1, true, true);
    uint32_t bslot = lockspace_slot(b);
    /* freeze a's view: its renewal thread stops at its next write */
    lockspace_set_test_hook(a, gate_hook, &gate_g);
    gate_close(&gate_g, 1u << LS_TP_RENEW);
    gate_wait_blocked(&gate_g, 1);
    /* a's view of b's slot: free at generation 0 (before b joined) */
    struct ls_hb old = {
        .state = LS_SLOT_FREE, .slot = bslot, .rec_slot = LS_NO_SLOT, .io_timeout_ms = 1000};
    pthread_mutex_lock(&a->lock);
    memset(a->hb_raw + (size_t)bslot * f->bs, 0, f->bs);
    ls_hb_encode(a->hb_raw + (size_t)bslot * f->bs, &old);
    pthread_mutex_unlock(&a->lock);
    assert_int_equal(ls_mutex_acquire(b), 0);
    struct mutex_arg m = {a, 1, false};
    pthread_t t;
    pthread_create(&t, NULL, mutex_run, &m);
    usleep(600000);
    bool early = m.done;
    assert_int_equal(ls_mutex_release(b), 0);
    pthread_join(t, NULL);
    assert_false(early); /* it waited for b */
    assert_int_equal(m.rc, 0);
    assert_int_equal(ls_mutex_release(a), 0);
    gate_open(&gate_g);
    gate_drain(&gate_g);
    lockspace_set_test_hook(a, NULL, NULL);
    assert_int_equal(lockspace_leave(a), 0);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(a);
    lockspace_close(b);
}

/* A phantom owner: b's ballot decided an instance for b, but b never wrote
 * the leader nor uses the mutex (its phase-2 write landed, then it failed).
 * b stays alive. A contender takes the mutex after mutex_steal_ms instead
 * of waiting for ever. A torn dblock of a third slot is retried, not
 * returned as EBADMSG. */
static void test_phantom_mutex_owner_taken_over_torn_read_retried(void **state)
{
    struct fixture *f = *state;
    format_m(f, 200, true);
    struct lockspace *a = host(f, 0, true, true), *b = host(f, 1, true, true);
    uint64_t base = 8 + a->hdr.paxos_off;
    uint8_t *blk = calloc(1, f->bs);
    struct ls_dblock d = {.lver = 1,
                          .mbal = (1 << 16) | (lockspace_slot(b) + 1),
                          .bal = (1 << 16) | (lockspace_slot(b) + 1),
                          .inp_slot = lockspace_slot(b),
                          .inp_gen = lockspace_generation(b)};
    ls_dblock_encode(blk, &d);
    assert_int_equal(lun_write(f->lun[2], base + 1 + lockspace_slot(b), 1, blk, 0), 0);
    /* slot 5's dblock torn (bad CRC) for a while */
    struct ls_dblock d5 = {.inp_slot = LS_NO_SLOT};
    uint8_t *good = calloc(1, f->bs);
    ls_dblock_encode(good, &d5);
    memcpy(blk, good, f->bs);
    blk[20] ^= 0xff;
    assert_int_equal(lun_write(f->lun[2], base + 1 + 5, 1, blk, 0), 0);
    struct mutex_arg m = {a, 1, false};
    pthread_t t;
    uint64_t t0 = ls_now_ns();
    pthread_create(&t, NULL, mutex_run, &m);
    usleep(300000);
    assert_int_equal(lun_write(f->lun[2], base + 1 + 5, 1, good, 0), 0);
    for (int i = 0; i < 100 && !m.done; i++)
        usleep(50000);
    assert_true(m.done); /* old code: waits for ever on the phantom */
    pthread_join(t, NULL);
    assert_int_equal(m.rc, 0);
    uint64_t ms = (ls_now_ns() - t0) / 1000000;
    assert_true(ms >= lockspace_timeouts(a)->mutex_steal_ms);
    assert_int_equal(ls_mutex_release(a), 0);
    free(blk);
    free(good);
    assert_int_equal(lockspace_leave(a), 0);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(a);
    lockspace_close(b);
}

/* 64 live shared owners: the 65th gets ENOSPC at once, not EBUSY/ETIMEDOUT. */
static void test_65th_shared_owner_gets_enospc(void **state)
{
    struct fixture *f = *state;
    struct ls_format_params p = {.io_timeout_ms = 1000, .max_hosts = 70, .max_locks = 4};
    assert_int_equal(lockspace_format(f->lun[0], 8, &p), 0);
    uint8_t *blk = calloc(1, f->bs);
    /* 64 live hosts in slots 1..64 (as this new observer sees them: unknown) */
    for (uint32_t i = 1; i <= 64; i++) {
        struct ls_hb hb = {.state = LS_SLOT_LIVE,
                           .slot = i,
                           .generation = 1,
                           .counter = 5,
                           .rec_slot = LS_NO_SLOT,
                           .io_timeout_ms = 1000};
        snprintf(hb.name, sizeof(hb.name), "r%u", i);
        memset(blk, 0, f->bs);
        ls_hb_encode(blk, &hb);
        assert_int_equal(lun_write(f->lun[1], 8 + 1 + i, 1, blk, 0), 0);
    }
    struct lockspace *a = host(f, 0, false, true);
    assert_int_equal(lockspace_slot(a), 0);
    uint64_t l0 = lockspace_lock_lba(a, 0);
    struct ls_lockrec lr = {.mode = LS_LOCK_FREE};
    strcpy(lr.name, "full");
    for (uint32_t i = 1; i <= 64; i++)
        assert_int_equal(ls_lockrec_add_owner(&lr, LS_LOCK_SHARED, i, 1), 0);
    memset(blk, 0, f->bs);
    ls_lockrec_encode(blk, &lr);
    assert_int_equal(lun_write(f->lun[1], l0, 1, blk, 0), 0);
    uint64_t t0 = ls_now_ns();
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_SHARED, 2000), -ENOSPC);
    assert_true((ls_now_ns() - t0) / 1000000 < 1500);
    assert_non_null(strstr(log_last_error(), "64 live owners"));
    free(blk);
    assert_int_equal(lockspace_leave(a), 0);
    lockspace_close(a);
}

/* Readers coming and going do not starve an exclusive waiter; a record
 * that is held is never reformatted. */
struct acq_arg {
    struct lockspace *ls;
    uint64_t lba;
    enum ls_lock_mode mode;
    int timeout, rc;
};
static void *acq_run(void *arg)
{
    struct acq_arg *q = arg;
    q->rc = lock_acquire(q->ls, q->lba, q->mode, q->timeout);
    return NULL;
}
static void test_exclusive_waiter_not_starved_and_held_record_not_formatted(void **state)
{
    struct fixture *f = *state;
    format(f, 1000);
    struct lockspace *a = host(f, 0, false, true), *b = host(f, 1, false, true),
                     *c = host(f, 2, false, true);
    uint64_t l0 = lockspace_lock_lba(a, 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_SHARED, 0), 0);
    struct acq_arg q = {b, l0, LS_LOCK_EXCLUSIVE, 10000, 1};
    pthread_t t;
    pthread_create(&t, NULL, acq_run, &q);
    /* wait until b announced its wait in the record */
    uint8_t *blk = calloc(1, f->bs);
    struct ls_lockrec lr = {0};
    for (int i = 0; i < 200; i++) {
        assert_int_equal(lun_read(f->lun[2], l0, 1, blk), 0);
        assert_int_equal(ls_lockrec_decode(blk, &lr, "lock", l0), 0);
        if (lr.xwait)
            break;
        usleep(10000);
    }
    assert_true(lr.xwait);
    assert_int_equal(lr.xwait_slot, lockspace_slot(b));
    /* a new reader holds back */
    assert_int_equal(lock_acquire(c, l0, LS_LOCK_SHARED, 0), -EBUSY);
    /* formatting a held record is refused, the record unchanged */
    assert_int_equal(lock_record_format(c, l0, "again"), -EBUSY);
    uint8_t *after = calloc(1, f->bs);
    assert_int_equal(lun_read(f->lun[2], l0, 1, after), 0);
    struct ls_lockrec lr2;
    assert_int_equal(ls_lockrec_decode(after, &lr2, "lock", l0), 0);
    assert_int_equal(lr2.mode, LS_LOCK_SHARED);
    assert_int_equal(lock_release(a, l0), 0);
    pthread_join(t, NULL);
    assert_int_equal(q.rc, 0);
    assert_int_equal(lun_read(f->lun[2], l0, 1, blk), 0);
    assert_int_equal(ls_lockrec_decode(blk, &lr, "lock", l0), 0);
    assert_int_equal(lr.mode, LS_LOCK_EXCLUSIVE);
    assert_false(lr.xwait);
    assert_int_equal(lock_release(b, l0), 0);
    /* a free record is formatted through the atomic step */
    assert_int_equal(lock_record_format(c, l0, "again"), 0);
    assert_int_equal(lun_read(f->lun[2], l0, 1, blk), 0);
    assert_int_equal(ls_lockrec_decode(blk, &lr, "lock", l0), 0);
    assert_string_equal(lr.name, "again");
    free(blk);
    free(after);
    for (int i = 0; i < 3; i++) {
        struct lockspace *x = i == 0 ? a : i == 1 ? b : c;
        assert_int_equal(lockspace_leave(x), 0);
        lockspace_close(x);
    }
}

/* Recovery off the caller's path: with the housekeeping thread, the hook
 * runs on that thread; a try on the dead owner's lock meanwhile returns
 * -EINPROGRESS; once recovered, the lock is taken. */
static pthread_t hk_main;
static int hk_calls, hk_on_main;
static void *hk_gate;
static int hk_hook(struct lockspace *ls, const struct ls_host_info *dead, void *opaque)
{
    hk_calls++;
    if (pthread_equal(pthread_self(), hk_main))
        hk_on_main++;
    gate_hook(ls, LS_TP_DATA_WRITE, 0, hk_gate); /* blocks while the gate is closed */
    return 0;
}
static void test_recovery_on_housekeeping_thread(void **state)
{
    struct fixture *f = *state;
    format(f, 250);
    struct lockspace *a = host(f, 0, false, true), *b;
    struct ls_open_opts o = {.host_name = "host1", .recover = hk_hook};
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &b), 0);
    assert_int_equal(lockspace_join(b), 0);
    uint64_t l0 = lockspace_lock_lba(a, 0);
    assert_int_equal(lock_acquire(a, l0, LS_LOCK_EXCLUSIVE, 0), 0);
    hk_main = pthread_self();
    hk_calls = hk_on_main = 0;
    hk_gate = &gate_g;
    gate_close(&gate_g, 1u << LS_TP_DATA_WRITE);
    assert_int_equal(lockspace_start_recovery_thread(b), 0);
    lockspace_abandon(a);
    gate_wait_blocked(&gate_g, 1); /* the hook runs (on the thread) and waits */
    int r = -1;
    for (int i = 0; i < 100 && r != -EINPROGRESS; i++) {
        r = lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 0);
        usleep(20000);
    }
    assert_int_equal(r, -EINPROGRESS);
    gate_open(&gate_g);
    assert_int_equal(lock_acquire(b, l0, LS_LOCK_EXCLUSIVE, 10000), 0);
    assert_int_equal(hk_calls, 1);
    assert_int_equal(hk_on_main, 0);
    lockspace_close(a);
    assert_int_equal(lockspace_leave(b), 0);
    lockspace_close(b);
}

/* A joiner's recovery hook longer than the self-fence time: the joiner
 * renews its mark meanwhile, so the join succeeds. */
static int slow_hook_calls;
static int slow_hook(struct lockspace *ls, const struct ls_host_info *dead, void *opaque)
{
    slow_hook_calls++;
    usleep(6 * 250 * 1000); /* 6 T > fence (4 T) */
    return 0;
}
static void test_joiner_renews_mark_during_long_recovery(void **state)
{
    struct fixture *f = *state;
    struct ls_format_params p = {
        .io_timeout_ms = 250, .max_hosts = 1, .max_locks = 4, .atomic = LS_ATOMIC_CAW};
    assert_int_equal(lockspace_format(f->lun[0], 8, &p), 0);
    struct lockspace *a = host(f, 0, false, true), *j;
    uint32_t agen = lockspace_generation(a);
    lockspace_abandon(a);
    struct ls_open_opts o = {.host_name = "joiner", .recover = slow_hook};
    assert_int_equal(lockspace_open(f->lun[1], 8, &o, &j), 0);
    slow_hook_calls = 0;
    assert_int_equal(lockspace_join(j), 0);
    assert_int_equal(slow_hook_calls, 1);
    assert_int_equal(lockspace_generation(j), agen + 1);
    assert_int_equal(lockspace_check_write(j), 0);
    lockspace_close(a);
    assert_int_equal(lockspace_leave(j), 0);
    lockspace_close(j);
}

#define T(fn)                                                                                      \
    cmocka_unit_test_setup_teardown(fn, setup512, teardown),                                       \
        cmocka_unit_test_setup_teardown(fn, setup4k, teardown)

int main(int argc, char **argv)
{
    log_set_program("test-locking");
    if (getenv("TEST_FILTER")) /* run one test by name (pattern) */
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timeouts_satisfy_safety_inequality),
        cmocka_unit_test(test_hb_roundtrip_and_corruption),
        cmocka_unit_test(test_lockrec_roundtrip_64_owners),
        cmocka_unit_test(test_header_leader_dblock_roundtrip),
        cmocka_unit_test(test_mode_compatibility),
        cmocka_unit_test(test_lockrec_transitions_bump_version),
        cmocka_unit_test(test_liveness_on_observer_clock),
        cmocka_unit_test(test_derived_timeouts_match_hand_computed_values),
        cmocka_unit_test(test_deadline_clock_is_boottime),
        cmocka_unit_test_setup_teardown(test_mixed_method_hosts_refused, setup512, teardown),
        cmocka_unit_test_setup_teardown(test_delta_race_has_one_winner, setup512, teardown),
        cmocka_unit_test_setup_teardown(test_stale_view_does_not_take_paxos_mutex, setup4k,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_phantom_mutex_owner_taken_over_torn_read_retried,
                                        setup512, teardown),
        cmocka_unit_test_setup_teardown(test_65th_shared_owner_gets_enospc, setup512, teardown),
        cmocka_unit_test_setup_teardown(
            test_exclusive_waiter_not_starved_and_held_record_not_formatted, setup4k, teardown),
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
        cmocka_unit_test_setup_teardown(test_resumed_renewal_does_not_overwrite_recovery_caw,
                                        setup512, teardown),
        cmocka_unit_test_setup_teardown(test_resumed_renewal_does_not_overwrite_recovery_paxos,
                                        setup4k, teardown),
        cmocka_unit_test_setup_teardown(test_paused_write_after_check_does_not_land_caw, setup4k,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_paused_write_after_check_does_not_land_paxos, setup512,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_joiner_renews_mark_during_long_recovery, setup512,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_recovery_on_housekeeping_thread, setup4k, teardown),
    };
    if (argc > 1 && !strcmp(argv[1], "break"))
        return cmocka_run_group_tests(break_tests, NULL, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
