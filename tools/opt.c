/* One parser for the values of the tools' options: see opt.h. */
#include "opt.h"

#include <errno.h>
#include <string.h>

#include "log.h"
#include "util.h"

int opt_u64(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
    int rc = parse_u64(arg, min, max, out);
    if (rc == -ERANGE)
        log_err("%s: '%s' is out of range (%llu..%llu)", opt, arg, (unsigned long long)min,
                (unsigned long long)max);
    else if (rc < 0)
        log_err("%s: '%s' is not an integer (%llu..%llu)", opt, arg, (unsigned long long)min,
                (unsigned long long)max);
    return rc < 0 ? -EINVAL : 0;
}

int opt_uint(const char *opt, const char *arg, unsigned min, unsigned max, unsigned *out)
{
    uint64_t v;
    if (opt_u64(opt, arg, min, max, &v) < 0)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

int opt_size(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    int rc = parse_size(arg, &v);
    if (rc == 0 && (v < min || v > max))
        rc = -ERANGE;
    if (rc < 0) {
        char a[32], b[32];
        log_err("%s: '%s' is %s (%s..%s; suffixes K, M, G, T)", opt, arg,
                rc == -ERANGE ? "out of range" : "not a size", format_size(min, a, sizeof a),
                format_size(max, b, sizeof b));
        return -EINVAL;
    }
    *out = v;
    return 0;
}

int opt_duration_ms(const char *opt, const char *arg, unsigned unit_ms, unsigned min_ms,
                    unsigned max_ms, unsigned *out)
{
    uint64_t v;
    int rc = parse_duration_ms(arg, unit_ms, &v);
    if (rc == 0 && (v < min_ms || v > max_ms))
        rc = -ERANGE;
    if (rc < 0) {
        log_err("%s: '%s' is %s (%u ms..%u ms; a bare number is %s; units ms, s, m, h)", opt, arg,
                rc == -ERANGE ? "out of range" : "not a duration", min_ms, max_ms,
                unit_ms == 1000 ? "seconds"
                : unit_ms == 1  ? "milliseconds"
                                : "the default unit");
        return -EINVAL;
    }
    *out = (unsigned)v;
    return 0;
}

int opt_block_size(const char *opt, const char *arg, uint32_t *out)
{
    uint64_t v;
    if (parse_size(arg, &v) < 0 || (v != 512 && v != 4096)) {
        log_err("%s: '%s' is not a supported block size (512 or 4096)", opt, arg);
        return -EINVAL;
    }
    *out = (uint32_t)v;
    return 0;
}

static void opt_log_drop(enum log_level level, const char *msg, void *opaque)
{
}

int opt_lun_parse(int code, const char *arg, struct lun_options *o)
{
    unsigned v;
    int rc;
    switch (code) {
    case OPT_LUN_BLOCK_SIZE:
        return opt_block_size("--block-size", arg, &o->file_block_size) < 0 ? -EINVAL : 1;
    case OPT_LUN_INITIATOR:
        if (!*arg || strchr(arg, ' ')) {
            log_err("--initiator: '%s' is not an iSCSI name (iqn.YYYY-MM.domain:name)", arg);
            return -EINVAL;
        }
        o->initiator_name = arg;
        return 1;
    case OPT_LUN_TIMEOUT:
        if (opt_duration_ms("--timeout", arg, 1, 1, 3600000, &v) < 0)
            return -EINVAL;
        o->timeout_ms = o->connect_timeout_ms = v;
        return 1;
    case OPT_LUN_POLICY:
        /* One line that names the option: lun_policy_parse's own message
         * is dropped (the tools parse options before any sink is set). */
        log_set_sink(opt_log_drop, NULL);
        rc = lun_policy_parse(arg, &o->policy);
        log_set_sink(NULL, NULL);
        if (rc < 0) {
            log_err("--policy: '%s' is not a path selection policy (fixed, mru, round-robin, "
                    "service-time)",
                    arg);
            return -EINVAL;
        }
        return 1;
    case OPT_LUN_RR_IOS:
        if (opt_uint("--rr-ios", arg, 1, 1000000, &v) < 0)
            return -EINVAL;
        o->rr_ios = v;
        return 1;
    case OPT_LUN_QUEUE:
        if (opt_duration_ms("--queue-timeout", arg, 1, 1, 3600000, &v) < 0)
            return -EINVAL;
        o->queue_ms = v;
        return 1;
    }
    return 0;
}
