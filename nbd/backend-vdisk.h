/* NBD export backend over a vdisk image (vdisk.h). */
#ifndef NBD_BACKEND_VDISK_H
#define NBD_BACKEND_VDISK_H

#include "backend.h"

extern const struct nbd_export_ops nbd_vd_ops; /* be = struct vd_image * */

#endif
