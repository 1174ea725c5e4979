/* On-disk records of the lockspace: encode / decode, and the pure
 * transitions of a lock record (add / remove an owner).
 *
 * Every record is one logical block; its fields occupy the first 512 bytes
 * (struct ls_*_disk in ls_internal.h gives the offsets), little-endian, with
 * a CRC32C of bytes 0..507 at offset 508, computed last. A record that does
 * not decode (bad magic, bad CRC, other major version) is an error the caller
 * reports; it is never taken for a free slot or a free lock.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "crc32c.h"
#include "le.h"
#include "log.h"
#include "ls_internal.h"

#define PUT16(b, s, f, v) le16_put((uint8_t *)(b) + offsetof(s, f), (uint16_t)(v))
#define PUT32(b, s, f, v) le32_put((uint8_t *)(b) + offsetof(s, f), (uint32_t)(v))
#define PUT64(b, s, f, v) le64_put((uint8_t *)(b) + offsetof(s, f), (uint64_t)(v))
#define GET16(b, s, f) le16_get((const uint8_t *)(b) + offsetof(s, f))
#define GET32(b, s, f) le32_get((const uint8_t *)(b) + offsetof(s, f))
#define GET64(b, s, f) le64_get((const uint8_t *)(b) + offsetof(s, f))

static void seal(void *buf)
{
    le32_put((uint8_t *)buf + LS_CRC_OFF, crc32c(buf, LS_CRC_OFF));
}

/* Check magic, CRC and version (`major`: the one this build reads). */
static int check_v(const void *buf, uint32_t magic, uint16_t major, const char *what, uint64_t lba)
{
    uint32_t m = le32_get(buf);
    if (m != magic) {
        if (what) /* what == NULL: quiet (a retried read) */
            log_err("%s at lba %llu: bad magic 0x%08x (expected 0x%08x)%s", what,
                    (unsigned long long)lba, m, magic, m == 0 ? " -- not formatted or zeroed" : "");
        return -EUCLEAN;
    }
    uint32_t want = le32_get((const uint8_t *)buf + LS_CRC_OFF);
    uint32_t got = crc32c(buf, LS_CRC_OFF);
    if (want != got) {
        if (what)
            log_err("%s at lba %llu: bad CRC32C 0x%08x (computed 0x%08x)", what,
                    (unsigned long long)lba, want, got);
        return -EBADMSG;
    }
    uint16_t v = le16_get((const uint8_t *)buf + 4);
    if (v != major) {
        if (what)
            log_err("%s at lba %llu: version %u not supported (this build reads %u)%s", what,
                    (unsigned long long)lba, v, major,
                    magic == LS_MAGIC_HEADER && v == 1
                        ? ": a version-1 lockspace does not record its atomic-step method; lay it "
                          "again with `clusterfs locks init` while no host uses it"
                        : "");
        return -EPROTO;
    }
    return 0;
}

static int check(const void *buf, uint32_t magic, const char *what, uint64_t lba)
{
    return check_v(buf, magic, LS_VERSION_MAJOR, what, lba);
}

const char *ls_atomic_method_name(enum ls_atomic_method m)
{
    switch (m) {
    case LS_ATOMIC_AUTO:
        return "auto";
    case LS_ATOMIC_CAW:
        return "compare-and-write";
    case LS_ATOMIC_PAXOS:
        return "paxos";
    }
    return "?";
}

static void copy_str(char *dst, size_t dstlen, const void *src, size_t srclen)
{
    size_t n = strnlen(src, srclen);
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

void ls_header_encode(void *buf, const struct ls_header *h)
{
    typedef struct ls_header_disk D;
    memset(buf, 0, LS_REC_SIZE);
    PUT32(buf, D, magic, LS_MAGIC_HEADER);
    PUT16(buf, D, version_major, LS_HDR_VERSION_MAJOR);
    PUT16(buf, D, version_minor, LS_VERSION_MINOR);
    PUT32(buf, D, block_size, h->block_size);
    PUT32(buf, D, io_timeout_ms, h->io_timeout_ms);
    PUT32(buf, D, max_hosts, h->max_hosts);
    PUT32(buf, D, max_locks, h->max_locks);
    PUT64(buf, D, hb_off, h->hb_off);
    PUT64(buf, D, paxos_off, h->paxos_off);
    PUT64(buf, D, locks_off, h->locks_off);
    PUT64(buf, D, total_blocks, h->total_blocks);
    memcpy((uint8_t *)buf + offsetof(D, uuid), h->uuid, 16);
    PUT16(buf, D, atomic, h->atomic);
    PUT32(buf, D, incompat, h->incompat);
    PUT32(buf, D, compat, h->compat);
    seal(buf);
}

int ls_header_decode(const void *buf, struct ls_header *h, const char *what, uint64_t lba)
{
    typedef struct ls_header_disk D;
    int r = check_v(buf, LS_MAGIC_HEADER, LS_HDR_VERSION_MAJOR, what, lba);
    if (r < 0)
        return r;
    h->version_major = GET16(buf, D, version_major);
    h->version_minor = GET16(buf, D, version_minor);
    h->block_size = GET32(buf, D, block_size);
    h->io_timeout_ms = GET32(buf, D, io_timeout_ms);
    h->max_hosts = GET32(buf, D, max_hosts);
    h->max_locks = GET32(buf, D, max_locks);
    h->hb_off = GET64(buf, D, hb_off);
    h->paxos_off = GET64(buf, D, paxos_off);
    h->locks_off = GET64(buf, D, locks_off);
    h->total_blocks = GET64(buf, D, total_blocks);
    memcpy(h->uuid, (const uint8_t *)buf + offsetof(D, uuid), 16);
    h->atomic = GET16(buf, D, atomic);
    h->incompat = GET32(buf, D, incompat);
    h->compat = GET32(buf, D, compat);
    if (h->atomic != LS_ATOMIC_CAW && h->atomic != LS_ATOMIC_PAXOS) {
        log_err("%s at lba %llu: unknown atomic-step method %u", what, (unsigned long long)lba,
                h->atomic);
        return -EUCLEAN;
    }
    if (h->incompat & ~LS_INCOMPAT_KNOWN) {
        log_err("%s at lba %llu: incompatible features 0x%08x this build does not know", what,
                (unsigned long long)lba, h->incompat & ~LS_INCOMPAT_KNOWN);
        return -EPROTO;
    }
    if (h->max_hosts < LS_MAX_HOSTS_MIN || h->max_hosts > LS_MAX_HOSTS_MAX ||
        (h->block_size != 512 && h->block_size != 4096)) {
        log_err("%s at lba %llu: implausible geometry (%u hosts, %u-byte blocks)", what,
                (unsigned long long)lba, h->max_hosts, h->block_size);
        return -EUCLEAN;
    }
    return 0;
}

void ls_hb_encode(void *buf, const struct ls_hb *h)
{
    typedef struct ls_hb_disk D;
    memset(buf, 0, LS_REC_SIZE);
    PUT32(buf, D, magic, LS_MAGIC_HB);
    PUT16(buf, D, version, LS_VERSION_MAJOR);
    PUT16(buf, D, state, h->state);
    PUT32(buf, D, slot, h->slot);
    PUT32(buf, D, generation, h->generation);
    PUT64(buf, D, counter, h->counter);
    PUT64(buf, D, pr_key, h->pr_key);
    PUT32(buf, D, io_timeout_ms, h->io_timeout_ms);
    PUT32(buf, D, rec_slot, h->rec_slot);
    PUT32(buf, D, rec_gen, h->rec_gen);
    PUT64(buf, D, journal_lba, h->journal_lba);
    memcpy((uint8_t *)buf + offsetof(D, uuid), h->uuid, 16);
    memcpy((uint8_t *)buf + offsetof(D, name), h->name, strnlen(h->name, LS_NAME_MAX));
    memcpy((uint8_t *)buf + offsetof(D, rec_uuid), h->rec_uuid, 16);
    PUT64(buf, D, rec_key, h->rec_key);
    seal(buf);
}

int ls_hb_decode(const void *buf, struct ls_hb *h, const char *what, uint64_t lba)
{
    typedef struct ls_hb_disk D;
    int r = check(buf, LS_MAGIC_HB, what, lba);
    if (r < 0)
        return r;
    h->state = GET16(buf, D, state);
    if (h->state > LS_SLOT_RECOVERING) {
        log_err("%s at lba %llu: unknown slot state %u", what, (unsigned long long)lba, h->state);
        return -EUCLEAN;
    }
    h->slot = GET32(buf, D, slot);
    h->generation = GET32(buf, D, generation);
    h->counter = GET64(buf, D, counter);
    h->pr_key = GET64(buf, D, pr_key);
    h->io_timeout_ms = GET32(buf, D, io_timeout_ms);
    h->rec_slot = GET32(buf, D, rec_slot);
    h->rec_gen = GET32(buf, D, rec_gen);
    h->journal_lba = GET64(buf, D, journal_lba);
    memcpy(h->uuid, (const uint8_t *)buf + offsetof(D, uuid), 16);
    copy_str(h->name, sizeof(h->name), (const uint8_t *)buf + offsetof(D, name), 64);
    memcpy(h->rec_uuid, (const uint8_t *)buf + offsetof(D, rec_uuid), 16);
    h->rec_key = GET64(buf, D, rec_key);
    return 0;
}

void ls_lockrec_encode(void *buf, const struct ls_lockrec *r)
{
    typedef struct ls_lock_disk D;
    memset(buf, 0, LS_REC_SIZE);
    PUT32(buf, D, magic, LS_MAGIC_LOCK);
    PUT16(buf, D, version, LS_VERSION_MAJOR);
    ((uint8_t *)buf)[offsetof(D, mode)] = (uint8_t)r->mode;
    ((uint8_t *)buf)[offsetof(D, nowners)] = (uint8_t)r->nowners;
    PUT64(buf, D, rec_version, r->version);
    PUT32(buf, D, writer_slot, r->writer_slot);
    PUT32(buf, D, writer_gen, r->writer_gen);
    memcpy((uint8_t *)buf + offsetof(D, name), r->name, strnlen(r->name, LS_LOCK_NAME_MAX));
    if (r->xwait) {
        PUT32(buf, D, xwait, r->xwait_slot + 1);
        PUT32(buf, D, xwait_gen, r->xwait_gen);
    }
    for (unsigned i = 0; i < r->nowners && i < LS_LOCK_MAX_OWNERS; i++) {
        uint8_t *o = (uint8_t *)buf + offsetof(D, owners) + i * sizeof(struct ls_owner_disk);
        le16_put(o, (uint16_t)r->owners[i].slot);
        le32_put(o + 2, r->owners[i].gen);
    }
    seal(buf);
}

int ls_lockrec_decode(const void *buf, struct ls_lockrec *r, const char *what, uint64_t lba)
{
    typedef struct ls_lock_disk D;
    int rc = check(buf, LS_MAGIC_LOCK, what, lba);
    if (rc < 0)
        return rc;
    const uint8_t *b = buf;
    r->mode = b[offsetof(D, mode)];
    r->nowners = b[offsetof(D, nowners)];
    if (r->mode > LS_LOCK_MULTI_WRITER || r->nowners > LS_LOCK_MAX_OWNERS ||
        (r->mode == LS_LOCK_FREE) != (r->nowners == 0) ||
        (r->mode == LS_LOCK_EXCLUSIVE && r->nowners != 1)) {
        log_err("%s at lba %llu: inconsistent lock record (mode %u, %u owners)", what,
                (unsigned long long)lba, r->mode, r->nowners);
        return -EUCLEAN;
    }
    r->version = GET64(buf, D, rec_version);
    r->writer_slot = GET32(buf, D, writer_slot);
    r->writer_gen = GET32(buf, D, writer_gen);
    copy_str(r->name, sizeof(r->name), b + offsetof(D, name), 48);
    uint32_t xw = GET32(buf, D, xwait);
    r->xwait = xw != 0;
    r->xwait_slot = xw ? xw - 1 : 0;
    r->xwait_gen = xw ? GET32(buf, D, xwait_gen) : 0;
    for (unsigned i = 0; i < r->nowners; i++) {
        const uint8_t *o = b + offsetof(D, owners) + i * sizeof(struct ls_owner_disk);
        r->owners[i].slot = le16_get(o);
        r->owners[i].gen = le32_get(o + 2);
    }
    return 0;
}

void ls_leader_encode(void *buf, const struct ls_leader *l)
{
    typedef struct ls_leader_disk D;
    memset(buf, 0, LS_REC_SIZE);
    PUT32(buf, D, magic, LS_MAGIC_LEADER);
    PUT16(buf, D, version, LS_VERSION_MAJOR);
    PUT16(buf, D, state, l->held);
    PUT64(buf, D, lver, l->lver);
    PUT32(buf, D, owner_slot, l->owner_slot);
    PUT32(buf, D, owner_gen, l->owner_gen);
    seal(buf);
}

int ls_leader_decode(const void *buf, struct ls_leader *l, const char *what, uint64_t lba)
{
    typedef struct ls_leader_disk D;
    int r = check(buf, LS_MAGIC_LEADER, what, lba);
    if (r < 0)
        return r;
    l->held = GET16(buf, D, state);
    l->lver = GET64(buf, D, lver);
    l->owner_slot = GET32(buf, D, owner_slot);
    l->owner_gen = GET32(buf, D, owner_gen);
    return 0;
}

void ls_dblock_encode(void *buf, const struct ls_dblock *d)
{
    typedef struct ls_dblock_disk D;
    memset(buf, 0, LS_REC_SIZE);
    PUT32(buf, D, magic, LS_MAGIC_DBLOCK);
    PUT16(buf, D, version, LS_VERSION_MAJOR);
    PUT64(buf, D, lver, d->lver);
    PUT64(buf, D, mbal, d->mbal);
    PUT64(buf, D, bal, d->bal);
    PUT32(buf, D, inp_slot, d->inp_slot);
    PUT32(buf, D, inp_gen, d->inp_gen);
    seal(buf);
}

int ls_dblock_decode(const void *buf, struct ls_dblock *d, const char *what, uint64_t lba)
{
    typedef struct ls_dblock_disk D;
    int r = check(buf, LS_MAGIC_DBLOCK, what, lba);
    if (r < 0)
        return r;
    d->lver = GET64(buf, D, lver);
    d->mbal = GET64(buf, D, mbal);
    d->bal = GET64(buf, D, bal);
    d->inp_slot = GET32(buf, D, inp_slot);
    d->inp_gen = GET32(buf, D, inp_gen);
    return 0;
}

/* ---- Lock-record transitions -------------------------------------------- */

const char *ls_lock_mode_name(enum ls_lock_mode m)
{
    switch (m) {
    case LS_LOCK_FREE:
        return "free";
    case LS_LOCK_EXCLUSIVE:
        return "exclusive";
    case LS_LOCK_SHARED:
        return "read-only";
    case LS_LOCK_MULTI_WRITER:
        return "multi-writer";
    }
    return "?";
}

bool ls_mode_compatible(enum ls_lock_mode held, enum ls_lock_mode want)
{
    if (held == LS_LOCK_FREE)
        return true;
    if (want == LS_LOCK_EXCLUSIVE || held == LS_LOCK_EXCLUSIVE)
        return false;
    return held == want;
}

int ls_lockrec_find_owner(const struct ls_lockrec *r, uint32_t slot, uint32_t gen)
{
    for (unsigned i = 0; i < r->nowners; i++)
        if (r->owners[i].slot == slot && r->owners[i].gen == gen)
            return (int)i;
    return -1;
}

int ls_lockrec_add_owner(struct ls_lockrec *r, enum ls_lock_mode mode, uint32_t slot, uint32_t gen)
{
    if (mode == LS_LOCK_FREE || mode > LS_LOCK_MULTI_WRITER)
        return -EINVAL;
    if (ls_lockrec_find_owner(r, slot, gen) >= 0)
        return r->mode == mode ? 1 : -EBUSY;
    if (!ls_mode_compatible(r->mode, mode))
        return -EBUSY;
    bool xw_other = r->xwait && (r->xwait_slot != slot || r->xwait_gen != gen);
    if (xw_other && mode != LS_LOCK_EXCLUSIVE)
        return -EBUSY; /* an exclusive waiter goes first: readers do not starve it */
    if (r->nowners >= LS_LOCK_MAX_OWNERS)
        return -ENOSPC;
    if (mode == LS_LOCK_EXCLUSIVE && r->xwait && !xw_other)
        r->xwait = false;
    r->owners[r->nowners].slot = slot;
    r->owners[r->nowners].gen = gen;
    r->nowners++;
    r->mode = mode;
    r->version++;
    r->writer_slot = slot;
    r->writer_gen = gen;
    return 0;
}

int ls_lockrec_remove_owner(struct ls_lockrec *r, uint32_t slot, uint32_t gen, uint32_t wslot,
                            uint32_t wgen)
{
    int i = ls_lockrec_find_owner(r, slot, gen);
    if (i < 0)
        return -ENOENT;
    memmove(&r->owners[i], &r->owners[i + 1],
            (r->nowners - (unsigned)i - 1) * sizeof(r->owners[0]));
    r->nowners--;
    memset(&r->owners[r->nowners], 0, sizeof(r->owners[0]));
    if (r->nowners == 0)
        r->mode = LS_LOCK_FREE;
    r->version++;
    r->writer_slot = wslot;
    r->writer_gen = wgen;
    return 0;
}
