/* SCSI status and sense classification (see sense.h).
 *
 * Design notes
 * ------------
 * One table-free decision function per question, so the iSCSI path, the
 * single-path LUN core and the multipath engine all agree on what a sense
 * triple means. The rules follow what dm-multipath's scsi_dh / ESXi NMP do:
 *
 * - UNIT ATTENTION tells us something changed on the target (power on,
 *   reset, parameters changed, reservations released); the command was not
 *   executed and can be retried where it failed. The exceptions are 2A/03
 *   RESERVATIONS PREEMPTED and 2A/05 REGISTRATIONS PREEMPTED (SPC-4, what a
 *   PREEMPT raises): our key was removed, we are fenced, and a retry must
 *   not silently succeed elsewhere -- they fail up as -EBADE.
 * - BUSY, TASK SET FULL, NOT READY 04/01 "becoming ready" and 04/0A
 *   "asymmetric access state transition" are transient: retried on the same
 *   path after a back-off, up to the command's deadline (RETRY_LATER); any
 *   other NOT READY (04/03 manual intervention, 04/0B standby, 04/0C
 *   unavailable, ...) means this path cannot serve the LUN now: fail over.
 * - TASK ABORTED status and ABORTED COMMAND: the command was aborted, most
 *   often by a task management function of another initiator (a LOGICAL
 *   UNIT RESET with TAS=1); the path is fine: retry at once on the same
 *   path, as dm-multipath does, and never fail the path for it.
 * - ILLEGAL REQUEST 25/00 "logical unit not supported" is permanent device
 *   loss (PDL): -ENODEV, no failover (every path to this target will say so).
 * - Everything else reported by the device (MEDIUM, HARDWARE, ILLEGAL
 *   REQUEST, DATA PROTECT, MISCOMPARE) is the device's final word.
 */
#include "sense.h"

#include <errno.h>
#include <stdio.h>

enum lun_sense_class lun_sense_classify(uint8_t key, uint8_t asc, uint8_t ascq)
{
    switch (key) {
    case LUN_SK_NO_SENSE:
    case LUN_SK_RECOVERED_ERROR:
        return LUN_SENSE_OK;
    case LUN_SK_UNIT_ATTENTION:
        if (asc == 0x2A && (ascq == 0x03 || ascq == 0x05))
            return LUN_SENSE_FAIL_UP; /* RESERVATIONS / REGISTRATIONS PREEMPTED: fenced */
        return LUN_SENSE_RETRY_SAME;
    case LUN_SK_NOT_READY:
        if (asc == 0x04 && (ascq == 0x01 || ascq == 0x0A))
            return LUN_SENSE_RETRY_LATER; /* becoming ready, ALUA transition */
        if (asc == 0x3A)
            return LUN_SENSE_FAIL_UP; /* medium not present */
        return LUN_SENSE_FAILOVER;
    case LUN_SK_ABORTED_COMMAND:
        return LUN_SENSE_RETRY_SAME;
    case LUN_SK_MEDIUM_ERROR:
    case LUN_SK_HARDWARE_ERROR:
    case LUN_SK_ILLEGAL_REQUEST:
    case LUN_SK_DATA_PROTECT:
    case LUN_SK_MISCOMPARE:
    case LUN_SK_BLANK_CHECK:
    case LUN_SK_VOLUME_OVERFLOW:
    default:
        return LUN_SENSE_FAIL_UP;
    }
}

enum lun_sense_class lun_status_classify(uint8_t status, uint8_t key, uint8_t asc, uint8_t ascq)
{
    switch (status) {
    case LUN_STATUS_GOOD:
    case LUN_STATUS_CONDITION_MET:
        return LUN_SENSE_OK;
    case LUN_STATUS_CHECK_CONDITION:
        return lun_sense_classify(key, asc, ascq);
    case LUN_STATUS_BUSY:
    case LUN_STATUS_TASK_SET_FULL:
        return LUN_SENSE_RETRY_LATER;
    case LUN_STATUS_RESERVATION_CONFLICT:
        return LUN_SENSE_FAIL_UP;
    case LUN_STATUS_TASK_ABORTED:
        return LUN_SENSE_RETRY_SAME;
    case LUN_STATUS_ACA_ACTIVE:
    default:
        return LUN_SENSE_FAIL_UP;
    }
}

static int lun_errno_is_transport(int err)
{
    switch (err) {
    case ENOTCONN:
    case ETIMEDOUT:
    case ECONNRESET:
    case ECONNABORTED:
    case EPIPE:
    case EHOSTUNREACH:
    case ECONNREFUSED:
    case ESHUTDOWN:
    case ENETDOWN:
    case ENETUNREACH:
        return 1;
    default:
        return 0;
    }
}

enum lun_sense_class lun_result_classify(int result, uint8_t key, uint8_t asc, uint8_t ascq)
{
    if (result >= 0)
        return LUN_SENSE_OK;
    if (key != 0 || asc != 0 || ascq != 0) {
        enum lun_sense_class c = lun_sense_classify(key, asc, ascq);
        /* A failure with "no sense" is still a failure: judge by errno. */
        if (c != LUN_SENSE_OK)
            return c;
    }
    if (lun_errno_is_transport(-result))
        return LUN_SENSE_FAILOVER;
    if (result == -EBUSY)
        return LUN_SENSE_RETRY_LATER;
    if (result == -EAGAIN || result == -ECANCELED)
        return LUN_SENSE_RETRY_SAME;
    return LUN_SENSE_FAIL_UP;
}

int lun_sense_errno(uint8_t key, uint8_t asc, uint8_t ascq)
{
    switch (key) {
    case LUN_SK_NO_SENSE:
    case LUN_SK_RECOVERED_ERROR:
        return 0;
    case LUN_SK_UNIT_ATTENTION:
        if (asc == 0x2A && (ascq == 0x03 || ascq == 0x05))
            return -EBADE;
        return -EAGAIN;
    case LUN_SK_NOT_READY:
        if (asc == 0x04 && (ascq == 0x01 || ascq == 0x0A))
            return -EBUSY; /* not yet: retried later */
        return -EIO;
    case LUN_SK_ILLEGAL_REQUEST:
        if (asc == 0x25 && ascq == 0x00)
            return -ENODEV; /* PDL */
        if (asc == 0x20 || asc == 0x24 || asc == 0x26)
            return -EOPNOTSUPP; /* invalid opcode / field in CDB / parameter list */
        if (asc == 0x21)
            return -EINVAL; /* LBA out of range */
        return -EINVAL;
    case LUN_SK_DATA_PROTECT:
        return -EROFS;
    case LUN_SK_MISCOMPARE:
        return -EILSEQ;
    case LUN_SK_ABORTED_COMMAND:
        return -ECANCELED;
    case LUN_SK_MEDIUM_ERROR:
    case LUN_SK_HARDWARE_ERROR:
    default:
        return -EIO;
    }
}

int lun_status_errno(uint8_t status, uint8_t key, uint8_t asc, uint8_t ascq)
{
    switch (status) {
    case LUN_STATUS_GOOD:
    case LUN_STATUS_CONDITION_MET:
        return 0;
    case LUN_STATUS_CHECK_CONDITION: {
        int e = lun_sense_errno(key, asc, ascq);
        return e ? e : -EIO;
    }
    case LUN_STATUS_BUSY:
    case LUN_STATUS_TASK_SET_FULL:
        return -EBUSY;
    case LUN_STATUS_RESERVATION_CONFLICT:
        return -EBADE;
    case LUN_STATUS_TASK_ABORTED:
        return -ECANCELED;
    default:
        return -EIO;
    }
}

const char *lun_sense_class_name(enum lun_sense_class c)
{
    switch (c) {
    case LUN_SENSE_OK:
        return "ok";
    case LUN_SENSE_RETRY_SAME:
        return "retry-same";
    case LUN_SENSE_FAILOVER:
        return "failover";
    case LUN_SENSE_FAIL_UP:
        return "fail-up";
    case LUN_SENSE_RETRY_LATER:
        return "retry-later";
    }
    return "?";
}

const char *lun_sense_key_name(uint8_t key)
{
    static const char *const names[16] = {
        "NO SENSE",       "RECOVERED ERROR", "NOT READY",      "MEDIUM ERROR",
        "HARDWARE ERROR", "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT",
        "BLANK CHECK",    "VENDOR SPECIFIC", "COPY ABORTED",   "ABORTED COMMAND",
        "RESERVED (0xC)", "VOLUME OVERFLOW", "MISCOMPARE",     "COMPLETED",
    };
    return names[key & 0xF];
}

const char *lun_status_name(uint8_t status)
{
    switch (status) {
    case LUN_STATUS_GOOD:
        return "GOOD";
    case LUN_STATUS_CHECK_CONDITION:
        return "CHECK CONDITION";
    case LUN_STATUS_CONDITION_MET:
        return "CONDITION MET";
    case LUN_STATUS_BUSY:
        return "BUSY";
    case LUN_STATUS_RESERVATION_CONFLICT:
        return "RESERVATION CONFLICT";
    case LUN_STATUS_TASK_SET_FULL:
        return "TASK SET FULL";
    case LUN_STATUS_ACA_ACTIVE:
        return "ACA ACTIVE";
    case LUN_STATUS_TASK_ABORTED:
        return "TASK ABORTED";
    }
    return "UNKNOWN STATUS";
}

struct lun_asc_text {
    uint8_t asc, ascq; /* ascq 0xFF: any qualifier */
    const char *text;
};

/* The additional sense codes this project meets (SPC-4 annex D, subset). */
static const struct lun_asc_text lun_asc_texts[] = {
    {0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION"},
    {0x04, 0x00, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE"},
    {0x04, 0x01, "LOGICAL UNIT IS IN PROCESS OF BECOMING READY"},
    {0x04, 0x02, "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED"},
    {0x04, 0x03, "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED"},
    {0x04, 0x0A, "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION"},
    {0x04, 0x0B, "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE"},
    {0x04, 0x0C, "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE"},
    {0x04, 0xFF, "LOGICAL UNIT NOT READY"},
    {0x08, 0xFF, "LOGICAL UNIT COMMUNICATION FAILURE"},
    {0x0C, 0x00, "WRITE ERROR"},
    {0x11, 0x00, "UNRECOVERED READ ERROR"},
    {0x1A, 0x00, "PARAMETER LIST LENGTH ERROR"},
    {0x1D, 0x00, "MISCOMPARE DURING VERIFY OPERATION"},
    {0x20, 0x00, "INVALID COMMAND OPERATION CODE"},
    {0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE"},
    {0x24, 0x00, "INVALID FIELD IN CDB"},
    {0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED"},
    {0x26, 0x00, "INVALID FIELD IN PARAMETER LIST"},
    {0x27, 0x00, "WRITE PROTECTED"},
    {0x28, 0x00, "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED"},
    {0x29, 0x00, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"},
    {0x29, 0x07, "I_T NEXUS LOSS OCCURRED"},
    {0x29, 0xFF, "POWER ON OR RESET OCCURRED"},
    {0x2A, 0x01, "MODE PARAMETERS CHANGED"},
    {0x2A, 0x03, "RESERVATIONS PREEMPTED"},
    {0x2A, 0x04, "RESERVATIONS RELEASED"},
    {0x2A, 0x05, "REGISTRATIONS PREEMPTED"},
    {0x2A, 0x06, "ASYMMETRIC ACCESS STATE CHANGED"},
    {0x2A, 0x09, "CAPACITY DATA HAS CHANGED"},
    {0x2A, 0xFF, "PARAMETERS CHANGED"},
    {0x3A, 0xFF, "MEDIUM NOT PRESENT"},
    {0x3F, 0x0E, "REPORTED LUNS DATA HAS CHANGED"},
    {0x3F, 0xFF, "TARGET OPERATING CONDITIONS HAVE CHANGED"},
    {0x44, 0x00, "INTERNAL TARGET FAILURE"},
    {0x47, 0xFF, "SCSI PARITY ERROR"},
    {0x4B, 0xFF, "DATA PHASE ERROR"},
    {0x55, 0x03, "INSUFFICIENT RESOURCES"},
};

char *lun_sense_str(uint8_t key, uint8_t asc, uint8_t ascq, char *buf, size_t len)
{
    const char *text = NULL;
    for (size_t i = 0; i < sizeof lun_asc_texts / sizeof lun_asc_texts[0]; i++) {
        const struct lun_asc_text *t = &lun_asc_texts[i];
        if (t->asc == asc && (t->ascq == ascq || t->ascq == 0xFF)) {
            text = t->text;
            break;
        }
    }
    if (text)
        snprintf(buf, len, "%s: %s (%02X/%02X/%02X)", lun_sense_key_name(key), text, key, asc,
                 ascq);
    else
        snprintf(buf, len, "%s: ASC/ASCQ %02X/%02X (%02X/%02X/%02X)", lun_sense_key_name(key), asc,
                 ascq, key, asc, ascq);
    return buf;
}
