/* The LUN arguments of a clusterfs command, grouped into LUNs.
 *
 * Several arguments that reach the same LUN (same VPD 0x83 identity) are
 * one LUN with several paths: each argument is opened alone first to learn
 * its identity, then each group is opened through the multipath engine
 * (lun_open_paths). An iSCSI argument whose portal cannot be reached joins
 * the group whose URIs name the same target IQN and LUN number, as a
 * failed path. Used by `clusterfs lun info` and `clusterfs locks`, so that
 * the paths of one LUN are one LUN everywhere (as in `clusterfs paths`). */
#ifndef TOOLS_CFS_GROUP_H
#define TOOLS_CFS_GROUP_H

#include <stdbool.h>

#include "lun.h"

struct cfs_lun_arg {
    const char *uri;
    struct lun *lun; /* opened alone; NULL if that failed or once handed out */
    int rc;
    char *msg; /* the open's error message */
    int group; /* index of the first argument of its LUN; -1 = none */
};

struct cfs_lun_args {
    unsigned n;
    struct cfs_lun_arg *a;
    const struct lun_options *opts;
};

/* Open each of uris[0..n) alone and group them. Arguments that reach no
 * LUN are reported on stderr, one line each ("clusterfs: URI: reason",
 * password removed). Returns 0 if every argument belongs to a LUN, 1 if
 * some did not, -ENOMEM. */
int cfs_lun_args_group(const char *const *uris, unsigned n, const struct lun_options *opts,
                       struct cfs_lun_args *out);
/* Is argument g the first of its LUN? Iterate g = 0..n-1 for one report
 * per LUN, in the order of first appearance. */
bool cfs_lun_args_is_lun(const struct cfs_lun_args *la, unsigned g);
/* The LUN of group g, opened through all its paths (its own handle if it
 * has one path); the caller closes it. Returns 0 or -errno (reported). */
int cfs_lun_args_open(struct cfs_lun_args *la, unsigned g, struct lun **out);
void cfs_lun_args_free(struct cfs_lun_args *la);

#endif
