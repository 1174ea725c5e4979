/* The per-path lines of `clusterfs paths`, shared with `clusterfs lun info`
 * (cfs_paths.c): one format for a path's state and counters everywhere. */
#ifndef TOOLS_CFS_PATHS_H
#define TOOLS_CFS_PATHS_H

#include "json.h"
#include "lun.h"

/* "|- 0 iscsi URI active reads=... pings=... nop_misses=..." (`-  for the
 * last path), then "last failure: ..." if the path ever failed; each line
 * starts with `indent`. */
void cfs_path_print_text(struct lun *lun, unsigned i, const char *indent);
/* The fields of path i's JSON object (index, kind, name, state, held,
 * counters, latency, pings, last_error), inside an object the caller
 * opened. */
void cfs_path_json_fields(struct json *j, struct lun *lun, unsigned i);

#endif
