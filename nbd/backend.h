/* The NBD export backend interface: what the core asks of an export. A
 * backend knows nothing of the wire; it gets range-checked byte requests.
 */
#ifndef NBD_BACKEND_H
#define NBD_BACKEND_H

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

#endif
