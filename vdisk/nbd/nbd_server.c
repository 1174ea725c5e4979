/* NBD server core: handshake, request parsing, worker pool, replies.
 *
 * Design notes
 * ------------
 * Thread model. The main thread (nbd_server_run) polls the listening
 * sockets and a stop fd. Each accepted client gets one detached "reader"
 * thread which runs the handshake and then reads requests: it validates
 * each header (magic, command, flags, range), takes room for the request's
 * buffer from the server-wide buffer pool, reads a WRITE payload, and queues
 * the request to a fixed pool of worker threads shared by all connections.
 * A worker runs the request against the export backend and sends the reply
 * itself, so replies leave in completion order (out-of-order replies, many
 * requests in flight per connection). Replies of one connection are
 * serialized through a reply queue under conn->lock with a "sender role":
 * the worker that finds nobody sending becomes the sender and writes every
 * queued reply (header + payload iovecs, up to 64 replies per sendmsg,
 * MSG_NOSIGNAL) until the queue is empty; a worker that finds a sender at
 * work just queues its reply and takes the next request. No worker ever
 * blocks on another's socket write (a preempted lock holder would stall
 * them all), and at high queue depth one syscall carries many replies.
 *
 * Asynchronous requests. An export whose backend has ops->submit (the LUN;
 * the vdisk export for READs it can answer from the page cache)
 * gets its READ / WRITE / FLUSH started by the reader itself, without a
 * worker; the backend's completion (the iSCSI loop thread) prepares the
 * reply and joins the same reply queue and sender role. A completion thread
 * must never block, so as sender it uses MSG_DONTWAIT; when the socket is
 * full it keeps the sender role (the partly sent reply stays at the head,
 * c->send_off) and queues the connection's send job to the worker pool,
 * and a worker finishes the queue with blocking sends. Submit may decline
 * (-EAGAIN: unaligned I/O), and the request then goes to a worker as
 * before. In-flight counting is the same for both paths: from the header
 * until the reply is sent or dropped.
 *
 * Bounds. A connection has at most NBD_MAX_INFLIGHT requests queued or
 * running; its reader waits before reading more. READ/WRITE length is at
 * most NBD_MAX_REQUEST (32 MiB). Request buffers are charged to one pool
 * (default 256 MiB, --pool is not exposed) before they are allocated; a
 * reader waits for room, so memory for payloads never exceeds the pool
 * whatever the number of clients. A client that does not read its replies
 * for send_timeout_ms is dropped (SO_SNDTIMEO), which returns its buffers.
 * At most max_conns clients at once: beyond that the listener is not polled
 * and new clients wait in the kernel's backlog (qemu-nbd --shared does the
 * same). The handshake has a receive timeout so idle or trickling clients
 * cannot hold a slot forever.
 *
 * Hostile input. Anything the spec lets a server answer with an error gets
 * an error (unknown option: NBD_REP_ERR_UNSUP; bad option data:
 * NBD_REP_ERR_INVALID; unknown command or flag, zero length, range past
 * the end: EINVAL, ENOSPC for writes past the end). What would desync the
 * stream gets the connection closed: bad magic, an option longer than 64
 * KiB, a WRITE payload longer than 32 MiB, unknown client flags, EOF. No
 * request reaches a backend before its range is checked against the export
 * size, so nothing is ever written outside the export.
 *
 * Durability. A write is answered only after the backend returned; a client
 * that disconnects with requests in flight leaves them to finish (the
 * reader waits for its in-flight count to reach zero before closing the
 * socket), and shutdown flushes every export. MULTI_CONN is advertised
 * because every connection to an export shares one backend object in this
 * process: a FLUSH on one connection flushes what every connection wrote.
 *
 * Lock order: srv->lock, then conn->lock. srv->pool_lock and
 * srv->queue_lock are leaves. No lock of ours is held across ops->submit
 * (its completion may run inside it). A connection is freed by its reader
 * once inflight == 0 and no thread holds its sender role.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "nbd_proto.h"
#include "nbd_server.h"
#include "util.h"

#define NBD_MAX_OPT_LEN (64u << 10)
#define NBD_MAX_LISTEN 8
#define NBD_MAX_BS_DESC 1024 /* block status descriptors per reply */
#define NBD_RBUF_SIZE (64u << 10)
#define NBD_META_ALLOC_ID 1
#define NBD_SEND_BATCH 64 /* replies per sendmsg */

struct nbd_export {
    char *name;
    char *description;
    const struct nbd_export_ops *ops;
    void *be;
    uint64_t size;
    uint32_t min_block, pref_block;
    bool readonly;
    uint16_t tflags; /* transmission flags without DF (added per connection) */
};

struct nbd_conn {
    struct nbd_server *srv;
    int fd;
    char peer[NI_MAXHOST + NI_MAXSERV + 2];
    /* set by the reader before transmission, then read-only */
    struct nbd_export *exp;
    bool structured;
    bool meta_alloc;
    bool no_zeroes;
    /* receive buffer: reader thread only */
    uint8_t *rbuf;
    size_t rpos, rlen;
    /* only the thread holding the sender role touches these three */
    bool send_failed;
    struct nbd_req *send_cur; /* replies being sent, in order */
    size_t send_off;          /* bytes of send_cur's reply already sent */
    struct nbd_req *send_job; /* queued to a worker to take over the sender role */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned inflight;                   /* requests read and not yet freed; protected by lock */
    struct nbd_req *out_head, *out_tail; /* replies waiting to be sent; protected by lock */
    bool sending;                        /* a thread holds the sender role; protected by lock */
    struct nbd_conn *next;               /* protected by srv->lock */
};

struct nbd_req {
    struct nbd_conn *conn;
    struct nbd_request hdr;
    void *buf;
    size_t charge;      /* bytes taken from the pool */
    int early_err;      /* >0: answer this wire error without running */
    bool is_send_job;   /* not a request: c->send_job (worker: continue sending) */
    struct nbd_aio aio; /* the asynchronous path (ops->submit) */
    /* the reply, prepared by the worker, sent by the connection's sender */
    uint8_t rh[NBD_STRUCT_REPLY_SIZE + 8];
    size_t rh_len;
    void *rdata; /* payload after rh (q->buf or rextra) */
    size_t rdata_len;
    void *rextra;         /* malloc'd reply memory to free with the request */
    struct nbd_req *next; /* in srv's work queue, then in conn's reply queue */
};

struct nbd_server {
    struct nbd_server_config cfg;
    struct nbd_export **exports; /* fixed after run starts */
    unsigned nexports;
    int listen_fds[NBD_MAX_LISTEN];
    bool listen_tcp[NBD_MAX_LISTEN];
    unsigned nlisten;
    char *unix_path;

    pthread_mutex_t lock;
    pthread_cond_t cond;    /* signalled when a connection ends */
    struct nbd_conn *conns; /* protected by lock */
    unsigned nconns;        /* protected by lock */
    bool stopping;          /* protected by lock */

    pthread_mutex_t pool_lock;
    pthread_cond_t pool_cond;
    size_t pool_used; /* protected by pool_lock */

    pthread_mutex_t queue_lock;
    pthread_cond_t queue_cond;
    struct nbd_req *qhead, *qtail; /* protected by queue_lock */
    bool workers_exit;             /* protected by queue_lock */
    pthread_t *workers;
    unsigned nworkers;
};

static void queue_push(struct nbd_server *srv, struct nbd_req *q);

/* ---- wire helpers -------------------------------------------------------- */

int nbd_request_decode(const uint8_t *p, struct nbd_request *req)
{
    if (be32_get(p) != NBD_REQUEST_MAGIC)
        return -EPROTO;
    req->flags = be16_get(p + 4);
    req->type = be16_get(p + 6);
    req->cookie = be64_get(p + 8);
    req->offset = be64_get(p + 16);
    req->length = be32_get(p + 24);
    return 0;
}

void nbd_request_encode(uint8_t *p, const struct nbd_request *req)
{
    be32_put(p, NBD_REQUEST_MAGIC);
    be16_put(p + 4, req->flags);
    be16_put(p + 6, req->type);
    be64_put(p + 8, req->cookie);
    be64_put(p + 16, req->offset);
    be32_put(p + 24, req->length);
}

void nbd_simple_reply_encode(uint8_t *p, uint32_t error, uint64_t cookie)
{
    be32_put(p, NBD_SIMPLE_REPLY_MAGIC);
    be32_put(p + 4, error);
    be64_put(p + 8, cookie);
}

void nbd_struct_reply_encode(uint8_t *p, uint16_t flags, uint16_t type, uint64_t cookie,
                             uint32_t length)
{
    be32_put(p, NBD_STRUCTURED_REPLY_MAGIC);
    be16_put(p + 4, flags);
    be16_put(p + 6, type);
    be64_put(p + 8, cookie);
    be32_put(p + 16, length);
}

uint32_t nbd_errno_to_wire(int err)
{
    switch (err) {
    case 0:
        return 0;
    case EPERM:
    case EROFS:
    case EACCES:
    case EBADE:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

const char *nbd_cmd_name(uint16_t type)
{
    static const char *const names[] = {"READ", "WRITE", "DISC",         "FLUSH",
                                        "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"};
    return type < ARRAY_SIZE(names) ? names[type] : "UNKNOWN";
}

static int send_iov(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t done = (size_t)r;
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

static int send_all(int fd, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return send_iov(fd, &iov, 1);
}

/* Read exactly len bytes through the connection's receive buffer.
 * -ECONNRESET on EOF. */
static int conn_recv(struct nbd_conn *c, void *buf, size_t len)
{
    uint8_t *out = buf;
    while (len > 0) {
        if (c->rpos < c->rlen) {
            size_t n = MIN(len, c->rlen - c->rpos);
            memcpy(out, c->rbuf + c->rpos, n);
            c->rpos += n;
            out += n;
            len -= n;
            continue;
        }
        ssize_t r;
        if (len >= NBD_RBUF_SIZE) /* large payload: straight into the caller's buffer */
            r = recv(c->fd, out, len, 0);
        else
            r = recv(c->fd, c->rbuf, NBD_RBUF_SIZE, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ECONNRESET;
        if (len >= NBD_RBUF_SIZE) {
            out += r;
            len -= (size_t)r;
        } else {
            c->rpos = 0;
            c->rlen = (size_t)r;
        }
    }
    return 0;
}

/* ---- buffer pool --------------------------------------------------------- */

static void pool_take(struct nbd_server *srv, size_t n)
{
    pthread_mutex_lock(&srv->pool_lock);
    while (srv->pool_used + n > srv->cfg.pool_bytes)
        pthread_cond_wait(&srv->pool_cond, &srv->pool_lock);
    srv->pool_used += n;
    pthread_mutex_unlock(&srv->pool_lock);
}

static void pool_give(struct nbd_server *srv, size_t n)
{
    if (!n)
        return;
    pthread_mutex_lock(&srv->pool_lock);
    srv->pool_used -= n;
    pthread_cond_broadcast(&srv->pool_cond);
    pthread_mutex_unlock(&srv->pool_lock);
}

/* ---- replies -------------------------------------------------------------- */

/* Free a request's memory and return its pool charge (not the in-flight
 * count: the caller does that under conn->lock). */
static void req_free(struct nbd_req *q)
{
    free(q->buf);
    free(q->rextra);
    pool_give(q->conn->srv, q->charge);
    free(q);
}

/* A request that ends without a reply (reader error paths). */
static void req_done(struct nbd_req *q)
{
    struct nbd_conn *c = q->conn;
    req_free(q);
    pthread_mutex_lock(&c->lock);
    c->inflight--;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* Send the replies of c->send_cur (a list in order, the first one's first
 * c->send_off bytes already sent) with as few sendmsg() calls as possible,
 * freeing each request once its reply is out. Only the thread that holds
 * the sender role (c->sending) calls this. nonblock: MSG_DONTWAIT, and
 * return -EAGAIN (send_cur / send_off left at the unsent part) where a
 * blocking send would wait; the caller then hands the role to a worker. */
static int conn_send_list(struct nbd_conn *c, bool nonblock)
{
    struct iovec iov[2 * NBD_SEND_BATCH];
    while (c->send_cur) {
        int n = 0;
        size_t skip = c->send_off, total = 0;
        struct nbd_req *q = c->send_cur;
        for (; q && n < 2 * NBD_SEND_BATCH - 1; q = q->next) {
            struct iovec v[2] = {{q->rh, q->rh_len}, {q->rdata, q->rdata_len}};
            for (int i = 0; i < 2; i++) {
                if (skip >= v[i].iov_len) {
                    skip -= v[i].iov_len;
                    continue;
                }
                iov[n].iov_base = (uint8_t *)v[i].iov_base + skip;
                iov[n].iov_len = v[i].iov_len - skip;
                total += iov[n].iov_len;
                n++;
                skip = 0;
            }
        }
        size_t sent = total;
        if (!c->send_failed && n > 0) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && nonblock && (errno == EAGAIN || errno == EWOULDBLOCK))
                return -EAGAIN;
            if (r < 0) {
                int rc = -errno;
                c->send_failed = true;
                log_debug("nbd: %s: send failed: %s", c->peer, strerror(-rc));
                /* A client that stopped reading (send timeout) is dropped:
                 * wake the reader. A client that went away (EPIPE) may
                 * still have whole requests in our receive buffer: the
                 * reader runs them until it reaches EOF, so nothing fully
                 * sent is lost. */
                if (rc == -EAGAIN || rc == -ETIMEDOUT)
                    shutdown(c->fd, SHUT_RDWR);
            } else {
                sent = (size_t)r;
            }
        }
        /* free the requests whose reply is entirely out (all of the batch
         * once sending has failed) */
        size_t done_bytes = c->send_off + sent;
        unsigned done = 0;
        while (c->send_cur != q) {
            struct nbd_req *r0 = c->send_cur;
            size_t len = r0->rh_len + r0->rdata_len;
            if (!c->send_failed && done_bytes < len)
                break;
            done_bytes -= c->send_failed ? MIN(done_bytes, len) : len;
            c->send_cur = r0->next;
            req_free(r0);
            done++;
        }
        c->send_off = c->send_failed ? 0 : done_bytes;
        if (done) {
            pthread_mutex_lock(&c->lock);
            c->inflight -= done;
            pthread_cond_broadcast(&c->cond);
            pthread_mutex_unlock(&c->lock);
        }
    }
    c->send_off = 0;
    return 0;
}

/* Holding the sender role (c->sending, taken under c->lock, which the
 * caller holds): send until the reply queue is empty, then drop the role.
 * Non-blocking senders (I/O completion threads) that would wait hand the
 * role to a worker through the connection's send job instead. Returns with
 * c->lock released; c may be freed once the role is dropped. */
static void conn_send_locked(struct nbd_conn *c, bool nonblock)
{
    for (;;) {
        if (!c->send_cur) {
            if (!c->out_head)
                break;
            c->send_cur = c->out_head;
            c->out_head = c->out_tail = NULL;
        }
        pthread_mutex_unlock(&c->lock);
        int rc = conn_send_list(c, nonblock);
        if (rc == -EAGAIN) {
            /* keep the sender role; a worker continues with blocking sends */
            queue_push(c->srv, c->send_job);
            return;
        }
        pthread_mutex_lock(&c->lock);
    }
    c->sending = false;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    /* c may be freed from here on (conn_main waits for !sending) */
}

/* Queue the reply prepared in q (rh/rdata) and send it. Replies are
 * combined: if another thread is sending on this connection, q joins the
 * queue and that thread sends it with its own batch; otherwise this thread
 * becomes the sender until the queue is empty. One writev carries many
 * replies at high queue depth, and no thread waits on a socket lock.
 * nonblock (I/O completion threads, which must never block): send with
 * MSG_DONTWAIT and leave the rest to a worker if the socket is full. */
static void conn_reply(struct nbd_conn *c, struct nbd_req *q, bool nonblock)
{
    pthread_mutex_lock(&c->lock);
    q->next = NULL;
    if (c->out_tail)
        c->out_tail->next = q;
    else
        c->out_head = q;
    c->out_tail = q;
    if (c->sending) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    c->sending = true;
    conn_send_locked(c, nonblock);
}

static void reply_error(struct nbd_conn *c, struct nbd_req *q, uint32_t err)
{
    if (!c->structured) {
        nbd_simple_reply_encode(q->rh, err, q->hdr.cookie);
        q->rh_len = NBD_SIMPLE_REPLY_SIZE;
    } else {
        nbd_struct_reply_encode(q->rh, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, q->hdr.cookie, 6);
        be32_put(q->rh + NBD_STRUCT_REPLY_SIZE, err);
        be16_put(q->rh + NBD_STRUCT_REPLY_SIZE + 4, 0); /* no message */
        q->rh_len = NBD_STRUCT_REPLY_SIZE + 6;
    }
    q->rdata_len = 0;
}

static void reply_ok(struct nbd_conn *c, struct nbd_req *q)
{
    if (c->structured) {
        nbd_struct_reply_encode(q->rh, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, q->hdr.cookie, 0);
        q->rh_len = NBD_STRUCT_REPLY_SIZE;
    } else {
        nbd_simple_reply_encode(q->rh, 0, q->hdr.cookie);
        q->rh_len = NBD_SIMPLE_REPLY_SIZE;
    }
    q->rdata_len = 0;
}

static void reply_read(struct nbd_conn *c, struct nbd_req *q)
{
    const struct nbd_request *r = &q->hdr;
    if (c->structured) {
        nbd_struct_reply_encode(q->rh, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie,
                                8 + r->length);
        be64_put(q->rh + NBD_STRUCT_REPLY_SIZE, r->offset);
        q->rh_len = NBD_STRUCT_REPLY_SIZE + 8;
    } else {
        nbd_simple_reply_encode(q->rh, 0, r->cookie);
        q->rh_len = NBD_SIMPLE_REPLY_SIZE;
    }
    q->rdata = q->buf;
    q->rdata_len = r->length;
}

static void do_block_status(struct nbd_conn *c, struct nbd_req *q)
{
    const struct nbd_request *r = &q->hdr;
    struct nbd_export *e = c->exp;
    uint8_t *buf = malloc(NBD_STRUCT_REPLY_SIZE + 4 + 8 * NBD_MAX_BS_DESC);
    if (!buf) {
        reply_error(c, q, NBD_ENOMEM);
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
                reply_error(c, q, nbd_errno_to_wire(-rc));
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
        reply_error(c, q, nbd_errno_to_wire(-rc));
    } else if (r->type == NBD_CMD_READ) {
        reply_read(c, q);
    } else {
        reply_ok(c, q);
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
        reply_error(c, q, (uint32_t)q->early_err);
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
    conn_reply(q->conn, q, true);
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
        conn_reply(q->conn, q, false);
    }
    return true;
}

static void *worker_main(void *arg)
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
            conn_send_locked(q->conn, false);
            continue;
        }
        req_run(q);
        conn_reply(q->conn, q, false);
    }
}

static void queue_push(struct nbd_server *srv, struct nbd_req *q)
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

/* ---- handshake ------------------------------------------------------------ */

static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
                     uint32_t len)
{
    uint8_t h[NBD_OPT_REP_HDR_SIZE];
    be64_put(h, NBD_REP_MAGIC);
    be32_put(h + 8, opt);
    be32_put(h + 12, type);
    be32_put(h + 16, len);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, len}};
    return send_iov(c->fd, iov, len ? 2 : 1);
}

static struct nbd_export *export_find(struct nbd_server *srv, const char *name)
{
    if (!name[0])
        return srv->nexports ? srv->exports[0] : NULL;
    for (unsigned i = 0; i < srv->nexports; i++)
        if (!strcmp(srv->exports[i]->name, name))
            return srv->exports[i];
    return NULL;
}

static uint16_t conn_tflags(struct nbd_conn *c, struct nbd_export *e)
{
    uint16_t f = e->tflags;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

/* Parse "u32 namelen, name" at p (len bytes); copies the name into out
 * (NBD_MAX_STRING + 1). Returns bytes consumed or -EINVAL. */
static int parse_name(const uint8_t *p, uint32_t len, char *out)
{
    if (len < 4)
        return -EINVAL;
    uint32_t n = be32_get(p);
    if (n > NBD_MAX_STRING || n > len - 4)
        return -EINVAL;
    memcpy(out, p + 4, n);
    out[n] = 0;
    if (strlen(out) != n)
        return -EINVAL; /* embedded NUL */
    return (int)(4 + n);
}

static int send_info_export(struct nbd_conn *c, uint32_t opt, struct nbd_export *e)
{
    uint8_t b[12];
    be16_put(b, NBD_INFO_EXPORT);
    be64_put(b + 2, e->size);
    be16_put(b + 10, conn_tflags(c, e));
    return opt_reply(c, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_block_size(struct nbd_conn *c, uint32_t opt, struct nbd_export *e)
{
    uint8_t b[14];
    be16_put(b, NBD_INFO_BLOCK_SIZE);
    be32_put(b + 2, e->min_block);
    be32_put(b + 6, e->pref_block);
    be32_put(b + 10, NBD_MAX_REQUEST);
    return opt_reply(c, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_string(struct nbd_conn *c, uint32_t opt, uint16_t type, const char *s)
{
    size_t n = strlen(s);
    uint8_t *b = malloc(2 + n);
    if (!b)
        return -ENOMEM;
    be16_put(b, type);
    memcpy(b + 2, s, n);
    int rc = opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + n));
    free(b);
    return rc;
}

/* NBD_OPT_INFO / NBD_OPT_GO. Returns 1 if GO succeeded, 0 to continue
 * option haggling, -errno to drop. */
static int opt_info_go(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    int n = parse_name(d, len, name);
    if (n < 0 || len - (uint32_t)n < 2)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    uint16_t nreq = be16_get(d + n);
    if (len - (uint32_t)n - 2 != 2u * nreq)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    struct nbd_export *e = export_find(c->srv, name);
    if (!e) {
        static const char msg[] = "no such export";
        return opt_reply(c, opt, NBD_REP_ERR_UNKNOWN, msg, sizeof(msg) - 1);
    }
    bool want_name = false, want_desc = false;
    for (unsigned i = 0; i < nreq; i++) {
        uint16_t t = be16_get(d + n + 2 + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
    }
    int rc = send_info_export(c, opt, e);
    if (!rc)
        rc = send_info_block_size(c, opt, e);
    if (!rc && want_name)
        rc = send_info_string(c, opt, NBD_INFO_NAME, e->name);
    if (!rc && want_desc && e->description)
        rc = send_info_string(c, opt, NBD_INFO_DESCRIPTION, e->description);
    if (!rc)
        rc = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
    if (rc < 0)
        return rc;
    if (opt == NBD_OPT_GO) {
        c->exp = e;
        return 1;
    }
    return 0;
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
static int opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    static const char ctx[] = "base:allocation";
    char name[NBD_MAX_STRING + 1];
    if (!c->structured)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    int n = parse_name(d, len, name);
    if (n < 0 || len - (uint32_t)n < 4)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    if (!export_find(c->srv, name))
        return opt_reply(c, opt, NBD_REP_ERR_UNKNOWN, NULL, 0);
    uint32_t nq = be32_get(d + n);
    uint32_t pos = (uint32_t)n + 4;
    bool match = false;
    /* validate all queries first so a bad one changes nothing */
    for (uint32_t i = 0; i < nq; i++) {
        if (len - pos < 4)
            return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        uint32_t ql = be32_get(d + pos);
        if (ql > NBD_MAX_STRING || ql > len - pos - 4)
            return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        const char *q = (const char *)d + pos + 4;
        if ((ql == sizeof(ctx) - 1 && !memcmp(q, ctx, ql)) ||
            (opt == NBD_OPT_LIST_META_CONTEXT && ql == 5 && !memcmp(q, "base:", 5)))
            match = true;
        pos += 4 + ql;
    }
    if (pos != len)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    if (nq == 0 && opt == NBD_OPT_LIST_META_CONTEXT)
        match = true;
    if (opt == NBD_OPT_SET_META_CONTEXT)
        c->meta_alloc = match;
    if (match) {
        uint8_t b[4 + sizeof(ctx) - 1];
        be32_put(b, opt == NBD_OPT_SET_META_CONTEXT ? NBD_META_ALLOC_ID : 0);
        memcpy(b + 4, ctx, sizeof(ctx) - 1);
        int rc = opt_reply(c, opt, NBD_REP_META_CONTEXT, b, sizeof(b));
        if (rc < 0)
            return rc;
    }
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

static int opt_list(struct nbd_conn *c, uint32_t opt)
{
    for (unsigned i = 0; i < c->srv->nexports; i++) {
        const char *nm = c->srv->exports[i]->name;
        size_t n = strlen(nm);
        uint8_t *b = malloc(4 + n);
        if (!b)
            return -ENOMEM;
        be32_put(b, (uint32_t)n);
        memcpy(b + 4, nm, n);
        int rc = opt_reply(c, opt, NBD_REP_SERVER, b, (uint32_t)(4 + n));
        free(b);
        if (rc < 0)
            return rc;
    }
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* Fixed newstyle handshake. 0: transmission begins with c->exp set;
 * -errno: drop the connection. */
static int conn_handshake(struct nbd_conn *c)
{
    uint8_t g[18];
    be64_put(g, NBD_MAGIC);
    be64_put(g + 8, NBD_IHAVEOPT);
    be16_put(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    int rc = send_all(c->fd, g, sizeof(g));
    if (rc < 0)
        return rc;
    uint8_t cf[4];
    rc = conn_recv(c, cf, 4);
    if (rc < 0)
        return rc;
    uint32_t cflags = be32_get(cf);
    if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        log_warn("nbd: %s: unknown client flags 0x%x, closing", c->peer, cflags);
        return -EPROTO;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    for (unsigned nopts = 0;; nopts++) {
        uint8_t h[NBD_OPT_HDR_SIZE];
        rc = conn_recv(c, h, sizeof(h));
        if (rc < 0)
            return rc;
        if (be64_get(h) != NBD_IHAVEOPT) {
            log_warn("nbd: %s: bad option magic 0x%" PRIx64 ", closing", c->peer, be64_get(h));
            return -EPROTO;
        }
        uint32_t opt = be32_get(h + 8), len = be32_get(h + 12);
        if (len > NBD_MAX_OPT_LEN) {
            log_warn("nbd: %s: option %u length %u exceeds %u, closing", c->peer, opt, len,
                     NBD_MAX_OPT_LEN);
            return -EPROTO;
        }
        if (nopts > 1000) {
            log_warn("nbd: %s: more than 1000 options, closing", c->peer);
            return -EPROTO;
        }
        uint8_t *d = malloc(len + 1);
        if (!d)
            return -ENOMEM;
        rc = conn_recv(c, d, len);
        if (rc < 0) {
            free(d);
            return rc;
        }
        d[len] = 0;
        switch (opt) {
        case NBD_OPT_EXPORT_NAME: {
            struct nbd_export *e = len <= NBD_MAX_STRING && strlen((char *)d) == len
                                       ? export_find(c->srv, (char *)d)
                                       : NULL;
            free(d);
            if (!e) {
                log_warn("nbd: %s: NBD_OPT_EXPORT_NAME: no such export, closing", c->peer);
                return -ENOENT;
            }
            uint8_t r[10 + 124];
            memset(r, 0, sizeof(r));
            be64_put(r, e->size);
            be16_put(r + 8, conn_tflags(c, e));
            rc = send_all(c->fd, r, c->no_zeroes ? 10 : sizeof(r));
            if (rc < 0)
                return rc;
            c->exp = e;
            return 0;
        }
        case NBD_OPT_ABORT:
            free(d);
            opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            return -ECONNABORTED;
        case NBD_OPT_LIST:
            rc = len ? opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0) : opt_list(c, opt);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            rc = opt_info_go(c, opt, d, len);
            if (rc == 1) {
                free(d);
                return 0;
            }
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len) {
                rc = opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
            } else {
                c->structured = true;
                rc = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            rc = opt_meta(c, opt, d, len);
            break;
        default: /* STARTTLS, EXTENDED_HEADERS, PEEK_EXPORT, unknown */
            rc = opt_reply(c, opt, NBD_REP_ERR_UNSUP, NULL, 0);
            break;
        }
        free(d);
        if (rc < 0)
            return rc;
    }
}

/* ---- transmission ---------------------------------------------------------- */

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

static void conn_transmission(struct nbd_conn *c)
{
    struct nbd_server *srv = c->srv;
    for (;;) {
        uint8_t h[NBD_REQUEST_SIZE];
        int rc = conn_recv(c, h, sizeof(h));
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
            pool_take(srv, q->charge);
            q->buf = malloc(r.length ? r.length : 1);
            if (!q->buf) {
                req_done(q);
                return;
            }
            if (payload) {
                rc = conn_recv(c, q->buf, r.length);
                if (rc < 0) {
                    req_done(q);
                    return;
                }
            }
        }
        if (!req_submit(q))
            queue_push(srv, q);
    }
}

static void conn_free(struct nbd_conn *c)
{
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c->send_job);
    free(c->rbuf);
    free(c);
}

static void *conn_main(void *arg)
{
    struct nbd_conn *c = arg;
    struct nbd_server *srv = c->srv;
    int rc = conn_handshake(c);
    if (rc == 0) {
        struct timeval none = {0, 0};
        struct timeval st = {srv->cfg.send_timeout_ms / 1000,
                             (srv->cfg.send_timeout_ms % 1000) * 1000};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof(st));
        log_debug("nbd: %s: serving export '%s'%s", c->peer, c->exp->name,
                  c->structured ? " (structured replies)" : "");
        conn_transmission(c);
    } else if (rc != -ECONNRESET && rc != -ECONNABORTED) {
        log_debug("nbd: %s: handshake ended: %s", c->peer, strerror(-rc));
    }
    /* Let every queued request finish (and answer, if the socket still
     * works) before the socket closes: nothing acknowledged is lost. */
    pthread_mutex_lock(&c->lock);
    while (c->inflight || c->sending)
        pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);

    pthread_mutex_lock(&srv->lock);
    struct nbd_conn **pp = &srv->conns;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    srv->nconns--;
    close(c->fd);
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    conn_free(c);
    return NULL;
}

int nbd_server_serve_fd(struct nbd_server *srv, int fd)
{
    struct nbd_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->rbuf = malloc(NBD_RBUF_SIZE);
    c->send_job = calloc(1, sizeof(*c->send_job));
    if (!c->rbuf || !c->send_job) {
        free(c->rbuf);
        free(c->send_job);
        free(c);
        return -ENOMEM;
    }
    c->send_job->conn = c;
    c->send_job->is_send_job = true;
    c->srv = srv;
    c->fd = fd;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);

    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    snprintf(c->peer, sizeof(c->peer), "client fd %d", fd);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family != AF_UNIX) {
        char host[NI_MAXHOST], serv[NI_MAXSERV];
        if (getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), serv, sizeof(serv),
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0)
            snprintf(c->peer, sizeof(c->peer), "%s:%s", host, serv);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct timeval ht = {srv->cfg.handshake_timeout_ms / 1000,
                         (srv->cfg.handshake_timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &ht, sizeof(ht));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &ht, sizeof(ht));

    pthread_mutex_lock(&srv->lock);
    c->next = srv->conns;
    srv->conns = c;
    srv->nconns++;
    pthread_mutex_unlock(&srv->lock);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 << 10);
    pthread_t t;
    int rc = pthread_create(&t, &attr, conn_main, c);
    pthread_attr_destroy(&attr);
    if (rc) {
        pthread_mutex_lock(&srv->lock);
        srv->conns = c->next;
        srv->nconns--;
        pthread_mutex_unlock(&srv->lock);
        conn_free(c);
        return -rc;
    }
    return 0;
}

/* ---- server ---------------------------------------------------------------- */

int nbd_server_new(const struct nbd_server_config *cfg, struct nbd_server **out)
{
    struct nbd_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    if (cfg)
        srv->cfg = *cfg;
    if (!srv->cfg.max_conns)
        srv->cfg.max_conns = 1;
    srv->cfg.max_conns = MIN(srv->cfg.max_conns, NBD_MAX_CONNS);
    if (!srv->cfg.workers)
        srv->cfg.workers = NBD_DEFAULT_WORKERS;
    if (srv->cfg.pool_bytes < NBD_MAX_REQUEST)
        srv->cfg.pool_bytes = srv->cfg.pool_bytes ? NBD_MAX_REQUEST : NBD_DEFAULT_POOL;
    if (!srv->cfg.handshake_timeout_ms)
        srv->cfg.handshake_timeout_ms = 10000;
    if (!srv->cfg.send_timeout_ms)
        srv->cfg.send_timeout_ms = 60000;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    pthread_mutex_init(&srv->pool_lock, NULL);
    pthread_cond_init(&srv->pool_cond, NULL);
    pthread_mutex_init(&srv->queue_lock, NULL);
    pthread_cond_init(&srv->queue_cond, NULL);
    srv->workers = calloc(srv->cfg.workers, sizeof(pthread_t));
    if (!srv->workers) {
        nbd_server_free(srv);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < srv->cfg.workers; i++) {
        int rc = pthread_create(&srv->workers[i], NULL, worker_main, srv);
        if (rc) {
            nbd_server_free(srv);
            return -rc;
        }
        srv->nworkers++;
    }
    *out = srv;
    return 0;
}

int nbd_server_add_export(struct nbd_server *srv, const char *name, const char *description,
                          const struct nbd_export_ops *ops, void *be, bool readonly)
{
    if (strlen(name) > NBD_MAX_STRING) {
        log_err("nbd: export name '%.40s...' longer than %d bytes", name, NBD_MAX_STRING);
        return -EINVAL;
    }
    for (unsigned i = 0; i < srv->nexports; i++)
        if (!strcmp(srv->exports[i]->name, name)) {
            log_err("nbd: export name '%s' given twice", name);
            return -EEXIST;
        }
    struct nbd_export *e = calloc(1, sizeof(*e));
    struct nbd_export **v = realloc(srv->exports, (srv->nexports + 1) * sizeof(*v));
    if (!e || !v) {
        free(e);
        if (v)
            srv->exports = v;
        return -ENOMEM;
    }
    srv->exports = v;
    e->name = strdup(name);
    e->description = description ? strdup(description) : NULL;
    if (!e->name || (description && !e->description)) {
        free(e->name);
        free(e->description);
        free(e);
        return -ENOMEM;
    }
    e->ops = ops;
    e->be = be;
    e->size = ops->size(be);
    e->min_block = ops->min_block ? ops->min_block(be) : 1;
    e->pref_block = MAX(ops->granularity(be), 4096u);
    e->pref_block = MAX(e->pref_block, e->min_block);
    if (e->pref_block > NBD_MAX_REQUEST)
        e->pref_block = NBD_MAX_REQUEST;
    e->readonly = readonly || ops->readonly(be);
    e->tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
    if (e->readonly)
        e->tflags |= NBD_FLAG_READ_ONLY;
    else
        e->tflags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                     NBD_FLAG_SEND_FAST_ZERO;
    srv->exports[srv->nexports++] = e;
    return 0;
}

static int add_listen_fd(struct nbd_server *srv, int fd, bool tcp)
{
    if (srv->nlisten == NBD_MAX_LISTEN) {
        close(fd);
        return -EMFILE;
    }
    srv->listen_fds[srv->nlisten] = fd;
    srv->listen_tcp[srv->nlisten] = tcp;
    srv->nlisten++;
    return 0;
}

int nbd_server_listen_unix(struct nbd_server *srv, const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char tmp[sizeof(sa.sun_path)];
    if (snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
        log_err("nbd: %s: socket path too long (max %zu bytes)", path, sizeof(tmp) - 12);
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, tmp, sizeof(tmp));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unlink(tmp);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0 ||
        rename(tmp, path) < 0) {
        int rc = -errno;
        log_err("nbd: %s: cannot listen: %s", path, strerror(-rc));
        unlink(tmp);
        close(fd);
        return rc;
    }
    free(srv->unix_path);
    srv->unix_path = strdup(path);
    return add_listen_fd(srv, fd, false);
}

int nbd_server_listen_tcp(struct nbd_server *srv, const char *addr, const char *port)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_ADDRCONFIG};
    struct addrinfo *res;
    int g = getaddrinfo(addr, port, &hints, &res);
    if (g) {
        log_err("nbd: %s port %s: %s", addr ? addr : "*", port, gai_strerror(g));
        return -EADDRNOTAVAIL;
    }
    int rc = -EADDRNOTAVAIL, nok = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            rc = -errno;
            close(fd);
            continue;
        }
        if (add_listen_fd(srv, fd, true) == 0)
            nok++;
    }
    freeaddrinfo(res);
    if (!nok) {
        log_err("nbd: %s port %s: cannot listen: %s", addr ? addr : "*", port, strerror(-rc));
        return rc;
    }
    return 0;
}

int nbd_server_shutdown(struct nbd_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    srv->stopping = true;
    /* Stop reading new requests; in-flight ones complete and are answered. */
    for (struct nbd_conn *c = srv->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RD);
    while (srv->nconns)
        pthread_cond_wait(&srv->cond, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    int ret = 0;
    for (unsigned i = 0; i < srv->nexports; i++) {
        struct nbd_export *e = srv->exports[i];
        if (e->readonly)
            continue;
        int rc = e->ops->flush(e->be);
        if (rc < 0) {
            log_err("nbd: export '%s': flush at shutdown failed: %s", e->name, strerror(-rc));
            if (!ret)
                ret = rc;
        }
    }
    return ret;
}

int nbd_server_run(struct nbd_server *srv, int stop_fd)
{
    struct pollfd pfd[NBD_MAX_LISTEN + 1];
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        bool full = srv->nconns >= srv->cfg.max_conns;
        pthread_mutex_unlock(&srv->lock);
        unsigned n = 0;
        pfd[n++] = (struct pollfd){.fd = stop_fd, .events = POLLIN};
        for (unsigned i = 0; i < srv->nlisten; i++)
            pfd[n++] = (struct pollfd){.fd = full ? -1 : srv->listen_fds[i], .events = POLLIN};
        /* while full, wake up now and then to see whether a slot freed */
        int r = poll(pfd, n, full ? 50 : -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int rc = -errno;
            log_err("nbd: poll failed: %s", strerror(-rc));
            nbd_server_shutdown(srv);
            return rc;
        }
        if (pfd[0].revents)
            break;
        for (unsigned i = 1; i < n; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            int fd = accept4(srv->listen_fds[i - 1], NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                    log_warn("nbd: accept failed: %s", strerror(errno));
                if (errno == EMFILE || errno == ENFILE)
                    usleep(100000);
                continue;
            }
            if (nbd_server_serve_fd(srv, fd) < 0)
                close(fd);
        }
    }
    return nbd_server_shutdown(srv);
}

void nbd_server_free(struct nbd_server *srv)
{
    if (!srv)
        return;
    pthread_mutex_lock(&srv->queue_lock);
    srv->workers_exit = true;
    pthread_cond_broadcast(&srv->queue_cond);
    pthread_mutex_unlock(&srv->queue_lock);
    for (unsigned i = 0; i < srv->nworkers; i++)
        pthread_join(srv->workers[i], NULL);
    free(srv->workers);
    for (unsigned i = 0; i < srv->nlisten; i++)
        close(srv->listen_fds[i]);
    if (srv->unix_path) {
        unlink(srv->unix_path);
        free(srv->unix_path);
    }
    for (unsigned i = 0; i < srv->nexports; i++) {
        free(srv->exports[i]->name);
        free(srv->exports[i]->description);
        free(srv->exports[i]);
    }
    free(srv->exports);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->pool_lock);
    pthread_cond_destroy(&srv->pool_cond);
    pthread_mutex_destroy(&srv->queue_lock);
    pthread_cond_destroy(&srv->queue_cond);
    free(srv);
}
