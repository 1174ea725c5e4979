/* The LUN arguments of a clusterfs command, grouped into LUNs: see
 * cfs_group.h. */
#include "cfs_group.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* Messages logged while opening a LUN are collected, not printed: the
 * command prints one line per failed LUN. */
static void cfs_lun_log_quiet(enum log_level level, const char *msg, void *opaque)
{
    if (level > LOG_LVL_WARN)
        fprintf(stderr, "%s: %s\n", log_program(), msg);
}

/* The reason part of msg: without a leading "<uri>: " (or the file path's). */
static const char *cfs_lun_reason(const char *uri, const char *msg)
{
    const char *cands[3] = {uri, NULL, NULL};
    char *plain = NULL;
    if (!strncmp(uri, "file://", 7)) {
        const char *p = uri + 7;
        if (!strncmp(p, "localhost/", 10))
            p += 9;
        plain = strndup(p, strcspn(p, "?"));
        cands[1] = plain;
    }
    const char *reason = msg;
    for (int i = 0; i < 3; i++) {
        const char *c = cands[i];
        if (!c)
            continue;
        size_t n = strlen(c);
        if (n && !strncmp(msg, c, n) && msg[n] == ':' && msg[n + 1] == ' ') {
            reason = msg + n + 2;
            break;
        }
    }
    /* iSCSI messages name the URI without its password. */
    const char *at = strstr(uri, "://");
    if (reason == msg && at) {
        const char *colon = strstr(msg, ": ");
        if (colon && !strncmp(msg, uri, (size_t)(at - uri) + 3))
            reason = colon + 2;
    }
    free(plain);
    return reason;
}

/* The portal could not be reached (not a configuration error). */
static bool cfs_lun_unreachable(int rc)
{
    return rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -ENETUNREACH || rc == -ETIMEDOUT ||
           rc == -ENOTCONN || rc == -ECONNRESET;
}

/* Two iSCSI URIs naming the same target IQN and LUN number (any portal). */
static bool cfs_lun_same_target(const char *a, const char *b)
{
    if (strncasecmp(a, "iscsi://", 8) || strncasecmp(b, "iscsi://", 8))
        return false;
    const char *ta = strchr(a + 8, '/'), *tb = strchr(b + 8, '/');
    return ta && tb && !strcmp(ta, tb);
}

int cfs_lun_args_group(const char *const *uris, unsigned n, const struct lun_options *opts,
                       struct cfs_lun_args *out)
{
    struct cfs_lun_arg *args = calloc(n, sizeof *args);
    if (!args) {
        log_err("out of memory");
        return -ENOMEM;
    }
    out->n = n;
    out->a = args;
    out->opts = opts;
    int status = 0;
    /* 1. Each argument alone: its identity, or why it failed. */
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        a->uri = uris[i];
        a->group = -1;
        log_clear_last_error();
        log_set_sink(cfs_lun_log_quiet, NULL);
        a->rc = lun_open(a->uri, opts, &a->lun);
        log_set_sink(NULL, NULL);
        if (a->rc < 0) {
            const char *msg = log_last_error();
            a->msg = strdup(msg[0] ? msg : "");
        }
    }
    /* 2. Groups: same identity; an unreachable iSCSI URI joins the group
     * naming the same target and LUN number. */
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        if (!a->lun)
            continue;
        a->group = (int)i;
        for (unsigned k = 0; k < i; k++) {
            if (args[k].lun && args[k].group == (int)k &&
                !strcmp(lun_get_info(args[k].lun)->id, lun_get_info(a->lun)->id)) {
                a->group = (int)k;
                break;
            }
        }
    }
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        if (a->lun || !cfs_lun_unreachable(a->rc))
            continue;
        for (unsigned k = 0; k < n; k++) {
            if (args[k].lun && cfs_lun_same_target(a->uri, args[k].uri)) {
                a->group = args[k].group;
                break;
            }
        }
    }
    /* 3. Arguments that belong to no LUN: one line each. */
    for (unsigned i = 0; i < n; i++) {
        struct cfs_lun_arg *a = &args[i];
        if (a->group >= 0)
            continue;
        /* One line: "clusterfs: <uri>: <reason>", password removed. */
        char *name = lun_uri_redact(a->uri);
        const char *msg = a->msg ? a->msg : "";
        const char *reason = msg[0] ? cfs_lun_reason(a->uri, msg) : strerror(-a->rc);
        if (name && reason == msg)
            reason = cfs_lun_reason(name, msg);
        fprintf(stderr, "%s: %s: %s\n", log_program(), name ? name : a->uri, reason);
        free(name);
        status = 1;
    }
    return status;
}

bool cfs_lun_args_is_lun(const struct cfs_lun_args *la, unsigned g)
{
    return g < la->n && la->a[g].group == (int)g;
}

int cfs_lun_args_open(struct cfs_lun_args *la, unsigned g, struct lun **out)
{
    struct cfs_lun_arg *args = la->a;
    const char *uris[la->n];
    unsigned m = 0;
    for (unsigned i = g; i < la->n; i++)
        if (args[i].group == (int)g)
            uris[m++] = args[i].uri;
    if (m == 1) {
        *out = args[g].lun;
        args[g].lun = NULL;
        return 0;
    }
    for (unsigned i = g; i < la->n; i++) {
        if (args[i].group == (int)g && args[i].lun) {
            lun_close(args[i].lun);
            args[i].lun = NULL;
        }
    }
    log_clear_last_error();
    log_set_sink(cfs_lun_log_quiet, NULL);
    int rc = lun_open_paths(uris, m, la->opts, out);
    log_set_sink(NULL, NULL);
    if (rc < 0) {
        const char *msg = log_last_error();
        char *name = lun_uri_redact(uris[0]);
        fprintf(stderr, "%s: %s: %s\n", log_program(), name ? name : uris[0],
                msg[0] ? msg : strerror(-rc));
        free(name);
    }
    return rc;
}

void cfs_lun_args_free(struct cfs_lun_args *la)
{
    for (unsigned i = 0; i < la->n; i++) {
        lun_close(la->a[i].lun);
        free(la->a[i].msg);
    }
    free(la->a);
    la->a = NULL;
    la->n = 0;
}
