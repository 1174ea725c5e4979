/* The byte stream of one NBD connection: blocking sends of the handshake
 * and the receive buffer the reader thread reads options and requests
 * through. The reply sender (reply.c) batches its own sendmsg calls.
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

int nbd_conn_sendv(struct nbd_conn *c, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
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

int nbd_conn_send(struct nbd_conn *c, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return nbd_conn_sendv(c, &iov, 1);
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
