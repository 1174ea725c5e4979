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
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lun.h"

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

static uint64_t ms_ns(uint32_t ms)
{
    return (uint64_t)ms * 1000000ull;
}

/* ---- The peer view: one read of the heartbeat region
 * ------------------------------------------------------------ */

int ls_hb_scan(struct lockspace *ls)
{
    uint32_t H = ls->hdr.max_hosts;
    uint8_t *buf = malloc((size_t)H * ls->bs);
    if (!buf)
        return -ENOMEM;
    uint64_t t0 = ls_now_ns();
    int r = ls_read(ls, ls->offset + ls->hdr.hb_off, H, buf);
    uint64_t t1 = ls_now_ns();
    if (r < 0) {
        log_warn("%s: cannot read the heartbeat region: %s", lun_name(ls->lun), strerror(-r));
        free(buf);
        return r;
    }
    pthread_mutex_lock(&ls->lock);
    for (uint32_t i = 0; i < H; i++) {
        struct ls_hb hb;
        const uint8_t *b = buf + (size_t)i * ls->bs;
        /* A corrupt slot is logged when it becomes corrupt, not at every scan. */
        if (ls->peers[i].state == LS_HOST_CORRUPT &&
            !memcmp(b, ls->hb_raw + (size_t)i * ls->bs, ls->bs))
            continue;
        int d = ls_hb_decode(b, &hb, "heartbeat slot", ls->offset + ls->hdr.hb_off + i);
        ls_peer_update(&ls->peers[i], &hb, d < 0, t0, t1, ms_ns(ls->to.dead_ms));
    }
    memcpy(ls->hb_raw, buf, (size_t)H * ls->bs);
    ls->hb_read_ns = t1;
    ls->hb_read_start_ns = t0;
    pthread_mutex_unlock(&ls->lock);
    free(buf);
    return 0;
}

int ls_owner_liveness(struct lockspace *ls, uint32_t slot, uint32_t gen)
{
    if (slot >= ls->hdr.max_hosts)
        return 0;
    pthread_mutex_lock(&ls->lock);
    struct ls_hb hb;
    int r;
    if (ls_hb_decode(ls->hb_raw + (size_t)slot * ls->bs, &hb, "heartbeat slot",
                     ls->offset + ls->hdr.hb_off + slot) < 0)
        r = 1; /* corrupt: never free */
    else if ((hb.state == LS_SLOT_FREE && hb.generation >= gen) || hb.generation > gen)
        r = 0; /* gone (sanlock's rule); a smaller generation is an older view */
    else if (hb.generation != gen)
        r = 1;
    else if (ls->peers[slot].state == LS_HOST_DEAD)
        r = 2;
    else
        r = 1;
    pthread_mutex_unlock(&ls->lock);
    return r;
}
