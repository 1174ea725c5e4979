#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The digits of a number as the user typed them: strtoull alone would skip
 * leading spaces and take a sign ("-1" is 2^64-1). */
static bool parse_starts_with_digit(const char *s)
{
    return s && *s >= '0' && *s <= '9';
}

int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!parse_starts_with_digit(s))
        return -EINVAL;
    int base = 10;
    const char *digits = s;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        digits = s + 2;
        if (!((*digits >= '0' && *digits <= '9') || (*digits >= 'a' && *digits <= 'f') ||
              (*digits >= 'A' && *digits <= 'F')))
            return -EINVAL;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(digits, &end, base);
    if (*end)
        return -EINVAL;
    if (errno == ERANGE || v < min || v > max)
        return -ERANGE;
    *out = (uint64_t)v;
    return 0;
}

int parse_duration_ms(const char *s, unsigned unit_ms, uint64_t *out_ms)
{
    if (!parse_starts_with_digit(s) || unit_ms == 0)
        return -EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    int range = errno == ERANGE;
    if (end == s)
        return -EINVAL;
    /* strtod also reads exponents, hex floats, "inf" and "nan": only digits
     * and a dot. */
    for (const char *p = s; p < end; p++)
        if (!((*p >= '0' && *p <= '9') || *p == '.'))
            return -EINVAL;
    if (range)
        return -ERANGE;
    double unit = unit_ms;
    if (!strcmp(end, "ms"))
        unit = 1;
    else if (!strcmp(end, "s"))
        unit = 1000;
    else if (!strcmp(end, "m") || !strcmp(end, "min"))
        unit = 60000;
    else if (!strcmp(end, "h"))
        unit = 3600000;
    else if (*end)
        return -EINVAL;
    double ms = v * unit + 0.5;
    if (ms >= 18446744073709551615.0)
        return -ERANGE;
    *out_ms = (uint64_t)ms;
    return 0;
}

int parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!parse_starts_with_digit(s))
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    if (end == s)
        return -EINVAL;
    unsigned shift = 0;
    if (*end) {
        switch (*end) {
        case 'b':
        case 'B':
            shift = 0;
            break;
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        case 't':
        case 'T':
            shift = 40;
            break;
        case 'p':
        case 'P':
            shift = 50;
            break;
        default:
            return -EINVAL;
        }
        end++;
        if (*end == 'i' && shift)
            end++;
        if ((*end == 'B' || *end == 'b') && shift)
            end++;
        if (*end)
            return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

char *format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t boottime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

uint64_t peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kib = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu", (unsigned long long *)&kib) == 1)
            break;
    fclose(f);
    return kib;
}
