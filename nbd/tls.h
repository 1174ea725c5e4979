/* TLS credentials for the NBD server (NBD_OPT_STARTTLS, OpenSSL).
 *
 * Two kinds, as the NBD ecosystem has them:
 *  - PSK: a key file in the format of nbdkit --tls-psk, libnbd's
 *    tls-psk-file and GnuTLS's psktool: one "identity:hexkey" per line.
 *  - X.509: a directory laid out as qemu's tls-creds-x509 endpoint=server:
 *    ca-cert.pem, server-cert.pem, server-key.pem (ca-crl.pem if present).
 *    A client certificate, when one is given, must chain to ca-cert.pem.
 * `allow` limits who may connect: PSK identities, or for X.509 the client
 * certificate's subject CN or full DN (RFC 2253, "CN=a,O=b"); with an allow
 * list an X.509 client must present a certificate.
 *
 * Keys stay in memory only (cleansed when freed) and never appear in a log
 * or an error message.
 */
#ifndef NBD_TLS_H
#define NBD_TLS_H

enum nbd_tls_mode {
    NBD_TLS_OFF = 0, /* NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP */
    NBD_TLS_ON,      /* offered: plaintext clients may still connect */
    NBD_TLS_REQUIRE, /* every option but STARTTLS and ABORT is refused before TLS */
};

struct nbd_tls_options {
    const char *psk_file; /* exactly one of psk_file and cert_dir */
    const char *cert_dir;
    const char *const *allow; /* NULL or nallow names */
    unsigned nallow;
};

struct nbd_tls;

/* Load the credentials. Errors name the file and the reason (never a key). */
int nbd_tls_new(const struct nbd_tls_options *o, struct nbd_tls **out);
void nbd_tls_free(struct nbd_tls *t);
/* "off", "on", "require" */
int nbd_tls_mode_parse(const char *s, enum nbd_tls_mode *out);

#endif
