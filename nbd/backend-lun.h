/* NBD export backend over a raw LUN (lun.h). */
#ifndef NBD_BACKEND_LUN_H
#define NBD_BACKEND_LUN_H

#include <stdbool.h>

#include "backend.h"

struct lun;
struct nbd_lun_backend;
extern const struct nbd_export_ops nbd_lun_ops; /* be = struct nbd_lun_backend * */
int nbd_lun_backend_new(struct lun *lun, bool readonly, struct nbd_lun_backend **out);
void nbd_lun_backend_free(struct nbd_lun_backend *b);

#endif
