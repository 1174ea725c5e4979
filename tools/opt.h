/* One parser for the values of the tools' options (clusterfs, vdisk).
 *
 * Every number a user types goes through common/util.h's strict parsers
 * (the whole string, no sign, inside a range); a bad value is a usage
 * error that names the option and the value:
 *
 *   clusterfs: --hosts: 'abc' is not an integer (1..2048)
 *
 * Each opt_* function returns 0, or logs that line and returns -EINVAL;
 * the command then exits 2. Never a silent default.
 *
 * The LUN options (how to reach a LUN: block size of file LUNs, initiator
 * name, timeouts, path selection policy) are one table and one parser for
 * every command that opens LUNs (clusterfs lun info, locks, paths; vdisk
 * serve --lun): put OPT_LUN_LONGOPTS in the getopt_long table, print
 * OPT_LUN_HELP in the usage, and hand every option code to opt_lun_parse
 * first. */
#ifndef TOOLS_OPT_H
#define TOOLS_OPT_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include "lun.h"

/* An integer in [min, max], decimal or 0x-hex. */
int opt_u64(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out);
int opt_uint(const char *opt, const char *arg, unsigned min, unsigned max, unsigned *out);
/* A size with an optional binary suffix (K, M, G, T, P; "KiB", "kb"), in
 * [min, max] bytes. */
int opt_size(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out);
/* A duration with an optional unit (ms, s, m, h); a bare number counts in
 * units of unit_ms (1: milliseconds, 1000: seconds). In [min_ms, max_ms]. */
int opt_duration_ms(const char *opt, const char *arg, unsigned unit_ms, unsigned min_ms,
                    unsigned max_ms, unsigned *out);
/* A logical block size of file LUNs: 512 or 4096. */
int opt_block_size(const char *opt, const char *arg, uint32_t *out);

/* Option codes of the LUN options, above any character code. */
enum {
    OPT_LUN_BLOCK_SIZE = 0x1000,
    OPT_LUN_INITIATOR,
    OPT_LUN_TIMEOUT,
    OPT_LUN_POLICY,
    OPT_LUN_RR_IOS,
    OPT_LUN_QUEUE,
};

/* clang-format off */
#define OPT_LUN_LONGOPTS                                                \
    {"block-size", required_argument, NULL, OPT_LUN_BLOCK_SIZE},        \
    {"initiator", required_argument, NULL, OPT_LUN_INITIATOR},          \
    {"timeout", required_argument, NULL, OPT_LUN_TIMEOUT},              \
    {"policy", required_argument, NULL, OPT_LUN_POLICY},                \
    {"rr-ios", required_argument, NULL, OPT_LUN_RR_IOS},                \
    {"queue-timeout", required_argument, NULL, OPT_LUN_QUEUE}
/* clang-format on */

#define OPT_LUN_HELP                                                                               \
    "LUN options:\n"                                                                               \
    "  --block-size N       logical block size of file LUNs: 512 (default) or 4096\n"              \
    "  --initiator IQN      iSCSI initiator name (default iqn.2026-11.org.clusterfs:<host>)\n"     \
    "  --timeout T          per-command and login timeout (default 5000 ms; 5000, 5s)\n"           \
    "  --policy P           paths of one LUN: service-time (default), round-robin,\n"              \
    "                       fixed (the first path preferred), mru\n"                               \
    "  --rr-ios N           round-robin: switch paths every N I/Os (default 1)\n"                  \
    "  --queue-timeout T    all paths down: queue I/O this long, then fail it\n"                   \
    "                       (default 60 s; 60s, 500ms; a bare number is ms)\n"

/* Apply LUN option `code` with value `arg` to *o. Returns 1 if `code` is a
 * LUN option (applied), 0 if it is not, -EINVAL for a bad value (logged). */
int opt_lun_parse(int code, const char *arg, struct lun_options *o);

#endif
