/* A small streaming JSON writer for --json output.
 *
 *   struct json j; json_init(&j, stdout);
 *   json_obj_begin(&j, NULL);
 *   json_str(&j, "name", "esx1");  json_u64(&j, "slot", 3);
 *   json_arr_begin(&j, "paths"); ... json_arr_end(&j);
 *   json_obj_end(&j); json_finish(&j);   (prints a final newline)
 *
 * Inside an array, pass key = NULL. Strings are escaped per RFC 8259.
 */
#ifndef COMMON_JSON_H
#define COMMON_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 32

struct json {
    FILE *f;
    int depth;
    bool need_comma[JSON_MAX_DEPTH];
};

void json_init(struct json *j, FILE *f);
void json_obj_begin(struct json *j, const char *key);
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j, const char *key);
void json_arr_end(struct json *j);
void json_str(struct json *j, const char *key, const char *val); /* NULL -> null */
void json_u64(struct json *j, const char *key, uint64_t val);
void json_i64(struct json *j, const char *key, int64_t val);
void json_double(struct json *j, const char *key, double val);
void json_bool(struct json *j, const char *key, bool val);
void json_null(struct json *j, const char *key);
void json_finish(struct json *j);

/* Write s as a JSON string literal (with quotes) to f. */
void json_write_string(FILE *f, const char *s);

#endif
