/* The byte stream of one NBD connection: the handshake's sends and the
 * receive buffer the reader thread reads options and requests through,
 * over the plain socket or, after NBD_OPT_STARTTLS, over TLS (tls.c).
 * The reply sender (reply.c) batches its own sends.
 *
 * Design notes
 * ------------
 * Deadlines. During the handshake c->deadline (CLOCK_MONOTONIC, ms) bounds
 * the handshake as a whole: every receive and send waits in poll() for at
 * most what is left of it, so a client that trickles one byte at a time
 * cannot hold a connection slot longer than the handshake timeout (a
 * per-receive SO_RCVTIMEO would be reset by every byte). In transmission
 * there is no receive deadline (a client may idle), plain sends block under
 * SO_SNDTIMEO, and TLS sends wait in poll() for at most send_timeout_ms.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "internal.h"
#include "util.h"

uint64_t nbd_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int nbd_conn_wait(struct nbd_conn *c, short events, int timeout_ms)
{
    if (c->deadline) {
        uint64_t now = nbd_now_ms();
        if (now >= c->deadline)
            return -ETIMEDOUT;
        uint64_t left = c->deadline - now;
        if (timeout_ms < 0 || left < (uint64_t)timeout_ms)
            timeout_ms = (int)MIN(left, (uint64_t)INT32_MAX);
    }
    struct pollfd p = {.fd = c->fd, .events = events};
    for (;;) {
        int r = poll(&p, 1, timeout_ms);
        if (r > 0)
            return 0; /* ready, or an error / hangup the next call reports */
        if (r == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

int nbd_conn_sendv(struct nbd_conn *c, struct iovec *iov, int n)
{
    if (c->ssl)
        return nbd_tls_sendv(c, iov, n);
    while (n > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        /* with a deadline (handshake), never block past it */
        ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | (c->deadline ? MSG_DONTWAIT : 0));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (c->deadline && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                int rc = nbd_conn_wait(c, POLLOUT, -1);
                if (rc < 0)
                    return rc;
                continue;
            }
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

int nbd_conn_send(struct nbd_conn *c, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return nbd_conn_sendv(c, &iov, 1);
}

/* One receive of at most len bytes: > 0 bytes, 0 at EOF, -errno. */
static ssize_t conn_recv_some(struct nbd_conn *c, void *buf, size_t len)
{
    if (c->ssl)
        return nbd_tls_recv(c, buf, len);
    for (;;) {
        if (c->deadline) {
            int rc = nbd_conn_wait(c, POLLIN, -1);
            if (rc < 0)
                return rc;
        }
        ssize_t r = recv(c->fd, buf, len, c->deadline ? MSG_DONTWAIT : 0);
        if (r >= 0)
            return r;
        if (errno == EINTR || (c->deadline && (errno == EAGAIN || errno == EWOULDBLOCK)))
            continue;
        return -errno;
    }
}

/* Read exactly len bytes through the connection's receive buffer.
 * -ECONNRESET on EOF. */
int nbd_conn_recv(struct nbd_conn *c, void *buf, size_t len)
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
            r = conn_recv_some(c, out, len);
        else
            r = conn_recv_some(c, c->rbuf, NBD_RBUF_SIZE);
        if (r < 0)
            return (int)r;
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
