/* Unit tests of the iSCSI path's pure parts: login-failure mapping, SCSI
 * result mapping, VPD 0x83 designator choice, RSOC parsing. The session
 * itself is tested against tgtd (tests/lun/iscsi-*.sh).
 *
 * iscsi.c is included so its static helpers can be tested; the library's
 * copy of iscsi.o is then not linked in (this file defines its symbols).
 */
#include "iscsi.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

static void test_login_error_maps_status_and_socket_errors(void **state)
{
    const char *reason = NULL;
    assert_int_equal(
        login_error("Failed to log in to target. Status: Authentication failure(513)", &reason),
        -EACCES);
    assert_non_null(strstr(reason, "CHAP"));
    assert_int_equal(
        login_error("Failed to log in to target. Status: Authorization failure(514)", &reason),
        -EACCES);
    assert_non_null(strstr(reason, "not authorized"));
    assert_int_equal(
        login_error("Failed to log in to target. Status: Target not found(515)", &reason), -ENOENT);
    assert_non_null(strstr(reason, "no such target"));
    assert_int_equal(login_error("Failed to connect to iSCSI socket. iscsi_service: socket error "
                                 "Connection refused(111).",
                                 &reason),
                     -ECONNREFUSED);
    assert_int_equal(login_error("socket error No route to host(113)", &reason), -EHOSTUNREACH);
    assert_int_equal(
        login_error("Authentication failed. Invalid CHAP_R response from the target", &reason),
        -EACCES);
}

static void test_task_result_maps_status_and_sense(void **state)
{
    struct scsi_task t;
    uint8_t k, a, q;
    memset(&t, 0, sizeof(t));
    assert_int_equal(task_result(SCSI_STATUS_GOOD, &t, &k, &a, &q), 0);
    assert_int_equal(task_result(SCSI_STATUS_RESERVATION_CONFLICT, &t, &k, &a, &q), -EBADE);
    assert_int_equal(task_result(SCSI_STATUS_CANCELLED, NULL, &k, &a, &q), -ENOTCONN);
    assert_int_equal(task_result(SCSI_STATUS_ERROR, NULL, &k, &a, &q), -EIO);

    t.sense.key = SCSI_SENSE_UNIT_ATTENTION;
    t.sense.ascq = 0x2A03; /* RESERVATIONS PREEMPTED: fenced */
    assert_int_equal(task_result(SCSI_STATUS_CHECK_CONDITION, &t, &k, &a, &q), -EBADE);
    assert_int_equal(k, 6);
    assert_int_equal(a, 0x2A);
    assert_int_equal(q, 0x03);

    t.sense.key = SCSI_SENSE_ILLEGAL_REQUEST;
    t.sense.ascq = 0x2500; /* LUN not supported */
    assert_int_equal(task_result(SCSI_STATUS_CHECK_CONDITION, &t, &k, &a, &q), -ENODEV);
    t.sense.ascq = 0x2000; /* invalid opcode */
    assert_int_equal(task_result(SCSI_STATUS_CHECK_CONDITION, &t, &k, &a, &q), -EOPNOTSUPP);
    t.sense.key = SCSI_SENSE_MISCOMPARE;
    t.sense.ascq = 0x1D00;
    assert_int_equal(task_result(SCSI_STATUS_CHECK_CONDITION, &t, &k, &a, &q), -EILSEQ);
    t.sense.key = SCSI_SENSE_MEDIUM_ERROR;
    t.sense.ascq = 0x1100;
    assert_int_equal(task_result(SCSI_STATUS_CHECK_CONDITION, &t, &k, &a, &q), -EIO);
}

/* A VPD 0x83 page: header + designators. */
static size_t vpd83(uint8_t *p, const uint8_t (*desc)[24], const size_t *lens, int n)
{
    size_t off = 4;
    for (int i = 0; i < n; i++) {
        memcpy(p + off, desc[i], lens[i]);
        off += lens[i];
    }
    p[1] = 0x83;
    be16_put(p + 2, (uint16_t)(off - 4));
    return off;
}

static void test_designator_prefers_naa_then_eui_then_t10(void **state)
{
    /* As tgt sends them: T10 vendor id "IET     00010001", NAA 3000000100000001. */
    const uint8_t d[3][24] = {
        {0x02, 0x01, 0x00, 16,  'I', 'E', 'T', ' ', ' ', ' ',
         ' ',  ' ',  '0',  '0', '0', '1', '0', '0', '0', '1'},
        {0x01, 0x02, 0x00, 8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08},
        {0x01, 0x03, 0x00, 8, 0x30, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01},
    };
    const size_t lens[3] = {20, 12, 12};
    uint8_t page[128] = {0};
    char out[LUN_ID_MAX];

    size_t n = vpd83(page, d, lens, 3);
    probe_designator(page, n, out, sizeof(out));
    assert_string_equal(out, "naa.3000000100000001");

    n = vpd83(page, d, lens, 2); /* T10 + EUI-64 */
    probe_designator(page, n, out, sizeof(out));
    assert_string_equal(out, "eui.0102030405060708");

    n = vpd83(page, d, lens, 1); /* T10 only */
    probe_designator(page, n, out, sizeof(out));
    assert_string_equal(out, "t10.IET_____00010001");

    /* A target-port designator (association 1) is not the LUN's identity. */
    uint8_t port[1][24] = {{0x01, 0x13, 0x00, 8, 9, 9, 9, 9, 9, 9, 9, 9}};
    const size_t plen[1] = {12};
    out[0] = 0;
    n = vpd83(page, (const uint8_t(*)[24])port, plen, 1);
    probe_designator(page, n, out, sizeof(out));
    assert_string_equal(out, "");

    /* Truncated page: no read past its end. */
    n = vpd83(page, d, lens, 3);
    out[0] = 0;
    probe_designator(page, n - 4, out, sizeof(out));
    assert_string_equal(out, "eui.0102030405060708");
}

static void test_rsoc_parse_lists_what_tgt_lists(void **state)
{
    uint8_t buf[4 + 8 * 8] = {0};
    struct rsoc_result r;
    const struct {
        uint8_t op;
        uint16_t sa;
        bool servactv;
    } cmds[] = {{0x88, 0, false}, {0x8A, 0, false}, {0x5F, 0, true},  {0x5F, 4, true},
                {0x5F, 6, true},  {0x91, 0, false}, {0x93, 0, false}, {0x5E, 2, true}};
    for (size_t i = 0; i < ARRAY_SIZE(cmds); i++) {
        uint8_t *e = buf + 4 + i * 8;
        e[0] = cmds[i].op;
        be16_put(e + 2, cmds[i].sa);
        e[5] = cmds[i].servactv ? 1 : 0;
    }
    be32_put(buf, sizeof(buf) - 4);
    rsoc_parse(buf, sizeof(buf), &r);
    assert_true(r.valid);
    assert_false(r.caw);
    assert_true(r.pr_in && r.pr_out);
    assert_false(r.pr_preempt_abort);
    assert_true(r.sync16 && r.ws16 && r.read16 && r.write16);
    assert_false(r.unmap);

    /* COMPARE AND WRITE and PREEMPT AND ABORT when listed. */
    buf[4] = 0x89;
    be16_put(buf + 4 + 3 * 8 + 2, LUN_PR_ACT_PREEMPT_ABORT);
    rsoc_parse(buf, sizeof(buf), &r);
    assert_true(r.caw);
    assert_true(r.pr_preempt_abort);

    /* The length field bounds the walk. */
    be32_put(buf, 8);
    rsoc_parse(buf, sizeof(buf), &r);
    assert_true(r.caw);
    assert_false(r.write16);
    rsoc_parse(buf, 3, &r);
    assert_false(r.valid);
}

static void test_uri_redaction_hides_the_chap_password(void **state)
{
    char *s = lun_uri_redact("iscsi://alice%secret@10.0.0.1:3260/iqn.x:y/1");
    assert_string_equal(s, "iscsi://alice@10.0.0.1:3260/iqn.x:y/1");
    free(s);
    assert_true(lun_uri_is_iscsi("ISCSI://h/iqn.x:y/0"));
    assert_false(lun_uri_is_iscsi("file:///tmp/x"));
}

static void test_open_malformed_uri_fails_at_once(void **state)
{
    struct lun_path *p = (struct lun_path *)0x1;
    log_set_level(LOG_LVL_ERR);
    log_clear_last_error();
    assert_int_equal(lun_path_open_iscsi("iscsi://u%pw@127.0.0.1:3260", NULL, &p), -EINVAL);
    assert_null(p);
    assert_non_null(strstr(log_last_error(), "malformed iSCSI URI"));
    assert_null(strstr(log_last_error(), "pw"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login_error_maps_status_and_socket_errors),
        cmocka_unit_test(test_task_result_maps_status_and_sense),
        cmocka_unit_test(test_designator_prefers_naa_then_eui_then_t10),
        cmocka_unit_test(test_rsoc_parse_lists_what_tgt_lists),
        cmocka_unit_test(test_uri_redaction_hides_the_chap_password),
        cmocka_unit_test(test_open_malformed_uri_fails_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
