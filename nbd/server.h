/* An NBD server (fixed newstyle, structured replies, base:allocation)
 * serving exports through a small backend interface (backend.h). The core
 * depends only on common/. Backends ship as their own files with one
 * header each: a vdisk image (backend-vdisk.h) and a raw LUN
 * (backend-lun.h). See server.c for the thread model and docs/nbd.md for
 * usage.
 */
#ifndef NBD_SERVER_H
#define NBD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "tls.h"

#define NBD_MAX_REQUEST (32u << 20)   /* max READ/WRITE length: 32 MiB */
#define NBD_DEFAULT_POOL (256u << 20) /* request buffer pool: 256 MiB for all connections */
#define NBD_DEFAULT_WORKERS 16
#define NBD_MAX_INFLIGHT 64 /* requests queued or running per connection */
#define NBD_MAX_CONNS 1024  /* hard cap on --shared */

struct nbd_server_config {
    unsigned max_conns;            /* clients at once (--shared); 0 = 1 */
    unsigned workers;              /* worker threads; 0 = NBD_DEFAULT_WORKERS */
    size_t pool_bytes;             /* request buffer pool; 0 = NBD_DEFAULT_POOL */
    unsigned handshake_timeout_ms; /* 0 = 10000 */
    unsigned send_timeout_ms; /* a client that reads no reply this long is dropped; 0 = 60000 */
    /* Pool bytes one connection's requests may hold at once, so that a
     * client that stops reading its replies cannot take the whole pool
     * from the others; 0 = max(NBD_MAX_REQUEST, pool_bytes / 4). */
    size_t conn_pool_bytes;
    enum nbd_tls_mode tls_mode; /* NBD_TLS_ON / REQUIRE need tls */
    struct nbd_tls *tls;        /* credentials (tls.h); not owned by the server */
};

struct nbd_server_stats {
    size_t pool_used;                  /* request buffer bytes held now */
    unsigned long long pool_waits;     /* times a reader waited for the shared pool */
    unsigned long long conn_cap_waits; /* times a reader waited for its connection's share */
    unsigned conns;                    /* connections now */
};

struct nbd_server;

int nbd_server_new(const struct nbd_server_config *cfg, struct nbd_server **out);
/* Add an export. The first export added is also the default export (""). The
 * server does not own `be`. readonly forces the export read-only. */
int nbd_server_add_export(struct nbd_server *srv, const char *name, const char *description,
                          const struct nbd_export_ops *ops, void *be, bool readonly);
/* Listen on a unix socket (created atomically: bound under a temporary name,
 * then renamed, so a client that sees the path can connect) or TCP. */
int nbd_server_listen_unix(struct nbd_server *srv, const char *path);
int nbd_server_listen_tcp(struct nbd_server *srv, const char *addr, const char *port);
/* TCP on the loopback addresses only: 127.0.0.1, and ::1 where it exists. */
int nbd_server_listen_loopback(struct nbd_server *srv, const char *port);
/* Serve one already connected socket (tests, inetd style). */
int nbd_server_serve_fd(struct nbd_server *srv, int fd);
/* Accept clients until stop_fd becomes readable (a signalfd, a pipe); then
 * stop accepting, let every connection finish its in-flight requests and
 * send their replies, close the connections and flush every export.
 * Returns 0 or the first flush error. */
int nbd_server_run(struct nbd_server *srv, int stop_fd);
/* Same drain as nbd_server_run's end, for servers driven by serve_fd. */
int nbd_server_shutdown(struct nbd_server *srv);
void nbd_server_get_stats(struct nbd_server *srv, struct nbd_server_stats *st);
/* Free the server (after run / shutdown); removes the unix socket path. */
void nbd_server_free(struct nbd_server *srv);

#endif
