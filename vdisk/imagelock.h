/* Image locks compatible with QEMU's: the OFD byte-range locks QEMU's
 * file-posix driver holds on every file of an open image chain, so that
 * QEMU's tools (qemu-io, qemu-img, qemu-nbd, a VM) and vdisk refuse each
 * other's written images, and readers share. Takes an fd, so any I/O
 * backend can lock the files it opens. See imagelock.c for the layout.
 */
#ifndef VDISK_IMAGELOCK_H
#define VDISK_IMAGELOCK_H

#include <stdbool.h>

/* QEMU's permission bits (include/block/block-common.h BLK_PERM_*): lock
 * byte 100 + i is held (shared lock) by an opener that uses permission
 * bit i, byte 200 + i by one that does NOT let others use it. */
#define VD_PERM_CONSISTENT_READ 0x01u
#define VD_PERM_WRITE 0x02u
#define VD_PERM_WRITE_UNCHANGED 0x04u
#define VD_PERM_RESIZE 0x08u
#define VD_PERM_GRAPH_MOD 0x10u
#define VD_PERM_ALL 0x1fu
#define VD_LOCK_PERM_BASE 100
#define VD_LOCK_SHARED_BASE 200

/* What an opener takes, in QEMU's terms (what qemu-io / qemu-img take on
 * the file of a format node):
 *   READ    perm consistent-read; shares all but write and resize
 *           (qemu-io -r; every backing file of a chain)
 *   WRITE   perm consistent-read, write, resize; shares all but write
 *           and resize (qemu-io, qemu-img commit, a VM)
 *   SHARED  perm consistent-read; shares everything (qemu-img info -U,
 *           force-share): never conflicts with anyone */
enum vd_lock_mode { VD_LOCK_NONE, VD_LOCK_SHARED, VD_LOCK_READ, VD_LOCK_WRITE };

/* Take `mode`'s locks on fd (the open file of `path`, named in messages)
 * and check that nobody else holds a conflicting one. Returns 0 (also
 * where the file system has no OFD locks: a warning, as QEMU's
 * locking=auto), or -EBUSY with a message naming the holder: its command
 * name and pid when this user can see them, and what it holds:
 *   "disk.vmdk: in use: qemu-io (pid 4242) has it open for writing ..."
 * On -EBUSY the locks taken are dropped again. The locks belong to the
 * open file description: they go away when its last fd is closed. */
int vd_imagelock_take(int fd, const char *path, enum vd_lock_mode mode);

/* Change the locks held on fd to `mode` (VD_LOCK_NONE drops them). */
int vd_imagelock_set(int fd, const char *path, enum vd_lock_mode mode);

/* Find a process holding a lock on byte `off` of fd's file other than
 * through fd itself: its pid (> 0), 0 when none is visible. Reads
 * /proc/PID/fdinfo (OFD locks do not carry a pid: F_OFD_GETLK says -1). */
int vd_imagelock_holder_pid(int fd, int off);

/* Does anyone but fd's open file description hold permission `perm`
 * (VD_PERM_*) on fd's file? (a writer: VD_PERM_WRITE). *pid gets the holder
 * (0: unknown). */
bool vd_imagelock_held(int fd, unsigned perm, int *pid);

#endif
