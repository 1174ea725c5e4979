/* Private to the NBD core (the .c files of nbd/): the server, connection and request
 * objects shared by the handshake, transmission and reply files, and the
 * functions they call in each other. Backends never include this; they see
 * backend.h only. Lock order and the thread model: server.c's design notes.
 */
#ifndef NBD_INTERNAL_H
#define NBD_INTERNAL_H

#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "backend.h"
#include "protocol.h"
#include "server.h"
#include "tls.h"

#define NBD_MAX_OPT_LEN (64u << 10)
#define NBD_MAX_LISTEN 8
#define NBD_MAX_BS_DESC 1024 /* block status descriptors per reply */
#define NBD_RBUF_SIZE (64u << 10)
#define NBD_META_ALLOC_ID 1
#define NBD_SEND_BATCH 64        /* replies per sendmsg */
#define NBD_TLS_WBUF (16u << 10) /* TLS: small reply pieces coalesced into one record */

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
    /* the whole handshake ends by this time (CLOCK_MONOTONIC ms); 0 in
     * transmission. Reader thread only. */
    uint64_t deadline;
    /* TLS (tls.c): set by the reader at STARTTLS, before transmission.
     * Every SSL_* call on ssl is made under ssl_lock, a leaf lock. */
    void *ssl;
    pthread_mutex_t ssl_lock;
    const char *tls_psk_id; /* the PSK identity that authenticated (nbd_tls's) */
    uint8_t *tls_wbuf;      /* NBD_TLS_WBUF; the sender role's (the reader's in the handshake) */
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
    size_t charged;                      /* pool bytes its requests hold; protected by lock */
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
    size_t pool_used;                              /* protected by pool_lock */
    unsigned long long pool_waits, conn_cap_waits; /* atomic (__atomic_*) */

    pthread_mutex_t queue_lock;
    pthread_cond_t queue_cond;
    struct nbd_req *qhead, *qtail; /* protected by queue_lock */
    bool workers_exit;             /* protected by queue_lock */
    pthread_t *workers;
    unsigned nworkers;
};

/* conn.c: the connection's byte stream. */
uint64_t nbd_now_ms(void);
/* poll() the socket for events, at most timeout_ms (-1: no limit) and never
 * past c->deadline. 0 when ready (or in error: the next call says),
 * -ETIMEDOUT, -errno. */
int nbd_conn_wait(struct nbd_conn *c, short events, int timeout_ms);
int nbd_conn_sendv(struct nbd_conn *c, struct iovec *iov, int n);
int nbd_conn_send(struct nbd_conn *c, const void *buf, size_t len);
/* Read exactly len bytes through the receive buffer; -ECONNRESET on EOF. */
int nbd_conn_recv(struct nbd_conn *c, void *buf, size_t len);

/* tls.c: a connection's TLS stream (after NBD_OPT_STARTTLS was acked). */
int nbd_tls_accept(struct nbd_conn *c);
ssize_t nbd_tls_recv(struct nbd_conn *c, void *buf, size_t len);
int nbd_tls_sendv(struct nbd_conn *c, const struct iovec *iov, int n);
void nbd_tls_conn_end(struct nbd_conn *c);

/* reply.c: the buffer pool, reply encoding and the reply queue. */
void nbd_pool_take(struct nbd_conn *c, size_t n);
void nbd_pool_give(struct nbd_server *srv, size_t n);
size_t nbd_req_free(struct nbd_req *q);
void nbd_req_done(struct nbd_req *q);
void nbd_reply_error(struct nbd_conn *c, struct nbd_req *q, uint32_t err);
void nbd_reply_ok(struct nbd_conn *c, struct nbd_req *q);
void nbd_reply_read(struct nbd_conn *c, struct nbd_req *q);
void nbd_conn_send_locked(struct nbd_conn *c, bool nonblock);
void nbd_conn_reply(struct nbd_conn *c, struct nbd_req *q, bool nonblock);

/* transmit.c: requests and the worker pool. */
void nbd_work_push(struct nbd_server *srv, struct nbd_req *q);
void *nbd_worker_main(void *arg);
void nbd_conn_transmission(struct nbd_conn *c);

/* handshake.c: fixed newstyle option haggling. 0: transmission begins with
 * c->exp set; -errno: drop the connection. */
int nbd_conn_handshake(struct nbd_conn *c);

#endif
