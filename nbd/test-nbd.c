/* Unit tests of the NBD server core over a socketpair, against an in-memory
 * export backend with guard bytes after its end (a stray write past the
 * export is a failure even if nothing else notices). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "le.h"
#include "backend-vdisk.h"
#include "protocol.h"
#include "server.h"
#include "util.h"
#include "vdisk.h"
#include "test-nowait.h"

#define MEM_SIZE (1u << 20)
#define GUARD 4096
#define GUARD_BYTE 0xA5

struct mem_be {
    uint8_t *data; /* MEM_SIZE + GUARD */
    pthread_mutex_t lock;
    unsigned flushes;
    bool ro;
};

static uint64_t mem_size(void *be)
{
    return MEM_SIZE;
}
static uint32_t mem_gran(void *be)
{
    return 4096;
}
static bool mem_ro(void *be)
{
    return ((struct mem_be *)be)->ro;
}

static int mem_pread(void *be, void *buf, uint32_t len, uint64_t off)
{
    struct mem_be *m = be;
    pthread_mutex_lock(&m->lock);
    memcpy(buf, m->data + off, len);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static int mem_pwrite(void *be, const void *buf, uint32_t len, uint64_t off, bool fua)
{
    struct mem_be *m = be;
    pthread_mutex_lock(&m->lock);
    memcpy(m->data + off, buf, len);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static int mem_flush(void *be)
{
    struct mem_be *m = be;
    pthread_mutex_lock(&m->lock);
    m->flushes++;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static int mem_zero(void *be, uint64_t off, uint32_t len, bool no_hole, bool fast)
{
    struct mem_be *m = be;
    if (fast && no_hole)
        return -ENOTSUP;
    pthread_mutex_lock(&m->lock);
    memset(m->data + off, 0, len);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static int mem_trim(void *be, uint64_t off, uint32_t len)
{
    return mem_zero(be, off, len, false, false);
}

/* 4 KiB blocks of zeroes are holes. */
static int mem_status(void *be, uint64_t off, uint64_t len, uint64_t *ext, uint32_t *flags)
{
    struct mem_be *m = be;
    uint64_t blk = off / 4096 * 4096, end = MIN(blk + 4096, off + len);
    bool zero = true;
    pthread_mutex_lock(&m->lock);
    for (uint64_t i = blk; i < blk + 4096; i++)
        zero &= m->data[i] == 0;
    pthread_mutex_unlock(&m->lock);
    *ext = end - off;
    *flags = zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0;
    return 0;
}

static const struct nbd_export_ops mem_ops = {
    .size = mem_size,
    .granularity = mem_gran,
    .readonly = mem_ro,
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .flush = mem_flush,
    .trim = mem_trim,
    .zero = mem_zero,
    .block_status = mem_status,
};

/* ---- an asynchronous backend: mem_ops plus submit -------------------------
 * submit queues the request to one completion thread (as the iSCSI loop
 * thread completes lun_ios); unaligned I/O is declined (-EAGAIN) and so runs
 * on a worker. While `hold` is set, completions wait, then run newest first
 * (replies out of order). */
struct async_be {
    struct mem_be m; /* first: the sync ops take the same pointer */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct nbd_aio *q[256];
    unsigned nq;
    bool hold, stop;
    unsigned submitted, completed, sync_calls, fua_seen; /* protected by lock */
    pthread_t thread;
};

static void *async_thread(void *arg)
{
    struct async_be *a = arg;
    pthread_mutex_lock(&a->lock);
    for (;;) {
        while ((a->hold || !a->nq) && !a->stop)
            pthread_cond_wait(&a->cond, &a->lock);
        if (!a->nq)
            break;
        struct nbd_aio *io = a->q[--a->nq]; /* newest first */
        pthread_mutex_unlock(&a->lock);
        struct mem_be *m = &a->m;
        pthread_mutex_lock(&m->lock);
        if (io->type == NBD_CMD_READ)
            memcpy(io->buf, m->data + io->off, io->len);
        else if (io->type == NBD_CMD_WRITE)
            memcpy(m->data + io->off, io->buf, io->len);
        else
            m->flushes++;
        pthread_mutex_unlock(&m->lock);
        io->done(io, 0); /* must not block, even if the client reads nothing */
        pthread_mutex_lock(&a->lock);
        a->completed++;
        pthread_cond_broadcast(&a->cond);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

static int async_submit(void *be, struct nbd_aio *io)
{
    struct async_be *a = be;
    if (io->off % 4096 || io->len % 4096)
        return -EAGAIN;
    pthread_mutex_lock(&a->lock);
    assert_true(a->nq < 256);
    a->q[a->nq++] = io;
    a->submitted++;
    a->fua_seen += io->fua;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    return 0;
}

static int async_sync_pwrite(void *be, const void *buf, uint32_t len, uint64_t off, bool fua)
{
    struct async_be *a = be;
    pthread_mutex_lock(&a->lock);
    a->sync_calls++;
    pthread_mutex_unlock(&a->lock);
    return mem_pwrite(be, buf, len, off, fua);
}

static const struct nbd_export_ops async_ops = {
    .size = mem_size,
    .granularity = mem_gran,
    .readonly = mem_ro,
    .pread = mem_pread,
    .pwrite = async_sync_pwrite,
    .flush = mem_flush,
    .trim = mem_trim,
    .zero = mem_zero,
    .block_status = mem_status,
    .submit = async_submit,
};

struct fixture {
    struct mem_be be;
    struct mem_be *ext; /* the backend if not `be` (async tests) */
    struct nbd_server *srv;
    int fd; /* client end */
};

static void guard_check(struct mem_be *m)
{
    for (unsigned i = 0; i < GUARD; i++)
        assert_int_equal(m->data[MEM_SIZE + i], GUARD_BYTE);
}

static struct fixture *fx_new_be(bool ro, const struct nbd_export_ops *ops, struct mem_be *be);

static struct fixture *fx_new(bool ro)
{
    return fx_new_be(ro, &mem_ops, NULL);
}

static struct fixture *fx_new_cfg(bool ro, const struct nbd_export_ops *ops, struct mem_be *be,
                                  const struct nbd_server_config *cfg);

static struct fixture *fx_new_be(bool ro, const struct nbd_export_ops *ops, struct mem_be *be)
{
    struct nbd_server_config cfg = {.max_conns = 4, .workers = 4, .pool_bytes = 64u << 20};
    return fx_new_cfg(ro, ops, be, &cfg);
}

static struct fixture *fx_new_cfg(bool ro, const struct nbd_export_ops *ops, struct mem_be *be,
                                  const struct nbd_server_config *cfg)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->ext = be;
    if (!be)
        be = &f->be;
    be->data = malloc(MEM_SIZE + GUARD);
    assert_non_null(be->data);
    for (unsigned i = 0; i < MEM_SIZE; i++)
        be->data[i] = (uint8_t)(i * 7 + 3);
    memset(be->data + MEM_SIZE, GUARD_BYTE, GUARD);
    pthread_mutex_init(&be->lock, NULL);
    be->ro = ro;
    assert_int_equal(nbd_server_new(cfg, &f->srv), 0);
    assert_int_equal(nbd_server_add_export(f->srv, "mem", "test", ops, be, false), 0);
    assert_int_equal(nbd_server_add_export(f->srv, "mem", NULL, ops, be, false), -EEXIST);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(nbd_server_serve_fd(f->srv, sv[0]), 0);
    f->fd = sv[1];
    return f;
}

static void fx_free(struct fixture *f)
{
    if (f->fd >= 0)
        close(f->fd);
    assert_int_equal(nbd_server_shutdown(f->srv), 0);
    nbd_server_free(f->srv);
    struct mem_be *be = f->ext ? f->ext : &f->be;
    guard_check(be);
    pthread_mutex_destroy(&be->lock);
    free(be->data);
    free(f);
}

static void xsend(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static int xrecv(int fd, void *p, size_t n) /* 0, or -1 on EOF */
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = recv(fd, b, n, 0);
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static void opt_send(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[NBD_OPT_HDR_SIZE];
    be64_put(h, NBD_IHAVEOPT);
    be32_put(h + 8, opt);
    be32_put(h + 12, len);
    xsend(fd, h, sizeof(h));
    if (len)
        xsend(fd, data, len);
}

/* Reads option replies until ACK or an error; returns the final type. */
static uint32_t opt_final(int fd)
{
    for (;;) {
        uint8_t h[NBD_OPT_REP_HDR_SIZE], d[512];
        assert_int_equal(xrecv(fd, h, sizeof(h)), 0);
        assert_true(be64_get(h) == NBD_REP_MAGIC);
        uint32_t type = be32_get(h + 12), len = be32_get(h + 16);
        assert_true(len <= sizeof(d));
        assert_int_equal(xrecv(fd, d, len), 0);
        if (type == NBD_REP_ACK || (type & NBD_REP_FLAG_ERROR))
            return type;
    }
}

/* Handshake with structured replies and base:allocation, GO "mem". */
static void handshake(int fd)
{
    uint8_t g[18];
    assert_int_equal(xrecv(fd, g, sizeof(g)), 0);
    assert_true(be64_get(g) == NBD_MAGIC);
    uint8_t cf[4];
    be32_put(cf, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    xsend(fd, cf, 4);
    opt_send(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    assert_int_equal(opt_final(fd), NBD_REP_ACK);
    uint8_t m[4 + 3 + 4 + 4 + 15];
    be32_put(m, 3);
    memcpy(m + 4, "mem", 3);
    be32_put(m + 7, 1);
    be32_put(m + 11, 15);
    memcpy(m + 15, "base:allocation", 15);
    opt_send(fd, NBD_OPT_SET_META_CONTEXT, m, sizeof(m));
    assert_int_equal(opt_final(fd), NBD_REP_ACK);
    uint8_t go[4 + 3 + 2];
    be32_put(go, 3);
    memcpy(go + 4, "mem", 3);
    be16_put(go + 7, 0);
    opt_send(fd, NBD_OPT_GO, go, sizeof(go));
    assert_int_equal(opt_final(fd), NBD_REP_ACK);
}

static void req_send(int fd, uint16_t type, uint16_t flags, uint64_t cookie, uint64_t off,
                     uint32_t len, const void *payload)
{
    struct nbd_request r = {
        .flags = flags, .type = type, .cookie = cookie, .offset = off, .length = len};
    uint8_t h[NBD_REQUEST_SIZE];
    nbd_request_encode(h, &r);
    xsend(fd, h, sizeof(h));
    if (payload)
        xsend(fd, payload, len);
}

/* One structured reply (all chunks); returns the error, copies data. */
static uint32_t reply_recv(int fd, uint64_t *cookie, void *data, size_t cap, uint32_t *bs_flags)
{
    uint32_t err = 0;
    for (;;) {
        uint8_t h[NBD_STRUCT_REPLY_SIZE];
        assert_int_equal(xrecv(fd, h, sizeof(h)), 0);
        assert_true(be32_get(h) == NBD_STRUCTURED_REPLY_MAGIC);
        uint16_t flags = be16_get(h + 4), type = be16_get(h + 6);
        uint32_t len = be32_get(h + 16);
        *cookie = be64_get(h + 8);
        uint8_t *body = malloc(len ? len : 1);
        assert_non_null(body);
        assert_int_equal(xrecv(fd, body, len), 0);
        if (type == NBD_REPLY_TYPE_OFFSET_DATA) {
            assert_true(len - 8 <= cap);
            memcpy(data, body + 8, len - 8);
        } else if (type == NBD_REPLY_TYPE_BLOCK_STATUS && bs_flags) {
            assert_true(len >= 12);
            *bs_flags = be32_get(body + 8);
        } else if (type & 0x8000) {
            err = be32_get(body);
        }
        free(body);
        if (flags & NBD_REPLY_FLAG_DONE)
            return err;
    }
}

static uint32_t cmd(int fd, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                    const void *payload, void *data)
{
    uint64_t c;
    req_send(fd, type, flags, 42, off, len, payload);
    uint32_t err = reply_recv(fd, &c, data, len, NULL);
    assert_true(c == 42);
    return err;
}

static void test_nbd_wire_roundtrip(void **state)
{
    struct nbd_request r = {.flags = 3,
                            .type = NBD_CMD_WRITE,
                            .cookie = 0x1122334455667788ULL,
                            .offset = 1ULL << 40,
                            .length = 4096},
                       d;
    uint8_t b[NBD_REQUEST_SIZE];
    nbd_request_encode(b, &r);
    assert_int_equal(b[0], 0x25); /* big-endian magic */
    assert_int_equal(nbd_request_decode(b, &d), 0);
    assert_true(d.cookie == r.cookie && d.offset == r.offset && d.length == 4096 &&
                d.type == NBD_CMD_WRITE && d.flags == 3);
    b[0] ^= 1;
    assert_int_equal(nbd_request_decode(b, &d), -EPROTO);
    assert_int_equal(nbd_errno_to_wire(EROFS), NBD_EPERM);
    assert_int_equal(nbd_errno_to_wire(ENOSPC), NBD_ENOSPC);
    assert_int_equal(nbd_errno_to_wire(EBADMSG), NBD_EIO);
}

static void test_nbd_write_read_zero_status(void **state)
{
    struct fixture *f = fx_new(false);
    handshake(f->fd);
    uint8_t *w = malloc(65536), *r = malloc(65536);
    assert_non_null(w);
    assert_non_null(r);
    for (int i = 0; i < 65536; i++)
        w[i] = (uint8_t)(i ^ 0x5a);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 12345, 65536, w, NULL), 0);
    assert_int_equal(cmd(f->fd, NBD_CMD_READ, 0, 12345, 65536, NULL, r), 0);
    assert_memory_equal(w, r, 65536);
    assert_memory_equal(f->be.data + 12345, w, 65536);
    assert_int_equal(cmd(f->fd, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
    assert_true(f->be.flushes >= 1);

    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE_ZEROES, 0, 8192, 8192, NULL, NULL), 0);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
                         0, 4096, NULL, NULL),
                     NBD_ENOTSUP);
    uint64_t c;
    uint32_t st = 0;
    req_send(f->fd, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 7, 8192, 8192, NULL);
    assert_int_equal(reply_recv(f->fd, &c, NULL, 0, &st), 0);
    assert_int_equal(st, NBD_STATE_HOLE | NBD_STATE_ZERO);
    req_send(f->fd, NBD_CMD_BLOCK_STATUS, 0, 8, 16384, 4096, NULL);
    assert_int_equal(reply_recv(f->fd, &c, NULL, 0, &st), 0);
    assert_int_equal(st, 0);

    /* many requests in flight, each answered once */
    bool seen[100] = {0};
    for (uint64_t i = 0; i < 100; i++)
        req_send(f->fd, NBD_CMD_READ, 0, i, i * 4096, 4096, NULL);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(reply_recv(f->fd, &c, r, 65536, NULL), 0);
        assert_true(c < 100 && !seen[c]);
        seen[c] = true;
        assert_memory_equal(r, f->be.data + c * 4096, 4096);
    }
    free(w);
    free(r);
    fx_free(f);
}

static void test_nbd_rejects_bad_requests(void **state)
{
    struct fixture *f = fx_new(false);
    handshake(f->fd);
    uint8_t buf[8192];
    memset(buf, 0xEE, sizeof(buf));
    assert_int_equal(cmd(f->fd, NBD_CMD_READ, 0, MEM_SIZE - 10, 20, NULL, NULL), NBD_EINVAL);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE, 0, MEM_SIZE - 4096, 8192, buf, NULL), NBD_ENOSPC);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE, 0, UINT64_MAX - 100, 4096, buf, NULL), NBD_ENOSPC);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE_ZEROES, 0, MEM_SIZE, 1, NULL, NULL), NBD_ENOSPC);
    assert_int_equal(cmd(f->fd, NBD_CMD_READ, 0, 0, 64u << 20, NULL, NULL), NBD_EOVERFLOW);
    assert_int_equal(cmd(f->fd, 77, 0, 0, 4096, NULL, NULL), NBD_EINVAL);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE, 0x100, 0, 16, buf, NULL), NBD_EINVAL);
    assert_int_equal(cmd(f->fd, NBD_CMD_TRIM, 0, 0, 0, NULL, NULL), NBD_EINVAL);
    /* still alive */
    assert_int_equal(cmd(f->fd, NBD_CMD_READ, 0, 0, 16, NULL, buf), 0);
    assert_memory_equal(buf, f->be.data, 16);
    /* garbage header: the server closes */
    memset(buf, 0x41, NBD_REQUEST_SIZE);
    xsend(f->fd, buf, NBD_REQUEST_SIZE);
    assert_int_equal(xrecv(f->fd, buf, 1), -1);
    fx_free(f);
}

static void test_nbd_readonly_eperm(void **state)
{
    struct fixture *f = fx_new(true);
    handshake(f->fd);
    uint8_t buf[512] = {1};
    uint8_t before[512];
    memcpy(before, f->be.data, 512);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE, 0, 0, 512, buf, NULL), NBD_EPERM);
    assert_int_equal(cmd(f->fd, NBD_CMD_TRIM, 0, 0, 512, NULL, NULL), NBD_EPERM);
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE_ZEROES, 0, 0, 512, NULL, NULL), NBD_EPERM);
    assert_memory_equal(before, f->be.data, 512);
    fx_free(f);
}

static void test_nbd_handshake_errors(void **state)
{
    struct fixture *f = fx_new(false);
    uint8_t g[18], cf[4];
    assert_int_equal(xrecv(f->fd, g, sizeof(g)), 0);
    assert_int_equal(be16_get(g + 16), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    be32_put(cf, NBD_FLAG_C_FIXED_NEWSTYLE);
    xsend(f->fd, cf, 4);
    opt_send(f->fd, 12345, "x", 1);
    assert_int_equal(opt_final(f->fd), NBD_REP_ERR_UNSUP);
    uint8_t go[4 + 4 + 2];
    be32_put(go, 4);
    memcpy(go + 4, "nope", 4);
    be16_put(go + 8, 0);
    opt_send(f->fd, NBD_OPT_GO, go, sizeof(go));
    assert_int_equal(opt_final(f->fd), NBD_REP_ERR_UNKNOWN);
    be32_put(go, 100); /* name longer than the data */
    opt_send(f->fd, NBD_OPT_INFO, go, sizeof(go));
    assert_int_equal(opt_final(f->fd), NBD_REP_ERR_INVALID);
    /* EXPORT_NAME without NO_ZEROES: size, flags, 124 zero bytes */
    opt_send(f->fd, NBD_OPT_EXPORT_NAME, "mem", 3);
    uint8_t r[134];
    assert_int_equal(xrecv(f->fd, r, sizeof(r)), 0);
    assert_true(be64_get(r) == MEM_SIZE);
    for (int i = 10; i < 134; i++)
        assert_int_equal(r[i], 0);
    /* simple replies now */
    req_send(f->fd, NBD_CMD_READ, 0, 9, 0, 8, NULL);
    uint8_t h[NBD_SIMPLE_REPLY_SIZE + 8];
    assert_int_equal(xrecv(f->fd, h, sizeof(h)), 0);
    assert_true(be32_get(h) == NBD_SIMPLE_REPLY_MAGIC && be32_get(h + 4) == 0 &&
                be64_get(h + 8) == 9);
    assert_memory_equal(h + 16, f->be.data, 8);
    req_send(f->fd, NBD_CMD_DISC, 0, 10, 0, 0, NULL);
    assert_int_equal(xrecv(f->fd, h, 1), -1);
    fx_free(f);
}

static struct async_be *async_new(void)
{
    struct async_be *a = calloc(1, sizeof(*a));
    assert_non_null(a);
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    assert_int_equal(pthread_create(&a->thread, NULL, async_thread, a), 0);
    return a;
}

static void async_free(struct async_be *a)
{
    pthread_mutex_lock(&a->lock);
    a->stop = true;
    a->hold = false;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->thread, NULL);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
    free(a);
}

/* Wait (polling the condition, 10 s at most) until `n` completions ran. */
static bool async_wait_completed(struct async_be *a, unsigned n)
{
    for (int i = 0; i < 10000; i++) {
        pthread_mutex_lock(&a->lock);
        bool ok = a->completed >= n;
        pthread_mutex_unlock(&a->lock);
        if (ok)
            return true;
        usleep(1000);
    }
    return false;
}

/* Aligned READ / WRITE / FLUSH go through submit and are answered from the
 * completion thread, out of order; FUA reaches the backend; unaligned
 * writes are declined and run on a worker through pwrite. */
static void test_nbd_async_submit_out_of_order(void **state)
{
    struct async_be *a = async_new();
    struct fixture *f = fx_new_be(false, &async_ops, &a->m);
    handshake(f->fd);
    uint8_t *w = malloc(32 * 4096), *r = malloc(32 * 4096);
    assert_non_null(w);
    assert_non_null(r);
    for (unsigned i = 0; i < 32 * 4096; i++)
        w[i] = (uint8_t)(i * 13 + 1);
    pthread_mutex_lock(&a->lock);
    a->hold = true;
    pthread_mutex_unlock(&a->lock);
    for (uint64_t i = 0; i < 32; i++)
        req_send(f->fd, NBD_CMD_WRITE, i == 5 ? NBD_CMD_FLAG_FUA : 0, i, i * 4096, 4096,
                 w + i * 4096);
    /* every write submitted, none answered while completions are held */
    for (int i = 0; i < 10000; i++) {
        pthread_mutex_lock(&a->lock);
        unsigned sub = a->submitted;
        pthread_mutex_unlock(&a->lock);
        if (sub == 32)
            break;
        usleep(1000);
    }
    pthread_mutex_lock(&a->lock);
    assert_int_equal(a->submitted, 32);
    assert_int_equal(a->completed, 0);
    assert_int_equal(a->fua_seen, 1);
    a->hold = false;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    uint64_t c, order[32];
    bool seen[32] = {0};
    for (int i = 0; i < 32; i++) {
        assert_int_equal(reply_recv(f->fd, &c, NULL, 0, NULL), 0);
        assert_true(c < 32 && !seen[c]);
        seen[c] = true;
        order[i] = c;
    }
    assert_true(order[0] == 31); /* newest completed first: out of order */
    assert_memory_equal(a->m.data, w, 32 * 4096);
    /* flush through submit; read back through submit */
    assert_int_equal(cmd(f->fd, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
    assert_int_equal(a->m.flushes, 1);
    assert_int_equal(cmd(f->fd, NBD_CMD_READ, 0, 0, 32 * 4096, NULL, r), 0);
    assert_memory_equal(r, w, 32 * 4096);
    /* unaligned: declined, done by a worker */
    assert_int_equal(cmd(f->fd, NBD_CMD_WRITE, 0, 100, 10, w, NULL), 0);
    assert_memory_equal(a->m.data + 100, w, 10);
    pthread_mutex_lock(&a->lock);
    assert_int_equal(a->sync_calls, 1);
    assert_int_equal(a->submitted, 34);
    pthread_mutex_unlock(&a->lock);
    free(w);
    free(r);
    fx_free(f);
    async_free(a);
}

/* A client that reads no replies must not block the completion thread
 * (the iSCSI loop thread in production): its replies are handed to a
 * worker, and every reply arrives intact once the client reads. */
static void test_nbd_async_completion_never_blocks(void **state)
{
    struct async_be *a = async_new();
    struct fixture *f = fx_new_be(false, &async_ops, &a->m);
    handshake(f->fd);
    enum { N = 48, LEN = 256 << 10 }; /* 12 MiB of replies, far beyond the socket buffer */
    for (uint64_t i = 0; i < N; i++)
        req_send(f->fd, NBD_CMD_READ, 0, i, (i * 4096) % (MEM_SIZE - LEN), LEN, NULL);
    assert_true(async_wait_completed(a, N)); /* nothing read yet */
    uint8_t *r = malloc(LEN);
    assert_non_null(r);
    bool seen[N] = {0};
    for (int i = 0; i < N; i++) {
        uint64_t c;
        assert_int_equal(reply_recv(f->fd, &c, r, LEN, NULL), 0);
        assert_true(c < N && !seen[c]);
        seen[c] = true;
        assert_memory_equal(r, a->m.data + (c * 4096) % (MEM_SIZE - LEN), LEN);
    }
    free(r);
    fx_free(f);
    async_free(a);
}

/* A client that disconnects with requests held in the backend: shutdown
 * waits for their completions (the connection is not freed under them). */
static void test_nbd_async_disconnect_in_flight(void **state)
{
    struct async_be *a = async_new();
    struct fixture *f = fx_new_be(false, &async_ops, &a->m);
    handshake(f->fd);
    uint8_t w[4096];
    memset(w, 0x77, sizeof(w));
    pthread_mutex_lock(&a->lock);
    a->hold = true;
    pthread_mutex_unlock(&a->lock);
    for (uint64_t i = 0; i < 8; i++)
        req_send(f->fd, NBD_CMD_WRITE, 0, i, i * 4096, 4096, w);
    close(f->fd);
    f->fd = -1;
    for (int i = 0; i < 10000; i++) {
        pthread_mutex_lock(&a->lock);
        unsigned sub = a->submitted;
        pthread_mutex_unlock(&a->lock);
        if (sub == 8)
            break;
        usleep(1000);
    }
    pthread_mutex_lock(&a->lock);
    assert_int_equal(a->submitted, 8);
    a->hold = false; /* release while the reader waits for them */
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    assert_int_equal(nbd_server_shutdown(f->srv), 0);
    assert_int_equal(a->completed, 8);
    for (int i = 0; i < 8; i++)
        assert_memory_equal(a->m.data + i * 4096, w, 4096); /* every fully sent write landed */
    fx_free(f);
    async_free(a);
}

/* The vdisk export answers cache-hot READs inline (submit with
 * vd_pread_nowait) and sends the rest to a worker: 64 pipelined reads, the
 * first 24 declined through the test hook, then a write (worker) and a read
 * of it, then reads after the file was dropped from the page cache. Every
 * reply carries the right bytes; the hook reaching 0 proves submit ran. */
static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Another client of f's server; returns its end of a socketpair. */
static int fx_connect(struct fixture *f)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(nbd_server_serve_fd(f->srv, sv[0]), 0);
    return sv[1];
}

/* The handshake timeout bounds the whole handshake: a client that sends
 * one byte of option every 100 ms (each receive well inside a 500 ms
 * timeout) is still dropped once 500 ms have passed since it connected,
 * and its slot is free again. A per-receive timeout never drops it. */
static void test_nbd_handshake_deadline_whole(void **state)
{
    struct nbd_server_config cfg = {
        .max_conns = 1, .workers = 2, .pool_bytes = 64u << 20, .handshake_timeout_ms = 500};
    struct fixture *f = fx_new_cfg(false, &mem_ops, NULL, &cfg);
    uint64_t t0 = now_ms();
    uint8_t g[18];
    assert_int_equal(xrecv(f->fd, g, sizeof(g)), 0);
    uint8_t cf[4];
    be32_put(cf, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    xsend(f->fd, cf, 4);
    uint8_t list[NBD_OPT_HDR_SIZE]; /* NBD_OPT_LIST, again and again */
    be64_put(list, NBD_IHAVEOPT);
    be32_put(list + 8, NBD_OPT_LIST);
    be32_put(list + 12, 0);
    bool closed = false;
    uint64_t closed_at = 0;
    for (unsigned i = 0; !closed && now_ms() - t0 < 5000; i++) {
        if (send(f->fd, &list[i % sizeof(list)], 1, MSG_NOSIGNAL) != 1) {
            closed = true;
            break;
        }
        usleep(100 * 1000);
        uint8_t junk[4096]; /* the LIST replies; EOF when the server closed */
        ssize_t r;
        while ((r = recv(f->fd, junk, sizeof(junk), MSG_DONTWAIT)) > 0)
            ;
        if (r == 0)
            closed = true;
    }
    closed_at = now_ms() - t0;
    assert_true(closed); /* a per-receive timeout: still open after 5 s */
    assert_true(closed_at >= 500);
    /* the slot is free again */
    struct nbd_server_stats st;
    for (unsigned i = 0; i < 500; i++) {
        nbd_server_get_stats(f->srv, &st);
        if (st.conns == 0)
            break;
        usleep(10 * 1000);
    }
    assert_int_equal(st.conns, 0);
    fx_free(f);
}

/* A client that sends READs and never reads the replies cannot take the
 * whole buffer pool: its reader stops at the connection's share, and
 * another client's READ is answered at once. Without the share, the first
 * client's 64 x 1 MiB READs fill the 64 MiB pool and the second client
 * waits for the send timeout (60 s here). */
static void test_nbd_stalled_client_cannot_take_pool(void **state)
{
    struct nbd_server_config cfg = {
        .max_conns = 4, .workers = 4, .pool_bytes = 64u << 20, .send_timeout_ms = 60000};
    struct fixture *f = fx_new_cfg(false, &mem_ops, NULL, &cfg);
    handshake(f->fd); /* client A */
    for (unsigned i = 0; i < NBD_MAX_INFLIGHT; i++)
        req_send(f->fd, NBD_CMD_READ, 0, i, 0, MEM_SIZE, NULL);
    /* wait until A's reader is stopped: at its share (fixed) or with the
     * pool full (before the fix) */
    struct nbd_server_stats st;
    for (unsigned i = 0; i < 1000; i++) {
        nbd_server_get_stats(f->srv, &st);
        if (st.conn_cap_waits > 0 || st.pool_used >= cfg.pool_bytes)
            break;
        usleep(10 * 1000);
    }
    assert_true(st.conn_cap_waits > 0 || st.pool_used >= cfg.pool_bytes);
    assert_true(st.pool_used <= cfg.pool_bytes);

    int b = fx_connect(f); /* client B: a 4 KiB READ, answered within 5 s */
    handshake(b);
    req_send(b, NBD_CMD_READ, 0, 7, 4096, 4096, NULL);
    struct pollfd p = {.fd = b, .events = POLLIN};
    int r = poll(&p, 1, 5000);
    assert_int_equal(r, 1);
    uint8_t data[4096];
    uint64_t cookie = 0;
    assert_int_equal(reply_recv(b, &cookie, data, sizeof(data), NULL), 0);
    assert_true(cookie == 7);
    assert_memory_equal(data, f->be.data + 4096, 4096);
    nbd_server_get_stats(f->srv, &st);
    /* A holds at most the default share, max(NBD_MAX_REQUEST, pool / 4);
     * B's 4 KiB may not be given back yet (freed after its send) */
    assert_true(st.pool_used <= MAX((size_t)NBD_MAX_REQUEST, cfg.pool_bytes / 4) + 4096);
    close(b);
    /* A goes away without reading: its replies fail, its buffers return */
    close(f->fd);
    f->fd = -1;
    fx_free(f);
}

static void test_nbd_vd_inline_read_and_fallback(void **state)
{
    char dir[] = "/tmp/test-nbd-vd.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/disk.raw", dir);
    const uint32_t size = 4u << 20;
    uint8_t *pat = malloc(size);
    assert_non_null(pat);
    for (uint32_t i = 0; i < size; i++)
        pat[i] = (uint8_t)(i * 13 + (i >> 12));
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(pwrite_full(fd, pat, size, 0), 0);
    assert_int_equal(fsync(fd), 0);
    struct vd_image *img;
    assert_int_equal(vd_open(path, VD_OPEN_RAW, &img), 0);

    struct nbd_server *srv;
    struct nbd_server_config cfg = {.max_conns = 2, .workers = 2, .pool_bytes = 16u << 20};
    assert_int_equal(nbd_server_new(&cfg, &srv), 0);
    assert_int_equal(nbd_server_add_export(srv, "mem", NULL, &nbd_vd_ops, img, false), 0);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(nbd_server_serve_fd(srv, sv[0]), 0);
    handshake(sv[1]);

    uint8_t *b = malloc(8192);
    assert_non_null(b);
    for (int round = 0; round < 2; round++) {
        if (round == 1) /* cold: misses decline to workers (vd_pread) */
            assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        vd_test_nowait_eagain = round == 0 ? 24 : 0;
        bool seen[64] = {false};
        for (uint64_t i = 0; i < 64; i++)
            req_send(sv[1], NBD_CMD_READ, 0, i, (i * 65537 * 7) % (size - 8192), 8192, NULL);
        for (int i = 0; i < 64; i++) {
            uint64_t c = ~0ull;
            assert_int_equal(reply_recv(sv[1], &c, b, 8192, NULL), 0);
            assert_true(c < 64 && !seen[c]);
            seen[c] = true;
            assert_memory_equal(b, pat + (c * 65537 * 7) % (size - 8192), 8192);
        }
        assert_int_equal(vd_test_nowait_eagain, 0);
    }
    /* a write goes to a worker; the read after its reply sees it */
    memset(pat + 100000, 0x3c, 4096);
    assert_int_equal(cmd(sv[1], NBD_CMD_WRITE, 0, 100000, 4096, pat + 100000, NULL), 0);
    assert_int_equal(cmd(sv[1], NBD_CMD_READ, 0, 98304, 8192, NULL, b), 0);
    assert_memory_equal(b, pat + 98304, 8192);
    /* past the end: rejected before the backend */
    assert_int_equal(cmd(sv[1], NBD_CMD_READ, 0, size - 4096, 8192, NULL, b), NBD_EINVAL);

    close(sv[1]);
    assert_int_equal(nbd_server_shutdown(srv), 0);
    nbd_server_free(srv);
    assert_int_equal(vd_close(img), 0);
    close(fd);
    free(b);
    free(pat);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nbd_wire_roundtrip),
        cmocka_unit_test(test_nbd_write_read_zero_status),
        cmocka_unit_test(test_nbd_rejects_bad_requests),
        cmocka_unit_test(test_nbd_readonly_eperm),
        cmocka_unit_test(test_nbd_handshake_errors),
        cmocka_unit_test(test_nbd_async_submit_out_of_order),
        cmocka_unit_test(test_nbd_async_completion_never_blocks),
        cmocka_unit_test(test_nbd_async_disconnect_in_flight),
        cmocka_unit_test(test_nbd_handshake_deadline_whole),
        cmocka_unit_test(test_nbd_stalled_client_cannot_take_pool),
        cmocka_unit_test(test_nbd_vd_inline_read_and_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
