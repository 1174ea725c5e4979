/* Progress for long operations (clone, convert, check): a one-line meter on
 * stderr, redrawn at most 10 times a second, only when stderr is a terminal
 * (or when forced, e.g. by --progress). Quiet otherwise. */
#ifndef COMMON_PROGRESS_H
#define COMMON_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress {
    const char *what;
    uint64_t total;
    uint64_t done;
    uint64_t start_ns;
    uint64_t last_draw_ns;
    bool enabled;
};

void progress_start(struct progress *p, const char *what, uint64_t total, bool force);
void progress_update(struct progress *p, uint64_t done);
void progress_finish(struct progress *p);

#endif
