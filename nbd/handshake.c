/* Fixed newstyle handshake: greeting, client flags and option haggling
 * (LIST, INFO, GO, EXPORT_NAME, STRUCTURED_REPLY, meta contexts, STARTTLS
 * with the TLS handshake itself in tls.c), as the NBD spec's "Option
 * haggling" describes. With TLS required, nothing but STARTTLS and ABORT
 * is served before TLS: no export name, size or description leaks. Runs
 * on the connection's reader thread before transmission, within the
 * handshake deadline (conn.c); nothing here touches a backend except
 * through the export's size and flags fixed at nbd_server_add_export.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "le.h"
#include "log.h"
#include "util.h"

static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
                     uint32_t len)
{
    uint8_t h[NBD_OPT_REP_HDR_SIZE];
    be64_put(h, NBD_REP_MAGIC);
    be32_put(h + 8, opt);
    be32_put(h + 12, type);
    be32_put(h + 16, len);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, len}};
    return nbd_conn_sendv(c, iov, len ? 2 : 1);
}

static struct nbd_export *export_find(struct nbd_server *srv, const char *name)
{
    if (!name[0])
        return srv->nexports ? srv->exports[0] : NULL;
    for (unsigned i = 0; i < srv->nexports; i++)
        if (!strcmp(srv->exports[i]->name, name))
            return srv->exports[i];
    return NULL;
}

static uint16_t conn_tflags(struct nbd_conn *c, struct nbd_export *e)
{
    uint16_t f = e->tflags;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

/* Parse "u32 namelen, name" at p (len bytes); copies the name into out
 * (NBD_MAX_STRING + 1). Returns bytes consumed or -EINVAL. */
static int parse_name(const uint8_t *p, uint32_t len, char *out)
{
    if (len < 4)
        return -EINVAL;
    uint32_t n = be32_get(p);
    if (n > NBD_MAX_STRING || n > len - 4)
        return -EINVAL;
    memcpy(out, p + 4, n);
    out[n] = 0;
    if (strlen(out) != n)
        return -EINVAL; /* embedded NUL */
    return (int)(4 + n);
}

static int send_info_export(struct nbd_conn *c, uint32_t opt, struct nbd_export *e)
{
    uint8_t b[12];
    be16_put(b, NBD_INFO_EXPORT);
    be64_put(b + 2, e->size);
    be16_put(b + 10, conn_tflags(c, e));
    return opt_reply(c, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_block_size(struct nbd_conn *c, uint32_t opt, struct nbd_export *e)
{
    uint8_t b[14];
    be16_put(b, NBD_INFO_BLOCK_SIZE);
    be32_put(b + 2, e->min_block);
    be32_put(b + 6, e->pref_block);
    be32_put(b + 10, NBD_MAX_REQUEST);
    return opt_reply(c, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_string(struct nbd_conn *c, uint32_t opt, uint16_t type, const char *s)
{
    size_t n = strlen(s);
    uint8_t *b = malloc(2 + n);
    if (!b)
        return -ENOMEM;
    be16_put(b, type);
    memcpy(b + 2, s, n);
    int rc = opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + n));
    free(b);
    return rc;
}

/* NBD_OPT_INFO / NBD_OPT_GO. Returns 1 if GO succeeded, 0 to continue
 * option haggling, -errno to drop. */
static int opt_info_go(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    int n = parse_name(d, len, name);
    if (n < 0 || len - (uint32_t)n < 2)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    uint16_t nreq = be16_get(d + n);
    if (len - (uint32_t)n - 2 != 2u * nreq)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    struct nbd_export *e = export_find(c->srv, name);
    if (!e) {
        static const char msg[] = "no such export";
        return opt_reply(c, opt, NBD_REP_ERR_UNKNOWN, msg, sizeof(msg) - 1);
    }
    bool want_name = false, want_desc = false;
    for (unsigned i = 0; i < nreq; i++) {
        uint16_t t = be16_get(d + n + 2 + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
    }
    int rc = send_info_export(c, opt, e);
    if (!rc)
        rc = send_info_block_size(c, opt, e);
    if (!rc && want_name)
        rc = send_info_string(c, opt, NBD_INFO_NAME, e->name);
    if (!rc && want_desc && e->description)
        rc = send_info_string(c, opt, NBD_INFO_DESCRIPTION, e->description);
    if (!rc)
        rc = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
    if (rc < 0)
        return rc;
    if (opt == NBD_OPT_GO) {
        c->exp = e;
        return 1;
    }
    return 0;
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
static int opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    static const char ctx[] = "base:allocation";
    char name[NBD_MAX_STRING + 1];
    if (!c->structured)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    int n = parse_name(d, len, name);
    if (n < 0 || len - (uint32_t)n < 4)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    if (!export_find(c->srv, name))
        return opt_reply(c, opt, NBD_REP_ERR_UNKNOWN, NULL, 0);
    uint32_t nq = be32_get(d + n);
    uint32_t pos = (uint32_t)n + 4;
    bool match = false;
    /* validate all queries first so a bad one changes nothing */
    for (uint32_t i = 0; i < nq; i++) {
        if (len - pos < 4)
            return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        uint32_t ql = be32_get(d + pos);
        if (ql > NBD_MAX_STRING || ql > len - pos - 4)
            return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        const char *q = (const char *)d + pos + 4;
        if ((ql == sizeof(ctx) - 1 && !memcmp(q, ctx, ql)) ||
            (opt == NBD_OPT_LIST_META_CONTEXT && ql == 5 && !memcmp(q, "base:", 5)))
            match = true;
        pos += 4 + ql;
    }
    if (pos != len)
        return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
    if (nq == 0 && opt == NBD_OPT_LIST_META_CONTEXT)
        match = true;
    if (opt == NBD_OPT_SET_META_CONTEXT)
        c->meta_alloc = match;
    if (match) {
        uint8_t b[4 + sizeof(ctx) - 1];
        be32_put(b, opt == NBD_OPT_SET_META_CONTEXT ? NBD_META_ALLOC_ID : 0);
        memcpy(b + 4, ctx, sizeof(ctx) - 1);
        int rc = opt_reply(c, opt, NBD_REP_META_CONTEXT, b, sizeof(b));
        if (rc < 0)
            return rc;
    }
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

static int opt_list(struct nbd_conn *c, uint32_t opt)
{
    for (unsigned i = 0; i < c->srv->nexports; i++) {
        const char *nm = c->srv->exports[i]->name;
        size_t n = strlen(nm);
        uint8_t *b = malloc(4 + n);
        if (!b)
            return -ENOMEM;
        be32_put(b, (uint32_t)n);
        memcpy(b + 4, nm, n);
        int rc = opt_reply(c, opt, NBD_REP_SERVER, b, (uint32_t)(4 + n));
        free(b);
        if (rc < 0)
            return rc;
    }
    return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_STARTTLS (TLS offered or required): ack, then the TLS handshake
 * on the same socket; what follows is read and written through TLS. 0 to
 * continue option haggling, -errno to drop the connection. */
static int opt_starttls(struct nbd_conn *c, uint32_t len)
{
    if (len)
        return opt_reply(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, NULL, 0);
    if (c->ssl) {
        static const char msg[] = "TLS is already on";
        return opt_reply(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, msg, sizeof(msg) - 1);
    }
    int rc = opt_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
    if (rc < 0)
        return rc;
    /* The client must wait for the ack before its TLS hello; bytes already
     * received were sent before it and are not TLS. */
    if (c->rpos < c->rlen) {
        log_warn("nbd: %s: %zu bytes after NBD_OPT_STARTTLS before the TLS handshake, closing",
                 c->peer, c->rlen - c->rpos);
        return -EPROTO;
    }
    rc = nbd_tls_accept(c);
    if (rc < 0)
        return rc;
    /* The spec: state negotiated in plaintext does not carry over. */
    c->structured = false;
    c->meta_alloc = false;
    return 0;
}

/* Fixed newstyle handshake. 0: transmission begins with c->exp set;
 * -errno: drop the connection. */
int nbd_conn_handshake(struct nbd_conn *c)
{
    uint8_t g[18];
    be64_put(g, NBD_MAGIC);
    be64_put(g + 8, NBD_IHAVEOPT);
    be16_put(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    int rc = nbd_conn_send(c, g, sizeof(g));
    if (rc < 0)
        return rc;
    uint8_t cf[4];
    rc = nbd_conn_recv(c, cf, 4);
    if (rc < 0)
        return rc;
    uint32_t cflags = be32_get(cf);
    if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        log_warn("nbd: %s: unknown client flags 0x%x, closing", c->peer, cflags);
        return -EPROTO;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    for (unsigned nopts = 0;; nopts++) {
        uint8_t h[NBD_OPT_HDR_SIZE];
        rc = nbd_conn_recv(c, h, sizeof(h));
        if (rc < 0)
            return rc;
        if (be64_get(h) != NBD_IHAVEOPT) {
            log_warn("nbd: %s: bad option magic 0x%" PRIx64 ", closing", c->peer, be64_get(h));
            return -EPROTO;
        }
        uint32_t opt = be32_get(h + 8), len = be32_get(h + 12);
        if (len > NBD_MAX_OPT_LEN) {
            log_warn("nbd: %s: option %u length %u exceeds %u, closing", c->peer, opt, len,
                     NBD_MAX_OPT_LEN);
            return -EPROTO;
        }
        if (nopts > 1000) {
            log_warn("nbd: %s: more than 1000 options, closing", c->peer);
            return -EPROTO;
        }
        uint8_t *d = malloc(len + 1);
        if (!d)
            return -ENOMEM;
        rc = nbd_conn_recv(c, d, len);
        if (rc < 0) {
            free(d);
            return rc;
        }
        d[len] = 0;
        if (opt == NBD_OPT_STARTTLS && c->srv->cfg.tls_mode != NBD_TLS_OFF) {
            free(d);
            rc = opt_starttls(c, len);
            if (rc < 0)
                return rc;
            continue;
        }
        if (c->srv->cfg.tls_mode == NBD_TLS_REQUIRE && !c->ssl && opt != NBD_OPT_ABORT) {
            /* Nothing but STARTTLS before TLS: no export name or size
             * leaks to a client that has not authenticated. */
            free(d);
            if (opt == NBD_OPT_EXPORT_NAME) { /* has no error reply: close */
                log_warn("nbd: %s: NBD_OPT_EXPORT_NAME before TLS (TLS is required), closing",
                         c->peer);
                return -EACCES;
            }
            static const char msg[] = "TLS is required: send NBD_OPT_STARTTLS first";
            rc = opt_reply(c, opt, NBD_REP_ERR_TLS_REQD, msg, sizeof(msg) - 1);
            if (rc < 0)
                return rc;
            continue;
        }
        switch (opt) {
        case NBD_OPT_EXPORT_NAME: {
            struct nbd_export *e = len <= NBD_MAX_STRING && strlen((char *)d) == len
                                       ? export_find(c->srv, (char *)d)
                                       : NULL;
            free(d);
            if (!e) {
                log_warn("nbd: %s: NBD_OPT_EXPORT_NAME: no such export, closing", c->peer);
                return -ENOENT;
            }
            uint8_t r[10 + 124];
            memset(r, 0, sizeof(r));
            be64_put(r, e->size);
            be16_put(r + 8, conn_tflags(c, e));
            rc = nbd_conn_send(c, r, c->no_zeroes ? 10 : sizeof(r));
            if (rc < 0)
                return rc;
            c->exp = e;
            return 0;
        }
        case NBD_OPT_ABORT:
            free(d);
            opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            return -ECONNABORTED;
        case NBD_OPT_LIST:
            rc = len ? opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0) : opt_list(c, opt);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            rc = opt_info_go(c, opt, d, len);
            if (rc == 1) {
                free(d);
                return 0;
            }
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len) {
                rc = opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
            } else {
                c->structured = true;
                rc = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            rc = opt_meta(c, opt, d, len);
            break;
        default: /* STARTTLS when TLS is off, EXTENDED_HEADERS, PEEK_EXPORT, unknown */
            rc = opt_reply(c, opt, NBD_REP_ERR_UNSUP, NULL, 0);
            break;
        }
        free(d);
        if (rc < 0)
            return rc;
    }
}
