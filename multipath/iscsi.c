/* The iSCSI path: one libiscsi session to one LUN, driven by its own
 * event-loop thread.
 *
 * Design notes
 * ------------
 * Threads. libiscsi contexts are not thread-safe, so exactly one thread
 * touches the context once the path is open: the path's loop thread.
 * Submitters (any thread) build the SCSI task (CDB + data buffers; a task is
 * plain memory until it is queued on a context), put a `struct icmd` on the
 * pending queue under `ip->lock` and wake the loop through an eventfd
 * (written only when the queue goes from empty to non-empty, so a burst of
 * submissions costs one wakeup). The loop polls the socket (events from
 * iscsi_which_events) and the eventfd, moves pending commands to libiscsi
 * with iscsi_scsi_command_async, services the socket, and completes
 * commands from libiscsi's callbacks: io->done() runs on the loop thread.
 * Synchronous commands (probe, PR, TEST UNIT READY) are the same commands
 * with a waiter (mutex + condvar) instead of a done callback.
 *
 * Sending. libiscsi sends each PDU with its own system call, and a WRITE
 * with immediate data with two (the header by send, the data by writev
 * straight from the caller's buffer); on a TCP_NODELAY socket every one of
 * them is a TCP segment, which the sender pays for (on loopback the
 * receiver's side of the stack too). When the loop has queued two or more
 * sends since its last write, it sets TCP_CORK around the iscsi_service
 * call that writes them and clears it right after (which pushes them out):
 * a burst of commands leaves in as few segments as the sizes allow and no
 * data waits for the cork timer. That costs two setsockopt calls per
 * burst and cut our CPU time per 4 KiB write by a quarter to a third
 * (docs/iscsi.md, Performance). The loop also reads the clock once per wakeup
 * (loop_now_ns), for deadlines and liveness, not once per command.
 *
 * Zero copy. READ data lands directly in the caller's buffer
 * (scsi_task_add_data_in_buffer); WRITE data is sent from the caller's
 * buffer (scsi_task_add_data_out_buffer). Large I/Os are split at the
 * target's MAXIMUM TRANSFER LENGTH (VPD 0xB0); the pieces complete the
 * caller's I/O once, with the first error.
 *
 * Timeouts. Every command gets a deadline (opts->timeout_ms) when the loop
 * hands it to libiscsi. All commands of a path have the same timeout, so
 * the in-flight list, kept in dispatch order, is also in deadline order:
 * the loop only looks at its head, and sleeps no longer than the head's
 * deadline. An expired command is cancelled locally
 * (iscsi_scsi_cancel_task) and completes with -ETIMEDOUT. Login is bounded
 * the same way (connect_timeout_ms) by the opener, which drives the context
 * itself before the loop thread exists.
 *
 * Connection loss. libiscsi's automatic reconnect is disabled
 * (iscsi_set_noautoreconnect): it would queue commands for an unbounded
 * time. When the session drops, libiscsi cancels every command; the path
 * becomes dead, in-flight and later commands fail with -ENOTCONN at once,
 * and the multipath layer (a later issue) decides what to do.
 *
 * Liveness. Once the multipath core installs a reporter (set_report),
 * the loop sends a NOP-Out every nop_interval_ms (one outstanding at a
 * time) and remembers when the target last answered anything (a NOP-In or
 * a command response). After nop_max_missed intervals of silence it calls
 * the reporter, which fails the path in the core like a timed-out command;
 * this catches a silent path that carries no I/O. libiscsi 1.19 has no
 * ping timer of its own, only iscsi_nop_out_async.
 *
 * Session identity. The ISID is a hash of (initiator name, target, LUN, and
 * a seed; the portal too without a seed): the multipath core gives each path slot of a LUN its
 * own seed (pid, a per-process counter, the slot) and reopens the slot
 * with it, so a reconnect logs in with the same ISID and, on targets that
 * follow RFC 7143 (istgt, LIO, arrays), reinstates (kills) the old session
 * and keeps the slot's I_T nexus (initiator port name + ISID; tgt 1.0.85
 * keys PR registrations by session all the same). Without a seed, pid and a per-process open
 * counter: two paths, two opens of one LUN, or two processes on one host (the mount daemon and
 * `clusterfs lun info`) never share an ISID, so no login reinstates another's session.
 * Persistent-reservation registrations belong to the I_T nexus (initiator name + ISID, target
 * port).
 *
 * Lock order: ip->lock, then a sync waiter's lock (never the other way).
 */
#include "path.h"
#include "sense.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define ISCSI_DEFAULT_TIMEOUT_MS 5000u
#define ISCSI_IDLE_POLL_MS 1000
#define ISCSI_MAX_UA_RETRIES 10
#define ISCSI_NOP_INTERVAL_MS 1000u
#define ISCSI_NOP_MAX_MISSED 2u

struct ipath;
struct icmd;

/* The waiter of a synchronous command. */
struct isync {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;     /* protected by lock */
    int result;    /* protected by lock */
    bool orphaned; /* protected by lock: the task stays with the path (timed out) */
};

/* A caller's I/O split in several commands. Loop thread only. */
struct isplit {
    unsigned remaining;
    int result;
    uint8_t sense_key, asc, ascq;
};

enum icmd_kind {
    ICMD_IO,           /* part of a lun_io */
    ICMD_SYNC,         /* synchronous command, task handed back to the waiter */
    ICMD_CAW_READBACK, /* READ of the block after a COMPARE AND WRITE miscompare */
    ICMD_ORPHAN        /* its lun_io was completed early (deadline): only freed */
};

struct icmd {
    struct ipath *ip;
    enum icmd_kind kind;
    struct scsi_task *task;
    struct lun_io *io;        /* ICMD_IO, ICMD_CAW_READBACK */
    struct isplit *split;     /* ICMD_IO split in pieces, else NULL */
    struct isync *sync;       /* ICMD_SYNC */
    void *owned;              /* buffer freed with the command (UNMAP list, PR params, CAW data) */
    uint8_t *bounce;          /* I/O with a deadline: its data-in lands here (in `owned`) */
    size_t bounce_len;        /* ... and is copied to io->buf on success */
    uint64_t deadline_ns;     /* loop thread only */
    uint64_t sent_ns;         /* loop thread only: handed to libiscsi */
    bool timed_out;           /* loop thread only */
    bool is_caw;              /* COMPARE AND WRITE: read back on miscompare */
    struct icmd *prev, *next; /* pending queue (next only) or in-flight list */
};

struct ipath {
    struct lun_path base;
    struct iscsi_context *iscsi; /* loop thread only, once the loop runs */
    int lun_nr;
    char target[256];
    char portal[256];
    unsigned timeout_ms;
    int efd;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock;
    struct icmd *pend_head, *pend_tail; /* protected by lock */
    bool stopping;                      /* protected by lock */
    int dead; /* protected by lock: 0 or -errno once the session is gone */
    /* Teardown with confirmation (engine paths, see ipath_teardown_run). */
    bool closing;              /* protected by lock: no new commands; tearing down */
    bool known;                /* protected by lock: nothing we sent can still land */
    pthread_cond_t known_cond; /* with lock: `known` became true */
    int td_state;              /* loop thread only: TD_* */
    bool td_confirmed;         /* loop thread only: ABORT TASK SET answered FUNCTION COMPLETE */
    bool td_reinstated;        /* protected by lock: the session was reinstated elsewhere */
    bool abort_writes;         /* protected by lock: lun_fence_self asked (ops->abort_writes) */
    uint64_t closing_since_ns; /* loop thread only */

    struct icmd inflight; /* loop thread only: list sentinel, dispatch order */

    /* NOP-Out pings: only once the multipath core installed a reporter. */
    unsigned nop_interval_ms;      /* immutable; LUN_NOP_OFF = none */
    unsigned nop_max_missed;       /* immutable */
    lun_path_report_fn report;     /* protected by lock */
    void *report_opaque;           /* protected by lock */
    uint64_t nop_next_ns;          /* loop thread only: next NOP-Out; 0 = not started */
    uint64_t nop_heard_ns;         /* loop thread only: last NOP-In or command response */
    bool nop_outstanding;          /* loop thread only: a NOP-Out awaits its NOP-In */
    bool nop_reported;             /* loop thread only: this silence was reported */
    unsigned nop_miss_run;         /* loop thread only: misses since the last NOP-In */
    uint64_t loop_now_ns;          /* loop thread only: clock read after the last poll */
    unsigned out_pdus;             /* loop thread only: PDUs queued since the last write */
    bool cork;                     /* loop thread only (set at open): batch sends under TCP_CORK */
    _Atomic uint64_t nop_answered; /* NOP-Ins received */
    _Atomic uint64_t nop_missed_total; /* intervals that passed without one */

    /* Written by probe before any I/O is submitted, read-only afterwards. */
    uint32_t block_size;
    uint32_t max_xfer_blocks;
    uint32_t max_unmap_blocks;
    bool have_caw;
    bool have_sync16;
    bool rsoc;
};

static const struct lun_path_ops iscsi_path_ops;

enum { TD_NONE, TD_DRAIN, TD_TMF_SENT, TD_DONE };

/* ---- helpers ------------------------------------------------------------ */

static uint32_t be32_get(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64_get(const uint8_t *p)
{
    return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

static uint16_t be16_get(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void be16_put(uint8_t *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v & 0xff;
}

static void be32_put(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = (v >> 16) & 0xff;
    p[2] = (v >> 8) & 0xff;
    p[3] = v & 0xff;
}

static void be64_put(uint8_t *p, uint64_t v)
{
    be32_put(p, v >> 32);
    be32_put(p + 4, (uint32_t)v);
}

bool lun_uri_is_iscsi(const char *uri)
{
    return uri && strncasecmp(uri, "iscsi://", 8) == 0;
}

/* libiscsi's last error as one line. */
static void iscsi_error_copy(struct iscsi_context *iscsi, char *buf, size_t len)
{
    const char *e = iscsi_get_error(iscsi);
    snprintf(buf, len, "%s", e && *e ? e : "no detail");
    buf[strcspn(buf, "\r\n")] = 0; /* the first line says it */
    size_t n = strlen(buf);
    while (n > 0 && buf[n - 1] == ' ')
        buf[--n] = 0;
}

/* FNV-1a, for the ISID. */
static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void trim_copy(char *dst, size_t dstlen, const uint8_t *src, size_t len)
{
    while (len > 0 && (src[len - 1] == ' ' || src[len - 1] == 0))
        len--;
    while (len > 0 && *src == ' ') {
        src++;
        len--;
    }
    if (len >= dstlen)
        len = dstlen - 1;
    for (size_t i = 0; i < len; i++)
        dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '_';
    dst[len] = 0;
}

static uint64_t deadline_after_ms(unsigned ms)
{
    return now_ns() + (uint64_t)ms * 1000000ULL;
}

/* The lun.h errno of a finished task, and its sense. */
static int task_result(int status, struct scsi_task *task, uint8_t *key, uint8_t *asc,
                       uint8_t *ascq)
{
    *key = *asc = *ascq = 0;
    switch (status) {
    case SCSI_STATUS_GOOD:
    case SCSI_STATUS_CONDITION_MET:
        return 0;
    case SCSI_STATUS_CANCELLED:
        return -ENOTCONN;
    case SCSI_STATUS_TIMEOUT:
        return -ETIMEDOUT;
    case SCSI_STATUS_ERROR:
        return -EIO;
    default:
        break;
    }
    if (status == SCSI_STATUS_CHECK_CONDITION && task) {
        *key = (uint8_t)task->sense.key;
        *asc = (uint8_t)((task->sense.ascq >> 8) & 0xff);
        *ascq = (uint8_t)(task->sense.ascq & 0xff);
    }
    int rc = lun_status_errno((uint8_t)status, *key, *asc, *ascq);
    return rc ? rc : -EIO;
}

/* ---- command lifecycle ---------------------------------------------------- */

static struct icmd *icmd_new(struct ipath *ip, enum icmd_kind kind, struct scsi_task *task)
{
    struct icmd *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ip = ip;
    c->kind = kind;
    c->task = task;
    return c;
}

static void icmd_free(struct icmd *c)
{
    if (c->task && c->kind != ICMD_SYNC)
        scsi_free_scsi_task(c->task);
    free(c->owned);
    free(c);
}

/* Insert in deadline order. Commands without an I/O deadline all get the
 * path's timeout from the loop's (growing) clock and go to the tail; one
 * whose I/O deadline is nearer walks back past the later ones. */
static void inflight_add(struct ipath *ip, struct icmd *c)
{
    struct icmd *after = ip->inflight.prev;
    while (after != &ip->inflight && after->deadline_ns > c->deadline_ns)
        after = after->prev;
    c->prev = after;
    c->next = after->next;
    after->next->prev = c;
    after->next = c;
}

static void inflight_del(struct icmd *c)
{
    if (c->prev) {
        c->prev->next = c->next;
        c->next->prev = c->prev;
        c->prev = c->next = NULL;
    }
}

static void ipath_dispatch(struct ipath *ip, struct icmd *c);

/* Finish a command with `result` (loop thread, or a submitter when the
 * command never reached the loop). */
static void icmd_complete(struct icmd *c, int result, uint8_t key, uint8_t asc, uint8_t ascq)
{
    struct ipath *ip = c->ip;

    if (c->kind == ICMD_SYNC) {
        struct isync *s = c->sync;
        c->task = NULL; /* the waiter owns it */
        icmd_free(c);
        pthread_mutex_lock(&s->lock);
        s->result = result;
        s->done = true;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return;
    }

    if (c->kind == ICMD_ORPHAN) {
        icmd_free(c); /* its I/O was completed when its deadline passed */
        return;
    }

    struct lun_io *io = c->io;
    if (c->bounce && result == 0)
        memcpy(io->buf, c->bounce, c->bounce_len);

    if (c->kind == ICMD_CAW_READBACK) {
        /* The miscompare is the answer; the read only fills in `found`. */
        icmd_free(c);
        io->sense_key = LUN_SK_MISCOMPARE;
        io->asc = 0x1D;
        io->ascq = 0;
        io->done(io, result == 0 ? -EILSEQ : result);
        return;
    }

    if (c->is_caw && result == -EILSEQ && !c->split) {
        /* Read the current block into buf's first block. */
        struct scsi_task *t =
            scsi_cdb_read16(io->lba, ip->block_size, (int)ip->block_size, 0, 0, 0, 0, 0);
        uint8_t *dst = io->buf, *bb = NULL;
        if (io->deadline_ns) /* may be completed early: not into the caller's buffer */
            dst = bb = malloc(ip->block_size);
        if (t && dst && scsi_task_add_data_in_buffer(t, (int)ip->block_size, dst) == 0) {
            struct icmd *rb = icmd_new(ip, ICMD_CAW_READBACK, t);
            if (rb) {
                rb->io = io;
                rb->owned = rb->bounce = bb;
                rb->bounce_len = bb ? ip->block_size : 0;
                icmd_free(c);
                ipath_dispatch(ip, rb);
                return;
            }
        }
        if (t)
            scsi_free_scsi_task(t);
        free(bb);
    }

    struct isplit *sp = c->split;
    icmd_free(c);
    if (sp) {
        if (result < 0 && sp->result == 0) {
            sp->result = result;
            sp->sense_key = key;
            sp->asc = asc;
            sp->ascq = ascq;
        }
        if (--sp->remaining > 0)
            return;
        result = sp->result;
        key = sp->sense_key;
        asc = sp->asc;
        ascq = sp->ascq;
        free(sp);
    }
    io->sense_key = key;
    io->asc = asc;
    io->ascq = ascq;
    io->done(io, result);
}

/* Mark the session gone (loop thread). Logged once. */
static void ipath_set_dead(struct ipath *ip, int err, const char *why)
{
    pthread_mutex_lock(&ip->lock);
    bool first = ip->dead == 0;
    if (first)
        ip->dead = err;
    pthread_mutex_unlock(&ip->lock);
    if (first)
        log_err("%s: iSCSI session lost: %s; failing I/O with %s", ip->base.name,
                why && *why ? why : "connection closed", strerror(-err));
}

static void icmd_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    struct icmd *c = opaque;
    struct ipath *ip = c->ip;
    uint8_t key, asc, ascq;
    int rc;

    inflight_del(c);
    if (status != SCSI_STATUS_CANCELLED && status != SCSI_STATUS_TIMEOUT &&
        status != SCSI_STATUS_ERROR) {
        ip->nop_heard_ns = ip->loop_now_ns; /* the target answered: alive */
        ip->nop_reported = false;
    }
    if (status == SCSI_STATUS_CANCELLED) {
        if (c->timed_out) {
            rc = -ETIMEDOUT;
        } else {
            rc = -ENOTCONN;
            char e[256];
            iscsi_error_copy(iscsi, e, sizeof(e));
            ipath_set_dead(ip, -ENOTCONN, e);
        }
        key = asc = ascq = 0;
    } else {
        rc = task_result(status, c->task, &key, &asc, &ascq);
    }
    icmd_complete(c, rc, key, asc, ascq);
}

/* Hand one command to libiscsi (loop thread). */
static void ipath_dispatch(struct ipath *ip, struct icmd *c)
{
    int dead;
    pthread_mutex_lock(&ip->lock);
    dead = ip->dead;
    pthread_mutex_unlock(&ip->lock);
    if (dead) {
        icmd_complete(c, dead, 0, 0, 0);
        return;
    }
    /* The loop's clock, read after its last poll: one clock read per
     * wakeup, not per command. It only grows, so the in-flight list stays
     * in deadline order. */
    c->sent_ns = ip->loop_now_ns;
    c->deadline_ns = ip->loop_now_ns + (uint64_t)ip->timeout_ms * 1000000ULL;
    if (c->io && c->io->deadline_ns) {
        /* min(timeout, time left to the I/O's deadline); the deadline is
         * CLOCK_BOOTTIME, the loop runs on CLOCK_MONOTONIC. */
        uint64_t bt = boottime_ns();
        uint64_t left = c->io->deadline_ns > bt ? c->io->deadline_ns - bt : 0;
        if (ip->loop_now_ns + left < c->deadline_ns)
            c->deadline_ns = ip->loop_now_ns + left;
    }
    ip->out_pdus += c->task->xfer_dir == SCSI_XFER_WRITE ? 2 : 1;
    inflight_add(ip, c);
    if (iscsi_scsi_command_async(ip->iscsi, ip->lun_nr, c->task, icmd_cb, NULL, c) != 0) {
        inflight_del(c);
        char e[256];
        iscsi_error_copy(ip->iscsi, e, sizeof(e));
        log_err("%s: cannot queue SCSI command 0x%02x: %s", ip->base.name, c->task->cdb[0], e);
        icmd_complete(c, -ENOTCONN, 0, 0, 0);
    }
}

/* Queue commands for the loop (any thread). The chain c..last is linked
 * through ->next. Returns -ENOTCONN (nothing queued) if the path is gone. */
static int ipath_enqueue(struct ipath *ip, struct icmd *first, struct icmd *last)
{
    bool wake;
    pthread_mutex_lock(&ip->lock);
    if (ip->dead || ip->stopping || ip->closing) {
        int err = ip->dead ? ip->dead : ip->closing ? -ENOTCONN : -ESHUTDOWN;
        pthread_mutex_unlock(&ip->lock);
        return err;
    }
    if (ip->thread_started && pthread_equal(pthread_self(), ip->thread)) {
        /* Submitted from a completion callback on the loop thread: hand
         * it to libiscsi now, no queue and no wakeup. */
        pthread_mutex_unlock(&ip->lock);
        for (struct icmd *c = first, *next; c; c = next) {
            next = c == last ? NULL : c->next;
            c->next = NULL;
            ipath_dispatch(ip, c);
        }
        return 0;
    }
    wake = ip->pend_head == NULL;
    last->next = NULL;
    if (ip->pend_tail)
        ip->pend_tail->next = first;
    else
        ip->pend_head = first;
    ip->pend_tail = last;
    pthread_mutex_unlock(&ip->lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t n = write(ip->efd, &one, sizeof(one));
        (void)n; /* a full counter still wakes the loop */
    }
    return 0;
}

/* ---- the loop ------------------------------------------------------------ */

static void nop_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    (void)iscsi;
    (void)command_data;
    struct ipath *ip = opaque;
    ip->nop_outstanding = false;
    if (status == SCSI_STATUS_GOOD) {
        ip->nop_heard_ns = now_ns();
        ip->nop_reported = false;
        ip->nop_answered++;
        ip->nop_miss_run = 0;
    }
}

/* NOP-Out pings (loop thread). A NOP-Out goes out every interval unless
 * the previous one is still unanswered (then the interval counts as a
 * miss). The target is alive while NOP-Ins, or answers to commands, keep
 * coming; once nothing has come for nop_max_missed intervals the path is
 * reported failed (fn). The last answer is at most one interval old when
 * a path goes silent, so it is found (max_missed - 1) to max_missed
 * intervals after that, with or without I/O. Returns the poll timeout (ms)
 * until the next event. */
static int ipath_nop_run(struct ipath *ip, lun_path_report_fn fn, void *opaque, int timeout)
{
    uint64_t now = now_ns(), ivl = (uint64_t)ip->nop_interval_ms * 1000000;
    uint64_t silence = ivl * ip->nop_max_missed;
    if (!ip->nop_next_ns) {
        ip->nop_next_ns = now;
        ip->nop_heard_ns = now;
    }
    if (now >= ip->nop_next_ns) {
        if (ip->nop_outstanding) {
            ip->nop_missed_total++;
            ip->nop_miss_run++;
        } else if (iscsi_nop_out_async(ip->iscsi, nop_cb, NULL, 0, ip) == 0)
            ip->nop_outstanding = true;
        ip->nop_next_ns = now + ivl;
    }
    if (now - ip->nop_heard_ns >= silence) {
        char why[128];
        snprintf(why, sizeof why, "no NOP-In for %llu ms (pings every %u ms unanswered)",
                 (unsigned long long)((now - ip->nop_heard_ns) / 1000000), ip->nop_interval_ms);
        if (!ip->nop_reported)
            log_err("%s: %s", ip->base.name, why);
        if (ip->nop_outstanding && ip->nop_miss_run == 0) {
            /* The silence ran out just before the interval did: the
             * unanswered NOP-Out is a miss all the same. */
            ip->nop_missed_total++;
            ip->nop_miss_run++;
        }
        ip->nop_reported = true;
        fn(opaque, &ip->base, why);
        ip->nop_heard_ns = now - silence + ivl; /* report again an interval later if still silent */
    }
    uint64_t next = MIN(ip->nop_next_ns, ip->nop_heard_ns + silence);
    int until = next <= now ? 0 : (int)((next - now + 999999) / 1000000);
    return MIN(timeout, until);
}

/* Close the connection so that nothing more we queued can leave: RST
 * instead of FIN (SO_LINGER 0), which also drops what the kernel still
 * holds unsent. libiscsi's PDUs stay in its lists, never sent; the dead
 * handling of the loop fails their commands (loop thread). */
static void ipath_disconnect_now(struct ipath *ip)
{
    int fd = iscsi_get_fd(ip->iscsi);
    if (fd >= 0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        iscsi_disconnect(ip->iscsi);
    }
}

/* Complete an I/O whose deadline passed before libiscsi let go of its
 * command: the command keeps its own copy of the data (build_rw, submit)
 * and lives on as an orphan until the session ends. Single commands only. */
static void icmd_detach(struct icmd *c, int result)
{
    if (c->kind == ICMD_SYNC) {
        /* The waiter gets its answer now; the task (its data-out is the
         * command's own copy, its data-in libiscsi's) stays with us. */
        struct isync *sy = c->sync;
        c->sync = NULL;
        c->kind = ICMD_ORPHAN;
        pthread_mutex_lock(&sy->lock);
        sy->result = result;
        sy->orphaned = true;
        sy->done = true;
        pthread_cond_signal(&sy->cond);
        pthread_mutex_unlock(&sy->lock);
        return;
    }
    struct lun_io *io = c->io;
    if (!io || !io->deadline_ns || c->split || c->kind == ICMD_ORPHAN)
        return;
    if (c->kind == ICMD_IO && !c->owned && io->op != LUN_OP_FLUSH)
        return; /* its data is still the caller's */
    if (c->kind == ICMD_CAW_READBACK && !c->bounce)
        return;
    c->io = NULL;
    c->kind = ICMD_ORPHAN;
    io->sense_key = io->asc = io->ascq = 0;
    io->done(io, result);
}

/* Start tearing the session down (loop thread): no new commands; the
 * engine is told through its reporter. */
static void ipath_closing_start(struct ipath *ip, lun_path_report_fn report, void *opaque,
                                const char *why)
{
    pthread_mutex_lock(&ip->lock);
    bool first = !ip->closing;
    ip->closing = true;
    pthread_mutex_unlock(&ip->lock);
    if (!first)
        return;
    ip->td_state = TD_DRAIN;
    ip->closing_since_ns = ip->loop_now_ns;
    if (report)
        report(opaque, &ip->base, why);
}

/* Commands past their deadline (loop thread). No command is cancelled on
 * its own while the connection lives: iscsi_scsi_cancel_task removes only
 * the command PDU and leaves its Data-Out PDUs queued, pointing at the
 * freed task and the caller's buffer, and a half-sent PDU would leave the
 * next one starting mid-frame (issue 15 item 2). A timeout ends the
 * session instead:
 *  - engine path (the core installed a reporter): I/Os with a deadline
 *    complete now with -ETIMEDOUT (their data is the command's own copy),
 *    the core fails the path, and the session is torn down with
 *    confirmation (ipath_teardown_run); every other command completes when
 *    the teardown knows nothing of this session can still land;
 *  - plain path: the connection is closed at once (RST), then every
 *    command fails: -ETIMEDOUT for the expired ones, -ENOTCONN for the
 *    others; later commands fail with -ENOTCONN. */
static void ipath_expire(struct ipath *ip, uint64_t now, lun_path_report_fn report, void *opaque)
{
    struct icmd *first = NULL;
    for (struct icmd *c = ip->inflight.next, *next; c != &ip->inflight; c = next) {
        next = c->next;
        if (c->deadline_ns > now)
            break; /* in deadline order */
        if (c->timed_out)
            continue;
        c->timed_out = true;
        if (!first)
            first = c;
        if (c->deadline_ns < c->sent_ns + (uint64_t)ip->timeout_ms * 1000000ULL)
            log_err("%s: SCSI command 0x%02x timed out after %llu ms (its I/O's deadline)",
                    ip->base.name, c->task->cdb[0],
                    (unsigned long long)((now - c->sent_ns) / 1000000));
        else
            log_err("%s: SCSI command 0x%02x timed out after %u ms", ip->base.name, c->task->cdb[0],
                    ip->timeout_ms);
        if (report)
            icmd_detach(c, -ETIMEDOUT);
    }
    if (!first)
        return;
    char why[96];
    snprintf(why, sizeof why, "SCSI command 0x%02x timed out", first->task->cdb[0]);
    if (report) {
        ipath_closing_start(ip, report, opaque, why);
    } else {
        ipath_disconnect_now(ip);
        ipath_set_dead(ip, -ENOTCONN, why);
    }
}

static void tmf_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    (void)iscsi;
    struct ipath *ip = opaque;
    uint32_t response = command_data ? *(uint32_t *)command_data : 0xFFu;
    if (status == SCSI_STATUS_GOOD && response == ISCSI_TMR_FUNC_COMPLETE) {
        ip->td_confirmed = true;
    } else if (status != SCSI_STATUS_CANCELLED) {
        log_err("%s: ABORT TASK SET not done (status 0x%x, response %u): waiting for every "
                "command of the session to be answered instead",
                ip->base.name, status, response);
    }
}

/* Finish the teardown (loop thread): nothing this session sent can still
 * land. Close the connection, fail what libiscsi still holds (-ENOTCONN:
 * dropped, or done without our hearing it), wake the waiter of abort. */
static void ipath_teardown_finish(struct ipath *ip, const char *how)
{
    ip->td_state = TD_DONE;
    ipath_disconnect_now(ip);
    pthread_mutex_lock(&ip->lock);
    if (!ip->dead)
        ip->dead = -ENOTCONN;
    pthread_mutex_unlock(&ip->lock);
    while (ip->inflight.next != &ip->inflight) {
        struct icmd *c = ip->inflight.next;
        iscsi_scsi_cancel_task(ip->iscsi, c->task);
        if (ip->inflight.next == c) {
            inflight_del(c);
            icmd_complete(c, -ENOTCONN, 0, 0, 0);
        }
    }
    log_info("%s: session torn down after %llu ms: %s", ip->base.name,
             (unsigned long long)((ip->loop_now_ns - ip->closing_since_ns) / 1000000), how);
    pthread_mutex_lock(&ip->lock);
    ip->known = true;
    pthread_cond_broadcast(&ip->known_cond);
    pthread_mutex_unlock(&ip->lock);
}

/* Teardown with confirmation (loop thread, while closing). Before a
 * write that timed out may be re-issued elsewhere, the target must be
 * known to have dropped (or done) everything this session sent:
 *  1. nothing new is queued (ipath_enqueue refuses), and the loop waits
 *     until libiscsi's out-queue is empty: every PDU of ours is on the
 *     wire, none is left behind to be sent after the next one;
 *  2. ABORT TASK SET goes out on the session (through iscsi_task_mgmt_async,
 *     which, unlike iscsi_task_mgmt_abort_task_set_async, cancels nothing
 *     locally). It is the last PDU of the connection: the target answers it
 *     after every command before it is done or aborted (RFC 7143 11.5.1;
 *     tgt answers once aborted commands have finished);
 *  3. the answer (FUNCTION COMPLETE), or an answer to every command, or
 *     the target closing the connection, ends the teardown.
 * A silent connection (a frozen link) stays open until one of these
 * happens: closing it ourselves would not stop the target from executing
 * what is still on its way (tgt does not reinstate sessions); the core
 * keeps the path's writes back meanwhile. */
static void ipath_teardown_run(struct ipath *ip, int dead)
{
    if (ip->td_state == TD_DONE)
        return;
    if (ip->td_state == TD_NONE) { /* started by ops->abort, not by a timeout */
        ip->td_state = TD_DRAIN;
        ip->closing_since_ns = ip->loop_now_ns;
    }
    if (ip->inflight.next == &ip->inflight) {
        ipath_teardown_finish(ip, "every command answered");
        return;
    }
    if (dead) {
        /* The connection ended (reset or closed by the other end): the
         * target's side of it is gone, and with it (ErrorRecoveryLevel 0)
         * the session and its tasks; nothing more can arrive through it. */
        ipath_teardown_finish(ip, "the connection ended");
        return;
    }
    if (ip->td_confirmed) {
        ipath_teardown_finish(ip, "ABORT TASK SET answered");
        return;
    }
    pthread_mutex_lock(&ip->lock);
    bool reinstated = ip->td_reinstated;
    pthread_mutex_unlock(&ip->lock);
    if (reinstated) {
        ipath_teardown_finish(ip, "the target reinstated the session through another portal");
        return;
    }
    if (ip->td_state == TD_DRAIN && iscsi_out_queue_length(ip->iscsi) == 0) {
        if (iscsi_task_mgmt_async(ip->iscsi, ip->lun_nr, ISCSI_TM_ABORT_TASK_SET, 0xFFFFFFFFu, 0,
                                  tmf_cb, ip) == 0) {
            ip->td_state = TD_TMF_SENT;
            log_info("%s: ABORT TASK SET sent before re-issuing the session's commands",
                     ip->base.name);
        }
    }
}

/* TCP_CORK on (1) or off (0, which sends what is held). A failure only
 * costs segments: ignored. */
static void ipath_cork(struct ipath *ip, int fd, int on)
{
    if (setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on)) < 0 && on)
        ip->cork = false; /* not a TCP socket after all: stop trying */
}

static void *ipath_loop(void *arg)
{
    struct ipath *ip = arg;

    ip->loop_now_ns = now_ns();
    for (;;) {
        pthread_mutex_lock(&ip->lock);
        struct icmd *q = ip->pend_head;
        ip->pend_head = ip->pend_tail = NULL;
        bool stopping = ip->stopping;
        bool closing = ip->closing;
        bool abort_writes = ip->abort_writes;
        ip->abort_writes = false;
        int dead = ip->dead;
        lun_path_report_fn report = ip->report;
        void *report_opaque = ip->report_opaque;
        pthread_mutex_unlock(&ip->lock);

        while (q) {
            struct icmd *next = q->next;
            q->next = NULL;
            ipath_dispatch(ip, q);
            q = next;
        }
        if (abort_writes && !closing && !dead) {
            /* This host fenced itself: its writes in flight must not land
             * later. No single task can be cancelled safely, so the session
             * ends, with confirmation, if it carries a write. */
            for (struct icmd *c = ip->inflight.next; c != &ip->inflight; c = c->next)
                if (c->task->xfer_dir == SCSI_XFER_WRITE && c->kind != ICMD_SYNC) {
                    ipath_closing_start(ip, report, report_opaque,
                                        "this host fenced itself: ending the session that "
                                        "carries its writes");
                    closing = true;
                    break;
                }
        }
        if (stopping && closing && ip->td_state != TD_DONE)
            ipath_teardown_finish(ip, "given up: the path is being closed");
        if (stopping && ip->inflight.next == &ip->inflight)
            break;

        int timeout = ISCSI_IDLE_POLL_MS;
        if (closing) {
            timeout = 50; /* the teardown polls the out-queue and the answers */
        } else if (ip->inflight.next != &ip->inflight) {
            /* The earliest deadline not yet handled. */
            struct icmd *h = ip->inflight.next;
            while (h != &ip->inflight && h->timed_out)
                h = h->next;
            if (h != &ip->inflight) {
                uint64_t now = now_ns(), dl = h->deadline_ns;
                timeout = dl <= now ? 0
                                    : (int)MIN((dl - now + 999999) / 1000000,
                                               (uint64_t)ISCSI_IDLE_POLL_MS);
            }
        }
        if (report && !dead && !stopping && !closing && ip->nop_interval_ms != LUN_NOP_OFF)
            timeout = ipath_nop_run(ip, report, report_opaque, timeout);
        struct pollfd pfd[2] = {{.fd = ip->efd, .events = POLLIN}, {.fd = -1}};
        if (!dead) {
            pfd[1].fd = iscsi_get_fd(ip->iscsi);
            pfd[1].events = (short)iscsi_which_events(ip->iscsi);
            if (pfd[1].events == 0 || pfd[1].fd < 0) {
                pfd[1].fd = -1;
                timeout = MIN(timeout, 100);
            }
        }
        int n = poll(pfd, 2, timeout);
        if (n < 0 && errno != EINTR) {
            log_err("%s: poll failed: %s", ip->base.name, strerror(errno));
            break;
        }
        ip->loop_now_ns = now_ns();
        if (n > 0 && (pfd[0].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(ip->efd, &v, sizeof(v));
            (void)r;
        }
        if (!dead && pfd[1].fd >= 0 && n > 0 && pfd[1].revents) {
            /* Several PDUs to send (a WRITE is two: header, then data
             * from the caller's buffer): cork the socket so they leave in
             * as few TCP segments as the sizes allow, not one per send. */
            bool cork = ip->cork && (pfd[1].revents & POLLOUT) && ip->out_pdus >= 2;
            if (cork)
                ipath_cork(ip, pfd[1].fd, 1);
            int src = iscsi_service(ip->iscsi, pfd[1].revents);
            /* Uncork (send what is held) unless libiscsi closed the socket:
             * the number may already name someone else's. */
            if (cork && src >= 0 && iscsi_get_fd(ip->iscsi) == pfd[1].fd)
                ipath_cork(ip, pfd[1].fd, 0);
            if (src < 0) {
                char e[256];
                iscsi_error_copy(ip->iscsi, e, sizeof(e));
                ipath_set_dead(ip, -ENOTCONN, e);
            }
            if (pfd[1].revents & POLLOUT)
                ip->out_pdus = 0;
        }
        pthread_mutex_lock(&ip->lock);
        dead = ip->dead;
        closing = ip->closing;
        pthread_mutex_unlock(&ip->lock);
        if (closing) {
            if (!dead) /* deadline I/Os and synchronous commands still complete on time */
                ipath_expire(ip, ip->loop_now_ns, report, report_opaque);
            ipath_teardown_run(ip, dead);
        } else if (dead) {
            /* Nothing will answer: fail what libiscsi still holds. */
            while (ip->inflight.next != &ip->inflight) {
                struct icmd *c = ip->inflight.next;
                iscsi_scsi_cancel_task(ip->iscsi, c->task);
                if (ip->inflight.next == c) {
                    inflight_del(c);
                    icmd_complete(c, c->timed_out ? -ETIMEDOUT : dead, 0, 0, 0);
                }
            }
        } else {
            ipath_expire(ip, ip->loop_now_ns, report, report_opaque);
        }
    }
    return NULL;
}

/* ---- synchronous commands ------------------------------------------------- */

/* Run `task` through the loop and wait. On return the caller owns the task
 * (status, sense, datain) and must free it. */
static int ipath_sync_task(struct ipath *ip, struct scsi_task *task, void *owned, bool *orphaned,
                           uint8_t *key, uint8_t *asc, uint8_t *ascq)
{
    struct isync s = {.done = false};
    *orphaned = false;
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    struct icmd *c = icmd_new(ip, ICMD_SYNC, task);
    int rc;
    if (!c) {
        free(owned);
        rc = -ENOMEM;
        goto out;
    }
    c->sync = &s;
    c->owned = owned;
    rc = ipath_enqueue(ip, c, c);
    if (rc < 0) {
        c->task = NULL;
        icmd_free(c);
        goto out;
    }
    pthread_mutex_lock(&s.lock);
    while (!s.done)
        pthread_cond_wait(&s.cond, &s.lock);
    rc = s.result;
    *orphaned = s.orphaned;
    pthread_mutex_unlock(&s.lock);
out:
    pthread_mutex_destroy(&s.lock);
    pthread_cond_destroy(&s.cond);
    uint8_t k = 0, a = 0, q = 0;
    if (rc < 0 && !*orphaned && task->status == SCSI_STATUS_CHECK_CONDITION) {
        k = (uint8_t)task->sense.key;
        a = (uint8_t)(task->sense.ascq >> 8);
        q = (uint8_t)task->sense.ascq;
    }
    if (key)
        *key = k;
    if (asc)
        *asc = a;
    if (ascq)
        *ascq = q;
    return rc;
}

/* A synchronous command from a raw CDB. data_out (len out_len) is sent;
 * data in (up to in_len) is left in the returned task (*taskp, caller
 * frees) when taskp is not NULL. */
static int ipath_sync_cdb_once(struct ipath *ip, const uint8_t *cdb, int cdb_len, int dir,
                               void *data_out, int out_len, int in_len, struct scsi_task **taskp,
                               uint8_t *key, uint8_t *asc, uint8_t *ascq)
{
    struct scsi_task *t = scsi_create_task(cdb_len, (unsigned char *)cdb, dir,
                                           dir == SCSI_XFER_WRITE ? out_len : in_len);
    if (!t)
        return -ENOMEM;
    /* The command's own copy of its data-out: a timed-out command may
     * outlive the caller's frame (icmd_detach). */
    void *copy = NULL;
    if (data_out) {
        copy = malloc((size_t)out_len);
        if (!copy || scsi_task_add_data_out_buffer(t, out_len, copy) != 0) {
            free(copy);
            scsi_free_scsi_task(t);
            return -ENOMEM;
        }
        memcpy(copy, data_out, (size_t)out_len);
    }
    bool orphaned;
    int rc = ipath_sync_task(ip, t, copy, &orphaned, key, asc, ascq);
    if (orphaned)
        return rc; /* the task lives on with the path */
    if (taskp && rc == 0)
        *taskp = t;
    else
        scsi_free_scsi_task(t);
    return rc;
}

/* A synchronous command, retried while the target answers UNIT ATTENTION
 * (power on / reset after another initiator's LUN RESET, REPORTED LUNS
 * CHANGED, RESERVATIONS RELEASED, ...: the command was not executed), so
 * the probe's VPD reads, PR IN / OUT and TEST UNIT READY do not fail, or
 * yield a fallback identity, because of one. 2A/03 and 2A/05 (we were
 * preempted) are answers, not retried. */
static int ipath_sync_cdb(struct ipath *ip, const uint8_t *cdb, int cdb_len, int dir,
                          void *data_out, int out_len, int in_len, struct scsi_task **taskp,
                          uint8_t *key, uint8_t *asc, uint8_t *ascq)
{
    uint8_t k = 0, a = 0, q = 0;
    int rc = 0;
    for (int tries = 0; tries < ISCSI_MAX_UA_RETRIES; tries++) {
        rc = ipath_sync_cdb_once(ip, cdb, cdb_len, dir, data_out, out_len, in_len, taskp, &k, &a,
                                 &q);
        if (rc == 0 || k != LUN_SK_UNIT_ATTENTION || (a == 0x2A && (q == 0x03 || q == 0x05)))
            break;
        log_debug("%s: SCSI command 0x%02x: UNIT ATTENTION %02x/%02x, retrying", ip->base.name,
                  cdb[0], a, q);
    }
    if (key)
        *key = k;
    if (asc)
        *asc = a;
    if (ascq)
        *ascq = q;
    return rc;
}

static int ipath_inquiry(struct ipath *ip, int evpd, int page, int alloc, struct scsi_task **tp)
{
    uint8_t cdb[6] = {0x12, (uint8_t)(evpd ? 1 : 0), (uint8_t)page, 0, 0, 0};
    be16_put(cdb + 3, (uint16_t)alloc);
    return ipath_sync_cdb(ip, cdb, 6, SCSI_XFER_READ, NULL, 0, alloc, tp, NULL, NULL, NULL);
}

/* ---- open / login ----------------------------------------------------------- */

struct login_state {
    bool done;
    int status;
    char error[256]; /* libiscsi's message when the callback ran */
};

static void login_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    struct login_state *ls = opaque;
    if (ls->done)
        return; /* the second invocation (connection torn down) */
    ls->done = true;
    ls->status = status;
    if (status != SCSI_STATUS_GOOD)
        iscsi_error_copy(iscsi, ls->error, sizeof(ls->error));
}

/* The errno and a short reason for a failed login, from libiscsi's text. */
static int login_error(const char *err, const char **reason)
{
    const char *num = err ? strrchr(err, '(') : NULL;
    if (err && strstr(err, "Failed to log in to target. Status:") && num) {
        long code = strtol(num + 1, NULL, 10);
        switch (code) {
        case 0x0201:
            *reason = "CHAP authentication failed (wrong user or password)";
            return -EACCES;
        case 0x0202:
            *reason = "initiator not authorized for this target";
            return -EACCES;
        case 0x0203:
        case 0x0204:
            *reason = "no such target on this portal (check the target IQN)";
            return -ENOENT;
        default:
            *reason = "login refused by target";
            return -EACCES;
        }
    }
    if (err && (strstr(err, "CHAP") || strstr(err, "uthentication"))) {
        *reason = "CHAP authentication failed";
        return -EACCES;
    }
    if (err && strstr(err, strerror(ECONNREFUSED))) {
        *reason = "connection refused by portal (no iSCSI target listening)";
        return -ECONNREFUSED;
    }
    if (err && (strstr(err, strerror(EHOSTUNREACH)) || strstr(err, strerror(ENETUNREACH)))) {
        *reason = "portal unreachable";
        return -EHOSTUNREACH;
    }
    if (err && (strstr(err, "getaddrinfo") || strstr(err, "resolve"))) {
        *reason = "cannot resolve portal address";
        return -EHOSTUNREACH;
    }
    *reason = "connection failed";
    return -ECONNREFUSED;
}

/* TCP connected (or not): send the login. */
static void connect_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    struct login_state *ls = opaque;
    if (ls->done)
        return;
    if (status != SCSI_STATUS_GOOD) {
        login_cb(iscsi, status, command_data, opaque);
        return;
    }
    if (iscsi_login_async(iscsi, login_cb, ls) != 0)
        login_cb(iscsi, SCSI_STATUS_ERROR, NULL, opaque);
}

/* Connect and log in, bounded by connect_timeout_ms. Opener thread.
 * iscsi_connect_async + iscsi_login_async rather than
 * iscsi_full_connect_async: the latter allocates a state that leaks when
 * the context is destroyed before the login completes (our timeout). */
static int ipath_login(struct ipath *ip, unsigned connect_timeout_ms)
{
    struct login_state ls = {0};
    uint64_t deadline = deadline_after_ms(connect_timeout_ms);

    if (iscsi_connect_async(ip->iscsi, ip->portal, connect_cb, &ls) != 0) {
        const char *reason;
        iscsi_error_copy(ip->iscsi, ls.error, sizeof(ls.error));
        int rc = login_error(ls.error, &reason);
        log_err("%s: %s (%s)", ip->base.name, reason, ls.error);
        return rc;
    }
    while (!ls.done) {
        uint64_t now = now_ns();
        if (now >= deadline) {
            log_err("%s: login timed out after %u ms (portal %s not answering)", ip->base.name,
                    connect_timeout_ms, ip->portal);
            return -ETIMEDOUT;
        }
        struct pollfd pfd = {.fd = iscsi_get_fd(ip->iscsi),
                             .events = (short)iscsi_which_events(ip->iscsi)};
        int timeout = (int)MIN((deadline - now + 999999) / 1000000, 100u);
        if (pfd.fd < 0 || pfd.events == 0) {
            poll(NULL, 0, timeout);
            continue;
        }
        int n = poll(&pfd, 1, timeout);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0 && iscsi_service(ip->iscsi, pfd.revents) < 0 && !ls.done) {
            ls.done = true;
            ls.status = SCSI_STATUS_ERROR;
            iscsi_error_copy(ip->iscsi, ls.error, sizeof(ls.error));
        }
    }
    if (ls.status != SCSI_STATUS_GOOD) {
        const char *reason;
        int rc = login_error(ls.error, &reason);
        log_err("%s: %s (%s)", ip->base.name, reason, ls.error);
        return rc;
    }
    return 0;
}

/* After login: TEST UNIT READY until the power-on UAs are consumed, and
 * make sure the LUN exists. */
static int ipath_check_lun(struct ipath *ip)
{
    uint8_t cdb[6] = {0};
    uint8_t key, asc, ascq;
    int rc = 0;
    for (int i = 0; i < ISCSI_MAX_UA_RETRIES; i++) {
        rc = ipath_sync_cdb(ip, cdb, 6, SCSI_XFER_NONE, NULL, 0, 0, NULL, &key, &asc, &ascq);
        if (rc == 0 || key != LUN_SK_UNIT_ATTENTION)
            break;
    }
    if (rc == -ENODEV) {
        log_err("%s: LUN %d does not exist on target %s (05/25/00 LOGICAL UNIT NOT SUPPORTED)",
                ip->base.name, ip->lun_nr, ip->target);
        return -ENOENT;
    }
    if (rc == -EBADE)
        rc = 0; /* reserved by someone else: still a usable path */
    if (rc < 0 && rc != -EIO) {
        char sb[LUN_SENSE_STR_MAX];
        log_err("%s: TEST UNIT READY failed: %s (%s)", ip->base.name, strerror(-rc),
                lun_sense_str(key, asc, ascq, sb, sizeof(sb)));
        return rc;
    }
    /* Peripheral qualifier 3 = no LUN here (some targets answer TUR anyway). */
    struct scsi_task *t = NULL;
    rc = ipath_inquiry(ip, 0, 0, 96, &t);
    if (rc < 0) {
        log_err("%s: INQUIRY failed: %s", ip->base.name, strerror(-rc));
        return rc == -ENODEV ? -ENOENT : rc;
    }
    int pq = t->datain.size > 0 ? t->datain.data[0] >> 5 : 3;
    scsi_free_scsi_task(t);
    if (pq == 3) {
        log_err("%s: LUN %d does not exist on target %s (peripheral qualifier 3)", ip->base.name,
                ip->lun_nr, ip->target);
        return -ENOENT;
    }
    return 0;
}

static void ipath_free(struct ipath *ip)
{
    if (ip->iscsi)
        iscsi_destroy_context(ip->iscsi);
    if (ip->efd >= 0)
        close(ip->efd);
    pthread_mutex_destroy(&ip->lock);
    pthread_cond_destroy(&ip->known_cond);
    free(ip->base.name);
    free(ip);
}

static void ipath_stop(struct ipath *ip)
{
    if (!ip->thread_started)
        return;
    pthread_mutex_lock(&ip->lock);
    ip->stopping = true;
    pthread_mutex_unlock(&ip->lock);
    uint64_t one = 1;
    ssize_t n = write(ip->efd, &one, sizeof(one));
    (void)n;
    pthread_join(ip->thread, NULL);
    ip->thread_started = false;
}

int lun_path_open_iscsi(const char *uri, const struct lun_options *opts, struct lun_path **out)
{
    return lun_path_open_iscsi_isid(uri, opts, 0, out);
}

int lun_path_open_iscsi_isid(const char *uri, const struct lun_options *opts, uint64_t isid_seed,
                             struct lun_path **out)
{
    struct lun_options defaults;
    if (!opts) {
        lun_options_init(&defaults);
        opts = &defaults;
    }
    *out = NULL;

    struct ipath *ip = calloc(1, sizeof(*ip));
    if (!ip)
        return -ENOMEM;
    ip->efd = -1;
    ip->cork = true;
    pthread_mutex_init(&ip->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ip->known_cond, &ca);
    pthread_condattr_destroy(&ca);
    ip->inflight.next = ip->inflight.prev = &ip->inflight;
    ip->base.ops = &iscsi_path_ops;
    ip->base.priv = ip;
    ip->base.name = lun_uri_redact(uri);
    ip->timeout_ms = opts->timeout_ms ? opts->timeout_ms : ISCSI_DEFAULT_TIMEOUT_MS;
    ip->nop_interval_ms = opts->nop_interval_ms ? opts->nop_interval_ms : ISCSI_NOP_INTERVAL_MS;
    ip->nop_max_missed = opts->nop_max_missed ? opts->nop_max_missed : ISCSI_NOP_MAX_MISSED;
    unsigned connect_ms =
        opts->connect_timeout_ms ? opts->connect_timeout_ms : ISCSI_DEFAULT_TIMEOUT_MS;
    int rc;
    if (!ip->base.name) {
        rc = -ENOMEM;
        goto fail;
    }

    char initiator[256];
    if (opts->initiator_name && *opts->initiator_name) {
        snprintf(initiator, sizeof(initiator), "%s", opts->initiator_name);
    } else {
        char host[128] = "localhost";
        if (opts->host_name && *opts->host_name)
            snprintf(host, sizeof(host), "%s", opts->host_name);
        else if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "localhost");
        host[sizeof(host) - 1] = 0;
        snprintf(initiator, sizeof(initiator), "iqn.2026-11.org.clusterfs:%s", host);
    }

    ip->iscsi = iscsi_create_context(initiator);
    if (!ip->iscsi) {
        log_err("%s: cannot create iSCSI context for initiator %s", ip->base.name, initiator);
        rc = -ENOMEM;
        goto fail;
    }
    struct iscsi_url *url = iscsi_parse_full_url(ip->iscsi, uri);
    if (!url) {
        /* libiscsi's own text repeats the URI, password included: not used. */
        log_err("%s: malformed iSCSI URI (expected iscsi://[user[%%password]@]host[:port]/"
                "target-iqn/lun)",
                ip->base.name);
        rc = -EINVAL;
        goto fail;
    }
    snprintf(ip->target, sizeof(ip->target), "%s", url->target);
    snprintf(ip->portal, sizeof(ip->portal), "%s", url->portal);
    ip->lun_nr = url->lun;
    bool chap_ok = true;
    if (url->user[0])
        chap_ok = iscsi_set_initiator_username_pwd(ip->iscsi, url->user, url->passwd) == 0;
    if (chap_ok && url->target_user[0])
        chap_ok =
            iscsi_set_target_username_pwd(ip->iscsi, url->target_user, url->target_passwd) == 0;
    iscsi_destroy_url(url);
    if (!chap_ok) {
        log_err("%s: bad CHAP credentials (user or password too long?)", ip->base.name);
        rc = -EINVAL;
        goto fail;
    }

    iscsi_set_targetname(ip->iscsi, ip->target);
    iscsi_set_session_type(ip->iscsi, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(ip->iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    iscsi_set_noautoreconnect(ip->iscsi, 1);
    iscsi_set_reconnect_max_retries(ip->iscsi, 0);
    iscsi_set_tcp_syncnt(ip->iscsi, 2);

    uint64_t h = 0xcbf29ce484222325ULL;
    h = fnv1a(h, initiator, strlen(initiator));
    if (!isid_seed) /* a slot's ISID is the same through any portal (reinstatement) */
        h = fnv1a(h, ip->portal, strlen(ip->portal));
    h = fnv1a(h, ip->target, strlen(ip->target));
    h = fnv1a(h, &ip->lun_nr, sizeof(ip->lun_nr));
    if (isid_seed) {
        /* The LUN's path slot: the same ISID at every reconnect. */
        h = fnv1a(h, &isid_seed, sizeof(isid_seed));
    } else {
        static atomic_uint open_count;
        unsigned nth = atomic_fetch_add(&open_count, 1);
        pid_t pid = getpid();
        h = fnv1a(h, &pid, sizeof(pid));
        h = fnv1a(h, &nth, sizeof(nth));
    }
    iscsi_set_isid_random(ip->iscsi, (uint32_t)(h & 0xffffff), (uint32_t)((h >> 24) & 0xffff));

    rc = ipath_login(ip, connect_ms);
    if (rc < 0)
        goto fail;

    ip->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ip->efd < 0) {
        rc = -errno;
        log_err("%s: eventfd: %s", ip->base.name, strerror(errno));
        goto fail;
    }
    rc = pthread_create(&ip->thread, NULL, ipath_loop, ip);
    if (rc != 0) {
        log_err("%s: cannot start the path thread: %s", ip->base.name, strerror(rc));
        rc = -rc;
        goto fail;
    }
    ip->thread_started = true;

    rc = ipath_check_lun(ip);
    if (rc < 0)
        goto fail;

    log_debug("%s: logged in as %s", ip->base.name, initiator);
    *out = &ip->base;
    return 0;

fail:
    ipath_stop(ip);
    ipath_free(ip);
    return rc;
}

static void iscsi_path_close(struct lun_path *p)
{
    struct ipath *ip = p->priv;
    ipath_stop(ip);
    /* The loop has exited and in-flight is empty: a bounded logout. */
    int dead;
    pthread_mutex_lock(&ip->lock);
    dead = ip->dead;
    pthread_mutex_unlock(&ip->lock);
    if (!dead && iscsi_is_logged_in(ip->iscsi)) {
        struct login_state ls = {0};
        if (iscsi_logout_async(ip->iscsi, login_cb, &ls) == 0) {
            uint64_t deadline = deadline_after_ms(1000);
            while (!ls.done && now_ns() < deadline) {
                struct pollfd pfd = {.fd = iscsi_get_fd(ip->iscsi),
                                     .events = (short)iscsi_which_events(ip->iscsi)};
                if (pfd.fd < 0 || pfd.events == 0)
                    break;
                int n = poll(&pfd, 1, 100);
                if (n > 0 && iscsi_service(ip->iscsi, pfd.revents) < 0)
                    break;
            }
        }
    }
    iscsi_disconnect(ip->iscsi);
    ipath_free(ip);
}

/* ---- probe ------------------------------------------------------------------- */

struct rsoc_result {
    bool valid;
    bool caw, pr_in, pr_out, pr_preempt_abort, ws16, unmap, sync16, sync10, read16, write16;
};

/* Parse REPORT SUPPORTED OPERATION CODES, "all commands" format. */
static void rsoc_parse(const uint8_t *d, size_t size, struct rsoc_result *r)
{
    memset(r, 0, sizeof(*r));
    if (size < 4)
        return;
    size_t len = MIN((size_t)be32_get(d) + 4, size);
    r->valid = true;
    for (size_t off = 4; off + 8 <= len;) {
        const uint8_t *e = d + off;
        switch (e[0]) {
        case 0x89:
            r->caw = true;
            break;
        case 0x5E:
            r->pr_in = true;
            break;
        case 0x5F:
            r->pr_out = true;
            /* tgt answers the one-command form of RSOC as "supported" for any
             * service action but lists only those it implements. */
            if ((e[5] & 0x01) && be16_get(e + 2) == LUN_PR_ACT_PREEMPT_ABORT)
                r->pr_preempt_abort = true;
            break;
        case 0x93:
            r->ws16 = true;
            break;
        case 0x42:
            r->unmap = true;
            break;
        case 0x91:
            r->sync16 = true;
            break;
        case 0x35:
            r->sync10 = true;
            break;
        case 0x88:
            r->read16 = true;
            break;
        case 0x8A:
            r->write16 = true;
            break;
        default:
            break;
        }
        off += 8 + ((e[5] & 0x02) ? 12 : 0); /* CTDP: a timeouts descriptor follows */
    }
}

static void probe_rsoc(struct ipath *ip, struct rsoc_result *r)
{
    memset(r, 0, sizeof(*r));
    uint8_t cdb[12] = {0xA3, 0x0C, 0};
    uint32_t alloc = 16384;
    be32_put(cdb + 6, alloc);
    struct scsi_task *t = NULL;
    if (ipath_sync_cdb(ip, cdb, 12, SCSI_XFER_READ, NULL, 0, (int)alloc, &t, NULL, NULL, NULL) < 0)
        return;
    rsoc_parse(t->datain.data, (size_t)t->datain.size, r);
    scsi_free_scsi_task(t);
}

static void probe_designator(const uint8_t *d, size_t len, char *out, size_t outlen)
{
    /* Best designator of association "logical unit": NAA > EUI-64 > T10. */
    int best = 0;
    for (size_t off = 4; off + 4 <= len;) {
        const uint8_t *e = d + off;
        size_t dl = e[3];
        if (off + 4 + dl > len)
            break;
        int codeset = e[0] & 0x0f, assoc = (e[1] >> 4) & 0x3, type = e[1] & 0x0f;
        int rank = 0;
        if (assoc == 0) {
            if (type == 3)
                rank = 3;
            else if (type == 2)
                rank = 2;
            else if (type == 1)
                rank = 1;
        }
        if (rank > best) {
            best = rank;
            const uint8_t *v = e + 4;
            if (type == 1 || codeset == 2 || codeset == 3) {
                char txt[LUN_ID_MAX];
                trim_copy(txt, sizeof(txt), v, dl);
                for (char *p = txt; *p; p++)
                    if (*p == ' ')
                        *p = '_';
                const char *pfx = type == 1 ? "t10." : type == 2 ? "eui." : "naa.";
                size_t pl = strlen(pfx);
                memcpy(out, pfx, pl + 1);
                snprintf(out + pl, outlen - pl, "%.*s", (int)(outlen - pl - 1), txt);
            } else {
                size_t n = (size_t)snprintf(out, outlen, "%s.", type == 2 ? "eui" : "naa");
                for (size_t i = 0; i < dl && n + 3 <= outlen; i++)
                    n += (size_t)snprintf(out + n, outlen - n, "%02x", v[i]);
            }
        }
        off += 4 + dl;
    }
}

static int iscsi_path_probe(struct lun_path *p, struct lun_info *info)
{
    struct ipath *ip = p->priv;
    struct scsi_task *t = NULL;
    int rc;
    bool pages[256] = {false};

    memset(info, 0, sizeof(*info));

    /* Standard INQUIRY. */
    rc = ipath_inquiry(ip, 0, 0, 96, &t);
    if (rc < 0) {
        log_err("%s: INQUIRY failed: %s", p->name, strerror(-rc));
        return rc;
    }
    if (t->datain.size >= 36) {
        trim_copy(info->vendor, sizeof(info->vendor), t->datain.data + 8, 8);
        trim_copy(info->product, sizeof(info->product), t->datain.data + 16, 16);
        trim_copy(info->revision, sizeof(info->revision), t->datain.data + 32, 4);
    }
    scsi_free_scsi_task(t);

    /* VPD 0x00: supported pages. */
    if (ipath_inquiry(ip, 1, 0x00, 255, &t) == 0) {
        const uint8_t *d = t->datain.data;
        if (t->datain.size >= 4) {
            size_t n = MIN((size_t)d[3], (size_t)t->datain.size - 4);
            for (size_t i = 0; i < n; i++)
                pages[d[4 + i]] = true;
        }
        scsi_free_scsi_task(t);
    }
    if (pages[0x80] && ipath_inquiry(ip, 1, 0x80, 255, &t) == 0) {
        if (t->datain.size >= 4)
            trim_copy(info->serial, sizeof(info->serial), t->datain.data + 4,
                      MIN((size_t)t->datain.data[3], (size_t)t->datain.size - 4));
        scsi_free_scsi_task(t);
    }
    if (pages[0x83] && ipath_inquiry(ip, 1, 0x83, 1024, &t) == 0) {
        if (t->datain.size >= 4)
            probe_designator(t->datain.data,
                             MIN((size_t)be16_get(t->datain.data + 2) + 4, (size_t)t->datain.size),
                             info->id, sizeof(info->id));
        scsi_free_scsi_task(t);
    }
    if (!info->id[0]) {
        if (info->serial[0])
            snprintf(info->id, sizeof(info->id), "serial.%.8s.%.200s", info->vendor, info->serial);
        else
            snprintf(info->id, sizeof(info->id), "iscsi.%.200s.%d", ip->target, ip->lun_nr);
    }
    uint32_t max_ws = 0;
    unsigned max_caw = 0; /* Block Limits: MAXIMUM COMPARE AND WRITE LENGTH */
    if (pages[0xB0] && ipath_inquiry(ip, 1, 0xB0, 64, &t) == 0) {
        const uint8_t *d = t->datain.data;
        if (t->datain.size >= 6)
            max_caw = d[5];
        if (t->datain.size >= 28) {
            info->max_transfer_blocks = be32_get(d + 8);
            info->max_unmap_blocks = be32_get(d + 20);
        }
        if (t->datain.size >= 44)
            max_ws = (uint32_t)MIN(be64_get(d + 36), (uint64_t)UINT32_MAX);
        scsi_free_scsi_task(t);
    }
    (void)max_ws;
    bool lbpu = false, lbpws = false;
    if (pages[0xB2] && ipath_inquiry(ip, 1, 0xB2, 64, &t) == 0) {
        if (t->datain.size >= 6) {
            lbpu = t->datain.data[5] & 0x80;
            lbpws = t->datain.data[5] & 0x40;
        }
        scsi_free_scsi_task(t);
    }

    /* READ CAPACITY(16). */
    {
        uint8_t cdb[16] = {0x9E, 0x10};
        be32_put(cdb + 10, 32);
        uint8_t key, asc, ascq;
        rc = ipath_sync_cdb(ip, cdb, 16, SCSI_XFER_READ, NULL, 0, 32, &t, &key, &asc, &ascq);
        if (rc < 0 || t->datain.size < 14) {
            if (rc == 0)
                scsi_free_scsi_task(t);
            char sb[LUN_SENSE_STR_MAX];
            log_err("%s: READ CAPACITY(16) failed: %s (%s)", p->name, strerror(rc < 0 ? -rc : EIO),
                    lun_sense_str(key, asc, ascq, sb, sizeof(sb)));
            return rc < 0 ? rc : -EIO;
        }
        const uint8_t *d = t->datain.data;
        info->num_blocks = be64_get(d) + 1;
        info->block_size = be32_get(d + 8);
        info->physical_block_size = info->block_size << (d[13] & 0x0f);
        bool lbpme = d[14] & 0x80;
        scsi_free_scsi_task(t);
        if (!lbpme)
            lbpu = lbpws = false;
    }
    if (info->block_size != 512 && info->block_size != 4096) {
        log_err("%s: unsupported logical block size %u (expected 512 or 4096)", p->name,
                info->block_size);
        return -EOPNOTSUPP;
    }

    /* What the target implements: REPORT SUPPORTED OPERATION CODES. */
    struct rsoc_result r;
    probe_rsoc(ip, &r);
    struct lun_caps *caps = &info->caps;
    ip->rsoc = r.valid;
    /* COMPARE AND WRITE: a target with RSOC lists what it implements (tgt
     * fills MAXIMUM COMPARE AND WRITE LENGTH in VPD 0xB0 but answers the
     * opcode with INVALID COMMAND OPERATION CODE, and does not list it);
     * one without RSOC (istgt) is taken at its Block Limits page, the way
     * SBC-3 and ESXi detect ATS. */
    if (r.valid) {
        caps->compare_and_write = r.caw;
        caps->unmap = r.unmap && lbpu;
        caps->write_same = r.ws16;
        caps->write_same_unmap = r.ws16 && lbpws;
        caps->sync_cache = r.sync16 || r.sync10;
        ip->have_sync16 = r.sync16;
    } else {
        /* No RSOC: COMPARE AND WRITE from the Block Limits page only;
         * trust VPD 0xB2 for unmap; learn SYNCHRONIZE CACHE by trying it. */
        caps->compare_and_write = max_caw > 0;
        caps->unmap = lbpu;
        caps->write_same_unmap = lbpws;
        caps->write_same = lbpws;
        uint8_t c16[16] = {0x91};
        uint8_t c10[10] = {0x35};
        if (ipath_sync_cdb(ip, c16, 16, SCSI_XFER_NONE, NULL, 0, 0, NULL, NULL, NULL, NULL) == 0) {
            caps->sync_cache = ip->have_sync16 = true;
        } else if (ipath_sync_cdb(ip, c10, 10, SCSI_XFER_NONE, NULL, 0, 0, NULL, NULL, NULL,
                                  NULL) == 0) {
            caps->sync_cache = true;
        }
    }

    /* Persistent reservations: REPORT CAPABILITIES answers both "is PR
     * there" and "which types". */
    {
        uint8_t cdb[10] = {0x5E, 0x02};
        be16_put(cdb + 7, 8);
        rc = ipath_sync_cdb(ip, cdb, 10, SCSI_XFER_READ, NULL, 0, 8, &t, NULL, NULL, NULL);
        if (rc == 0) {
            caps->persistent_reservations = true;
            const uint8_t *d = t->datain.data;
            if (t->datain.size >= 6 && (d[3] & 0x80)) /* TMV: type mask valid */
                caps->pr_we_all_registrants = d[4] & 0x80;
            else
                caps->pr_we_all_registrants = true; /* SPC-3 targets without a mask */
            scsi_free_scsi_task(t);
        } else if (r.valid && r.pr_in && r.pr_out) {
            caps->persistent_reservations = true;
            caps->pr_we_all_registrants = true;
        }
        if (caps->persistent_reservations && r.valid)
            caps->pr_preempt_abort = r.pr_preempt_abort;
    }

    /* FUA: DPOFUA bit of the MODE SENSE device-specific parameter. */
    {
        uint8_t cdb[6] = {0x1A, 0x08, 0x3F, 0, 255, 0};
        rc = ipath_sync_cdb(ip, cdb, 6, SCSI_XFER_READ, NULL, 0, 255, &t, NULL, NULL, NULL);
        if (rc == 0) {
            if (t->datain.size >= 3)
                caps->fua = t->datain.data[2] & 0x10;
            scsi_free_scsi_task(t);
        } else if (rc == -EBADE) {
            /* tgt refuses MODE SENSE to a nexus that is not registered
             * under another's reservation (a reconnected path, before it
             * re-registers): we cannot tell. */
            info->caps_unknown.fua = true;
        }
    }

    ip->block_size = info->block_size;
    ip->max_xfer_blocks = info->max_transfer_blocks;
    ip->max_unmap_blocks = info->max_unmap_blocks;
    ip->have_caw = caps->compare_and_write;
    return 0;
}

/* ---- data commands --------------------------------------------------------------- */

/* Build the command(s) for one lun_io. Returns the chain in *first .. *last. */
static int build_rw(struct ipath *ip, struct lun_io *io, bool write, struct icmd **first,
                    struct icmd **last)
{
    uint32_t bs = ip->block_size;
    uint32_t chunk = ip->max_xfer_blocks ? ip->max_xfer_blocks : io->nblocks;
    unsigned n = (unsigned)DIV_ROUND_UP(io->nblocks, chunk);
    struct isplit *sp = NULL;
    if (n > 1) {
        sp = calloc(1, sizeof(*sp));
        if (!sp)
            return -ENOMEM;
        sp->remaining = n;
    }
    *first = *last = NULL;
    uint8_t *buf = io->buf;
    for (uint32_t done = 0; done < io->nblocks;) {
        uint32_t nb = MIN(chunk, io->nblocks - done);
        uint64_t lba = io->lba + done;
        size_t len = (size_t)nb * bs;
        struct scsi_task *t;
        int fua = write && (io->flags & LUN_IO_FUA);
        if (write)
            t = scsi_cdb_write16(lba, (uint32_t)len, (int)bs, 0, 0, fua, 0, 0);
        else
            t = scsi_cdb_read16(lba, (uint32_t)len, (int)bs, 0, 0, 0, 0, 0);
        struct icmd *c = t ? icmd_new(ip, ICMD_IO, t) : NULL;
        uint8_t *data = buf + (size_t)done * bs;
        if (c && io->deadline_ns && n == 1) {
            /* An I/O with a deadline can be completed to its caller
             * before libiscsi lets go of the command (ipath_expire): the
             * command gets its own copy of the data. */
            c->owned = malloc(len);
            if (c->owned) {
                if (write)
                    memcpy(c->owned, data, len);
                else
                    c->bounce = c->owned, c->bounce_len = len;
                data = c->owned;
            }
        }
        if (!c || (io->deadline_ns && n == 1 && !c->owned) ||
            (write ? scsi_task_add_data_out_buffer(t, (int)len, data)
                   : scsi_task_add_data_in_buffer(t, (int)len, data)) != 0) {
            if (c)
                icmd_free(c);
            else if (t)
                scsi_free_scsi_task(t);
            while (*first) {
                struct icmd *nx = (*first)->next;
                icmd_free(*first);
                *first = nx;
            }
            free(sp);
            return -ENOMEM;
        }
        c->io = io;
        c->split = sp;
        if (*last)
            (*last)->next = c;
        else
            *first = c;
        *last = c;
        done += nb;
    }
    return 0;
}

static int build_unmap(struct ipath *ip, struct lun_io *io, struct icmd **first)
{
    /* One UNMAP with as many 16-byte descriptors as the per-descriptor
     * limit needs (max 4096 descriptors keeps the list under 64 KiB). */
    uint32_t per = ip->max_unmap_blocks ? ip->max_unmap_blocks : UINT32_MAX;
    uint32_t ndesc = (uint32_t)DIV_ROUND_UP((uint64_t)io->nblocks, per);
    if (ndesc > 4095)
        return -EINVAL;
    size_t plen = 8 + (size_t)ndesc * 16;
    uint8_t *pl = calloc(1, plen);
    if (!pl)
        return -ENOMEM;
    be16_put(pl, (uint16_t)(plen - 2));
    be16_put(pl + 2, (uint16_t)(ndesc * 16));
    uint64_t lba = io->lba;
    uint32_t left = io->nblocks;
    for (uint32_t i = 0; i < ndesc; i++) {
        uint32_t nb = MIN(left, per);
        be64_put(pl + 8 + i * 16, lba);
        be32_put(pl + 8 + i * 16 + 8, nb);
        lba += nb;
        left -= nb;
    }
    uint8_t cdb[10] = {0x42};
    be16_put(cdb + 7, (uint16_t)plen);
    struct scsi_task *t = scsi_create_task(10, cdb, SCSI_XFER_WRITE, (int)plen);
    struct icmd *c = t ? icmd_new(ip, ICMD_IO, t) : NULL;
    if (!c || scsi_task_add_data_out_buffer(t, (int)plen, pl) != 0) {
        if (c)
            icmd_free(c);
        else if (t)
            scsi_free_scsi_task(t);
        free(pl);
        return -ENOMEM;
    }
    c->owned = pl;
    c->io = io;
    *first = c;
    return 0;
}

static int iscsi_path_submit(struct lun_path *p, struct lun_io *io)
{
    struct ipath *ip = p->priv;
    struct icmd *first = NULL, *last = NULL;
    struct scsi_task *t = NULL;
    uint32_t bs = ip->block_size;
    uint8_t *owned = NULL; /* a single command's own copy of the data (deadline I/O) */
    int rc;

    io->sense_key = io->asc = io->ascq = 0;
    switch (io->op) {
    case LUN_OP_READ:
    case LUN_OP_WRITE:
        if (io->nblocks == 0)
            return -EINVAL;
        rc = build_rw(ip, io, io->op == LUN_OP_WRITE, &first, &last);
        if (rc < 0)
            return rc;
        break;
    case LUN_OP_FLUSH: {
        if (ip->have_sync16) {
            uint8_t cdb[16] = {0x91};
            t = scsi_create_task(16, cdb, SCSI_XFER_NONE, 0);
        } else {
            uint8_t cdb[10] = {0x35};
            t = scsi_create_task(10, cdb, SCSI_XFER_NONE, 0);
        }
        break;
    }
    case LUN_OP_UNMAP:
        if (io->nblocks == 0)
            return -EINVAL;
        rc = build_unmap(ip, io, &first);
        if (rc < 0)
            return rc;
        last = first;
        break;
    case LUN_OP_WRITE_SAME: {
        uint8_t cdb[16] = {0x93, (uint8_t)((io->flags & LUN_IO_UNMAP) ? 0x08 : 0)};
        be64_put(cdb + 2, io->lba);
        be32_put(cdb + 10, io->nblocks);
        t = scsi_create_task(16, cdb, SCSI_XFER_WRITE, (int)bs);
        if (io->deadline_ns && t) {
            owned = malloc(bs);
            if (owned)
                memcpy(owned, io->buf, bs);
        }
        if (t && ((io->deadline_ns && !owned) ||
                  scsi_task_add_data_out_buffer(t, (int)bs, owned ? owned : io->buf) != 0)) {
            scsi_free_scsi_task(t);
            free(owned);
            return -ENOMEM;
        }
        break;
    }
    case LUN_OP_COMPARE_AND_WRITE: {
        if (!ip->have_caw) {
            log_err("%s: COMPARE AND WRITE not supported by the target (not in REPORT "
                    "SUPPORTED OPERATION CODES, no MAXIMUM COMPARE AND WRITE LENGTH in VPD 0xB0)",
                    p->name);
            return -EOPNOTSUPP;
        }
        uint8_t cdb[16] = {0x89};
        be64_put(cdb + 2, io->lba);
        cdb[13] = 1;
        t = scsi_create_task(16, cdb, SCSI_XFER_WRITE, (int)(2 * bs));
        if (io->deadline_ns && t) {
            owned = malloc(2 * (size_t)bs);
            if (owned)
                memcpy(owned, io->buf, 2 * (size_t)bs);
        }
        if (t && ((io->deadline_ns && !owned) ||
                  scsi_task_add_data_out_buffer(t, (int)(2 * bs), owned ? owned : io->buf) != 0)) {
            scsi_free_scsi_task(t);
            free(owned);
            return -ENOMEM;
        }
        break;
    }
    default:
        return -EINVAL;
    }
    if (!first) {
        if (!t)
            return -ENOMEM;
        first = last = icmd_new(ip, ICMD_IO, t);
        if (!first) {
            scsi_free_scsi_task(t);
            free(owned);
            return -ENOMEM;
        }
        first->owned = owned;
        first->io = io;
        first->is_caw = io->op == LUN_OP_COMPARE_AND_WRITE;
    }
    rc = ipath_enqueue(ip, first, last);
    if (rc < 0) {
        struct isplit *sp = first->split;
        while (first) {
            struct icmd *nx = first->next;
            icmd_free(first);
            first = nx;
        }
        free(sp);
    }
    return rc;
}

/* ---- persistent reservations and TUR ------------------------------------------------ */

static const char *pr_action_name(enum lun_pr_action a)
{
    switch (a) {
    case LUN_PR_ACT_REGISTER_IGNORE:
        return "REGISTER AND IGNORE EXISTING KEY";
    case LUN_PR_ACT_RESERVE:
        return "RESERVE";
    case LUN_PR_ACT_RELEASE:
        return "RELEASE";
    case LUN_PR_ACT_CLEAR:
        return "CLEAR";
    case LUN_PR_ACT_PREEMPT:
        return "PREEMPT";
    case LUN_PR_ACT_PREEMPT_ABORT:
        return "PREEMPT AND ABORT";
    }
    return "?";
}

static int iscsi_path_pr_out(struct lun_path *p, enum lun_pr_action action, uint64_t key,
                             uint64_t sa_key, enum lun_pr_type type)
{
    struct ipath *ip = p->priv;
    uint8_t params[24] = {0};
    uint8_t cdb[10] = {0x5F, (uint8_t)action, (uint8_t)(type & 0x0f)};
    be32_put(cdb + 5, sizeof(params));
    be64_put(params, key);
    be64_put(params + 8, sa_key);
    uint8_t k, a, q;
    int rc =
        ipath_sync_cdb(ip, cdb, 10, SCSI_XFER_WRITE, params, sizeof(params), 0, NULL, &k, &a, &q);
    if (rc < 0) {
        char sb[LUN_SENSE_STR_MAX];
        log_err(
            "%s: PERSISTENT RESERVE OUT %s (key 0x%llx, sa key 0x%llx, type %d) failed: %s%s%s%s",
            p->name, pr_action_name(action), (unsigned long long)key, (unsigned long long)sa_key,
            (int)type, strerror(-rc), k ? " (" : "",
            k ? lun_sense_str(k, a, q, sb, sizeof(sb)) : "", k ? ")" : "");
        if (rc == -EINVAL && k == LUN_SK_ILLEGAL_REQUEST && action == LUN_PR_ACT_PREEMPT_ABORT)
            rc = -EOPNOTSUPP;
    }
    return rc;
}

static int iscsi_path_pr_in(struct lun_path *p, struct lun_pr_state *out)
{
    struct ipath *ip = p->priv;
    struct scsi_task *t = NULL;
    uint16_t alloc = 8 + 8 * LUN_PR_MAX_KEYS;
    uint8_t cdb[10] = {0x5E, 0x00};
    be16_put(cdb + 7, alloc);
    memset(out, 0, sizeof(*out));
    int rc = ipath_sync_cdb(ip, cdb, 10, SCSI_XFER_READ, NULL, 0, alloc, &t, NULL, NULL, NULL);
    if (rc < 0) {
        log_err("%s: PERSISTENT RESERVE IN READ KEYS failed: %s", p->name, strerror(-rc));
        return rc;
    }
    const uint8_t *d = t->datain.data;
    if (t->datain.size >= 8) {
        out->generation = be32_get(d);
        size_t len = MIN((size_t)be32_get(d + 4), (size_t)t->datain.size - 8);
        for (size_t off = 0; off + 8 <= len && out->nkeys < LUN_PR_MAX_KEYS; off += 8)
            out->keys[out->nkeys++] = be64_get(d + 8 + off);
    }
    scsi_free_scsi_task(t);

    uint8_t cdb2[10] = {0x5E, 0x01};
    be16_put(cdb2 + 7, 24);
    rc = ipath_sync_cdb(ip, cdb2, 10, SCSI_XFER_READ, NULL, 0, 24, &t, NULL, NULL, NULL);
    if (rc < 0) {
        log_err("%s: PERSISTENT RESERVE IN READ RESERVATION failed: %s", p->name, strerror(-rc));
        return rc;
    }
    d = t->datain.data;
    if (t->datain.size >= 22 && be32_get(d + 4) >= 16) {
        out->reserved = true;
        out->holder_key = be64_get(d + 8);
        out->type = (enum lun_pr_type)(d[21] & 0x0f);
        if (out->type == LUN_PR_WE_ALL_REGISTRANTS || out->type == LUN_PR_EA_ALL_REGISTRANTS)
            out->holder_key = 0;
    }
    scsi_free_scsi_task(t);
    return 0;
}

static int iscsi_path_test_unit_ready(struct lun_path *p)
{
    struct ipath *ip = p->priv;
    uint8_t cdb[6] = {0};
    return ipath_sync_cdb(ip, cdb, 6, SCSI_XFER_NONE, NULL, 0, 0, NULL, NULL, NULL, NULL);
}

/* Multipath teardown (path.h ops->abort; the core's checker thread): stop
 * taking commands and tear the session down with confirmation (see
 * ipath_teardown_run). Returns 0 once nothing this session sent can still
 * land (every command has completed, most with -ENOTCONN, and the
 * connection is closed), -EINPROGRESS if that is not known within
 * `wait_ms` (a silent link): the core calls again later. */
static int iscsi_path_abort(struct lun_path *p, unsigned wait_ms)
{
    struct ipath *ip = p->priv;
    pthread_mutex_lock(&ip->lock);
    bool start = !ip->closing && !ip->known;
    if (start)
        ip->closing = true;
    pthread_mutex_unlock(&ip->lock);
    uint64_t one = 1;
    ssize_t n = write(ip->efd, &one, sizeof(one)); /* the loop starts the teardown */
    (void)n;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += wait_ms / 1000;
    ts.tv_nsec += (long)(wait_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&ip->lock);
    while (!ip->known && ip->thread_started &&
           pthread_cond_timedwait(&ip->known_cond, &ip->lock, &ts) == 0)
        ;
    bool known = ip->known || !ip->thread_started;
    pthread_mutex_unlock(&ip->lock);
    if (!known)
        return -EINPROGRESS;
    ipath_stop(ip);
    return 0;
}

/* path.h ops->abort_writes (lun_fence_self). */
static void iscsi_path_abort_writes(struct lun_path *p)
{
    struct ipath *ip = p->priv;
    pthread_mutex_lock(&ip->lock);
    ip->abort_writes = true;
    pthread_mutex_unlock(&ip->lock);
    uint64_t one = 1;
    ssize_t n = write(ip->efd, &one, sizeof(one));
    (void)n;
}

/* path.h ops->reinstated: a login with this path's ISID through another
 * portal succeeded on a target that reinstates sessions (RFC 7143): the
 * target has closed this session and dropped its tasks. */
static void iscsi_path_reinstated(struct lun_path *p)
{
    struct ipath *ip = p->priv;
    pthread_mutex_lock(&ip->lock);
    ip->td_reinstated = true;
    pthread_mutex_unlock(&ip->lock);
    uint64_t one = 1;
    ssize_t n = write(ip->efd, &one, sizeof(one));
    (void)n;
}

static void iscsi_path_set_report(struct lun_path *p, lun_path_report_fn fn, void *opaque)
{
    struct ipath *ip = p->priv;
    pthread_mutex_lock(&ip->lock);
    ip->report = fn;
    ip->report_opaque = opaque;
    pthread_mutex_unlock(&ip->lock);
    uint64_t one = 1;
    ssize_t n = write(ip->efd, &one, sizeof(one)); /* start pinging now */
    (void)n;
}

static void iscsi_path_ping_stats(const struct lun_path *p, uint64_t *answered, uint64_t *missed)
{
    const struct ipath *ip = p->priv;
    *answered = ip->nop_answered;
    *missed = ip->nop_missed_total;
}

static const struct lun_path_ops iscsi_path_ops = {
    .kind = "iscsi",
    .set_report = iscsi_path_set_report,
    .ping_stats = iscsi_path_ping_stats,
    .abort = iscsi_path_abort,
    .reinstated = iscsi_path_reinstated,
    .abort_writes = iscsi_path_abort_writes,
    .probe = iscsi_path_probe,
    .submit = iscsi_path_submit,
    .pr_out = iscsi_path_pr_out,
    .pr_in = iscsi_path_pr_in,
    .test_unit_ready = iscsi_path_test_unit_ready,
    .close = iscsi_path_close,
};
