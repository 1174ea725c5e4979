/* Logging: one call records what failed, on which object, and why.
 *
 * Messages go to stderr as "PROG: message" (or to a sink set by the
 * program, e.g. syslog for a daemon). The last error/warning message of the
 * calling thread is kept so tests can check the message as well as the
 * errno, and so a command can print the most specific cause it has.
 */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

#include <stdarg.h>

enum log_level { LOG_LVL_ERR = 0, LOG_LVL_WARN = 1, LOG_LVL_INFO = 2, LOG_LVL_DEBUG = 3 };

typedef void (*log_sink_fn)(enum log_level level, const char *msg, void *opaque);

void log_set_program(const char *name);
const char *log_program(void);
void log_set_level(enum log_level max);        /* messages above max are dropped */
enum log_level log_get_level(void);
void log_set_sink(log_sink_fn fn, void *opaque); /* NULL: back to stderr */

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap);

#define log_err(...) log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_get_level() >= LOG_LVL_DEBUG)                                                      \
            log_msg(LOG_LVL_DEBUG, __VA_ARGS__);                                                   \
    } while (0)

/* Last ERR or WARN message logged by this thread ("" if none). */
const char *log_last_error(void);
void log_clear_last_error(void);

#endif
