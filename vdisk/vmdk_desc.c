/* vmdk_desc.c: the VMDK text descriptor, parsed and emitted.
 *
 * Design notes
 * - The parser is strict about what it uses (version, CID, parentCID,
 *   createType, parentFileNameHint, extent lines) and keeps every other
 *   "key = value" pair in order so that a rewrite (CID update, resize)
 *   preserves the ddb.* keys VMware and QEMU put there.
 * - It reads at most `len` bytes and stops at the first NUL (embedded
 *   descriptors are NUL-padded), so an unterminated or huge descriptor
 *   cannot run past its buffer; the callers cap len at VD_MAX_DESC.
 * - Extent file names must stay in the descriptor's folder: no absolute
 *   path and no ".." component, so a crafted descriptor cannot make us open
 *   (let alone write) files elsewhere.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "vdisk_internal.h"

#define VD_MAX_VIRTUAL_BYTES (1ull << 50) /* 1 PiB */

int vmdk_desc_set_str(char **field, const char *val)
{
    char *n = NULL;
    if (val && !(n = strdup(val)))
        return -ENOMEM;
    free(*field);
    *field = n;
    return 0;
}

void vmdk_desc_free(struct vmdk_desc *d)
{
    free(d->create_type);
    free(d->parent_hint);
    for (int i = 0; i < d->n_ext; i++)
        free(d->ext[i].fname);
    free(d->ext);
    for (int i = 0; i < d->n_ddb; i++) {
        free(d->ddb[i].key);
        free(d->ddb[i].val);
    }
    free(d->ddb);
    memset(d, 0, sizeof(*d));
}

bool vmdk_fname_is_safe(const char *name)
{
    if (!name || !*name || name[0] == '/')
        return false;
    const char *p = name;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        if (!slash)
            break;
        p = slash + 1;
    }
    return true;
}

const char *vmdk_desc_ddb_get(const struct vmdk_desc *d, const char *key)
{
    for (int i = 0; i < d->n_ddb; i++)
        if (strcmp(d->ddb[i].key, key) == 0)
            return d->ddb[i].val;
    return NULL;
}

int vmdk_desc_ddb_set(struct vmdk_desc *d, const char *key, const char *val)
{
    for (int i = 0; i < d->n_ddb; i++)
        if (strcmp(d->ddb[i].key, key) == 0)
            return vmdk_desc_set_str(&d->ddb[i].val, val);
    if (d->n_ddb >= VD_MAX_DDB)
        return -E2BIG;
    struct vmdk_kv *n = realloc(d->ddb, sizeof(*n) * (size_t)(d->n_ddb + 1));
    if (!n)
        return -ENOMEM;
    d->ddb = n;
    n[d->n_ddb].key = strdup(key);
    n[d->n_ddb].val = strdup(val);
    if (!n[d->n_ddb].key || !n[d->n_ddb].val) {
        free(n[d->n_ddb].key);
        free(n[d->n_ddb].val);
        return -ENOMEM;
    }
    d->n_ddb++;
    return 0;
}

static char *vd_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

static int vd_parse_hex32(const char *s, uint32_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 8)
        return -EINVAL;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return -EINVAL;
        v = (v << 4) |
            (uint32_t)(isdigit((unsigned char)s[i]) ? s[i] - '0'
                                                    : (tolower((unsigned char)s[i]) - 'a' + 10));
    }
    *out = v;
    return 0;
}

static int vd_parse_u64(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*s); s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (*s)
        return -EINVAL;
    *out = v;
    return 0;
}

/* "RW 2048 SPARSE "name.vmdk" [offset]" */
static int vd_parse_extent_line(char *line, struct vmdk_desc *d, const char *what, int lineno)
{
    struct vmdk_desc_extent e = {0};
    char *p = line;
    char *tok = strsep(&p, " \t");
    if (strcmp(tok, "RW") == 0)
        e.access = VMDK_ACC_RW;
    else if (strcmp(tok, "RDONLY") == 0)
        e.access = VMDK_ACC_RDONLY;
    else
        e.access = VMDK_ACC_NOACCESS;
    while (p && (*p == ' ' || *p == '\t'))
        p++;
    tok = p ? strsep(&p, " \t") : NULL;
    if (!tok || vd_parse_u64(tok, &e.sectors) < 0 || e.sectors == 0 ||
        e.sectors > VD_MAX_VIRTUAL_BYTES / VD_SECTOR) {
        log_err("%s: descriptor line %d: extent size is missing or out of range", what, lineno);
        return -EUCLEAN;
    }
    while (p && (*p == ' ' || *p == '\t'))
        p++;
    tok = p ? strsep(&p, " \t") : NULL;
    if (!tok) {
        log_err("%s: descriptor line %d: extent type missing", what, lineno);
        return -EUCLEAN;
    }
    if (strcmp(tok, "SPARSE") == 0)
        e.type = VMDK_EXT_SPARSE;
    else if (strcmp(tok, "FLAT") == 0)
        e.type = VMDK_EXT_FLAT;
    else if (strcmp(tok, "VMFS") == 0)
        e.type = VMDK_EXT_VMFS;
    else if (strcmp(tok, "VMFSSPARSE") == 0)
        e.type = VMDK_EXT_VMFSSPARSE;
    else if (strcmp(tok, "SESPARSE") == 0)
        e.type = VMDK_EXT_SESPARSE;
    else if (strcmp(tok, "ZERO") == 0)
        e.type = VMDK_EXT_ZERO;
    else {
        log_err("%s: descriptor line %d: extent type '%s' is not supported (SPARSE, FLAT, "
                "VMFS, VMFSSPARSE, SESPARSE, ZERO)",
                what, lineno, tok);
        return -EUCLEAN;
    }
    if (e.type != VMDK_EXT_ZERO) {
        while (p && (*p == ' ' || *p == '\t'))
            p++;
        if (!p || *p != '"') {
            log_err("%s: descriptor line %d: extent file name missing", what, lineno);
            return -EUCLEAN;
        }
        char *end = strchr(p + 1, '"');
        if (!end) {
            log_err("%s: descriptor line %d: unterminated extent file name", what, lineno);
            return -EUCLEAN;
        }
        *end = 0;
        if (!vmdk_fname_is_safe(p + 1)) {
            log_err("%s: descriptor line %d: extent file \"%s\" is outside the image's folder "
                    "(absolute path or ..)",
                    what, lineno, p + 1);
            return -EUCLEAN;
        }
        e.fname = strdup(p + 1);
        if (!e.fname)
            return -ENOMEM;
        p = vd_trim(end + 1);
        if (*p) {
            if (e.type != VMDK_EXT_FLAT && e.type != VMDK_EXT_VMFS) {
                free(e.fname);
                log_err("%s: descriptor line %d: unexpected text after the file name", what,
                        lineno);
                return -EUCLEAN;
            }
            if (vd_parse_u64(p, &e.offset) < 0 || e.offset > VD_MAX_VIRTUAL_BYTES / VD_SECTOR) {
                free(e.fname);
                log_err("%s: descriptor line %d: bad extent offset '%s'", what, lineno, p);
                return -EUCLEAN;
            }
        }
    }
    if (d->n_ext >= VD_MAX_EXTENTS) {
        free(e.fname);
        log_err("%s: descriptor has more than %d extents", what, VD_MAX_EXTENTS);
        return -EUCLEAN;
    }
    struct vmdk_desc_extent *n = realloc(d->ext, sizeof(*n) * (size_t)(d->n_ext + 1));
    if (!n) {
        free(e.fname);
        return -ENOMEM;
    }
    d->ext = n;
    n[d->n_ext++] = e;
    return 0;
}

static int vd_parse_line(char *line, struct vmdk_desc *d, const char *what, int lineno,
                         bool *have_type)
{
    line = vd_trim(line);
    if (!*line || line[0] == '#')
        return 0;
    if (strncmp(line, "RW ", 3) == 0 || strncmp(line, "RDONLY ", 7) == 0 ||
        strncmp(line, "NOACCESS ", 9) == 0 || strncmp(line, "RW\t", 3) == 0)
        return vd_parse_extent_line(line, d, what, lineno);
    char *eq = strchr(line, '=');
    if (!eq) {
        log_err("%s: descriptor line %d: neither \"key = value\" nor an extent: \"%.40s\"", what,
                lineno, line);
        return -EUCLEAN;
    }
    *eq = 0;
    char *key = vd_trim(line);
    char *val = vd_trim(eq + 1);
    size_t vl = strlen(val);
    if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
        val[vl - 1] = 0;
        val++;
    } else if (vl >= 1 && val[0] == '"') {
        log_err("%s: descriptor line %d: unterminated quoted value for %s", what, lineno, key);
        return -EUCLEAN;
    }
    if (strcmp(key, "version") == 0) {
        uint64_t v;
        if (vd_parse_u64(val, &v) < 0 || v < 1 || v > 3) {
            log_err("%s: descriptor line %d: version \"%s\" not supported (1 to 3)", what, lineno,
                    val);
            return -EUCLEAN;
        }
        d->version = (uint32_t)v;
    } else if (strcmp(key, "CID") == 0) {
        if (vd_parse_hex32(val, &d->cid) < 0) {
            log_err("%s: descriptor line %d: CID \"%s\" is not 8 hex digits", what, lineno, val);
            return -EUCLEAN;
        }
    } else if (strcmp(key, "parentCID") == 0) {
        if (vd_parse_hex32(val, &d->parent_cid) < 0) {
            log_err("%s: descriptor line %d: parentCID \"%s\" is not 8 hex digits", what, lineno,
                    val);
            return -EUCLEAN;
        }
    } else if (strcmp(key, "createType") == 0) {
        *have_type = true;
        return vmdk_desc_set_str(&d->create_type, val);
    } else if (strcmp(key, "parentFileNameHint") == 0) {
        if (!*val) {
            log_err("%s: descriptor line %d: empty parentFileNameHint", what, lineno);
            return -EUCLEAN;
        }
        return vmdk_desc_set_str(&d->parent_hint, val);
    } else {
        int rc = vmdk_desc_ddb_set(d, key, val);
        if (rc == -E2BIG) {
            log_err("%s: descriptor has more than %d keys", what, VD_MAX_DDB);
            return -EUCLEAN;
        }
        return rc;
    }
    return 0;
}

int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d, const char *what)
{
    memset(d, 0, sizeof(*d));
    d->version = 1;
    d->parent_cid = 0xffffffffu;
    const char *nul = memchr(text, 0, len);
    if (nul)
        len = (size_t)(nul - text);
    if (len > VD_MAX_DESC) {
        log_err("%s: descriptor is %zu bytes, more than the %u we accept", what, len, VD_MAX_DESC);
        return -EUCLEAN;
    }
    char *buf = malloc(len + 1);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, text, len);
    buf[len] = 0;
    bool have_type = false;
    int rc = 0, lineno = 0;
    char *p = buf;
    while (p && rc == 0) {
        char *line = strsep(&p, "\n");
        lineno++;
        rc = vd_parse_line(line, d, what, lineno, &have_type);
    }
    free(buf);
    if (rc == 0 && !have_type) {
        log_err("%s: descriptor has no createType", what);
        rc = -EUCLEAN;
    }
    if (rc == 0 && d->n_ext == 0) {
        log_err("%s: descriptor has no extent lines", what);
        rc = -EUCLEAN;
    }
    if (rc == 0) {
        uint64_t total = 0;
        for (int i = 0; i < d->n_ext; i++)
            total += d->ext[i].sectors;
        if (total > VD_MAX_VIRTUAL_BYTES / VD_SECTOR) {
            log_err("%s: extents add up to %" PRIu64 " sectors, more than 1 PiB", what, total);
            rc = -EUCLEAN;
        }
    }
    if (rc < 0)
        vmdk_desc_free(d);
    return rc;
}

/* A growing string. */
struct vd_sb {
    char *s;
    size_t len, cap;
    bool oom;
};

static void vd_sb_add(struct vd_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vd_sb_add(struct vd_sb *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 1024) + (size_t)n;
        char *ns = realloc(b->s, ncap);
        if (!ns) {
            b->oom = true;
            return;
        }
        b->s = ns;
        b->cap = ncap;
    }
}

static const char *vd_access_name(enum vmdk_access a)
{
    return a == VMDK_ACC_RW ? "RW" : a == VMDK_ACC_RDONLY ? "RDONLY" : "NOACCESS";
}

static const char *vd_ext_type_name(enum vmdk_ext_type t)
{
    switch (t) {
    case VMDK_EXT_SPARSE:
        return "SPARSE";
    case VMDK_EXT_FLAT:
        return "FLAT";
    case VMDK_EXT_VMFS:
        return "VMFS";
    case VMDK_EXT_VMFSSPARSE:
        return "VMFSSPARSE";
    case VMDK_EXT_SESPARSE:
        return "SESPARSE";
    case VMDK_EXT_ZERO:
        return "ZERO";
    }
    return "?";
}

char *vmdk_desc_emit(const struct vmdk_desc *d)
{
    struct vd_sb b = {0};
    vd_sb_add(&b, "# Disk DescriptorFile\nversion=%u\nCID=%08x\nparentCID=%08x\n",
              d->version ? d->version : 1, d->cid, d->parent_cid);
    for (int i = 0; i < d->n_ddb; i++)
        if (strncmp(d->ddb[i].key, "ddb.", 4) != 0)
            vd_sb_add(&b, "%s=\"%s\"\n", d->ddb[i].key, d->ddb[i].val);
    vd_sb_add(&b, "createType=\"%s\"\n", d->create_type ? d->create_type : "monolithicSparse");
    if (d->parent_hint)
        vd_sb_add(&b, "parentFileNameHint=\"%s\"\n", d->parent_hint);
    vd_sb_add(&b, "\n# Extent description\n");
    for (int i = 0; i < d->n_ext; i++) {
        const struct vmdk_desc_extent *e = &d->ext[i];
        vd_sb_add(&b, "%s %" PRIu64 " %s", vd_access_name(e->access), e->sectors,
                  vd_ext_type_name(e->type));
        if (e->type != VMDK_EXT_ZERO)
            vd_sb_add(&b, " \"%s\"", e->fname ? e->fname : "");
        if (e->type == VMDK_EXT_FLAT || (e->type == VMDK_EXT_VMFS && e->offset))
            vd_sb_add(&b, " %" PRIu64, e->offset);
        vd_sb_add(&b, "\n");
    }
    vd_sb_add(&b, "\n# The Disk Data Base\n#DDB\n\n");
    for (int i = 0; i < d->n_ddb; i++)
        if (strncmp(d->ddb[i].key, "ddb.", 4) == 0)
            vd_sb_add(&b, "%s = \"%s\"\n", d->ddb[i].key, d->ddb[i].val);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
