/* Private to multipath/: one path to a LUN, and the interface every kind
 * of path implements (file, iscsi, fault wrapper). The LUN core (lun.c)
 * owns the paths, chooses one per I/O, and (with several paths) retries
 * and fails over; a path only moves commands and reports results.
 *
 * Completion: a path finishes an I/O by calling io->done(io, result) once,
 * from its own thread (or inline). The core installs its own done callback
 * before handing the I/O to a path and keeps the caller's in io->priv[0..2];
 * a path may use io->priv[3..5] for itself.
 *
 * A failed command reports -errno (see lun.h) and, for SCSI failures, the
 * sense in io->sense_key/asc/ascq so the core can classify it
 * (sense.h: retry on the same path, fail over, or fail up).
 */
#ifndef MULTIPATH_PATH_H
#define MULTIPATH_PATH_H

#include "lun.h"

struct lun_path;

enum lun_pr_action {
    LUN_PR_ACT_REGISTER_IGNORE = 0x06, /* REGISTER AND IGNORE EXISTING KEY */
    LUN_PR_ACT_RESERVE = 0x01,
    LUN_PR_ACT_RELEASE = 0x02,
    LUN_PR_ACT_CLEAR = 0x03,
    LUN_PR_ACT_PREEMPT = 0x04,
    LUN_PR_ACT_PREEMPT_ABORT = 0x05,
};

typedef void (*lun_path_report_fn)(void *opaque, struct lun_path *p, const char *why);

struct lun_path_ops {
    const char *kind; /* "file", "iscsi", "fault" */
    /* Fill identity, capacity and capabilities (probed from the target). */
    int (*probe)(struct lun_path *p, struct lun_info *info);
    /* Asynchronous data commands (lun.h's lun_op). */
    int (*submit)(struct lun_path *p, struct lun_io *io);
    /* Synchronous, rare commands. */
    int (*pr_out)(struct lun_path *p, enum lun_pr_action action, uint64_t key, uint64_t sa_key,
                  enum lun_pr_type type);
    int (*pr_in)(struct lun_path *p, struct lun_pr_state *out);
    int (*test_unit_ready)(struct lun_path *p);
    void (*close)(struct lun_path *p);
    /* Optional (multipath): tear the session down, with confirmation.
     * Later commands fail at once (-ENOTCONN). Returns 0 once nothing the
     * session sent can still reach the medium: every queued and in-flight
     * command has completed (with its result, or -ENOTCONN if the target
     * dropped it or may have done it unheard) and the connection is
     * closed. Returns -EINPROGRESS if that is not known within wait_ms
     * (iSCSI: a silent link; the target may still execute what is on its
     * way): the core calls again later, and keeps the path's writes from
     * being re-issued meanwhile. The path object stays valid until close.
     * NULL: the kind cannot do it (then the core waits until every command
     * issued on the path has completed). */
    int (*abort)(struct lun_path *p, unsigned wait_ms);
    /* Optional (multipath): while abort says -EINPROGRESS, the core logged
     * in with this path's ISID through another portal of the target, and
     * the target is one that reinstates sessions (RFC 7143): it has closed
     * this session and dropped its tasks. The next abort returns 0. */
    void (*reinstated)(struct lun_path *p);
    /* Optional (multipath): the core installs `fn`, through which the path
     * reports a failure it detects by itself while no command need be
     * failing (iSCSI: NOP-Out pings unanswered). `fn` runs on the path's own
     * thread, may be called more than once, takes the core's lock and must
     * not call back into the path. fn NULL: stop reporting. */
    void (*set_report)(struct lun_path *p, lun_path_report_fn fn, void *opaque);
    /* Optional (lun_fence_self): make sure no write in flight on the path
     * can land later. iSCSI: a session that carries a write is torn down
     * with confirmation (as after a timeout; ABORT TASK SET), and its
     * commands complete with -ENOTCONN (or their success, if the target
     * finished them first). Never called on the path's own thread; returns
     * before the completions arrive. */
    void (*abort_writes)(struct lun_path *p);
    /* Optional: liveness pings answered and intervals missed so far. */
    void (*ping_stats)(const struct lun_path *p, uint64_t *answered, uint64_t *missed);
};

struct lun_path {
    const struct lun_path_ops *ops;
    char *name; /* the URI without password, for messages */
    void *priv; /* the kind's own state */
};

int lun_path_open_file(const char *uri, const struct lun_options *opts, struct lun_path **out);
int lun_path_open_iscsi(const char *uri, const struct lun_options *opts, struct lun_path **out);
/* The same with the ISID derived from `isid_seed` (0 = a fresh one): the
 * multipath core reopens a path slot with the slot's seed, so the target
 * sees the same I_T nexus (and reinstates the old session). */
int lun_path_open_iscsi_isid(const char *uri, const struct lun_options *opts, uint64_t isid_seed,
                             struct lun_path **out);

/* True if uri names an iSCSI LUN (starts with "iscsi://"). */
bool lun_uri_is_iscsi(const char *uri);

/* ---- Helpers for path kinds and wrappers (lun.c, file.c) ---------------- */

/* Open one path of the kind `uri` names (iscsi:// or a file). */
int lun_path_open_uri(const char *uri, const struct lun_options *opts, struct lun_path **out);
/* ... with an ISID seed for iSCSI (see lun_path_open_iscsi_isid). */
int lun_path_open_uri_isid(const char *uri, const struct lun_options *opts, uint64_t isid_seed,
                           struct lun_path **out);

/* Close a path: ops->close (which frees the path and its name). */
void lun_path_close(struct lun_path *p);

/* lun_uri_redact() is declared in lun.h. */

/* Parse a file URI: "file:///abs/path[?block_size=N]", "file://localhost/..."
 * or a plain path (no query parsing). *path is malloc'd; *block_size is set
 * only when the URI gives one. Returns 0, -EINVAL (logged) or -ENOMEM. */
int lun_file_uri_parse(const char *uri, char **path, uint32_t *block_size);

/* Build a LUN over already-open paths (taking ownership of them, also on
 * failure): probe, check identities, keep lun_info. Used by lun_open and
 * by wrappers such as the fault injector. */
int lun_open_with_paths(struct lun_path **paths, unsigned n, const struct lun_options *opts,
                        struct lun **out);

#endif
