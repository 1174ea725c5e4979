/* The control socket of `vdisk serve`: snapshot operations on a disk that
 * a server holds go through that server (issue 13 item 1), which flushes,
 * switches to the new chain between requests (vd_image_switch) and carries
 * on. See vdisk_ctl.c for the design and docs/snapshots.md for users. */
#ifndef TOOLS_VDISK_CTL_H
#define TOOLS_VDISK_CTL_H

#include <stddef.h>

struct vd_image;
struct ctl_server;

/* Where the control socket of the disk at `path` lives (malloc'd), or
 * NULL (logged). Keyed by the device and inode of the disk's folder and
 * its file name, so it stays the same across snapshots (which replace the
 * disk's inode) and whatever path names the disk. */
char *ctl_socket_path(const char *path);

/* Listen on the control socket of each VMDK image of imgs (paths[i] is
 * the path it was opened by); one thread serves them all. */
int ctl_server_start(struct vd_image **imgs, char *const *paths, unsigned n,
                     struct ctl_server **out);
/* Stop listening (waits for an operation in progress), remove the sockets. */
void ctl_server_stop(struct ctl_server *c);

/* Ask the server holding the disk at path to run "snapshot OP NAME" (OP:
 * create, revert, delete). Returns 1 when a server ran it (*rc: its result,
 * its message logged here; *id: the new snapshot's id for create), 0 when no
 * server listens for this disk (do it locally: the image lock then tells
 * whether anyone else holds the disk), -errno on a broken exchange. */
int ctl_snapshot_request(const char *path, const char *op, const char *name, int *rc, int *id);

#endif
