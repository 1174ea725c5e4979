/* Small helpers shared by the command-line tools. */
#ifndef COMMON_UTIL_H
#define COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DIV_ROUND_UP(n, d) (((n) + (d)-1) / (d))
#define ROUND_UP(n, d) (DIV_ROUND_UP(n, d) * (d))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Strict parsers for numbers the user typed (command-line options): the
 * whole string is the number -- no leading space or sign, no trailing
 * text. Each returns 0, -EINVAL (not such a number) or -ERANGE (outside
 * the range or the type); *out is untouched on error. tools/opt.h wraps
 * them with the option's name in the error message.
 *
 * parse_u64: decimal, or hexadecimal after "0x"; min <= value <= max. */
int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* A duration in milliseconds, rounded to the nearest: "250ms", "2s",
 * "1.5s", "1m" ("min"), "1h", or a bare decimal number ("2", "0.5") in
 * units of unit_ms (1: milliseconds, 1000: seconds). */
int parse_duration_ms(const char *s, unsigned unit_ms, uint64_t *out_ms);

/* Parse a size: "4096", "64k", "10M", "2G", "1T", "512b" (b = bytes) and
 * "1s" is not accepted. Suffixes are binary (K = 1024). Returns 0 or -EINVAL
 * / -ERANGE. */
int parse_size(const char *s, uint64_t *out);

/* Format bytes as "1.5 GiB" into buf. Returns buf. */
char *format_size(uint64_t bytes, char *buf, size_t len);

/* Monotonic time in nanoseconds (CLOCK_MONOTONIC). */
uint64_t now_ns(void);

/* CLOCK_BOOTTIME in nanoseconds: monotonic, and keeps counting while the
 * machine is suspended (a deadline in this clock cannot be stretched by a
 * suspend, unlike CLOCK_MONOTONIC). */
uint64_t boottime_ns(void);

/* Full-length pread/pwrite that retry on EINTR and short transfers.
 * Return 0 or -errno; a read past EOF is -EIO (short file). */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* Peak resident set size of this process in KiB (VmHWM), or 0. */
uint64_t peak_rss_kib(void);

#endif
