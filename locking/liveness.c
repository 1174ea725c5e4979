/* Timeouts and the liveness of peers.
 *
 * Design notes
 * ------------
 * Everything derives from io_timeout (T), stored in the lockspace header at
 * format time; a host that mounts with another T is refused.
 *
 *   renew_ms = T        a host renews its slot every T (read all slots, then
 *                       write its own: 2 I/Os whatever the host count)
 *   fence_ms = 4T       a host issues no write at or after
 *                       (issue time of its last successful renewal) + 4T
 *   dead_ms  = 6T       an observer declares a host dead when a read that
 *                       started at least 6T after the completion of the read
 *                       that first showed the slot's current (owner,
 *                       generation, counter) still shows it unchanged.
 *
 * Safety inequality: dead_ms >= fence_ms + max_inflight_ms + margin, with
 * max_inflight_ms = T (the LUN's command timeout must be <= T) and margin =
 * T (scheduling, clock-rate skew). The renewal write that produced the
 * value was issued (real time) no later than the observer's first read of
 * it completed, so the host's deadline is at most first_seen + 4T on any
 * clock running at the same rate; every write it issued before that has
 * landed or failed by first_seen + 5T; the breaker's first write comes after
 * first_seen + 6T. Only differences of one host's own CLOCK_MONOTONIC are
 * used; wall clocks of different hosts are never compared.
 *
 * A new observer starts every peer as UNKNOWN: it must watch a full dead
 * time before declaring anyone dead. At T = 2 s: renew 2 s, self-fence 8 s,
 * dead 12 s; kill -9 to break ~ 12..16 s.
 */
#include <errno.h>
#include <string.h>

#include "ls_internal.h"

int ls_timeouts_derive(uint32_t io_timeout_ms, struct ls_timeouts *out)
{
    if (io_timeout_ms < 10 || io_timeout_ms > 600000)
        return -EINVAL;
    out->io_timeout_ms = io_timeout_ms;
    out->renew_ms = io_timeout_ms;
    out->fence_ms = 4 * io_timeout_ms;
    out->dead_ms = out->fence_ms + io_timeout_ms /* in flight */ + io_timeout_ms /* margin */;
    out->mutex_hold_ms = 3 * io_timeout_ms; /* leader write + read + write of the RMW */
    out->mutex_steal_ms = out->mutex_hold_ms + io_timeout_ms /* in flight */ + io_timeout_ms;
    return 0;
}

const char *ls_host_state_name(enum ls_host_state s)
{
    switch (s) {
    case LS_HOST_FREE:
        return "free";
    case LS_HOST_UNKNOWN:
        return "unknown";
    case LS_HOST_LIVE:
        return "live";
    case LS_HOST_DEAD:
        return "dead";
    case LS_HOST_RECOVERING:
        return "recovering";
    case LS_HOST_CORRUPT:
        return "corrupt";
    }
    return "?";
}

void ls_peer_update(struct ls_peer *p, const struct ls_hb *hb, bool corrupt, uint64_t start_ns,
                    uint64_t end_ns, uint64_t dead_ns)
{
    if (corrupt) {
        /* Never free, never dead: a corrupt slot is reported, not broken. */
        p->seen = false;
        p->state = LS_HOST_CORRUPT;
        return;
    }
    if (hb->state == LS_SLOT_FREE) {
        memset(p, 0, sizeof(*p));
        p->state = LS_HOST_FREE;
        p->generation = hb->generation;
        return;
    }
    bool same = p->seen && p->generation == hb->generation && p->counter == hb->counter &&
                p->slot_state == hb->state && !memcmp(p->uuid, hb->uuid, 16);
    if (!same) {
        bool had = p->seen && p->state != LS_HOST_CORRUPT;
        p->seen = true;
        p->generation = hb->generation;
        p->counter = hb->counter;
        p->slot_state = (uint16_t)hb->state;
        memcpy(p->uuid, hb->uuid, 16);
        p->first_seen_ns = end_ns;
        p->changed = had;
        p->state = had ? LS_HOST_LIVE : LS_HOST_UNKNOWN;
    } else if (start_ns >= p->first_seen_ns + dead_ns) {
        p->state = LS_HOST_DEAD;
    }
    if (hb->state == LS_SLOT_RECOVERING && p->state != LS_HOST_DEAD)
        p->state = LS_HOST_RECOVERING;
}
