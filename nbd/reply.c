/* Replies: the server-wide request buffer pool, reply encoding and each
 * connection's reply queue with its sender role (server.c's design notes:
 * "Replies of one connection are serialized through a reply queue").
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

/* ---- buffer pool --------------------------------------------------------- */

/* Charge n bytes for one of c's requests (reader thread): first to the
 * connection's share (conn_pool_bytes), then to the server's pool. A
 * connection whose replies are not leaving (a client that stopped reading)
 * waits at its share, so the rest of the pool stays for the others. A
 * connection holding nothing may take one request of any size. */
void nbd_pool_take(struct nbd_conn *c, size_t n)
{
    struct nbd_server *srv = c->srv;
    pthread_mutex_lock(&c->lock);
    if (c->charged && c->charged + n > srv->cfg.conn_pool_bytes) {
        __atomic_add_fetch(&srv->conn_cap_waits, 1, __ATOMIC_RELAXED);
        while (c->charged && c->charged + n > srv->cfg.conn_pool_bytes)
            pthread_cond_wait(&c->cond, &c->lock);
    }
    c->charged += n;
    pthread_mutex_unlock(&c->lock);

    pthread_mutex_lock(&srv->pool_lock);
    if (srv->pool_used + n > srv->cfg.pool_bytes) {
        __atomic_add_fetch(&srv->pool_waits, 1, __ATOMIC_RELAXED);
        while (srv->pool_used + n > srv->cfg.pool_bytes)
            pthread_cond_wait(&srv->pool_cond, &srv->pool_lock);
    }
    srv->pool_used += n;
    pthread_mutex_unlock(&srv->pool_lock);
}

void nbd_pool_give(struct nbd_server *srv, size_t n)
{
    if (!n)
        return;
    pthread_mutex_lock(&srv->pool_lock);
    srv->pool_used -= n;
    pthread_cond_broadcast(&srv->pool_cond);
    pthread_mutex_unlock(&srv->pool_lock);
}

/* Free a request's memory and give its charge back to the server's pool.
 * Returns the charge: the caller takes it off conn->charged, and the
 * in-flight count down, under conn->lock. */
size_t nbd_req_free(struct nbd_req *q)
{
    size_t charge = q->charge;
    free(q->buf);
    free(q->rextra);
    nbd_pool_give(q->conn->srv, charge);
    free(q);
    return charge;
}

/* A request that ends without a reply (reader error paths). */
void nbd_req_done(struct nbd_req *q)
{
    struct nbd_conn *c = q->conn;
    size_t charge = nbd_req_free(q);
    pthread_mutex_lock(&c->lock);
    c->inflight--;
    c->charged -= charge;
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
            ssize_t r;
            if (c->ssl) {
                /* TLS: only a sender that may wait writes (tls.c's notes);
                 * a whole batch goes out or the connection fails. */
                if (nonblock)
                    return -EAGAIN;
                int rc = nbd_tls_sendv(c, iov, n);
                r = rc < 0 ? -1 : (ssize_t)total;
                if (rc < 0)
                    errno = -rc;
            } else {
                struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
                r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
            }
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
        size_t freed = 0;
        while (c->send_cur != q) {
            struct nbd_req *r0 = c->send_cur;
            size_t len = r0->rh_len + r0->rdata_len;
            if (!c->send_failed && done_bytes < len)
                break;
            done_bytes -= c->send_failed ? MIN(done_bytes, len) : len;
            c->send_cur = r0->next;
            freed += nbd_req_free(r0);
            done++;
        }
        c->send_off = c->send_failed ? 0 : done_bytes;
        if (done) {
            pthread_mutex_lock(&c->lock);
            c->inflight -= done;
            c->charged -= freed;
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
void nbd_conn_send_locked(struct nbd_conn *c, bool nonblock)
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
            nbd_work_push(c->srv, c->send_job);
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
void nbd_conn_reply(struct nbd_conn *c, struct nbd_req *q, bool nonblock)
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
    nbd_conn_send_locked(c, nonblock);
}

void nbd_reply_error(struct nbd_conn *c, struct nbd_req *q, uint32_t err)
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

void nbd_reply_ok(struct nbd_conn *c, struct nbd_req *q)
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

void nbd_reply_read(struct nbd_conn *c, struct nbd_req *q)
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
