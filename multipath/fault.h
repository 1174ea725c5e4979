/* A fault-injecting LUN, for tests (public test API).
 *
 * lun_open_fault() opens `inner_uri` (a file or iscsi:// URI) as usual and
 * puts a fault path between the LUN core and it. The returned struct lun is
 * an ordinary LUN; the struct lun_fault controls what goes wrong:
 *
 *   - fail the Nth read / Nth write (or every write from the Nth on) with a
 *     chosen -errno and sense triple; the failure is logged
 *     ("fault: <lun>: injected failure of write #N at lba L: <reason>")
 *   - power cut: after N more writes reach the medium, writes are silently
 *     dropped (they report success but are not persisted) until
 *     lun_fault_restart() "powers the device back on" (reopens the inner
 *     path and forgets every write still held back)
 *   - delay: every command completes D ms late
 *   - reorder: up to K plain writes are held back (acknowledged at once, as
 *     a volatile write cache would) and reach the medium in reverse order;
 *     a FLUSH, a FUA write, a read, an unmap, a write same or a compare-
 *     and-write drains (issues) every held write first
 *
 * "Writes" are the commands that modify the medium: WRITE, WRITE SAME,
 * UNMAP and COMPARE AND WRITE, counted per COMMAND (not per block). The
 * fail-Nth-write counter counts submitted writes; the power cut counts
 * writes as they are issued to the inner path (after any reordering).
 * Numbers are 1-based and counted from the call that arms the fault.
 *
 * Every function is thread-safe. The controls live as long as the LUN
 * (lun_close() frees them).
 */
#ifndef MULTIPATH_FAULT_H
#define MULTIPATH_FAULT_H

#include <stdbool.h>
#include <stdint.h>

#include "lun.h"

struct lun_fault;

struct lun_fault_stats {
    uint64_t reads, writes, flushes, unmaps, write_sames, compare_and_writes; /* submitted */
    uint64_t issued_writes; /* modifying commands that reached the inner path */
    uint64_t injected;      /* commands failed on purpose */
    uint64_t dropped;       /* writes lost to the power cut (reported success) */
    uint64_t held;          /* writes held back for reordering, total */
    uint64_t reordered;     /* writes issued out of submission order */
    uint64_t delayed;       /* commands delayed */
};

int lun_open_fault(const char *inner_uri, const struct lun_options *opts, struct lun **out,
                   struct lun_fault **ctl);
/* The same, with the device claiming a maximum transfer length of
 * `max_transfer_blocks` (0 = the inner path's), so the core splits longer
 * commands; each piece is one command to the fault counters. */
int lun_open_fault_max_transfer(const char *inner_uri, const struct lun_options *opts,
                                uint32_t max_transfer_blocks, struct lun **out,
                                struct lun_fault **ctl);

/* Fail the nth read (1-based, counted from now) with `err` (negative errno)
 * and the sense triple (0/0/0 for none). nth = 0 disarms. */
void lun_fault_fail_read(struct lun_fault *f, unsigned nth, int err, uint8_t key, uint8_t asc,
                         uint8_t ascq);
/* Fail the nth write from now; with `sticky`, every write from the nth on. */
void lun_fault_fail_write(struct lun_fault *f, unsigned nth, bool sticky, int err, uint8_t key,
                          uint8_t asc, uint8_t ascq);

/* Power cut after `after_writes` more writes reach the medium (0 = now). */
void lun_fault_power_cut(struct lun_fault *f, unsigned after_writes);
/* Power back on: wait for commands in flight, close and reopen the inner
 * path, forget held writes, disarm the power cut. Returns 0 or -errno. */
int lun_fault_restart(struct lun_fault *f);
bool lun_fault_power_is_cut(struct lun_fault *f);

void lun_fault_set_delay(struct lun_fault *f, unsigned ms);
/* Hold back up to k writes (0 = off; drains what is held). */
void lun_fault_set_reorder(struct lun_fault *f, unsigned k);

/* Disarm every fault (delay, reorder, failures; not a power cut). */
void lun_fault_clear(struct lun_fault *f);

void lun_fault_get_stats(struct lun_fault *f, struct lun_fault_stats *out);

#endif
