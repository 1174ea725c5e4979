/* An NBD server (fixed newstyle, structured replies, base:allocation)
 * serving exports through a small backend interface. Two backends ship with
 * it: a vdisk image (nbd_export_vd.c, vdisk.h) and a raw LUN
 * (nbd_export_lun.c, lun.h). See nbd_server.c for the thread model and
 * docs/nbd.md for usage.
 */
#ifndef VDISK_NBD_SERVER_H
#define VDISK_NBD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lun;
struct vd_image;

#define NBD_MAX_REQUEST (32u << 20)   /* max READ/WRITE length: 32 MiB */
#define NBD_DEFAULT_POOL (256u << 20) /* request buffer pool: 256 MiB for all connections */
#define NBD_DEFAULT_WORKERS 16
#define NBD_MAX_INFLIGHT 64 /* requests queued or running per connection */
#define NBD_MAX_CONNS 1024  /* hard cap on --shared */

#define NBD_AIO_BE_DATA 192 /* bytes of backend state in each struct nbd_aio */

/* One request handed to the optional asynchronous entry (ops->submit). The
 * core fills the fields above `done`; the backend owns be_data while the
 * request is its own (from submit until it calls done). */
struct nbd_aio {
    uint16_t type; /* NBD_CMD_READ, NBD_CMD_WRITE or NBD_CMD_FLUSH */
    bool fua;      /* WRITE: force unit access */
    uint32_t len;  /* READ / WRITE: bytes, range-checked; FLUSH: 0 */
    uint64_t off;
    void *buf; /* READ: filled by the backend; WRITE: the payload */
    /* Called by the backend exactly once with 0 or -errno, on any thread
     * (an I/O completion thread, or inside submit). It never blocks: it
     * queues the reply and at most tries one non-blocking send. */
    void (*done)(struct nbd_aio *aio, int rc);
    _Alignas(max_align_t) unsigned char be_data[NBD_AIO_BE_DATA];
};

/* The export backend. All calls may run on several worker threads at once;
 * byte offsets and lengths are already range-checked against size(). Each
 * returns 0 or -errno (-EPERM, -EIO, -ENOSPC, -ENOTSUP, ... go to the wire). */
struct nbd_export_ops {
    uint64_t (*size)(void *be);
    uint32_t (*granularity)(void *be); /* preferred block size / allocation unit */
    uint32_t (*min_block)(void *be);   /* minimum block size (1 = any alignment) */
    bool (*readonly)(void *be);
    int (*pread)(void *be, void *buf, uint32_t len, uint64_t off);
    int (*pwrite)(void *be, const void *buf, uint32_t len, uint64_t off, bool fua);
    int (*flush)(void *be);
    int (*trim)(void *be, uint64_t off, uint32_t len);
    /* Zero the range; no_hole: keep it allocated; fast: return -ENOTSUP at
     * once unless zeroing is faster than writing zeroes. */
    int (*zero)(void *be, uint64_t off, uint32_t len, bool no_hole, bool fast);
    /* Uniform extent at off (at most len): *ext_len > 0, *flags NBD_STATE_*. */
    int (*block_status)(void *be, uint64_t off, uint64_t len, uint64_t *ext_len, uint32_t *flags);
    /* Optional asynchronous entry for READ, WRITE and FLUSH, called by the
     * connection's reader thread: start the request and return 0, then call
     * aio->done exactly once when it completes. It must not wait for I/O
     * (queueing behind a bounded submission queue is fine). Return -EAGAIN
     * to decline (done is then not called): the core runs the request
     * through pread / pwrite / flush on a worker thread instead (unaligned
     * I/O, a read-modify-write in progress). Any other -errno fails the
     * request at once (done not called). A FLUSH must cover every write
     * whose done was called before the FLUSH was submitted (NBD's rule). */
    int (*submit)(void *be, struct nbd_aio *aio);
};

struct nbd_server_config {
    unsigned max_conns;            /* clients at once (--shared); 0 = 1 */
    unsigned workers;              /* worker threads; 0 = NBD_DEFAULT_WORKERS */
    size_t pool_bytes;             /* request buffer pool; 0 = NBD_DEFAULT_POOL */
    unsigned handshake_timeout_ms; /* 0 = 10000 */
    unsigned send_timeout_ms; /* a client that reads no reply this long is dropped; 0 = 60000 */
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
/* Serve one already connected socket (tests, inetd style). */
int nbd_server_serve_fd(struct nbd_server *srv, int fd);
/* Accept clients until stop_fd becomes readable (a signalfd, a pipe); then
 * stop accepting, let every connection finish its in-flight requests and
 * send their replies, close the connections and flush every export.
 * Returns 0 or the first flush error. */
int nbd_server_run(struct nbd_server *srv, int stop_fd);
/* Same drain as nbd_server_run's end, for servers driven by serve_fd. */
int nbd_server_shutdown(struct nbd_server *srv);
/* Free the server (after run / shutdown); removes the unix socket path. */
void nbd_server_free(struct nbd_server *srv);

/* Backends. */
extern const struct nbd_export_ops nbd_vd_ops; /* be = struct vd_image * */

struct nbd_lun_backend;
extern const struct nbd_export_ops nbd_lun_ops; /* be = struct nbd_lun_backend * */
int nbd_lun_backend_new(struct lun *lun, bool readonly, struct nbd_lun_backend **out);
void nbd_lun_backend_free(struct nbd_lun_backend *b);

#endif
