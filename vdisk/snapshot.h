/* vdisk snapshots and clones of VMDK images (snapshot.c, clone.c).
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

#define VD_SNAP_NAME_MAX 64

struct vd_snap {
    int id; /* > 0, unique within the disk, never reused */
    char *name;
    char *file;      /* frozen image, relative to the disk's folder */
    uint32_t cid;    /* CID of the frozen image */
    int parent;      /* id of the parent snapshot, 0: none */
    int64_t created; /* unix seconds */
};

struct vd_snap_list {
    struct vd_snap *s; /* sorted by id */
    int n;
    int current; /* id the live delta sits on, 0: none */
};

void vd_snap_list_free(struct vd_snap_list *l);
/* Read the snapshot tree of the disk at path (a frozen file is refused). */
int vd_snapshot_list(const char *path, struct vd_snap_list *out);
/* -EEXIST: name taken; -EROFS: path is frozen or read-only. *id may be NULL. */
int vd_snapshot_create(const char *path, const char *name, int *id);
/* -ENOENT: no snapshot of that name. */
int vd_snapshot_revert(const char *path, const char *name);
/* -EBUSY: linked clones depend on the snapshot (they are named in the log). */
int vd_snapshot_delete(const char *path, const char *name);

/* The same on a disk this process has open for I/O (an NBD export), via
 * vd_image_switch: in-flight I/O completes, new I/O waits, the image is
 * flushed (a failed flush refuses the operation), the operation runs, and
 * img then reads and writes the disk's new live delta. A revert to a
 * snapshot of another size is refused (-EINVAL: an export keeps its size). */
int vd_snapshot_create_open(struct vd_image *img, const char *name, int *id);
int vd_snapshot_revert_open(struct vd_image *img, const char *name);
int vd_snapshot_delete_open(struct vd_image *img, const char *name);
/* Can img have snapshots (a VMDK that is not frozen)? */
bool vd_snapshot_capable(const struct vd_image *img);

struct vd_clone_opts {
    bool linked;       /* delta on a frozen copy of src's current state */
    enum vd_type type; /* full clone: THIN (monolithicSparse) or THICK (flat) */
    bool progress;     /* force the progress meter */
};
/* -EEXIST: dst exists. */
int vd_clone(const char *src, const char *dst, const struct vd_clone_opts *o);

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
