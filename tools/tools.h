/* Subcommands of the command-line tools, one file each. Each returns the
 * process exit status: 0 success, 1 failure, 2 usage error. */
#ifndef TOOLS_TOOLS_H
#define TOOLS_TOOLS_H

int cmd_lun(int argc, char **argv);          /* clusterfs lun ...   (cfs_lun.c) */
int cmd_locks(int argc, char **argv);        /* clusterfs locks ... (cfs_locks.c) */
int cmd_paths(int argc, char **argv);        /* clusterfs paths ... (cfs_paths.c) */
int cmd_format(int argc, char **argv);       /* clusterfs format ... (cfs_volume.c) */
int cmd_status(int argc, char **argv);       /* clusterfs status ... (cfs_volume.c) */
int cmd_volume_check(int argc, char **argv); /* clusterfs check ... (cfs_volume.c) */
int cmd_serve(int argc, char **argv);        /* vdisk serve ...     (vdisk_serve.c) */
int cmd_snapshot(int argc, char **argv);     /* vdisk snapshot ... (vdisk_snap.c) */
int cmd_clone(int argc, char **argv);        /* vdisk clone ...    (vdisk_snap.c) */

/* vdisk: VD_OPEN_RAW or VD_OPEN_VMDK from --format (every command but
 * create, where --format names the new file's format), else 0: probe. */
extern unsigned vdisk_open_fmt;
#endif
