/* The fault-injecting path (see fault.h for what it can do).
 *
 * Design notes
 * ------------
 * - A path like any other (ops->kind "fault") that wraps an inner path, so
 *   the LUN core, its retries and its range checks run unchanged above it:
 *   faults are a layer, not #ifdefs in production code (nbdkit's error and
 *   delay filters, littlefs's emulated block device).
 * - Each command passed down gets its own inner lun_io (struct fault_io):
 *   the core's lun_io keeps priv[0..2] for the core and priv[3..5] belong to
 *   the path directly below the core -- us -- so the inner path needs a
 *   lun_io of its own. The data buffer is shared, except for held writes,
 *   which are copied (the caller has been told they are done).
 * - Reordering models a volatile write cache: plain writes are acknowledged
 *   at once and kept (newest first) until K are held or a command that must
 *   see them arrives (flush, FUA write, read, unmap, write same, CAW); they
 *   are then issued newest first, and the draining thread waits for them
 *   before its own command goes down. A power cut forgets held writes.
 * - Power cut: once `cut_after` writes have been issued to the inner path,
 *   later writes are dropped and acknowledged. Reads still go to the medium
 *   (which no longer sees the dropped writes: the test's "host" is dead, its
 *   reads do not matter). lun_fault_restart() waits until nothing is in
 *   flight, then closes and reopens the inner path.
 * - Delay: the inner completion sleeps D ms before passing the result up
 *   (on the inner path's completion thread).
 *
 * Locking: fp->lock protects every field below it in struct lun_fault; it
 * is never held while calling the inner path or a completion.
 */
#include "fault.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "path.h"
#include "sense.h"

struct fault_io {
    struct lun_io inner;
    struct lun_io *outer; /* the core's I/O; NULL for a held write */
    struct lun_fault *f;
    struct fault_drain *drain; /* held writes: who waits for them */
    uint8_t *copy;             /* held writes: our copy of the data */
    uint64_t seq;              /* submission order */
    struct fault_io *next;     /* held list, newest first */
};

struct fault_drain {
    pthread_mutex_t m;
    pthread_cond_t c;
    unsigned pending;
};

struct lun_fault {
    struct lun_path path;
    char *inner_uri;         /* immutable */
    struct lun_options opts; /* immutable; strings point to the copies below */
    char *host_name, *initiator_name;

    pthread_mutex_t lock;   /* protects everything below */
    pthread_cond_t idle;    /* inflight or held_draining dropped to 0 */
    struct lun_path *inner; /* NULL while restarting or after a failed restart */
    unsigned inflight;      /* commands issued to inner, not completed */

    unsigned read_nth, read_seen;
    int read_err;
    uint8_t read_sense[3];
    unsigned write_nth, write_seen;
    bool write_sticky;
    int write_err;
    uint8_t write_sense[3];

    bool cut_armed, cut;
    unsigned cut_after, cut_issued;

    unsigned delay_ms;
    unsigned reorder_k;
    struct fault_io *held; /* newest first */
    unsigned nheld;
    unsigned held_draining; /* held writes taken for issue, not completed */

    uint32_t bs;           /* from the inner probe */
    uint32_t max_transfer; /* immutable: claimed limit, 0 = inner's */
    uint64_t seq, max_issued_seq;
    struct lun_fault_stats st;
};

static bool fault_op_modifies(enum lun_op op)
{
    return op == LUN_OP_WRITE || op == LUN_OP_UNMAP || op == LUN_OP_WRITE_SAME ||
           op == LUN_OP_COMPARE_AND_WRITE;
}

static const char *fault_op_name(enum lun_op op)
{
    switch (op) {
    case LUN_OP_READ:
        return "read";
    case LUN_OP_WRITE:
        return "write";
    case LUN_OP_FLUSH:
        return "flush";
    case LUN_OP_UNMAP:
        return "unmap";
    case LUN_OP_WRITE_SAME:
        return "write-same";
    case LUN_OP_COMPARE_AND_WRITE:
        return "compare-and-write";
    }
    return "?";
}

static void fault_held_done(struct lun_fault *f, struct fault_drain *d);

static void fault_io_free(struct fault_io *fio)
{
    free(fio->copy);
    free(fio);
}

/* The inner path finished a command. */
static void fault_inner_done(struct lun_io *inner, int result)
{
    struct fault_io *fio = inner->opaque;
    struct lun_fault *f = fio->f;
    pthread_mutex_lock(&f->lock);
    unsigned delay = f->delay_ms;
    if (delay)
        f->st.delayed++;
    pthread_mutex_unlock(&f->lock);
    if (delay)
        usleep(delay * 1000u);
    if (fio->outer) {
        struct lun_io *o = fio->outer;
        o->sense_key = inner->sense_key;
        o->asc = inner->asc;
        o->ascq = inner->ascq;
        o->done(o, result);
    } else {
        if (result < 0)
            log_err("fault: %s: held write of %u blocks at lba %llu failed after it was "
                    "acknowledged: %s",
                    f->path.name, inner->nblocks, (unsigned long long)inner->lba,
                    strerror(-result));
        fault_held_done(f, fio->drain);
    }
    fault_io_free(fio);
    pthread_mutex_lock(&f->lock);
    if (--f->inflight == 0)
        pthread_cond_broadcast(&f->idle);
    pthread_mutex_unlock(&f->lock);
}

/* Complete a command that does not reach the medium. */
static void fault_complete(struct fault_io *fio, int result)
{
    if (fio->outer) {
        fio->outer->done(fio->outer, result);
    } else {
        fault_held_done(fio->f, fio->drain);
    }
    fault_io_free(fio);
}

/* Send one command down, or drop it if the power is cut. */
static void fault_issue(struct lun_fault *f, struct fault_io *fio)
{
    struct lun_io *in = &fio->inner;
    pthread_mutex_lock(&f->lock);
    if (fault_op_modifies(in->op)) {
        if (f->cut_armed && !f->cut && f->cut_issued >= f->cut_after)
            f->cut = true;
        if (f->cut) {
            f->st.dropped++;
            pthread_mutex_unlock(&f->lock);
            fault_complete(fio, 0);
            return;
        }
        f->cut_issued++;
        f->st.issued_writes++;
        if (fio->seq < f->max_issued_seq)
            f->st.reordered++;
        else
            f->max_issued_seq = fio->seq;
    }
    struct lun_path *inner = f->inner;
    if (!inner) {
        pthread_mutex_unlock(&f->lock);
        log_err("fault: %s: %s at lba %llu: the device is restarting", f->path.name,
                fault_op_name(in->op), (unsigned long long)in->lba);
        fault_complete(fio, -ENOTCONN);
        return;
    }
    f->inflight++;
    pthread_mutex_unlock(&f->lock);
    in->done = fault_inner_done;
    in->opaque = fio;
    int rc = inner->ops->submit(inner, in);
    if (rc < 0) {
        pthread_mutex_lock(&f->lock);
        if (--f->inflight == 0)
            pthread_cond_broadcast(&f->idle);
        pthread_mutex_unlock(&f->lock);
        fault_complete(fio, rc);
    }
}

/* Issue the held writes `list` (newest first) and wait for them. */
static void fault_drain_list(struct lun_fault *f, struct fault_io *list)
{
    if (!list)
        return;
    struct fault_drain d = {.pending = 0};
    pthread_mutex_init(&d.m, NULL);
    pthread_cond_init(&d.c, NULL);
    for (struct fault_io *x = list; x; x = x->next)
        d.pending++;
    while (list) {
        struct fault_io *x = list;
        list = x->next;
        x->drain = &d;
        fault_issue(f, x);
    }
    pthread_mutex_lock(&d.m);
    while (d.pending)
        pthread_cond_wait(&d.c, &d.m);
    pthread_mutex_unlock(&d.m);
    pthread_cond_destroy(&d.c);
    pthread_mutex_destroy(&d.m);
}

/* Detach the held list for issue (caller holds f->lock). */
static struct fault_io *fault_take_held(struct lun_fault *f)
{
    struct fault_io *list = f->held;
    f->held_draining += f->nheld;
    f->held = NULL;
    f->nheld = 0;
    return list;
}

/* A held write taken by fault_take_held() completed. */
static void fault_held_done(struct lun_fault *f, struct fault_drain *d)
{
    pthread_mutex_lock(&d->m);
    d->pending--;
    pthread_cond_signal(&d->c);
    pthread_mutex_unlock(&d->m);
    pthread_mutex_lock(&f->lock);
    if (--f->held_draining == 0)
        pthread_cond_broadcast(&f->idle);
    pthread_mutex_unlock(&f->lock);
}

static void fault_count(struct lun_fault *f, enum lun_op op)
{
    switch (op) {
    case LUN_OP_READ:
        f->st.reads++;
        break;
    case LUN_OP_WRITE:
        f->st.writes++;
        break;
    case LUN_OP_FLUSH:
        f->st.flushes++;
        break;
    case LUN_OP_UNMAP:
        f->st.unmaps++;
        break;
    case LUN_OP_WRITE_SAME:
        f->st.write_sames++;
        break;
    case LUN_OP_COMPARE_AND_WRITE:
        f->st.compare_and_writes++;
        break;
    }
}

static int fault_submit(struct lun_path *p, struct lun_io *io)
{
    struct lun_fault *f = p->priv;
    int inject = 0;
    unsigned nth = 0;
    uint8_t sense[3] = {0, 0, 0};

    pthread_mutex_lock(&f->lock);
    fault_count(f, io->op);
    if (io->op == LUN_OP_READ && f->read_nth) {
        nth = ++f->read_seen;
        if (nth == f->read_nth) {
            inject = f->read_err;
            memcpy(sense, f->read_sense, 3);
            f->read_nth = 0;
        }
    } else if (fault_op_modifies(io->op) && f->write_nth) {
        nth = ++f->write_seen;
        if (nth == f->write_nth || (f->write_sticky && nth > f->write_nth)) {
            inject = f->write_err;
            memcpy(sense, f->write_sense, 3);
            if (!f->write_sticky)
                f->write_nth = 0;
        }
    }
    if (inject) {
        f->st.injected++;
        unsigned delay = f->delay_ms;
        if (delay)
            f->st.delayed++;
        pthread_mutex_unlock(&f->lock);
        if (delay) /* an injected failure is late too, like every command */
            usleep(delay * 1000u);
        char sb[LUN_SENSE_STR_MAX] = "";
        if (sense[0] || sense[1] || sense[2])
            lun_sense_str(sense[0], sense[1], sense[2], sb, sizeof sb);
        log_err("fault: %s: injected failure of %s #%u at lba %llu: %s%s%s%s", f->path.name,
                io->op == LUN_OP_READ ? "read" : "write", nth, (unsigned long long)io->lba,
                strerror(-inject), sb[0] ? " (" : "", sb, sb[0] ? ")" : "");
        io->sense_key = sense[0];
        io->asc = sense[1];
        io->ascq = sense[2];
        io->done(io, inject);
        return 0;
    }

    struct fault_io *fio = calloc(1, sizeof *fio);
    if (!fio) {
        pthread_mutex_unlock(&f->lock);
        return -ENOMEM;
    }
    fio->f = f;
    fio->seq = ++f->seq;
    fio->inner = (struct lun_io){.op = io->op,
                                 .lba = io->lba,
                                 .nblocks = io->nblocks,
                                 .buf = io->buf,
                                 .flags = io->flags,
                                 .deadline_ns = io->deadline_ns};
    if (io->op == LUN_OP_WRITE && f->reorder_k && !(io->flags & LUN_IO_FUA)) {
        /* Hold it back (a copy: the caller may reuse its buffer once told
         * the write is done), acknowledge it now. */
        size_t len = (size_t)io->nblocks * f->bs;
        fio->copy = malloc(len);
        if (!fio->copy) {
            pthread_mutex_unlock(&f->lock);
            free(fio);
            return -ENOMEM;
        }
        memcpy(fio->copy, io->buf, len);
        fio->inner.buf = fio->copy;
        fio->next = f->held;
        f->held = fio;
        f->nheld++;
        f->st.held++;
        struct fault_io *list = f->nheld >= f->reorder_k ? fault_take_held(f) : NULL;
        pthread_mutex_unlock(&f->lock);
        io->done(io, 0);
        fault_drain_list(f, list);
        return 0;
    }
    /* Anything else must see the held writes first, including those
     * another thread is draining. */
    struct fault_io *list = fault_take_held(f);
    pthread_mutex_unlock(&f->lock);
    fault_drain_list(f, list);
    pthread_mutex_lock(&f->lock);
    while (f->held_draining)
        pthread_cond_wait(&f->idle, &f->lock);
    pthread_mutex_unlock(&f->lock);
    fio->outer = io;
    fault_issue(f, fio);
    return 0;
}

static int fault_probe(struct lun_path *p, struct lun_info *info)
{
    struct lun_fault *f = p->priv;
    int rc = f->inner->ops->probe(f->inner, info);
    if (rc == 0) {
        pthread_mutex_lock(&f->lock);
        f->bs = info->block_size;
        pthread_mutex_unlock(&f->lock);
        if (f->max_transfer)
            info->max_transfer_blocks = f->max_transfer;
    }
    return rc;
}

/* The inner path for a synchronous command, or NULL (logged) while down. */
static struct lun_path *fault_inner(struct lun_fault *f)
{
    pthread_mutex_lock(&f->lock);
    struct lun_path *in = f->inner;
    pthread_mutex_unlock(&f->lock);
    if (!in)
        log_err("fault: %s: the device is restarting", f->path.name);
    return in;
}

static int fault_pr_out(struct lun_path *p, enum lun_pr_action action, uint64_t key,
                        uint64_t sa_key, enum lun_pr_type type)
{
    struct lun_path *in = fault_inner(p->priv);
    return in ? in->ops->pr_out(in, action, key, sa_key, type) : -ENOTCONN;
}

static int fault_pr_in(struct lun_path *p, struct lun_pr_state *out)
{
    struct lun_path *in = fault_inner(p->priv);
    return in ? in->ops->pr_in(in, out) : -ENOTCONN;
}

static int fault_test_unit_ready(struct lun_path *p)
{
    struct lun_path *in = fault_inner(p->priv);
    return in ? in->ops->test_unit_ready(in) : -ENOTCONN;
}

/* Wait until nothing is in flight (caller holds f->lock). */
static void fault_wait_idle(struct lun_fault *f)
{
    while (f->inflight)
        pthread_cond_wait(&f->idle, &f->lock);
}

static void fault_close(struct lun_path *p)
{
    struct lun_fault *f = p->priv;
    pthread_mutex_lock(&f->lock);
    struct fault_io *list = fault_take_held(f);
    pthread_mutex_unlock(&f->lock);
    /* Closing is a clean shutdown: held writes reach the medium. */
    fault_drain_list(f, list);
    pthread_mutex_lock(&f->lock);
    fault_wait_idle(f);
    struct lun_path *in = f->inner;
    f->inner = NULL;
    pthread_mutex_unlock(&f->lock);
    lun_path_close(in);
    pthread_cond_destroy(&f->idle);
    pthread_mutex_destroy(&f->lock);
    free(f->inner_uri);
    free(f->host_name);
    free(f->initiator_name);
    free(f->path.name);
    free(f);
}

static const struct lun_path_ops fault_ops = {
    .kind = "fault",
    .probe = fault_probe,
    .submit = fault_submit,
    .pr_out = fault_pr_out,
    .pr_in = fault_pr_in,
    .test_unit_ready = fault_test_unit_ready,
    .close = fault_close,
};

int lun_open_fault(const char *inner_uri, const struct lun_options *opts, struct lun **out,
                   struct lun_fault **ctl)
{
    return lun_open_fault_max_transfer(inner_uri, opts, 0, out, ctl);
}

int lun_open_fault_max_transfer(const char *inner_uri, const struct lun_options *opts,
                                uint32_t max_transfer_blocks, struct lun **out,
                                struct lun_fault **ctl)
{
    struct lun_options defaults;
    *out = NULL;
    *ctl = NULL;
    if (!opts) {
        lun_options_init(&defaults);
        opts = &defaults;
    }
    struct lun_fault *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->idle, NULL);
    f->path.ops = &fault_ops;
    f->path.priv = f;
    f->max_transfer = max_transfer_blocks;
    f->opts = *opts;
    f->inner_uri = strdup(inner_uri ? inner_uri : "");
    f->host_name = opts->host_name ? strdup(opts->host_name) : NULL;
    f->initiator_name = opts->initiator_name ? strdup(opts->initiator_name) : NULL;
    f->opts.host_name = f->host_name;
    f->opts.initiator_name = f->initiator_name;
    int rc = -ENOMEM;
    if (!f->inner_uri)
        goto fail;
    rc = lun_path_open_uri(inner_uri, &f->opts, &f->inner);
    if (rc < 0)
        goto fail;
    f->path.name = strdup(f->inner->name);
    if (!f->path.name) {
        rc = -ENOMEM;
        goto fail;
    }
    struct lun_path *p = &f->path;
    rc = lun_open_with_paths(&p, 1, opts, out); /* closes f on failure */
    if (rc < 0)
        return rc;
    *ctl = f;
    return 0;
fail:
    fault_close(&f->path);
    return rc;
}

void lun_fault_fail_read(struct lun_fault *f, unsigned nth, int err, uint8_t key, uint8_t asc,
                         uint8_t ascq)
{
    pthread_mutex_lock(&f->lock);
    f->read_nth = nth;
    f->read_seen = 0;
    f->read_err = err < 0 ? err : -EIO;
    f->read_sense[0] = key;
    f->read_sense[1] = asc;
    f->read_sense[2] = ascq;
    pthread_mutex_unlock(&f->lock);
}

void lun_fault_fail_write(struct lun_fault *f, unsigned nth, bool sticky, int err, uint8_t key,
                          uint8_t asc, uint8_t ascq)
{
    pthread_mutex_lock(&f->lock);
    f->write_nth = nth;
    f->write_seen = 0;
    f->write_sticky = sticky;
    f->write_err = err < 0 ? err : -EIO;
    f->write_sense[0] = key;
    f->write_sense[1] = asc;
    f->write_sense[2] = ascq;
    pthread_mutex_unlock(&f->lock);
}

void lun_fault_power_cut(struct lun_fault *f, unsigned after_writes)
{
    pthread_mutex_lock(&f->lock);
    f->cut_armed = true;
    f->cut_after = after_writes;
    f->cut_issued = 0;
    f->cut = after_writes == 0;
    pthread_mutex_unlock(&f->lock);
}

bool lun_fault_power_is_cut(struct lun_fault *f)
{
    pthread_mutex_lock(&f->lock);
    bool cut = f->cut;
    pthread_mutex_unlock(&f->lock);
    return cut;
}

int lun_fault_restart(struct lun_fault *f)
{
    pthread_mutex_lock(&f->lock);
    /* Power off: what the volatile cache held is gone. */
    struct fault_io *list = f->held;
    f->held = NULL;
    f->nheld = 0;
    while (list) {
        struct fault_io *x = list;
        list = x->next;
        f->st.dropped++;
        fault_io_free(x);
    }
    while (f->held_draining)
        pthread_cond_wait(&f->idle, &f->lock);
    fault_wait_idle(f);
    struct lun_path *old = f->inner;
    f->inner = NULL;
    f->cut_armed = false;
    f->cut = false;
    pthread_mutex_unlock(&f->lock);
    lun_path_close(old);
    struct lun_path *in = NULL;
    int rc = lun_path_open_uri(f->inner_uri, &f->opts, &in);
    if (rc < 0) {
        log_err("fault: %s: restart failed: %s", f->path.name, strerror(-rc));
        return rc;
    }
    pthread_mutex_lock(&f->lock);
    f->inner = in;
    pthread_mutex_unlock(&f->lock);
    return 0;
}

void lun_fault_set_delay(struct lun_fault *f, unsigned ms)
{
    pthread_mutex_lock(&f->lock);
    f->delay_ms = ms;
    pthread_mutex_unlock(&f->lock);
}

void lun_fault_set_reorder(struct lun_fault *f, unsigned k)
{
    pthread_mutex_lock(&f->lock);
    f->reorder_k = k;
    struct fault_io *list = k ? NULL : fault_take_held(f);
    pthread_mutex_unlock(&f->lock);
    fault_drain_list(f, list);
}

void lun_fault_clear(struct lun_fault *f)
{
    pthread_mutex_lock(&f->lock);
    f->read_nth = 0;
    f->write_nth = 0;
    f->write_sticky = false;
    f->delay_ms = 0;
    f->reorder_k = 0;
    struct fault_io *list = fault_take_held(f);
    pthread_mutex_unlock(&f->lock);
    fault_drain_list(f, list);
}

void lun_fault_get_stats(struct lun_fault *f, struct lun_fault_stats *out)
{
    pthread_mutex_lock(&f->lock);
    *out = f->st;
    pthread_mutex_unlock(&f->lock);
}
