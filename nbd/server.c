/* NBD server core: server and connection lifetime, listening, accepting.
 * The handshake is in handshake.c, requests and workers in transmit.c,
 * the reply queue in reply.c, the wire codec in protocol.c.
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
 * whatever the number of clients. One connection's requests hold at most
 * conn_pool_bytes of it (default max(32 MiB, pool / 4)): a client that
 * stops reading its replies stops being read at its share instead of
 * taking the whole pool from the others, and after send_timeout_ms without
 * progress it is dropped (SO_SNDTIMEO; TLS: poll), which returns its
 * buffers. At most max_conns clients at once: beyond that the listener is
 * not polled and new clients wait in the kernel's backlog (qemu-nbd
 * --shared does the same). The whole handshake, TLS included, must end
 * within handshake_timeout_ms of the accept (a deadline every receive and
 * send waits against, conn.c), so idle or trickling clients cannot hold a
 * slot.
 *
 * TLS. After NBD_OPT_STARTTLS the connection's bytes go through OpenSSL
 * (tls.c, which has its own design notes on threads); everything above the
 * byte stream is the same code for TLS and plaintext connections.
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
 * Lock order: srv->lock, then conn->lock. srv->pool_lock, srv->queue_lock
 * and conn->ssl_lock are leaves (a reader takes its connection's share
 * under conn->lock and then, with it released, the pool's room). No lock of ours is held across
 * ops->submit (its completion may run inside it). A connection is freed by its reader once inflight
 * == 0 and no thread holds its sender role.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "le.h"
#include "log.h"
#include "util.h"

static void conn_free(struct nbd_conn *c)
{
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->ssl_lock);
    free(c->tls_wbuf);
    free(c->send_job);
    free(c->rbuf);
    free(c);
}

static void *conn_main(void *arg)
{
    struct nbd_conn *c = arg;
    struct nbd_server *srv = c->srv;
    int rc = nbd_conn_handshake(c);
    c->deadline = 0; /* transmission: no receive deadline */
    if (rc == 0) {
        struct timeval st = {srv->cfg.send_timeout_ms / 1000,
                             (srv->cfg.send_timeout_ms % 1000) * 1000};
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof(st));
        log_debug("nbd: %s: serving export '%s'%s", c->peer, c->exp->name,
                  c->structured ? " (structured replies)" : "");
        nbd_conn_transmission(c);
    } else if (rc != -ECONNRESET && rc != -ECONNABORTED) {
        log_debug("nbd: %s: handshake ended: %s", c->peer, strerror(-rc));
    }
    /* Let every queued request finish (and answer, if the socket still
     * works) before the socket closes: nothing acknowledged is lost. */
    pthread_mutex_lock(&c->lock);
    while (c->inflight || c->sending)
        pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
    nbd_tls_conn_end(c);

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
    pthread_mutex_init(&c->ssl_lock, NULL);

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
    /* The handshake as a whole must end by this time (conn.c's notes). */
    c->deadline = nbd_now_ms() + srv->cfg.handshake_timeout_ms;

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
    if (!srv->cfg.conn_pool_bytes)
        srv->cfg.conn_pool_bytes = MAX((size_t)NBD_MAX_REQUEST, srv->cfg.pool_bytes / 4);
    if (srv->cfg.tls_mode != NBD_TLS_OFF && !srv->cfg.tls) {
        log_err("nbd: TLS %s without credentials",
                srv->cfg.tls_mode == NBD_TLS_REQUIRE ? "required" : "offered");
        free(srv);
        return -EINVAL;
    }
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
        int rc = pthread_create(&srv->workers[i], NULL, nbd_worker_main, srv);
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

/* Listen on every address addr resolves to; returns how many, or -errno
 * (nothing logged) when none. */
static int listen_tcp_addrs(struct nbd_server *srv, const char *addr, const char *port, int flags)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | flags};
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
    return nok ? nok : rc;
}

int nbd_server_listen_tcp(struct nbd_server *srv, const char *addr, const char *port)
{
    int rc = listen_tcp_addrs(srv, addr, port, addr ? 0 : AI_ADDRCONFIG);
    if (rc < 0) {
        log_err("nbd: %s port %s: cannot listen: %s", addr ? addr : "*", port, strerror(-rc));
        return rc;
    }
    return 0;
}

int nbd_server_listen_loopback(struct nbd_server *srv, const char *port)
{
    int rc = listen_tcp_addrs(srv, "127.0.0.1", port, AI_NUMERICHOST);
    if (rc < 0) {
        log_err("nbd: 127.0.0.1 port %s: cannot listen: %s", port, strerror(-rc));
        return rc;
    }
    /* ::1 too where the host has IPv6 loopback (a client may resolve
     * localhost to it); a host without it is fine. */
    rc = listen_tcp_addrs(srv, "::1", port, AI_NUMERICHOST);
    if (rc < 0 && rc != -EADDRNOTAVAIL && rc != -EAFNOSUPPORT)
        log_warn("nbd: ::1 port %s: cannot listen: %s (serving on 127.0.0.1 only)", port,
                 strerror(-rc));
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

void nbd_server_get_stats(struct nbd_server *srv, struct nbd_server_stats *st)
{
    pthread_mutex_lock(&srv->pool_lock);
    st->pool_used = srv->pool_used;
    pthread_mutex_unlock(&srv->pool_lock);
    st->pool_waits = __atomic_load_n(&srv->pool_waits, __ATOMIC_RELAXED);
    st->conn_cap_waits = __atomic_load_n(&srv->conn_cap_waits, __ATOMIC_RELAXED);
    pthread_mutex_lock(&srv->lock);
    st->conns = srv->nconns;
    pthread_mutex_unlock(&srv->lock);
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
