/* Unit tests for common/: byte order, CRC32C, size parsing, JSON, logging. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "json.h"
#include "le.h"
#include "log.h"
#include "util.h"

static void test_le_roundtrip_unaligned(void **state)
{
    uint8_t buf[17] = {0};
    le64_put(buf + 1, 0x0102030405060708ull);
    assert_int_equal(buf[1], 0x08);
    assert_int_equal(buf[8], 0x01);
    assert_true(le64_get(buf + 1) == 0x0102030405060708ull);
    le32_put(buf + 9, 0xdeadbeef);
    assert_int_equal(buf[9], 0xef);
    assert_true(le32_get(buf + 9) == 0xdeadbeef);
    le16_put(buf + 13, 0xabcd);
    assert_int_equal(buf[13], 0xcd);
    assert_int_equal(le16_get(buf + 13), 0xabcd);
    be32_put(buf, 0x11223344);
    assert_int_equal(buf[0], 0x11);
    assert_true(be32_get(buf) == 0x11223344);
    be64_put(buf, 0x8877665544332211ull);
    assert_int_equal(buf[0], 0x88);
    assert_true(be64_get(buf) == 0x8877665544332211ull);
    be16_put(buf, 0x1234);
    assert_int_equal(be16_get(buf), 0x1234);
}

static void test_crc32c_known_vectors(void **state)
{
    assert_true(crc32c("123456789", 9) == 0xE3069283u);
    assert_true(crc32c("", 0) == 0);
    uint8_t zeros[32] = {0};
    assert_true(crc32c(zeros, 32) == 0x8A9136AAu); /* RFC 3720 B.4 */
    uint8_t ones[32];
    memset(ones, 0xff, sizeof ones);
    assert_true(crc32c(ones, 32) == 0x62A8AB43u);
}

static void test_crc32c_incremental_matches_whole(void **state)
{
    uint8_t buf[1000];
    for (int i = 0; i < 1000; i++)
        buf[i] = (uint8_t)(i * 7 + 3);
    uint32_t whole = crc32c(buf, sizeof buf);
    for (size_t cut = 0; cut <= sizeof buf; cut += 37)
        assert_true(crc32c_update(crc32c(buf, cut), buf + cut, sizeof buf - cut) == whole);
}

static void test_parse_size_forms(void **state)
{
    uint64_t v;
    assert_int_equal(parse_size("4096", &v), 0);
    assert_true(v == 4096);
    assert_int_equal(parse_size("64k", &v), 0);
    assert_true(v == 65536);
    assert_int_equal(parse_size("10M", &v), 0);
    assert_true(v == 10ull << 20);
    assert_int_equal(parse_size("2GiB", &v), 0);
    assert_true(v == 2ull << 30);
    assert_int_equal(parse_size("1T", &v), 0);
    assert_true(v == 1ull << 40);
    assert_int_equal(parse_size("", &v), -EINVAL);
    assert_int_equal(parse_size("-1", &v), -EINVAL);
    assert_int_equal(parse_size("12X", &v), -EINVAL);
    assert_int_equal(parse_size("1Gx", &v), -EINVAL);
    assert_int_equal(parse_size("99999999999999999999", &v), -ERANGE);
    assert_int_equal(parse_size("100000000P", &v), -ERANGE);
}

static void test_parse_size_rejects_space_and_sign(void **state)
{
    uint64_t v = 7;
    assert_int_equal(parse_size(" -5", &v), -EINVAL); /* strtoull would wrap it */
    assert_int_equal(parse_size("+5", &v), -EINVAL);
    assert_int_equal(parse_size(" 5", &v), -EINVAL);
    assert_int_equal(parse_size(NULL, &v), -EINVAL);
    assert_true(v == 7);
}

static void test_parse_u64_whole_string_and_range(void **state)
{
    uint64_t v = 7;
    assert_int_equal(parse_u64("256", 1, 4096, &v), 0);
    assert_true(v == 256);
    assert_int_equal(parse_u64("0x100", 0, 4096, &v), 0);
    assert_true(v == 256);
    assert_int_equal(parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);
    v = 7;
    assert_int_equal(parse_u64("abc", 0, 10, &v), -EINVAL);
    assert_int_equal(parse_u64("", 0, 10, &v), -EINVAL);
    assert_int_equal(parse_u64("12abc", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64("1.5", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64("-1", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64(" 1", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64("+1", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64("0x", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64("0xg", 0, 100, &v), -EINVAL);
    assert_int_equal(parse_u64("0", 1, 100, &v), -ERANGE);
    assert_int_equal(parse_u64("101", 1, 100, &v), -ERANGE);
    assert_int_equal(parse_u64("18446744073709551616", 0, UINT64_MAX, &v), -ERANGE);
    assert_true(v == 7);
}

static void test_parse_duration_units(void **state)
{
    uint64_t ms = 7;
    assert_int_equal(parse_duration_ms("2", 1000, &ms), 0);
    assert_true(ms == 2000);
    assert_int_equal(parse_duration_ms("0.5", 1000, &ms), 0);
    assert_true(ms == 500);
    assert_int_equal(parse_duration_ms("5000", 1, &ms), 0);
    assert_true(ms == 5000);
    assert_int_equal(parse_duration_ms("250ms", 1000, &ms), 0);
    assert_true(ms == 250);
    assert_int_equal(parse_duration_ms("1.5s", 1, &ms), 0);
    assert_true(ms == 1500);
    assert_int_equal(parse_duration_ms("2m", 1, &ms), 0);
    assert_true(ms == 120000);
    assert_int_equal(parse_duration_ms("1h", 1, &ms), 0);
    assert_true(ms == 3600000);
    ms = 7;
    assert_int_equal(parse_duration_ms("abc", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("-1", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("2x", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("2 s", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("0x10", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("1e3", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("inf", 1, &ms), -EINVAL);
    assert_int_equal(parse_duration_ms("1e400", 1, &ms), -EINVAL);
    assert_true(ms == 7);
}

static void test_json_escapes_and_nesting(void **state)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    struct json j;
    json_init(&j, f);
    json_obj_begin(&j, NULL);
    json_str(&j, "name", "a\"b\\c\n\x01");
    json_u64(&j, "n", 18446744073709551615ull);
    json_arr_begin(&j, "list");
    json_i64(&j, NULL, -5);
    json_bool(&j, NULL, true);
    json_null(&j, NULL);
    json_arr_end(&j);
    json_obj_end(&j);
    json_finish(&j);
    fclose(f);
    assert_string_equal(out, "{\"name\":\"a\\\"b\\\\c\\n\\u0001\",\"n\":18446744073709551615,"
                             "\"list\":[-5,true,null]}\n");
    free(out);
}

static void test_log_keeps_last_error(void **state)
{
    log_set_level(LOG_LVL_ERR);
    log_clear_last_error();
    assert_string_equal(log_last_error(), "");
    log_info("not an error");
    assert_string_equal(log_last_error(), "");
    log_set_level((enum log_level) - 1); /* silence stderr */
    log_err("lun %s: read at %d failed", "x", 7);
    assert_string_equal(log_last_error(), "lun x: read at 7 failed");
    log_set_level(LOG_LVL_INFO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_le_roundtrip_unaligned),
        cmocka_unit_test(test_crc32c_known_vectors),
        cmocka_unit_test(test_crc32c_incremental_matches_whole),
        cmocka_unit_test(test_parse_size_forms),
        cmocka_unit_test(test_parse_size_rejects_space_and_sign),
        cmocka_unit_test(test_parse_u64_whole_string_and_range),
        cmocka_unit_test(test_parse_duration_units),
        cmocka_unit_test(test_json_escapes_and_nesting),
        cmocka_unit_test(test_log_keeps_last_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
