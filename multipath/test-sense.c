/* Unit tests of SCSI status / sense classification (sense.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "sense.h"
#include "util.h"

struct sense_case {
    uint8_t key, asc, ascq;
    enum lun_sense_class cls;
    int err;
};

static const struct sense_case sense_cases[] = {
    /* retry on the same path */
    {0x6, 0x29, 0x00, LUN_SENSE_RETRY_SAME, -EAGAIN},    /* power on / reset */
    {0x6, 0x2A, 0x01, LUN_SENSE_RETRY_SAME, -EAGAIN},    /* mode parameters changed */
    {0x6, 0x2A, 0x04, LUN_SENSE_RETRY_SAME, -EAGAIN},    /* reservations released */
    {0x6, 0x3F, 0x0E, LUN_SENSE_RETRY_SAME, -EAGAIN},    /* reported luns changed */
    {0xB, 0x47, 0x03, LUN_SENSE_RETRY_SAME, -ECANCELED}, /* aborted: CRC error */
    {0xB, 0x00, 0x00, LUN_SENSE_RETRY_SAME, -ECANCELED}, /* aborted (another's LUN RESET) */
    /* retry on the same path after a back-off */
    {0x2, 0x04, 0x01, LUN_SENSE_RETRY_LATER, -EBUSY}, /* becoming ready */
    {0x2, 0x04, 0x0A, LUN_SENSE_RETRY_LATER, -EBUSY}, /* ALUA transition */
    /* fail over */
    {0x2, 0x04, 0x03, LUN_SENSE_FAILOVER, -EIO}, /* manual intervention */
    {0x2, 0x04, 0x0B, LUN_SENSE_FAILOVER, -EIO}, /* standby port */
    {0x2, 0x04, 0x0C, LUN_SENSE_FAILOVER, -EIO}, /* unavailable port */
    /* fail up */
    {0x6, 0x2A, 0x03, LUN_SENSE_FAIL_UP, -EBADE},      /* reservations preempted: fenced */
    {0x6, 0x2A, 0x05, LUN_SENSE_FAIL_UP, -EBADE},      /* registrations preempted: fenced */
    {0x3, 0x11, 0x00, LUN_SENSE_FAIL_UP, -EIO},        /* unrecovered read error */
    {0x3, 0x0C, 0x00, LUN_SENSE_FAIL_UP, -EIO},        /* write error */
    {0x4, 0x44, 0x00, LUN_SENSE_FAIL_UP, -EIO},        /* hardware error */
    {0xE, 0x1D, 0x00, LUN_SENSE_FAIL_UP, -EILSEQ},     /* miscompare */
    {0x5, 0x25, 0x00, LUN_SENSE_FAIL_UP, -ENODEV},     /* LUN not supported: PDL */
    {0x5, 0x20, 0x00, LUN_SENSE_FAIL_UP, -EOPNOTSUPP}, /* invalid opcode */
    {0x5, 0x24, 0x00, LUN_SENSE_FAIL_UP, -EOPNOTSUPP}, /* invalid field in CDB */
    {0x5, 0x21, 0x00, LUN_SENSE_FAIL_UP, -EINVAL},     /* LBA out of range */
    {0x7, 0x27, 0x00, LUN_SENSE_FAIL_UP, -EROFS},      /* write protected */
    {0x2, 0x3A, 0x00, LUN_SENSE_FAIL_UP, -EIO},        /* medium not present */
    /* not a failure */
    {0x0, 0x00, 0x00, LUN_SENSE_OK, 0},
    {0x1, 0x17, 0x01, LUN_SENSE_OK, 0},
};

static void test_sense_table_classification_and_errno(void **state)
{
    for (size_t i = 0; i < ARRAY_SIZE(sense_cases); i++) {
        const struct sense_case *c = &sense_cases[i];
        if (lun_sense_classify(c->key, c->asc, c->ascq) != c->cls)
            fail_msg("%02X/%02X/%02X: class %s, expected %s", c->key, c->asc, c->ascq,
                     lun_sense_class_name(lun_sense_classify(c->key, c->asc, c->ascq)),
                     lun_sense_class_name(c->cls));
        if (lun_sense_errno(c->key, c->asc, c->ascq) != c->err)
            fail_msg("%02X/%02X/%02X: errno %d, expected %d", c->key, c->asc, c->ascq,
                     lun_sense_errno(c->key, c->asc, c->ascq), c->err);
        /* CHECK CONDITION defers to the sense. */
        assert_int_equal(lun_status_classify(LUN_STATUS_CHECK_CONDITION, c->key, c->asc, c->ascq),
                         c->cls);
    }
}

static void test_status_byte_classification(void **state)
{
    assert_int_equal(lun_status_classify(0x00, 0, 0, 0), LUN_SENSE_OK);
    assert_int_equal(lun_status_classify(0x08, 0, 0, 0), LUN_SENSE_RETRY_LATER);
    assert_int_equal(lun_status_classify(0x28, 0, 0, 0), LUN_SENSE_RETRY_LATER);
    assert_int_equal(lun_status_classify(0x18, 0, 0, 0), LUN_SENSE_FAIL_UP);
    assert_int_equal(lun_status_classify(0x40, 0, 0, 0), LUN_SENSE_RETRY_SAME); /* TASK ABORTED */
    assert_int_equal(lun_status_errno(0x40, 0, 0, 0), -ECANCELED);
    assert_int_equal(lun_status_errno(0x00, 0, 0, 0), 0);
    assert_int_equal(lun_status_errno(0x18, 0, 0, 0), -EBADE);
    assert_int_equal(lun_status_errno(0x08, 0, 0, 0), -EBUSY);
    assert_int_equal(lun_status_errno(0x28, 0, 0, 0), -EBUSY);
    assert_int_equal(lun_status_errno(0x02, 0x5, 0x25, 0x00), -ENODEV);
    assert_int_equal(lun_status_errno(0x02, 0x0, 0x00, 0x00), -EIO); /* CC without sense */
    assert_string_equal(lun_status_name(0x18), "RESERVATION CONFLICT");
    assert_string_equal(lun_status_name(0x28), "TASK SET FULL");
    assert_string_equal(lun_status_name(0x08), "BUSY");
}

static void test_result_classification_of_transport_errors(void **state)
{
    assert_int_equal(lun_result_classify(0, 0, 0, 0), LUN_SENSE_OK);
    assert_int_equal(lun_result_classify(-ENOTCONN, 0, 0, 0), LUN_SENSE_FAILOVER);
    assert_int_equal(lun_result_classify(-ETIMEDOUT, 0, 0, 0), LUN_SENSE_FAILOVER);
    assert_int_equal(lun_result_classify(-ECANCELED, 0, 0, 0), LUN_SENSE_RETRY_SAME);
    assert_int_equal(lun_result_classify(-ECONNRESET, 0, 0, 0), LUN_SENSE_FAILOVER);
    assert_int_equal(lun_result_classify(-EBUSY, 0, 0, 0), LUN_SENSE_RETRY_LATER);
    assert_int_equal(lun_result_classify(-EAGAIN, 0, 0, 0), LUN_SENSE_RETRY_SAME);
    assert_int_equal(lun_result_classify(-EIO, 0, 0, 0), LUN_SENSE_FAIL_UP);
    assert_int_equal(lun_result_classify(-EBADE, 0, 0, 0), LUN_SENSE_FAIL_UP);
    /* The sense decides when present. */
    assert_int_equal(lun_result_classify(-EAGAIN, 0x6, 0x29, 0x00), LUN_SENSE_RETRY_SAME);
    assert_int_equal(lun_result_classify(-EBADE, 0x6, 0x2A, 0x03), LUN_SENSE_FAIL_UP);
    assert_int_equal(lun_result_classify(-EIO, 0x3, 0x11, 0x00), LUN_SENSE_FAIL_UP);
    assert_int_equal(lun_result_classify(-ENODEV, 0x5, 0x25, 0x00), LUN_SENSE_FAIL_UP);
}

static void test_sense_text_for_messages(void **state)
{
    char b[LUN_SENSE_STR_MAX];
    assert_string_equal(lun_sense_str(0x5, 0x25, 0x00, b, sizeof b),
                        "ILLEGAL REQUEST: LOGICAL UNIT NOT SUPPORTED (05/25/00)");
    assert_string_equal(lun_sense_str(0x6, 0x2A, 0x03, b, sizeof b),
                        "UNIT ATTENTION: RESERVATIONS PREEMPTED (06/2A/03)");
    assert_string_equal(lun_sense_str(0xE, 0x1D, 0x00, b, sizeof b),
                        "MISCOMPARE: MISCOMPARE DURING VERIFY OPERATION (0E/1D/00)");
    assert_string_equal(lun_sense_str(0x2, 0x04, 0x07, b, sizeof b),
                        "NOT READY: LOGICAL UNIT NOT READY (02/04/07)");
    assert_string_equal(lun_sense_str(0x3, 0x77, 0x12, b, sizeof b),
                        "MEDIUM ERROR: ASC/ASCQ 77/12 (03/77/12)");
    /* Truncation is safe. */
    char small[8];
    lun_sense_str(0x5, 0x25, 0x00, small, sizeof small);
    assert_int_equal(strlen(small), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sense_table_classification_and_errno),
        cmocka_unit_test(test_status_byte_classification),
        cmocka_unit_test(test_result_classification_of_transport_errors),
        cmocka_unit_test(test_sense_text_for_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
