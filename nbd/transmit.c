/* Transmission phase: the reader thread's request loop (header checks,
 * pool charge, WRITE payload), the asynchronous entry (ops->submit) and
 * the worker pool that runs requests against the backend (server.c's
 * design notes).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "le.h"
#include "log.h"
#include "util.h"

static void do_block_status(struct nbd_conn *c, struct nbd_req *q)
{
    const struct nbd_request *r = &q->hdr;
    struct nbd_export *e = c->exp;
    uint8_t *buf = malloc(NBD_STRUCT_REPLY_SIZE + 4 + 8 * NBD_MAX_BS_DESC);
    if (!buf) {
        nbd_reply_error(c, q, NBD_ENOMEM);
        return;
    }
    uint8_t *d = buf + NBD_STRUCT_REPLY_SIZE + 4;
    unsigned n = 0;
    uint64_t off = r->offset, end = r->offset + r->length;
    uint32_t cur_flags = 0;
    uint64_t cur_len = 0;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;
    while (off < end) {
        uint64_t ext = 0;
        uint32_t fl = 0;
        int rc = e->ops->block_status(e->be, off, end - off, &ext, &fl);
        if (rc < 0) {
            if (n == 0 && cur_len == 0) {
                free(buf);
                nbd_reply_error(c, q, nbd_errno_to_wire(-rc));
                return;
            }
            break; /* describe what we have */
        }
        if (ext == 0 || ext > end - off)
            ext = end - off;
        if (cur_len && fl == cur_flags && cur_len + ext <= UINT32_MAX) {
            cur_len += ext;
        } else {
            if (cur_len) {
                be32_put(d + 8 * n, (uint32_t)cur_len);
                be32_put(d + 8 * n + 4, cur_flags);
                n++;
                if (one || n == NBD_MAX_BS_DESC)
                    break;
            }
            cur_len = MIN(ext, (uint64_t)UINT32_MAX);
            ext = cur_len;
            cur_flags = fl;
        }
        off += ext;
    }
    if (cur_len && n < NBD_MAX_BS_DESC && !(one && n == 1)) {
        be32_put(d + 8 * n, (uint32_t)cur_len);
        be32_put(d + 8 * n + 4, cur_flags);
        n++;
    }
    uint32_t plen = 4 + 8 * n;
    nbd_struct_reply_encode(buf, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie, plen);
    be32_put(buf + NBD_STRUCT_REPLY_SIZE, NBD_META_ALLOC_ID);
    q->rh_len = 0;
    q->rdata = buf;
    q->rdata_len = NBD_STRUCT_REPLY_SIZE + plen;
    q->rextra = buf;
}

/* Prepare q's reply from the backend's result. */
static void req_result(struct nbd_req *q, int rc)
{
    struct nbd_conn *c = q->conn;
    const struct nbd_request *r = &q->hdr;
    if (rc < 0) {
        if (!(r->type == NBD_CMD_WRITE_ZEROES && rc == -ENOTSUP))
            log_err("nbd: %s: export '%s': %s offset %" PRIu64 " length %u failed: %s", c->peer,
                    c->exp->name, nbd_cmd_name(r->type), r->offset, r->length, strerror(-rc));
        nbd_reply_error(c, q, nbd_errno_to_wire(-rc));
    } else if (r->type == NBD_CMD_READ) {
        nbd_reply_read(c, q);
    } else {
        nbd_reply_ok(c, q);
    }
}

/* Run one validated request and prepare its reply in q (worker thread). */
static void req_run(struct nbd_req *q)
{
    struct nbd_conn *c = q->conn;
    struct nbd_export *e = c->exp;
    const struct nbd_request *r = &q->hdr;
    int rc = 0;

    if (q->early_err) {
        nbd_reply_error(c, q, (uint32_t)q->early_err);
        return;
    }
    switch (r->type) {
    case NBD_CMD_READ:
        rc = e->ops->pread(e->be, q->buf, r->length, r->offset);
        break;
    case NBD_CMD_WRITE:
        rc = e->ops->pwrite(e->be, q->buf, r->length, r->offset, r->flags & NBD_CMD_FLAG_FUA);
        break;
    case NBD_CMD_FLUSH:
        rc = e->ops->flush(e->be);
        break;
    case NBD_CMD_TRIM:
        rc = e->ops->trim(e->be, r->offset, r->length);
        if (rc == 0 && (r->flags & NBD_CMD_FLAG_FUA))
            rc = e->ops->flush(e->be);
        break;
    case NBD_CMD_WRITE_ZEROES:
        rc = e->ops->zero(e->be, r->offset, r->length, r->flags & NBD_CMD_FLAG_NO_HOLE,
                          r->flags & NBD_CMD_FLAG_FAST_ZERO);
        if (rc == 0 && (r->flags & NBD_CMD_FLAG_FUA))
            rc = e->ops->flush(e->be);
        break;
    case NBD_CMD_BLOCK_STATUS:
        do_block_status(c, q);
        return;
    default:
        rc = -EINVAL;
        break;
    }
    req_result(q, rc);
}

/* Completion of a request run by ops->submit (any thread, never blocks). */
static void req_aio_done(struct nbd_aio *aio, int rc)
{
    struct nbd_req *q = (struct nbd_req *)((char *)aio - offsetof(struct nbd_req, aio));
    req_result(q, rc);
    nbd_conn_reply(q->conn, q, true);
}

/* Hand a READ / WRITE / FLUSH to the export's asynchronous entry (reader
 * thread). true: taken (or failed at once and answered); false: declined,
 * run it on a worker. q may be freed when this returns true. */
static bool req_submit(struct nbd_req *q)
{
    struct nbd_export *e = q->conn->exp;
    const struct nbd_request *r = &q->hdr;
    if (!e->ops->submit || q->early_err ||
        (r->type != NBD_CMD_READ && r->type != NBD_CMD_WRITE && r->type != NBD_CMD_FLUSH))
        return false;
    q->aio.type = r->type;
    q->aio.fua = r->flags & NBD_CMD_FLAG_FUA;
    q->aio.off = r->offset;
    q->aio.len = r->type == NBD_CMD_FLUSH ? 0 : r->length;
    q->aio.buf = q->buf;
    q->aio.done = req_aio_done;
    int rc = e->ops->submit(e->be, &q->aio);
    if (rc == -EAGAIN)
        return false;
    if (rc < 0) {
        req_result(q, rc);
        nbd_conn_reply(q->conn, q, false);
    }
    return true;
}

void *nbd_worker_main(void *arg)
{
    struct nbd_server *srv = arg;
    for (;;) {
        pthread_mutex_lock(&srv->queue_lock);
        while (!srv->qhead && !srv->workers_exit)
            pthread_cond_wait(&srv->queue_cond, &srv->queue_lock);
        struct nbd_req *q = srv->qhead;
        if (!q) {
            pthread_mutex_unlock(&srv->queue_lock);
            return NULL;
        }
        srv->qhead = q->next;
        if (!srv->qhead)
            srv->qtail = NULL;
        pthread_mutex_unlock(&srv->queue_lock);
        if (q->is_send_job) { /* take over a sender role that would have blocked */
            pthread_mutex_lock(&q->conn->lock);
            nbd_conn_send_locked(q->conn, false);
            continue;
        }
        req_run(q);
        nbd_conn_reply(q->conn, q, false);
    }
}

void nbd_work_push(struct nbd_server *srv, struct nbd_req *q)
{
    q->next = NULL;
    pthread_mutex_lock(&srv->queue_lock);
    if (srv->qtail)
        srv->qtail->next = q;
    else
        srv->qhead = q;
    srv->qtail = q;
    pthread_cond_signal(&srv->queue_cond);
    pthread_mutex_unlock(&srv->queue_lock);
}

/* Validate a request header. Returns 0 (run it), a wire error (>0) to
 * answer without running, or -EPROTO to drop the connection. */
static int req_check(struct nbd_conn *c, const struct nbd_request *r)
{
    struct nbd_export *e = c->exp;
    uint16_t allowed = 0;
    switch (r->type) {
    case NBD_CMD_READ:
        allowed = NBD_CMD_FLAG_FUA | (c->structured ? NBD_CMD_FLAG_DF : 0);
        break;
    case NBD_CMD_WRITE:
        allowed = NBD_CMD_FLAG_FUA;
        break;
    case NBD_CMD_FLUSH:
        break;
    case NBD_CMD_TRIM:
        allowed = NBD_CMD_FLAG_FUA;
        break;
    case NBD_CMD_WRITE_ZEROES:
        allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (!c->structured || !c->meta_alloc)
            return NBD_EINVAL;
        allowed = NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        return NBD_EINVAL;
    }
    if (r->flags & ~allowed)
        return NBD_EINVAL;
    bool is_write =
        r->type == NBD_CMD_WRITE || r->type == NBD_CMD_TRIM || r->type == NBD_CMD_WRITE_ZEROES;
    if (r->type == NBD_CMD_FLUSH)
        return (r->offset || r->length) ? NBD_EINVAL : 0;
    if (r->length == 0)
        return NBD_EINVAL;
    if (is_write && e->readonly)
        return NBD_EPERM;
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) && r->length > NBD_MAX_REQUEST)
        return r->type == NBD_CMD_READ ? NBD_EOVERFLOW : NBD_EINVAL;
    if (r->offset > e->size || r->length > e->size - r->offset)
        return is_write ? NBD_ENOSPC : NBD_EINVAL;
    return 0;
}

void nbd_conn_transmission(struct nbd_conn *c)
{
    struct nbd_server *srv = c->srv;
    for (;;) {
        uint8_t h[NBD_REQUEST_SIZE];
        int rc = nbd_conn_recv(c, h, sizeof(h));
        if (rc < 0) {
            if (rc != -ECONNRESET)
                log_debug("nbd: %s: receive failed: %s", c->peer, strerror(-rc));
            return;
        }
        struct nbd_request r;
        if (nbd_request_decode(h, &r) < 0) {
            log_warn("nbd: %s: bad request magic 0x%08x, closing", c->peer, be32_get(h));
            return;
        }
        if (r.type == NBD_CMD_DISC)
            return;
        int err = req_check(c, &r);
        if (r.type == NBD_CMD_WRITE && r.length > NBD_MAX_REQUEST) {
            log_warn("nbd: %s: WRITE length %u exceeds %u, closing", c->peer, r.length,
                     NBD_MAX_REQUEST);
            return;
        }
        pthread_mutex_lock(&c->lock);
        while (c->inflight >= NBD_MAX_INFLIGHT)
            pthread_cond_wait(&c->cond, &c->lock);
        c->inflight++;
        pthread_mutex_unlock(&c->lock);

        struct nbd_req *q = calloc(1, sizeof(*q));
        if (!q) {
            pthread_mutex_lock(&c->lock);
            c->inflight--;
            pthread_mutex_unlock(&c->lock);
            return;
        }
        q->conn = c;
        q->hdr = r;
        q->early_err = err;
        bool payload = r.type == NBD_CMD_WRITE;
        bool needbuf = !err && (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE);
        if (payload || needbuf) {
            q->charge = r.length;
            nbd_pool_take(c, q->charge);
            q->buf = malloc(r.length ? r.length : 1);
            if (!q->buf) {
                nbd_req_done(q);
                return;
            }
            if (payload) {
                rc = nbd_conn_recv(c, q->buf, r.length);
                if (rc < 0) {
                    nbd_req_done(q);
                    return;
                }
            }
        }
        if (!req_submit(q))
            nbd_work_push(srv, q);
    }
}
