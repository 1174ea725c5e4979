/* Fuzz target for every on-disk decoder of the volume (format.c).
 *
 * LLVMFuzzerTestOneInput() is libFuzzer-compatible (clang -fsanitize=fuzzer
 * -DCFS_FUZZ_LIBFUZZER). Input: byte 0 picks the decoder, byte 1 bit 0 asks
 * for the block to be sealed (a valid CRC, so the field checks behind the
 * CRC are reached) and bit 1 for a valid magic / version / type / address;
 * the rest is the block. Without libFuzzer, main() runs the files named on
 * the command line, or FUZZ_ITERS (default 20000) mutations of valid
 * blocks of every type. A crash or a sanitizer report fails the unit test
 * that runs it; every decode must return 0 or a negative errno.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfs_format.h"
#include "le.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t UUID[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
#define NTYPES 10
static const unsigned types[NTYPES] = {CFS_BT_SUPER, CFS_BT_JHEAD,   CFS_BT_JDESC, CFS_BT_JCOMMIT,
                                       CFS_BT_HOST,  CFS_BT_CLUSTER, CFS_BT_INODE, CFS_BT_PTR,
                                       CFS_BT_DIR,   CFS_BT_RMAP};
static long decoded_ok;

static void quiet(enum log_level level, const char *msg, void *opaque)
{
}

static int decode(unsigned k, const uint8_t *b, uint64_t addr)
{
    switch (k) {
    case 0: {
        struct cfs_super s;
        return cfs_super_decode(b, addr, &s);
    }
    case 1: {
        struct cfs_jhead j;
        return cfs_jhead_decode(b, UUID, addr, &j);
    }
    case 2: {
        static struct cfs_jdesc d;
        return cfs_jdesc_decode(b, UUID, addr, &d);
    }
    case 3: {
        struct cfs_jcommit c;
        return cfs_jcommit_decode(b, UUID, addr, &c);
    }
    case 4: {
        static struct cfs_host h;
        return cfs_host_decode(b, UUID, addr, &h);
    }
    case 5: {
        static struct cfs_cluster c;
        return cfs_cluster_decode(b, UUID, addr, &c);
    }
    case 6: {
        static struct cfs_dinode d;
        return cfs_inode_decode(b, UUID, addr, &d);
    }
    case 7: {
        struct cfs_ptrblk p;
        return cfs_ptrblk_decode(b, UUID, addr, &p);
    }
    case 9: {
        struct cfs_rmap m;
        return cfs_rmap_decode(b, UUID, addr, &m);
    }
    default: {
        struct cfs_dirblk d;
        int r = cfs_dirblk_decode(b, UUID, addr, &d);
        if (r == 0) {
            /* a decoded directory block must be walkable within its area */
            uint32_t off = 0;
            const uint8_t *area = b + offsetof(struct cfs_dir_disk, area);
            while (off < d.used)
                off += cfs_dirent_size(area[off + 17]);
            if (off != d.used)
                abort();
        }
        return r;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *b;
    if (!b) {
        b = aligned_alloc(4096, CFS_SMALL);
        log_set_sink(quiet, NULL);
    }
    if (size < 2)
        return 0;
    unsigned k = data[0] % NTYPES, flags = data[1];
    uint32_t bsize = types[k] == CFS_BT_PTR || types[k] == CFS_BT_DIR ? CFS_SMALL : CFS_META;
    memset(b, 0, CFS_SMALL);
    memcpy(b, data + 2, size - 2 < bsize ? size - 2 : bsize);
    uint64_t addr = types[k] == CFS_BT_INODE ? 1000 * 8192 + 4096 : 1 << 20;
    if (types[k] == CFS_BT_SUPER)
        addr = 0;
    if (flags & 2) {
        le32_put(b, CFS_MAGIC);
        le16_put(b + 4, CFS_VERSION_MAJOR);
        le16_put(b + 6, (uint16_t)types[k]);
        le32_put(b + 12, bsize);
        memcpy(b + 16, UUID, 16);
        le64_put(b + 32, addr);
        if (types[k] == CFS_BT_INODE)
            le64_put(b + 64, 1000);
    }
    if (flags & 1)
        cfs_block_seal(b, bsize);
    int r = decode(k, b, addr);
    if (r > 0)
        abort();
    if (r == 0)
        decoded_ok++;
    return 0;
}

#ifndef CFS_FUZZ_LIBFUZZER
/* Valid blocks of each type, as seeds. */
static size_t seed(unsigned k, uint8_t *out)
{
    uint8_t *b = out + 2;
    out[0] = (uint8_t)k;
    out[1] = 3;
    memset(b, 0, CFS_SMALL);
    struct cfs_mhdr h = {0};
    memcpy(h.uuid, UUID, 16);
    h.addr = 1 << 20;
    switch (k) {
    case 0: {
        struct cfs_super s = {0};
        s.h = h;
        s.h.addr = 0;
        s.lun_block_size = 512;
        s.block_size = 1 << 20;
        s.small_size = CFS_SMALL;
        s.inode_size = CFS_INODE_SLOT;
        s.max_hosts = 4;
        s.cluster_blocks = CFS_CLUSTER_BLOCKS;
        s.ls_off = 65536;
        s.ls_bytes = 65536;
        s.journal_off = 1 << 20;
        s.journal_bytes = 1 << 20;
        s.data_off = 5 << 20;
        s.nclusters = 1;
        s.volume_bytes = 200 << 20;
        s.root_ino = (6 << 20) / 8192;
        cfs_super_encode(b, &s);
        return 2 + CFS_META;
    }
    case 1: {
        struct cfs_jhead j = {.h = h, .tail_seq = 5, .tail_pos = 3};
        cfs_jhead_encode(b, &j);
        return 2 + CFS_META;
    }
    case 2: {
        static struct cfs_jdesc d;
        memset(&d, 0, sizeof(d));
        d.h = h;
        d.nrec = 3;
        for (int i = 0; i < 3; i++) {
            d.addr[i] = (uint64_t)(i + 10) << 13;
            d.len[i] = i ? CFS_SMALL : CFS_META;
        }
        cfs_jdesc_encode(b, &d);
        return 2 + CFS_META;
    }
    case 3: {
        struct cfs_jcommit c = {.h = h, .nblocks = 4, .body_crc = 77};
        cfs_jcommit_encode(b, &c);
        return 2 + CFS_META;
    }
    case 4: {
        static struct cfs_host o;
        memset(&o, 0, sizeof(o));
        o.h = h;
        o.norphans = 2;
        o.orphans[0] = 700;
        o.orphans[1] = 800;
        cfs_host_encode(b, &o);
        return 2 + CFS_META;
    }
    case 5: {
        static struct cfs_cluster c;
        memset(&c, 0, sizeof(c));
        c.h = h;
        c.nblocks = 128;
        c.kind[0] = CFS_K_META;
        c.kind[1] = CFS_K_INODE;
        c.sub[1][0] = 1;
        c.free_blocks = 126;
        cfs_cluster_encode(b, &c);
        return 2 + CFS_META;
    }
    case 6: {
        static struct cfs_dinode d;
        memset(&d, 0, sizeof(d));
        d.h = h;
        d.h.addr = 1000 * 8192 + 4096;
        d.ino = 1000;
        d.mode = 0100644;
        d.size = 10;
        memcpy(d.inline_data, "0123456789", 10);
        cfs_inode_encode(b, &d);
        cfs_block_seal(b, CFS_META);
        return 2 + CFS_META;
    }
    case 7: {
        struct cfs_ptrblk p = {.h = h, .owner = 1000, .level = 1};
        cfs_ptrblk_init(b, &p);
        cfs_ptrblk_set(b, 5, 1234);
        cfs_block_seal(b, CFS_SMALL);
        return 2 + CFS_SMALL;
    }
    case 9: {
        struct cfs_rmap m = {.h = h, .laid_out = 3};
        cfs_rmap_encode(b, &m);
        return 2 + CFS_META;
    }
    default: {
        struct cfs_dirblk d = {.h = h, .dir_ino = 1000, .nent = 2};
        uint8_t *area = b + offsetof(struct cfs_dir_disk, area);
        uint32_t off = 0;
        for (int i = 0; i < 2; i++) {
            le64_put(area + off, 2000 + (uint64_t)i);
            le64_put(area + off + 8, 99);
            area[off + 16] = 8;
            area[off + 17] = 5;
            memcpy(area + off + 18, i ? "bbbbb" : "aaaaa", 5);
            off += cfs_dirent_size(5);
        }
        d.used = off;
        cfs_dirblk_put(b, &d);
        cfs_block_seal(b, CFS_SMALL);
        return 2 + CFS_SMALL;
    }
    }
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv)
{
    static uint8_t buf[2 + CFS_SMALL];
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            FILE *f = fopen(argv[i], "rb");
            if (!f)
                continue;
            size_t n = fread(buf, 1, sizeof(buf), f);
            fclose(f);
            LLVMFuzzerTestOneInput(buf, n);
        }
        return 0;
    }
    const char *e = getenv("FUZZ_ITERS");
    long iters = e ? atol(e) : 20000;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    /* every seed decodes as itself */
    for (unsigned k = 0; k < NTYPES; k++) {
        size_t n = seed(k, buf);
        long before = decoded_ok;
        LLVMFuzzerTestOneInput(buf, n);
        if (decoded_ok != before + 1) {
            fprintf(stderr, "fuzz-format: seed %u does not decode\n", k);
            return 1;
        }
    }
    for (long it = 0; it < iters; it++) {
        unsigned k = (unsigned)(rnd(&s) % NTYPES);
        size_t n = seed(k, buf);
        unsigned nmut = 1 + (unsigned)(rnd(&s) % 8);
        for (unsigned m = 0; m < nmut; m++) {
            size_t pos = 2 + (size_t)(rnd(&s) % (n - 2));
            /* bias mutations toward the fields (first 300 bytes) */
            if (rnd(&s) % 2)
                pos = 2 + (size_t)(rnd(&s) % 300);
            buf[pos] = (uint8_t)rnd(&s);
        }
        buf[1] = (uint8_t)(rnd(&s) % 4 ? 3 : rnd(&s));
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("fuzz-format: %ld inputs, %ld decoded\n", iters + NTYPES, decoded_ok);
    return 0;
}
#endif
