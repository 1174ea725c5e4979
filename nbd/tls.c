/* NBD over TLS (NBD_OPT_STARTTLS) through OpenSSL: credentials (tls.h)
 * and a connection's TLS byte stream.
 *
 * Design notes
 * ------------
 * Threads. A connection's TLS stream is read by its reader thread and
 * written by whichever thread holds its sender role (reply.c), at the same
 * time. An OpenSSL SSL object is not safe for concurrent calls, so every
 * SSL_* call on it runs under c->ssl_lock, and the socket is non-blocking
 * from STARTTLS on: a call that would block returns SSL_ERROR_WANT_READ /
 * WANT_WRITE, the thread drops the lock and waits in poll() for the
 * socket, then retries the same call with the same buffer. The lock is
 * therefore held only for the CPU work of one call (a write is cut into
 * 256 KiB calls), never across a wait, and the reader waiting for the next
 * request does not stop replies from leaving.
 *
 * Non-blocking senders (I/O completion threads, the reader answering a
 * cached read inline) cannot wait for the socket; with TLS they hand the
 * sender role to a worker at once (conn_send_list returns -EAGAIN), so the
 * only TLS writer is one that may wait, and a partly written record never
 * has to be resumed by another thread.
 *
 * Records. Replies are a header of 16-28 bytes and a payload. The sender
 * coalesces small pieces into a 16 KiB buffer (one TLS record) and writes
 * large payloads straight from the request's buffer, so 4 KiB reads at
 * queue depth 32 leave four to a record and a 1 MiB read costs no copy
 * beyond its first record.
 *
 * Authentication. PSK: OpenSSL's PSK server callback (used for TLS 1.2 PSK
 * suites and, with SHA-256, TLS 1.3) looks the client's identity up in the
 * key file and the allow list; an unknown or disallowed identity fails the
 * TLS handshake. X.509: the client certificate, when presented, must chain
 * to ca-cert.pem (SSL_VERIFY_PEER); with --tls-allow it is required and its
 * subject must be listed. Session tickets are off (no resumption: every
 * connection authenticates in full).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/asn1.h>
#include <openssl/x509.h>

#include "internal.h"
#include "log.h"
#include "tls.h"
#include "util.h"

#define TLS_PSK_FILE_MAX (1u << 20)
#define TLS_PSK_ID_MAX 256
#define TLS_WRITE_CHUNK (256u << 10)
#define TLS_WBIO_BUF (16 * (16384 + 64)) /* 16 TLS records */

struct tls_psk {
    char *identity;
    unsigned char *key;
    unsigned key_len;
};

struct nbd_tls {
    SSL_CTX *ctx;
    bool psk;
    struct tls_psk *keys; /* psk: read-only after nbd_tls_new */
    unsigned nkeys;
    char **allow;
    unsigned nallow;
};

int nbd_tls_mode_parse(const char *s, enum nbd_tls_mode *out)
{
    if (!strcmp(s, "off"))
        *out = NBD_TLS_OFF;
    else if (!strcmp(s, "on"))
        *out = NBD_TLS_ON;
    else if (!strcmp(s, "require"))
        *out = NBD_TLS_REQUIRE;
    else
        return -EINVAL;
    return 0;
}

/* The most specific OpenSSL reason of this thread's error queue. */
static const char *tls_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (!e)
        return "no further detail";
    const char *r = ERR_reason_error_string(e);
    if (r)
        snprintf(buf, len, "%s", r);
    else
        ERR_error_string_n(e, buf, len);
    return buf;
}

/* Client-supplied text for a log line: printable ASCII, bounded. */
static void tls_printable(const char *in, char *out, size_t len)
{
    size_t i = 0;
    for (; in[i] && i + 1 < len; i++)
        out[i] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
    out[i] = 0;
}

static bool tls_allowed(const struct nbd_tls *t, const char *name)
{
    if (!t->nallow)
        return true;
    for (unsigned i = 0; i < t->nallow; i++)
        if (!strcmp(t->allow[i], name))
            return true;
    return false;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Parse a PSK key file. The message never quotes a line: a line may hold
 * a key. */
static int tls_psk_load(struct nbd_tls *t, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        log_err("nbd: TLS PSK file %s: cannot open: %s", path, strerror(-rc));
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)TLS_PSK_FILE_MAX) {
        log_err("nbd: TLS PSK file %s: not a regular file of at most %u bytes", path,
                TLS_PSK_FILE_MAX);
        close(fd);
        return -EINVAL;
    }
    if (st.st_mode & 0077)
        log_warn("nbd: TLS PSK file %s: readable by group or others (mode %03o); "
                 "chmod 600 it",
                 path, (unsigned)(st.st_mode & 0777));
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    int rc = 0;
    unsigned lineno = 0;
    for (char *line = buf, *next; line && *line; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[--ll] = 0;
        if (!ll)
            continue;
        char *colon = strchr(line, ':');
        size_t idlen = colon ? (size_t)(colon - line) : 0;
        size_t hexlen = colon ? strlen(colon + 1) : 0;
        bool ok = colon && idlen > 0 && idlen <= TLS_PSK_ID_MAX && hexlen >= 2 && hexlen % 2 == 0 &&
                  hexlen / 2 <= PSK_MAX_PSK_LEN;
        for (size_t i = 0; ok && i < hexlen; i++)
            ok = hexval((unsigned char)colon[1 + i]) >= 0;
        if (!ok) {
            log_err("nbd: TLS PSK file %s line %u: expected identity:hexkey (an identity of "
                    "1-%d bytes without ':', an even number of hex digits)",
                    path, lineno, TLS_PSK_ID_MAX);
            rc = -EINVAL;
            break;
        }
        *colon = 0;
        for (unsigned i = 0; i < t->nkeys; i++)
            if (!strcmp(t->keys[i].identity, line)) {
                log_err("nbd: TLS PSK file %s line %u: identity given twice", path, lineno);
                rc = -EINVAL;
            }
        if (rc < 0)
            break;
        struct tls_psk *v = realloc(t->keys, (t->nkeys + 1) * sizeof(*v));
        if (!v) {
            rc = -ENOMEM;
            break;
        }
        t->keys = v;
        struct tls_psk *k = &t->keys[t->nkeys];
        k->identity = strdup(line);
        k->key = malloc(hexlen / 2);
        if (!k->identity || !k->key) {
            free(k->identity);
            free(k->key);
            rc = -ENOMEM;
            break;
        }
        k->key_len = (unsigned)(hexlen / 2);
        for (size_t i = 0; i < hexlen / 2; i++)
            k->key[i] = (unsigned char)(hexval((unsigned char)colon[1 + 2 * i]) << 4 |
                                        hexval((unsigned char)colon[2 + 2 * i]));
        t->nkeys++;
    }
    OPENSSL_cleanse(buf, size + 1);
    free(buf);
    if (rc == 0 && t->nkeys == 0) {
        log_err("nbd: TLS PSK file %s: no identity:hexkey line", path);
        rc = -EINVAL;
    }
    return rc;
}

static unsigned int tls_psk_server_cb(SSL *ssl, const char *identity, unsigned char *psk,
                                      unsigned int max_psk_len)
{
    const struct nbd_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    struct nbd_conn *c = SSL_get_app_data(ssl);
    char shown[72];
    tls_printable(identity ? identity : "", shown, sizeof(shown));
    for (unsigned i = 0; identity && i < t->nkeys; i++) {
        if (strcmp(t->keys[i].identity, identity))
            continue;
        if (!tls_allowed(t, identity)) {
            log_warn("nbd: %s: TLS PSK identity '%s' is not in --tls-allow", c->peer, shown);
            return 0;
        }
        if (t->keys[i].key_len > max_psk_len)
            return 0;
        memcpy(psk, t->keys[i].key, t->keys[i].key_len);
        c->tls_psk_id = t->keys[i].identity; /* for the log (t outlives c) */
        return t->keys[i].key_len;
    }
    log_warn("nbd: %s: TLS PSK identity '%s' is unknown", c->peer, shown);
    return 0;
}

static int tls_x509_load(struct nbd_tls *t, const char *dir)
{
    char path[PATH_MAX];
    char why[256];
    snprintf(path, sizeof(path), "%s/server-cert.pem", dir);
    if (SSL_CTX_use_certificate_chain_file(t->ctx, path) != 1) {
        log_err("nbd: TLS certificate %s: cannot load: %s", path, tls_reason(why, sizeof(why)));
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "%s/server-key.pem", dir);
    if (SSL_CTX_use_PrivateKey_file(t->ctx, path, SSL_FILETYPE_PEM) != 1) {
        log_err("nbd: TLS private key %s: cannot load: %s", path, tls_reason(why, sizeof(why)));
        return -EINVAL;
    }
    if (SSL_CTX_check_private_key(t->ctx) != 1) {
        log_err("nbd: TLS private key %s does not match %s/server-cert.pem", path, dir);
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "%s/ca-cert.pem", dir);
    if (SSL_CTX_load_verify_locations(t->ctx, path, NULL) != 1) {
        log_err("nbd: TLS CA certificate %s: cannot load: %s", path, tls_reason(why, sizeof(why)));
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "%s/ca-crl.pem", dir);
    if (access(path, F_OK) == 0) {
        X509_STORE *store = SSL_CTX_get_cert_store(t->ctx);
        X509_LOOKUP *lk = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (!lk || X509_load_crl_file(lk, path, X509_FILETYPE_PEM) <= 0) {
            log_err("nbd: TLS CRL %s: cannot load: %s", path, tls_reason(why, sizeof(why)));
            return -EINVAL;
        }
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    /* Ask for a client certificate and check it against the CA when given;
     * an allow list needs one. */
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | (t->nallow ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                       NULL);
    return 0;
}

void nbd_tls_free(struct nbd_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    for (unsigned i = 0; i < t->nkeys; i++) {
        OPENSSL_cleanse(t->keys[i].key, t->keys[i].key_len);
        free(t->keys[i].key);
        free(t->keys[i].identity);
    }
    free(t->keys);
    for (unsigned i = 0; i < t->nallow; i++)
        free(t->allow[i]);
    free(t->allow);
    free(t);
}

int nbd_tls_new(const struct nbd_tls_options *o, struct nbd_tls **out)
{
    if (!o->psk_file == !o->cert_dir) {
        log_err("nbd: TLS needs either a PSK file or a certificate directory");
        return -EINVAL;
    }
    struct nbd_tls *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    int rc = -ENOMEM;
    t->psk = o->psk_file != NULL;
    if (o->nallow) {
        t->allow = calloc(o->nallow, sizeof(char *));
        if (!t->allow)
            goto fail;
        for (; t->nallow < o->nallow; t->nallow++) {
            t->allow[t->nallow] = strdup(o->allow[t->nallow]);
            if (!t->allow[t->nallow])
                goto fail;
        }
    }
    t->ctx = SSL_CTX_new(TLS_server_method());
    if (!t->ctx) {
        log_err("nbd: TLS: cannot create a context");
        goto fail;
    }
    SSL_CTX_set_app_data(t->ctx, t);
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET |
                                    SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_num_tickets(t->ctx, 0);
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_dh_auto(t->ctx, 1);
    /* Read whatever the socket holds (several records of a WRITE payload)
     * in one read(2), not a header and a body per record. SSL_read still
     * says WANT_READ only when it needs the socket, so polling stays right. */
    SSL_CTX_set_read_ahead(t->ctx, 1);
    SSL_CTX_set_default_read_buffer_len(t->ctx, 64 * 1024);
    /* TLS 1.2 suites: forward-secret AEAD first; PSK suites for PSK. */
    const char *ciphers =
        t->psk ? "ECDHEPSK:DHEPSK:PSK:!NULL:!MD5:!RC4:!3DES:!CAMELLIA:!ARIA:@STRENGTH"
               : "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!RC4:!3DES";
    if (SSL_CTX_set_cipher_list(t->ctx, ciphers) != 1) {
        log_err("nbd: TLS: no usable cipher suite");
        rc = -EINVAL;
        goto fail;
    }
    /* TLS 1.3: AES-GCM first (AES-NI); a PSK from the legacy callback
     * needs a SHA-256 suite. */
    if (SSL_CTX_set_ciphersuites(t->ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                         "TLS_CHACHA20_POLY1305_SHA256") != 1) {
        log_err("nbd: TLS: no usable TLS 1.3 cipher suite");
        rc = -EINVAL;
        goto fail;
    }
    if (t->psk) {
        rc = tls_psk_load(t, o->psk_file);
        if (rc < 0)
            goto fail;
        SSL_CTX_set_psk_server_callback(t->ctx, tls_psk_server_cb);
    } else {
        rc = tls_x509_load(t, o->cert_dir);
        if (rc < 0)
            goto fail;
    }
    ERR_clear_error();
    *out = t;
    return 0;
fail:
    ERR_clear_error();
    nbd_tls_free(t);
    return rc;
}

/* ---- a connection's TLS stream ------------------------------------------ */

/* The client certificate's name check (X.509 with an allow list). */
static int tls_x509_peer(struct nbd_conn *c, SSL *ssl, char *name, size_t len)
{
    const struct nbd_tls *t = c->srv->cfg.tls;
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (!cert) {
        snprintf(name, len, "(no client certificate)");
        if (t->nallow) {
            log_warn("nbd: %s: TLS client presented no certificate (--tls-allow is set)", c->peer);
            return -EACCES;
        }
        return 0;
    }
    X509_NAME *subj = X509_get_subject_name(cert);
    char cn[256] = "", dn[512] = "";
    /* the CN as UTF-8; one with an embedded NUL matches no name */
    int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    unsigned char *u = NULL;
    int ulen =
        idx >= 0 ? ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)))
                 : -1;
    if (ulen > 0 && (size_t)ulen < sizeof(cn) && strlen((char *)u) == (size_t)ulen)
        memcpy(cn, u, (size_t)ulen + 1);
    OPENSSL_free(u);
    BIO *b = BIO_new(BIO_s_mem());
    if (b) {
        X509_NAME_print_ex(b, subj, 0, XN_FLAG_RFC2253);
        int n = BIO_read(b, dn, sizeof(dn) - 1);
        dn[n > 0 ? n : 0] = 0;
        BIO_free(b);
    }
    X509_free(cert);
    tls_printable(dn[0] ? dn : cn, name, len);
    if (t->nallow && !tls_allowed(t, cn) && !tls_allowed(t, dn)) {
        log_warn("nbd: %s: TLS client certificate '%s' is not in --tls-allow", c->peer, name);
        return -EACCES;
    }
    return 0;
}

int nbd_tls_accept(struct nbd_conn *c)
{
    const struct nbd_tls *t = c->srv->cfg.tls;
    char why[256];
    int fl = fcntl(c->fd, F_GETFL);
    if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    c->tls_wbuf = malloc(NBD_TLS_WBUF);
    SSL *ssl = SSL_new(t->ctx);
    if (!ssl || !c->tls_wbuf || SSL_set_fd(ssl, c->fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_set_app_data(ssl, c);
    for (;;) {
        ERR_clear_error();
        int r = SSL_accept(ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(ssl, r);
        int rc;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            rc = nbd_conn_wait(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, -1);
            if (rc == 0)
                continue;
            log_warn("nbd: %s: TLS handshake: %s", c->peer,
                     rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
        } else {
            rc = -EACCES;
            log_warn("nbd: %s: TLS handshake failed: %s", c->peer,
                     e == SSL_ERROR_SSL ? tls_reason(why, sizeof(why))
                                        : "connection closed by the client");
        }
        SSL_free(ssl);
        ERR_clear_error();
        return rc;
    }
    char name[300];
    int rc = 0;
    if (t->psk) {
        const char *id = c->tls_psk_id;
        tls_printable(id ? id : "", name, sizeof(name));
    } else {
        rc = tls_x509_peer(c, ssl, name, sizeof(name));
    }
    if (rc < 0) {
        SSL_free(ssl);
        ERR_clear_error();
        return rc;
    }
    /* Records to the socket through a write buffer: one write(2) carries
     * up to 16 records instead of one each (flushed at the end of every
     * batch of replies, nbd_tls_sendv). */
    BIO *sock = SSL_get_wbio(ssl);
    BIO *wbuf = BIO_new(BIO_f_buffer());
    if (wbuf && BIO_set_write_buffer_size(wbuf, TLS_WBIO_BUF) == 1 && BIO_up_ref(sock) == 1) {
        BIO_push(wbuf, sock);     /* the chain holds the reference just taken */
        SSL_set0_wbio(ssl, wbuf); /* drops SSL's old wbio reference to sock */
    } else {
        BIO_free(wbuf);
    }
    log_info("nbd: %s: TLS %s %s, %s '%s'", c->peer, SSL_get_version(ssl), SSL_get_cipher_name(ssl),
             t->psk ? "PSK identity" : "client", name);
    c->ssl = ssl;
    return 0;
}

/* Wait for what an SSL call asked for. Reads wait without a limit (a
 * client may idle) unless the handshake deadline is set; writes wait at
 * most the send timeout. */
static int tls_wait(struct nbd_conn *c, int e, bool writing)
{
    int tmo = writing ? (int)c->srv->cfg.send_timeout_ms : -1;
    return nbd_conn_wait(c, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, tmo);
}

ssize_t nbd_tls_recv(struct nbd_conn *c, void *buf, size_t len)
{
    SSL *ssl = c->ssl;
    for (;;) {
        pthread_mutex_lock(&c->ssl_lock);
        ERR_clear_error();
        int r = SSL_read(ssl, buf, (int)MIN(len, (size_t)INT_MAX));
        int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, r);
        int err = errno;
        char why[256] = "";
        if (e == SSL_ERROR_SSL)
            tls_reason(why, sizeof(why));
        ERR_clear_error();
        pthread_mutex_unlock(&c->ssl_lock);
        if (r > 0)
            return r;
        switch (e) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE: {
            int rc = tls_wait(c, e, false);
            if (rc < 0)
                return rc;
            continue;
        }
        case SSL_ERROR_ZERO_RETURN:
            return 0;
        case SSL_ERROR_SYSCALL:
            return err ? -err : -ECONNRESET;
        default:
            log_warn("nbd: %s: TLS receive failed: %s", c->peer, why);
            return -EPROTO;
        }
    }
}

/* Write len bytes (a whole buffer: SSL_write retried with the same buffer
 * after WANT_WRITE, as OpenSSL requires). */
static int tls_write(struct nbd_conn *c, const uint8_t *p, size_t len)
{
    SSL *ssl = c->ssl;
    while (len > 0) {
        int chunk = (int)MIN(len, TLS_WRITE_CHUNK);
        pthread_mutex_lock(&c->ssl_lock);
        ERR_clear_error();
        int r = SSL_write(ssl, p, chunk);
        int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, r);
        int err = errno;
        ERR_clear_error();
        pthread_mutex_unlock(&c->ssl_lock);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            int rc = tls_wait(c, e, true);
            if (rc < 0)
                return rc;
            continue;
        }
        return e == SSL_ERROR_SYSCALL && err ? -err : -EPIPE;
    }
    return 0;
}

/* Push what the write buffer holds to the socket. */
static int tls_flush(struct nbd_conn *c)
{
    for (;;) {
        pthread_mutex_lock(&c->ssl_lock);
        BIO *w = SSL_get_wbio(c->ssl);
        int r = BIO_flush(w);
        bool retry = r <= 0 && BIO_should_retry(w);
        int err = errno;
        ERR_clear_error();
        pthread_mutex_unlock(&c->ssl_lock);
        if (r > 0)
            return 0;
        if (!retry)
            return err ? -err : -EPIPE;
        int rc = tls_wait(c, SSL_ERROR_WANT_WRITE, true);
        if (rc < 0)
            return rc;
    }
}

int nbd_tls_sendv(struct nbd_conn *c, const struct iovec *iov, int n)
{
    uint8_t *w = c->tls_wbuf;
    size_t fill = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        while (len > 0) {
            if (fill == 0 && len >= NBD_TLS_WBUF) { /* large payload: no copy */
                int rc = tls_write(c, p, len);
                if (rc < 0)
                    return rc;
                break;
            }
            size_t k = MIN(len, NBD_TLS_WBUF - fill);
            memcpy(w + fill, p, k);
            fill += k;
            p += k;
            len -= k;
            if (fill == NBD_TLS_WBUF) {
                int rc = tls_write(c, w, fill);
                if (rc < 0)
                    return rc;
                fill = 0;
            }
        }
    }
    if (fill) {
        int rc = tls_write(c, w, fill);
        if (rc < 0)
            return rc;
    }
    return tls_flush(c);
}

void nbd_tls_conn_end(struct nbd_conn *c)
{
    if (!c->ssl)
        return;
    pthread_mutex_lock(&c->ssl_lock);
    SSL_shutdown(c->ssl); /* best effort close_notify: the socket is non-blocking */
    (void)BIO_flush(SSL_get_wbio(c->ssl));
    SSL_free(c->ssl);
    ERR_clear_error();
    c->ssl = NULL;
    pthread_mutex_unlock(&c->ssl_lock);
}
