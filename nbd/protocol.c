/* NBD wire codec: request and reply headers, errno mapping (protocol.h). */
#include <errno.h>

#include "le.h"
#include "protocol.h"
#include "util.h"

int nbd_request_decode(const uint8_t *p, struct nbd_request *req)
{
    if (be32_get(p) != NBD_REQUEST_MAGIC)
        return -EPROTO;
    req->flags = be16_get(p + 4);
    req->type = be16_get(p + 6);
    req->cookie = be64_get(p + 8);
    req->offset = be64_get(p + 16);
    req->length = be32_get(p + 24);
    return 0;
}

void nbd_request_encode(uint8_t *p, const struct nbd_request *req)
{
    be32_put(p, NBD_REQUEST_MAGIC);
    be16_put(p + 4, req->flags);
    be16_put(p + 6, req->type);
    be64_put(p + 8, req->cookie);
    be64_put(p + 16, req->offset);
    be32_put(p + 24, req->length);
}

void nbd_simple_reply_encode(uint8_t *p, uint32_t error, uint64_t cookie)
{
    be32_put(p, NBD_SIMPLE_REPLY_MAGIC);
    be32_put(p + 4, error);
    be64_put(p + 8, cookie);
}

void nbd_struct_reply_encode(uint8_t *p, uint16_t flags, uint16_t type, uint64_t cookie,
                             uint32_t length)
{
    be32_put(p, NBD_STRUCTURED_REPLY_MAGIC);
    be16_put(p + 4, flags);
    be16_put(p + 6, type);
    be64_put(p + 8, cookie);
    be32_put(p + 16, length);
}

uint32_t nbd_errno_to_wire(int err)
{
    switch (err) {
    case 0:
        return 0;
    case EPERM:
    case EROFS:
    case EACCES:
    case EBADE:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

const char *nbd_cmd_name(uint16_t type)
{
    static const char *const names[] = {"READ", "WRITE", "DISC",         "FLUSH",
                                        "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"};
    return type < ARRAY_SIZE(names) ? names[type] : "UNKNOWN";
}
