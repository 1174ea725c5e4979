#include "log.h"

#include <stdio.h>
#include <string.h>

static const char *program = "clusterfs";
static enum log_level max_level = LOG_LVL_INFO;
static log_sink_fn sink;
static void *sink_opaque;
static __thread char last_error[1024];

void log_set_program(const char *name)
{
    const char *slash = strrchr(name, '/');
    program = slash ? slash + 1 : name;
}

const char *log_program(void)
{
    return program;
}

void log_set_level(enum log_level max)
{
    max_level = max;
}

enum log_level log_get_level(void)
{
    return max_level;
}

void log_set_sink(log_sink_fn fn, void *opaque)
{
    sink = fn;
    sink_opaque = opaque;
}

const char *log_last_error(void)
{
    return last_error;
}

void log_clear_last_error(void)
{
    last_error[0] = '\0';
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (level <= LOG_LVL_WARN)
        memcpy(last_error, msg, sizeof last_error);
    if (level > max_level)
        return;
    if (sink) {
        sink(level, msg, sink_opaque);
        return;
    }
    static const char *const tag[] = {"", "warning: ", "", "debug: "};
    fprintf(stderr, "%s: %s%s\n", program, tag[level], msg);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}
