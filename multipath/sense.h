/* SCSI status and sense classification, shared by every path kind and the
 * LUN core (and later the multipath engine).
 *
 * A failed command is described by its SCSI status byte, its sense triple
 * (sense key, additional sense code, qualifier) and, for failures below
 * SCSI (connection lost, timeout, task cancelled), a transport errno. The
 * classifier answers one question: what does the LUN core do next?
 *
 *   LUN_SENSE_OK          the command succeeded
 *   LUN_SENSE_RETRY_SAME  retry the command at once on the same path, the
 *                         path is fine (UNIT ATTENTION except 2A/03 and
 *                         2A/05; TASK ABORTED status and ABORTED COMMAND,
 *                         e.g. another initiator's LOGICAL UNIT RESET)
 *   LUN_SENSE_RETRY_LATER busy or not ready for now: retry on the same path
 *                         after a back-off, up to the command's deadline
 *                         (BUSY, TASK SET FULL, NOT READY 04/01 "becoming
 *                         ready", 04/0A "asymmetric access state transition")
 *   LUN_SENSE_FAILOVER    the path is suspect: retry on another path
 *                         (transport loss, timeout, other NOT READY 04/xx)
 *   LUN_SENSE_FAIL_UP     the answer is final for this LUN, whatever the path:
 *                         report it to the caller (MEDIUM ERROR, RESERVATION
 *                         CONFLICT, 2A/03 RESERVATIONS PREEMPTED and 2A/05
 *                         REGISTRATIONS PREEMPTED = fenced,
 *                         MISCOMPARE, ILLEGAL REQUEST, 05/25/00 LUN not
 *                         supported = PDL, DATA PROTECT)
 *
 * lun_sense_errno() maps a final failure to the error codes of lun.h.
 */
#ifndef MULTIPATH_SENSE_H
#define MULTIPATH_SENSE_H

#include <stddef.h>
#include <stdint.h>

enum lun_sense_class {
    LUN_SENSE_OK = 0,
    LUN_SENSE_RETRY_SAME,
    LUN_SENSE_FAILOVER,
    LUN_SENSE_RETRY_LATER,
    LUN_SENSE_FAIL_UP,
};

/* SAM-5 status byte values. */
enum lun_scsi_status {
    LUN_STATUS_GOOD = 0x00,
    LUN_STATUS_CHECK_CONDITION = 0x02,
    LUN_STATUS_CONDITION_MET = 0x04,
    LUN_STATUS_BUSY = 0x08,
    LUN_STATUS_RESERVATION_CONFLICT = 0x18,
    LUN_STATUS_TASK_SET_FULL = 0x28,
    LUN_STATUS_ACA_ACTIVE = 0x30,
    LUN_STATUS_TASK_ABORTED = 0x40,
};

/* SPC-4 sense keys. */
enum lun_sense_key {
    LUN_SK_NO_SENSE = 0x0,
    LUN_SK_RECOVERED_ERROR = 0x1,
    LUN_SK_NOT_READY = 0x2,
    LUN_SK_MEDIUM_ERROR = 0x3,
    LUN_SK_HARDWARE_ERROR = 0x4,
    LUN_SK_ILLEGAL_REQUEST = 0x5,
    LUN_SK_UNIT_ATTENTION = 0x6,
    LUN_SK_DATA_PROTECT = 0x7,
    LUN_SK_BLANK_CHECK = 0x8,
    LUN_SK_VENDOR_SPECIFIC = 0x9,
    LUN_SK_COPY_ABORTED = 0xA,
    LUN_SK_ABORTED_COMMAND = 0xB,
    LUN_SK_VOLUME_OVERFLOW = 0xD,
    LUN_SK_MISCOMPARE = 0xE,
};

/* Classify a CHECK CONDITION by its sense triple. */
enum lun_sense_class lun_sense_classify(uint8_t key, uint8_t asc, uint8_t ascq);

/* Classify a command by its status byte (and sense, for CHECK CONDITION). */
enum lun_sense_class lun_status_classify(uint8_t status, uint8_t key, uint8_t asc, uint8_t ascq);

/* Classify a path's completion: `result` is 0 or -errno as a path reports
 * it (lun.h codes), with the sense it recorded in the lun_io (0/0/0 if
 * none). Transport errnos (-ENOTCONN, -ETIMEDOUT, -ECONNRESET, -EPIPE,
 * -EHOSTUNREACH, -ECONNREFUSED, -ESHUTDOWN) fail over; -EBUSY (BUSY / TASK
 * SET FULL) retries later, -EAGAIN (UNIT ATTENTION) and -ECANCELED (TASK
 * ABORTED, ABORTED COMMAND) at once, on the same path; a sense triple,
 * when present, decides; anything else fails up. */
enum lun_sense_class lun_result_classify(int result, uint8_t key, uint8_t asc, uint8_t ascq);

/* The lun.h errno for a failure with this sense triple (0 for NO SENSE /
 * RECOVERED ERROR). */
int lun_sense_errno(uint8_t key, uint8_t asc, uint8_t ascq);

/* The lun.h errno for a command's final status (0 for GOOD). */
int lun_status_errno(uint8_t status, uint8_t key, uint8_t asc, uint8_t ascq);

const char *lun_sense_class_name(enum lun_sense_class c); /* "ok", "retry-same", ... */
const char *lun_sense_key_name(uint8_t key);              /* "ILLEGAL REQUEST" */
const char *lun_status_name(uint8_t status);              /* "RESERVATION CONFLICT" */

/* Short text of a sense triple for messages, e.g.
 * "ILLEGAL REQUEST: LOGICAL UNIT NOT SUPPORTED (05/25/00)". Returns buf. */
char *lun_sense_str(uint8_t key, uint8_t asc, uint8_t ascq, char *buf, size_t len);

#define LUN_SENSE_STR_MAX 96

#endif
