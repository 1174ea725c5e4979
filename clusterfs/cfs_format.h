/* On-disk format of the clustered volume: constants, the byte layout of
 * every metadata block (struct *_disk: offsets only, never read or written
 * directly) and their encode/decode functions (format.c).
 *
 * docs/format.md ("The volume") has the byte tables; docs/design.md the
 * reasoning. All integers are little-endian. Every metadata block starts
 * with the common 64-byte header (magic, major version, block type, CRC32C
 * of the whole block with the CRC field zero, volume UUID, the block's own
 * byte address, the journal transaction that wrote it, and the fencing
 * token of the lock it was written under).
 */
#ifndef CLUSTERFS_CFS_FORMAT_H
#define CLUSTERFS_CFS_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define CFS_MAGIC 0x56534643u /* "CFSV" */
#define CFS_VERSION_MAJOR 1
#define CFS_VERSION_MINOR 0

/* Feature flags. An unknown incompat bit refuses the mount; an unknown
 * ro_compat bit refuses a read-write mount; compat bits are ignored. */
#define CFS_FEAT_INCOMPAT_INLINE (1u << 0)  /* tiny files in the inode */
#define CFS_FEAT_INCOMPAT_LAZY (1u << 1)    /* resource clusters laid out on demand */
#define CFS_FEAT_INCOMPAT_HASHDIR (1u << 2) /* linear-hashed directories */
#define CFS_FEAT_INCOMPAT_SUPP                                                                     \
    (CFS_FEAT_INCOMPAT_INLINE | CFS_FEAT_INCOMPAT_LAZY | CFS_FEAT_INCOMPAT_HASHDIR)
#define CFS_FEAT_RO_COMPAT_SUPP 0u

/* Sizes (bytes). */
#define CFS_META 4096u  /* superblock, journal blocks, cluster header, inode */
#define CFS_SMALL 8192u /* small block: directory blocks, pointer blocks */
#define CFS_SMALL_SHIFT 13
#define CFS_INODE_SLOT 8192u /* lock record area (4 KiB) + inode (4 KiB) */
#define CFS_INLINE_MAX 1024u /* file data kept in the inode */
#define CFS_XATTR_MAX 2816u  /* xattr area of an inode */
#define CFS_NAME_MAX 255u
#define CFS_CLUSTER_BLOCKS 128u /* file blocks per resource cluster (incl. its header block) */
#define CFS_BLOCK_MIN (64u << 10)
#define CFS_BLOCK_MAX (1u << 20) /* 128 sub-slots of 8 KiB at most per pool */
#define CFS_BLOCK_DEFAULT (1u << 20)
#define CFS_SUPER_B_OFF 4096u  /* second superblock copy */
#define CFS_RMAP_OFF 8192u     /* resource map block */
#define CFS_LS_OFF (64u << 10) /* lockspace */
#define CFS_JOURNAL_DEFAULT (8u << 20)
#define CFS_JOURNAL_MIN (1u << 20)
#define CFS_HOSTS_DEFAULT 64u
#define CFS_HOSTS_MAX 4096u

/* Block types (common header `type`). */
enum cfs_btype {
    CFS_BT_SUPER = 1,
    CFS_BT_JHEAD = 2,   /* journal header: tail of the log */
    CFS_BT_JDESC = 3,   /* journal descriptor: home addresses of the images that follow */
    CFS_BT_JCOMMIT = 4, /* journal commit: CRC of the transaction */
    CFS_BT_CLUSTER = 5, /* resource cluster header: bitmaps */
    CFS_BT_INODE = 6,
    CFS_BT_DIR = 7,   /* directory block (8 KiB) */
    CFS_BT_PTR = 8,   /* pointer block of a block map (8 KiB) */
    CFS_BT_HOST = 9,  /* per-host block: orphan list */
    CFS_BT_RMAP = 10, /* resource map: how many clusters are laid out */
};
const char *cfs_btype_name(unsigned t);

/* ---- Common metadata header ------------------------------------------- */

struct cfs_mhdr_disk {
    uint32_t magic;
    uint16_t version; /* major */
    uint16_t type;
    uint32_t crc;  /* CRC32C of the whole block with this field zero */
    uint32_t size; /* bytes covered: 4096 or 8192 */
    uint8_t uuid[16];
    uint64_t addr;       /* byte address of this block on the LUN */
    uint64_t seq;        /* journal transaction that wrote it last */
    uint32_t fence_slot; /* token of the lock it was written under: */
    uint32_t fence_gen;  /*   heartbeat slot, generation, */
    uint64_t fence_ver;  /*   lock record version */
};
_Static_assert(sizeof(struct cfs_mhdr_disk) == 64, "mhdr size");
_Static_assert(offsetof(struct cfs_mhdr_disk, crc) == 8, "mhdr crc");
_Static_assert(offsetof(struct cfs_mhdr_disk, uuid) == 16, "mhdr uuid");
_Static_assert(offsetof(struct cfs_mhdr_disk, addr) == 32, "mhdr addr");
_Static_assert(offsetof(struct cfs_mhdr_disk, fence_ver) == 56, "mhdr fence");
#define CFS_HDR 64u

struct cfs_mhdr {
    uint16_t version, type;
    uint32_t size;
    uint8_t uuid[16];
    uint64_t addr, seq;
    uint32_t fence_slot, fence_gen;
    uint64_t fence_ver;
};

/* ---- Superblock (4096 bytes, at byte 0 and at byte 4096) ---------------- */

struct cfs_super_disk {
    struct cfs_mhdr_disk h;
    uint16_t version_minor;
    uint16_t reserved0;
    uint32_t feat_compat;
    uint32_t feat_incompat;
    uint32_t feat_ro_compat;
    char label[64];
    uint64_t created_ns; /* wall clock, informational */
    uint64_t volume_bytes;
    uint32_t lun_block_size;
    uint32_t block_size; /* file block */
    uint32_t small_size; /* 8192 */
    uint32_t inode_size; /* 8192 (slot) */
    uint32_t max_hosts;
    uint32_t io_timeout_ms;
    uint64_t ls_off; /* bytes */
    uint64_t ls_bytes;
    uint64_t journal_off;   /* bytes; journal of slot i at journal_off + i * journal_bytes */
    uint64_t journal_bytes; /* per host */
    uint64_t data_off;      /* first resource cluster */
    uint32_t cluster_blocks;
    uint32_t reserved1;
    uint64_t nclusters;
    uint64_t root_ino;
    uint64_t super_gen; /* +1 on every rewrite (grow) */
    uint8_t reserved[3840];
};
_Static_assert(sizeof(struct cfs_super_disk) == CFS_META, "super size");
_Static_assert(offsetof(struct cfs_super_disk, label) == 80, "super label");
_Static_assert(offsetof(struct cfs_super_disk, volume_bytes) == 152, "super volume_bytes");
_Static_assert(offsetof(struct cfs_super_disk, ls_off) == 184, "super ls_off");
_Static_assert(offsetof(struct cfs_super_disk, root_ino) == 240, "super root");
_Static_assert(offsetof(struct cfs_super_disk, reserved) == 256, "super reserved");

struct cfs_super {
    struct cfs_mhdr h;
    uint16_t version_minor;
    uint32_t feat_compat, feat_incompat, feat_ro_compat;
    char label[65];
    uint64_t created_ns, volume_bytes;
    uint32_t lun_block_size, block_size, small_size, inode_size, max_hosts, io_timeout_ms;
    uint64_t ls_off, ls_bytes, journal_off, journal_bytes, data_off;
    uint32_t cluster_blocks;
    uint64_t nclusters, root_ino, super_gen;
};

/* ---- Journal ------------------------------------------------------------ */

/* Journal of host slot i: journal_bytes at journal_off + i * journal_bytes,
 * in 4 KiB blocks: 0 header, 1 host block (orphan list, journaled like any
 * metadata), 2.. the log ring. */
#define CFS_J_RING_START 2u

struct cfs_jhead_disk {
    struct cfs_mhdr_disk h;
    uint32_t slot;
    uint32_t reserved0;
    uint64_t tail_seq; /* first transaction to replay */
    uint64_t tail_pos; /* its ring position (0 .. ring blocks - 1) */
    uint8_t reserved[4008];
};
_Static_assert(sizeof(struct cfs_jhead_disk) == CFS_META, "jhead size");
_Static_assert(offsetof(struct cfs_jhead_disk, tail_seq) == 72, "jhead tail_seq");

struct cfs_jhead {
    struct cfs_mhdr h;
    uint32_t slot;
    uint64_t tail_seq, tail_pos;
};

struct cfs_jrec_disk {
    uint64_t addr; /* home byte address */
    uint32_t len;  /* 4096 or 8192 */
    uint32_t reserved;
};
_Static_assert(sizeof(struct cfs_jrec_disk) == 16, "jrec size");

#define CFS_JDESC_MAX 248u
struct cfs_jdesc_disk {
    struct cfs_mhdr_disk h;
    uint32_t nrec;
    uint32_t reserved0;
    uint8_t reserved[56];
    struct cfs_jrec_disk rec[CFS_JDESC_MAX];
};
_Static_assert(sizeof(struct cfs_jdesc_disk) == CFS_META, "jdesc size");
_Static_assert(offsetof(struct cfs_jdesc_disk, rec) == 128, "jdesc rec");

struct cfs_jcommit_disk {
    struct cfs_mhdr_disk h;
    uint32_t nblocks;  /* blocks of the transaction before this one */
    uint32_t body_crc; /* CRC32C of those blocks, in order */
    uint64_t commit_ns;
    uint8_t reserved[4016];
};
_Static_assert(sizeof(struct cfs_jcommit_disk) == CFS_META, "jcommit size");
_Static_assert(offsetof(struct cfs_jcommit_disk, body_crc) == 68, "jcommit crc");

/* ---- Per-host block (journal block 1): orphan inodes --------------------- */

#define CFS_ORPHAN_MAX 496u
struct cfs_host_disk {
    struct cfs_mhdr_disk h;
    uint32_t slot;
    uint32_t norphans;
    uint8_t reserved[56];
    uint64_t orphans[CFS_ORPHAN_MAX]; /* inodes unlinked while open */
};
_Static_assert(sizeof(struct cfs_host_disk) == CFS_META, "host size");
_Static_assert(offsetof(struct cfs_host_disk, orphans) == 128, "host orphans");

/* ---- Resource map (4 KiB at byte 8192) ---------------------------------- */

/* Clusters 0 .. laid_out - 1 have a header (which must decode); the others
 * were never used, whatever bytes the LUN holds there. Grows by one cluster
 * at a time, in the transaction that writes the new cluster's header. */
struct cfs_rmap_disk {
    struct cfs_mhdr_disk h;
    uint64_t laid_out;
    uint8_t reserved[4024];
};
_Static_assert(sizeof(struct cfs_rmap_disk) == CFS_META, "rmap size");
_Static_assert(offsetof(struct cfs_rmap_disk, laid_out) == 64, "rmap laid_out");

struct cfs_rmap {
    struct cfs_mhdr h;
    uint64_t laid_out;
};

/* ---- Resource cluster header (4 KiB at cluster start + 4096) ------------ */

/* A cluster is CFS_CLUSTER_BLOCKS file blocks; its first file block holds
 * its lock record (byte 0) and this header (byte 4096). A file block of
 * kind POOL_SMALL or POOL_INODE is cut into block_size / 8192 slots whose
 * bitmap is sub[block]. */
enum cfs_kind { CFS_K_FREE = 0, CFS_K_DATA = 1, CFS_K_SMALL = 2, CFS_K_INODE = 3, CFS_K_META = 4 };

struct cfs_cluster_disk {
    struct cfs_mhdr_disk h;
    uint64_t index;
    uint32_t nblocks; /* file blocks in this cluster, incl. block 0 */
    uint32_t free_blocks;
    uint32_t owner_slot; /* host that holds the cluster (allocation preference) */
    uint32_t owner_gen;
    uint32_t free_small;  /* free slots in small-block pools */
    uint32_t free_inodes; /* free slots in inode pools */
    uint8_t reserved0[32];
    uint8_t kind[CFS_CLUSTER_BLOCKS];    /* enum cfs_kind per file block */
    uint8_t sub[CFS_CLUSTER_BLOCKS][16]; /* slot bitmap of a pool block */
    uint8_t reserved[1792];
};
_Static_assert(sizeof(struct cfs_cluster_disk) == CFS_META, "cluster size");
_Static_assert(offsetof(struct cfs_cluster_disk, kind) == 128, "cluster kind");
_Static_assert(offsetof(struct cfs_cluster_disk, sub) == 256, "cluster sub");

struct cfs_cluster {
    struct cfs_mhdr h;
    uint64_t index;
    uint32_t nblocks, free_blocks, owner_slot, owner_gen, free_small, free_inodes;
    uint8_t kind[CFS_CLUSTER_BLOCKS];
    uint8_t sub[CFS_CLUSTER_BLOCKS][16];
};

/* ---- Inode (4 KiB at ino * 8192 + 4096; lock record at ino * 8192) ----- */

struct cfs_inode_disk {
    struct cfs_mhdr_disk h;
    uint64_t ino;
    uint32_t generation;
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint32_t nlink;
    uint32_t flags;
    uint64_t size;
    uint64_t blocks; /* bytes allocated to the file (data + pointer blocks) */
    uint64_t rdev;
    int64_t atime_ns;
    int64_t mtime_ns;
    int64_t ctime_ns;
    int64_t btime_ns;
    uint8_t map_shift; /* 0 inline, 13 small blocks, log2(block_size) file blocks */
    uint8_t map_height;
    uint16_t reserved0;
    uint32_t reserved1;
    uint64_t map_root; /* pointer (see CFS_PTR_*) */
    uint64_t parent;   /* directories: the parent inode */
    uint64_t reserved2;
    uint32_t dir_level; /* directories: linear hashing level L */
    uint32_t dir_split; /* split pointer S: buckets = 2^L + S */
    uint64_t dir_entries;
    uint64_t dir_ovf_next; /* next unused overflow block index */
    uint32_t xattr_len;
    uint8_t reserved3[44];
    uint8_t inline_data[CFS_INLINE_MAX];
    uint8_t xattr[CFS_XATTR_MAX];
};
_Static_assert(sizeof(struct cfs_inode_disk) == CFS_META, "inode size");
_Static_assert(offsetof(struct cfs_inode_disk, size) == 96, "inode size field");
_Static_assert(offsetof(struct cfs_inode_disk, map_shift) == 152, "inode map");
_Static_assert(offsetof(struct cfs_inode_disk, map_root) == 160, "inode root");
_Static_assert(offsetof(struct cfs_inode_disk, dir_level) == 184, "inode dir");
_Static_assert(offsetof(struct cfs_inode_disk, xattr_len) == 208, "inode xattr_len");
_Static_assert(offsetof(struct cfs_inode_disk, inline_data) == 256, "inode inline");
_Static_assert(offsetof(struct cfs_inode_disk, xattr) == 1280, "inode xattr");

/* Block pointer: 0 = hole; else bits 0..55 the byte address / 8192, bit 62
 * "unwritten" (allocated, reads as zeroes: fallocate, zero range). */
#define CFS_PTR_ADDR_MASK ((1ull << 56) - 1)
#define CFS_PTR_UNWRITTEN (1ull << 62)
static inline uint64_t cfs_ptr_addr(uint64_t p)
{
    return (p & CFS_PTR_ADDR_MASK) << CFS_SMALL_SHIFT;
}
static inline uint64_t cfs_ptr_make(uint64_t addr, int unwritten)
{
    return (addr >> CFS_SMALL_SHIFT) | (unwritten ? CFS_PTR_UNWRITTEN : 0);
}

/* ---- Pointer block (8 KiB small block) ---------------------------------- */

#define CFS_PTR_PER_BLOCK 1008u
struct cfs_ptr_disk {
    struct cfs_mhdr_disk h;
    uint64_t owner; /* inode */
    uint32_t level; /* 1 = points at data blocks */
    uint8_t reserved[52];
    uint64_t ptr[CFS_PTR_PER_BLOCK];
};
_Static_assert(sizeof(struct cfs_ptr_disk) == CFS_SMALL, "ptr size");
_Static_assert(offsetof(struct cfs_ptr_disk, ptr) == 128, "ptr array");

/* ---- Directory block (8 KiB small block) -------------------------------- */

/* Entries: le64 ino, le64 hash, u8 type (DT_*), u8 namelen, name; each
 * padded to 8 bytes, packed from byte 128. */
#define CFS_DIRENT_HDR 18u
#define CFS_DIR_AREA (CFS_SMALL - 128u)
struct cfs_dir_disk {
    struct cfs_mhdr_disk h;
    uint64_t dir_ino;
    uint64_t bucket; /* bucket this block belongs to */
    uint64_t next;   /* logical index of the next overflow block, 0 = none */
    uint32_t nent;
    uint32_t used; /* bytes of the entry area in use */
    uint8_t reserved[32];
    uint8_t area[CFS_DIR_AREA];
};
_Static_assert(sizeof(struct cfs_dir_disk) == CFS_SMALL, "dir size");
_Static_assert(offsetof(struct cfs_dir_disk, area) == 128, "dir area");
static inline uint32_t cfs_dirent_size(unsigned namelen)
{
    return (CFS_DIRENT_HDR + namelen + 7u) & ~7u;
}

/* ---- Encode / decode ---------------------------------------------------- */

/* Header helpers. cfs_block_seal() writes the header fields that the
 * encoder did not (crc) and computes the CRC last. cfs_block_check()
 * verifies magic, version, type, CRC, UUID and address; it returns 0,
 * -EUCLEAN (bad magic / type / address / size), -EBADMSG (bad CRC),
 * -EPROTO (other major version), -ESTALE (another volume's UUID) and logs
 * the structure, its address, expected and found values. A block of all
 * zeroes gives -ENODATA (never written: lazily laid out), not logged. */
/* Set by a thread that probes blocks which may legitimately be invalid
 * (the end of the journal): decode failures are then not logged. */
extern __thread int cfs_decode_quiet;
void cfs_mhdr_encode(void *buf, const struct cfs_mhdr *h);
void cfs_mhdr_decode(const void *buf, struct cfs_mhdr *h);
void cfs_block_seal(void *buf, uint32_t size);
int cfs_block_check(const void *buf, uint32_t size, unsigned type, const uint8_t uuid[16],
                    uint64_t addr, const char *what);
int cfs_is_zero(const void *buf, size_t len);

void cfs_super_encode(void *buf, const struct cfs_super *s);
/* Decode a superblock read from byte `addr`; checks geometry too. */
int cfs_super_decode(const void *buf, uint64_t addr, struct cfs_super *s);
void cfs_jhead_encode(void *buf, const struct cfs_jhead *j);
int cfs_jhead_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_jhead *j);
void cfs_rmap_encode(void *buf, const struct cfs_rmap *m);
int cfs_rmap_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_rmap *m);
void cfs_cluster_encode(void *buf, const struct cfs_cluster *c);
int cfs_cluster_decode(const void *buf, const uint8_t uuid[16], uint64_t addr,
                       struct cfs_cluster *c);

/* In-memory form of an inode's on-disk fields. */
struct cfs_dinode {
    struct cfs_mhdr h;
    uint64_t ino;
    uint32_t generation, mode, uid, gid, nlink, flags;
    uint64_t size, blocks, rdev;
    int64_t atime_ns, mtime_ns, ctime_ns, btime_ns;
    uint8_t map_shift, map_height;
    uint64_t map_root, parent;
    uint32_t dir_level, dir_split;
    uint64_t dir_entries, dir_ovf_next;
    uint32_t xattr_len;
    uint8_t inline_data[CFS_INLINE_MAX];
    uint8_t xattr[CFS_XATTR_MAX];
};
void cfs_inode_encode(void *buf, const struct cfs_dinode *d);
int cfs_inode_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_dinode *d);

struct cfs_host {
    struct cfs_mhdr h;
    uint32_t slot, norphans;
    uint64_t orphans[CFS_ORPHAN_MAX];
};
void cfs_host_encode(void *buf, const struct cfs_host *o);
int cfs_host_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_host *o);

/* Journal descriptor and commit. */
struct cfs_jdesc {
    struct cfs_mhdr h;
    uint32_t nrec;
    uint64_t addr[CFS_JDESC_MAX];
    uint32_t len[CFS_JDESC_MAX];
};
void cfs_jdesc_encode(void *buf, const struct cfs_jdesc *d);
int cfs_jdesc_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_jdesc *d);
struct cfs_jcommit {
    struct cfs_mhdr h;
    uint32_t nblocks, body_crc;
    uint64_t commit_ns;
};
void cfs_jcommit_encode(void *buf, const struct cfs_jcommit *c);
int cfs_jcommit_decode(const void *buf, const uint8_t uuid[16], uint64_t addr,
                       struct cfs_jcommit *c);

/* Pointer and directory blocks are worked on in place (their arrays are
 * large); these set and read their header fields. */
struct cfs_ptrblk {
    struct cfs_mhdr h;
    uint64_t owner;
    uint32_t level;
};
void cfs_ptrblk_init(void *buf, const struct cfs_ptrblk *p);
int cfs_ptrblk_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_ptrblk *p);
uint64_t cfs_ptrblk_get(const void *buf, unsigned i);
void cfs_ptrblk_set(void *buf, unsigned i, uint64_t ptr);

struct cfs_dirblk {
    struct cfs_mhdr h;
    uint64_t dir_ino, bucket, next;
    uint32_t nent, used;
};
void cfs_dirblk_put(void *buf, const struct cfs_dirblk *d); /* header fields only */
/* Decode the header and check that the entries parse (lengths, padding,
 * count); -EUCLEAN with a message naming the block otherwise. */
int cfs_dirblk_decode(const void *buf, const uint8_t uuid[16], uint64_t addr, struct cfs_dirblk *d);
/* The same without the block check (a block already checked when read). */
int cfs_dirblk_parse(const void *buf, uint64_t addr, struct cfs_dirblk *d);

#endif
