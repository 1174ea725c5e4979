/* vdisk snapshots and clones of VMDK images (snapshot.c, clone.c):
 * internals shared by the two files; the API is in vdisk.h.
 *
 * A disk at PATH keeps its path for the VMM. `vd_snapshot_create` freezes the
 * current contents into "<stem>-NNNNNN.vmdk" (read-only from then on) and
 * makes PATH a new empty delta on top of it. The snapshot tree lives in
 * ddb.snapshot.* keys of PATH's own descriptor (QEMU ignores them); frozen
 * files carry ddb.frozen = "true" and, when linked clones use them,
 * ddb.dependents. See docs/snapshots.md for the layout and the crash-safe
 * order of every operation. The path calls take the disk's writer image
 * lock (imagelock.h) for their run, so they are refused (-EBUSY, naming the
 * holder) while anyone has the disk open; a process that has it open for
 * I/O (vdisk serve) uses the *_open calls instead, which run between its
 * requests and switch its open image to the new chain.
 */
#ifndef VDISK_SNAPSHOT_H
#define VDISK_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk_internal.h"

/* ---- shared by snapshot.c and clone.c ---- */
int vd_snap_check_writable(const char *path);
/* Freeze path's current state as a snapshot named `name` (as
 * vd_snapshot_create) and return the frozen file's full path and CID. */
int vd_snap_freeze(const char *path, const char *name, char **frozen_path, uint32_t *cid);
/* Add / check dependents recorded in a frozen image's ddb.dependents. */
int vd_snap_dependent_add(const char *frozen_path, const char *dependent);
/* Count live dependents of frozen_path (pruning ones that no longer exist or
 * no longer have it in their chain); names them in the log when > 0. */
int vd_snap_dependents_live(const char *frozen_path, const char *what);
int vd_fsync_dir_of(const char *path);

#endif
