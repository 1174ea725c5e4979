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
};

struct lun_path {
    const struct lun_path_ops *ops;
    char *name;   /* the URI without password, for messages */
    void *priv;   /* the kind's own state */
};

int lun_path_open_file(const char *uri, const struct lun_options *opts, struct lun_path **out);
int lun_path_open_iscsi(const char *uri, const struct lun_options *opts, struct lun_path **out);

/* True if uri names an iSCSI LUN (starts with "iscsi://"). */
bool lun_uri_is_iscsi(const char *uri);

#endif
