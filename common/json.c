#include "json.h"

#include <inttypes.h>
#include <math.h>

void json_init(struct json *j, FILE *f)
{
    j->f = f;
    j->depth = 0;
    j->need_comma[0] = false;
}

void json_write_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

static void key(struct json *j, const char *k)
{
    if (j->need_comma[j->depth])
        fputc(',', j->f);
    j->need_comma[j->depth] = true;
    if (k) {
        json_write_string(j->f, k);
        fputc(':', j->f);
    }
}

static void push(struct json *j, char c)
{
    fputc(c, j->f);
    if (j->depth + 1 < JSON_MAX_DEPTH)
        j->depth++;
    j->need_comma[j->depth] = false;
}

void json_obj_begin(struct json *j, const char *k)
{
    key(j, k);
    push(j, '{');
}

void json_obj_end(struct json *j)
{
    fputc('}', j->f);
    if (j->depth > 0)
        j->depth--;
}

void json_arr_begin(struct json *j, const char *k)
{
    key(j, k);
    push(j, '[');
}

void json_arr_end(struct json *j)
{
    fputc(']', j->f);
    if (j->depth > 0)
        j->depth--;
}

void json_str(struct json *j, const char *k, const char *val)
{
    key(j, k);
    if (val)
        json_write_string(j->f, val);
    else
        fputs("null", j->f);
}

void json_u64(struct json *j, const char *k, uint64_t val)
{
    key(j, k);
    fprintf(j->f, "%" PRIu64, val);
}

void json_i64(struct json *j, const char *k, int64_t val)
{
    key(j, k);
    fprintf(j->f, "%" PRId64, val);
}

void json_double(struct json *j, const char *k, double val)
{
    key(j, k);
    if (isfinite(val))
        fprintf(j->f, "%.6g", val);
    else
        fputs("null", j->f);
}

void json_bool(struct json *j, const char *k, bool val)
{
    key(j, k);
    fputs(val ? "true" : "false", j->f);
}

void json_null(struct json *j, const char *k)
{
    key(j, k);
    fputs("null", j->f);
}

void json_finish(struct json *j)
{
    fputc('\n', j->f);
    fflush(j->f);
}
