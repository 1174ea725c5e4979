#include "progress.h"
#include "util.h"

#include <stdio.h>
#include <unistd.h>

void progress_start(struct progress *p, const char *what, uint64_t total, bool force)
{
    p->what = what;
    p->total = total;
    p->done = 0;
    p->start_ns = now_ns();
    p->last_draw_ns = 0;
    p->enabled = force || isatty(STDERR_FILENO);
}

static void draw(struct progress *p)
{
    double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100.0;
    double secs = (double)(now_ns() - p->start_ns) / 1e9;
    char a[32], b[32];
    fprintf(stderr, "\r%s: %5.1f%% (%s / %s) %.1fs", p->what, pct,
            format_size(p->done, a, sizeof a), format_size(p->total, b, sizeof b), secs);
    fflush(stderr);
}

void progress_update(struct progress *p, uint64_t done)
{
    p->done = done;
    if (!p->enabled)
        return;
    uint64_t t = now_ns();
    if (t - p->last_draw_ns < 100000000u)
        return;
    p->last_draw_ns = t;
    draw(p);
}

void progress_finish(struct progress *p)
{
    if (!p->enabled)
        return;
    p->done = p->total;
    draw(p);
    fputc('\n', stderr);
}
