/* Unit tests of the chain opener (vd_chain.c) against hostile images: names
 * in descriptors that leave the allowed roots (absolute hint to an unrelated
 * disk with the right CID, ".."), symbolic links, a FIFO, the same file
 * twice, bare extents and COWD files as parents; and the roots that make a
 * linked clone in another folder work.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "crc32c.h"
#include "le.h"
#include "log.h"
#include "vdisk_internal.h"

static char tmpdir[256];

static void quiet(enum log_level level, const char *msg, void *opaque)
{
    (void)level;
    (void)msg;
    (void)opaque;
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-chain.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    log_set_sink(quiet, NULL);
    alarm(60); /* an open that hangs (FIFO) fails the test instead */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static char *tpath(const char *name)
{
    static char buf[8][320];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 320, "%s/%s", tmpdir, name);
    return p;
}

static void make_thin(const char *path, const char *hint, uint32_t pcid)
{
    struct vd_create_opts o = {
        .size = 1 << 20, .type = VD_TYPE_THIN, .parent_hint = hint, .parent_cid = pcid};
    unlink(path);
    assert_int_equal(vmdk_create(path, &o), 0);
}

static uint32_t image_cid(const char *path)
{
    struct vd_image *img;
    assert_int_equal(vd_open(path, VD_OPEN_RDONLY, &img), 0);
    uint32_t cid = img->desc.cid;
    vd_close(img);
    return cid;
}

static void write_byte(const char *path, uint8_t v)
{
    struct vd_image *img;
    assert_int_equal(vd_open(path, 0, &img), 0);
    uint8_t b[512];
    memset(b, v, sizeof(b));
    assert_int_equal(vd_pwrite(img, b, sizeof(b), 0, 0), 0);
    assert_int_equal(vd_close(img), 0);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void expect_refused(const char *path, int err, const char *what)
{
    struct vd_image *img = NULL;
    log_clear_last_error();
    int rc = vd_open(path, VD_OPEN_RDONLY, &img);
    if (rc != err)
        fail_msg("%s: expected %d, got %d (%s)", path, err, rc, log_last_error());
    assert_null(img);
    if (!strstr(log_last_error(), what))
        fail_msg("%s: message \"%s\" lacks \"%s\"", path, log_last_error(), what);
}

/* The check: a delta whose parentFileNameHint is the absolute path
 * of a disk in an unrelated folder, with that disk's CID, used to read that
 * disk's data. Now: refused, unless the folder is an allowed root. */
static void test_absolute_hint_to_unrelated_disk_is_refused(void **state)
{
    (void)state;
    assert_int_equal(mkdir(tpath("victim"), 0755), 0);
    assert_int_equal(mkdir(tpath("tenant"), 0755), 0);
    const char *victim = tpath("victim/secret.vmdk");
    make_thin(victim, NULL, 0);
    write_byte(victim, 0x5e);
    char hint[400];
    snprintf(hint, sizeof(hint), "%s", victim);
    const char *evil = tpath("tenant/evil.vmdk");
    make_thin(evil, hint, image_cid(victim));
    expect_refused(evil, -EPERM, "outside the folders");
    expect_refused(evil, -EPERM, "secret.vmdk");
    /* the user allows the folder: the chain opens and reads through */
    const char *roots[] = {tpath("victim")};
    struct vd_open_opts o = {.roots = roots, .n_roots = 1};
    struct vd_image *img;
    assert_int_equal(vd_open_ex(evil, VD_OPEN_RDONLY, &o, &img), 0);
    uint8_t b[512];
    assert_int_equal(vd_pread(img, b, sizeof(b), 0), 0);
    assert_int_equal(b[0], 0x5e);
    vd_close(img);
}

static void test_dotdot_hint_leaving_the_folder_is_refused(void **state)
{
    (void)state;
    assert_int_equal(mkdir(tpath("vm"), 0755), 0);
    const char *base = tpath("up.vmdk");
    make_thin(base, NULL, 0);
    make_thin(tpath("vm/child.vmdk"), "../up.vmdk", image_cid(base));
    expect_refused(tpath("vm/child.vmdk"), -EPERM, "outside the folders");
    /* ".." that stays inside the folder is fine */
    make_thin(tpath("vm/b.vmdk"), NULL, 0);
    assert_int_equal(mkdir(tpath("vm/sub"), 0755), 0);
    make_thin(tpath("vm/c.vmdk"), "sub/../b.vmdk", image_cid(tpath("vm/b.vmdk")));
    struct vd_image *img;
    assert_int_equal(vd_open(tpath("vm/c.vmdk"), VD_OPEN_RDONLY, &img), 0);
    vd_close(img);
}

static void test_symlinked_parent_or_folder_is_refused(void **state)
{
    (void)state;
    assert_int_equal(mkdir(tpath("out"), 0755), 0);
    assert_int_equal(mkdir(tpath("vm"), 0755), 0);
    const char *base = tpath("out/base.vmdk");
    make_thin(base, NULL, 0);
    uint32_t cid = image_cid(base);
    /* a link to the file, in the disk's folder */
    assert_int_equal(symlink(base, tpath("vm/link.vmdk")), 0);
    make_thin(tpath("vm/a.vmdk"), "link.vmdk", cid);
    expect_refused(tpath("vm/a.vmdk"), -ELOOP, "symbolic link");
    /* a link to the folder */
    assert_int_equal(symlink(tpath("out"), tpath("vm/d")), 0);
    make_thin(tpath("vm/b.vmdk"), "d/base.vmdk", cid);
    expect_refused(tpath("vm/b.vmdk"), -ELOOP, "symbolic link");
}

static void test_fifo_extent_fails_without_hanging(void **state)
{
    (void)state;
    assert_int_equal(mkfifo(tpath("pipe-flat.vmdk"), 0644), 0);
    write_text(tpath("p.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=12345678\n"
                                "parentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
                                "RW 2048 FLAT \"pipe-flat.vmdk\" 0\n");
    expect_refused(tpath("p.vmdk"), -EINVAL, "not a regular file");
    /* a FIFO as a parent */
    assert_int_equal(mkfifo(tpath("pipe.vmdk"), 0644), 0);
    make_thin(tpath("q.vmdk"), "pipe.vmdk", 1);
    expect_refused(tpath("q.vmdk"), -EINVAL, "not a regular file");
}

static void test_same_file_twice_is_refused(void **state)
{
    (void)state;
    int fd = open(tpath("x-flat.vmdk"), O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    write_text(tpath("two.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=12345678\n"
                                  "parentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n"
                                  "RW 1024 FLAT \"x-flat.vmdk\" 0\n"
                                  "RW 1024 FLAT \"./x-flat.vmdk\" 1024\n");
    expect_refused(tpath("two.vmdk"), -ELOOP, "already part of this chain");
    /* a hard link is the same file under another name */
    assert_int_equal(link(tpath("x-flat.vmdk"), tpath("y-flat.vmdk")), 0);
    write_text(tpath("two.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=12345678\n"
                                  "parentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n"
                                  "RW 1024 FLAT \"x-flat.vmdk\" 0\n"
                                  "RW 1024 FLAT \"y-flat.vmdk\" 1024\n");
    expect_refused(tpath("two.vmdk"), -ELOOP, "already part of this chain");
    /* an image whose parent is one of its own extents */
    write_text(tpath("self.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=12345678\n"
                                   "parentCID=87654321\ncreateType=\"monolithicFlat\"\n"
                                   "parentFileNameHint=\"x-flat.vmdk\"\n"
                                   "RW 2048 FLAT \"x-flat.vmdk\" 0\n");
    expect_refused(tpath("self.vmdk"), -ELOOP, "already part of this chain");
}

/* A bare sparse extent (no descriptor) or a COWD file has no CID; it used to
 * get a synthetic one (fffffffe), and a child recording that value opened. */
static void test_bare_extent_or_cowd_parent_is_refused(void **state)
{
    (void)state;
    const char *bare = tpath("bare.vmdk");
    make_thin(bare, NULL, 0);
    int fd = open(bare, O_RDWR);
    assert_true(fd >= 0);
    uint8_t z[8] = {0};
    assert_int_equal(pwrite(fd, z, 8, 28), 8); /* descriptorOffset = 0 */
    close(fd);
    make_thin(tpath("onbare.vmdk"), "bare.vmdk", 0xfffffffeu);
    expect_refused(tpath("onbare.vmdk"), -EUCLEAN, "bare extent");
    /* an ESX COWD file */
    uint8_t h[2048] = {0};
    memcpy(h, "COWD", 4);
    le32_put(h + 4, 1);
    le32_put(h + 12, 2048); /* sectors */
    le32_put(h + 16, 8);    /* grain */
    le32_put(h + 20, 1);    /* gdOffset */
    le32_put(h + 24, 1);    /* numGDEntries */
    fd = open(tpath("c.cowd"), O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
    make_thin(tpath("oncowd.vmdk"), "c.cowd", 0xfffffffeu);
    expect_refused(tpath("oncowd.vmdk"), -EUCLEAN, "bare extent");
}

/* The process-wide roots (the tools' --allow-root) apply to every open. */
static void test_allow_root_admits_another_folder(void **state)
{
    (void)state;
    assert_int_equal(mkdir(tpath("ds1"), 0755), 0);
    assert_int_equal(mkdir(tpath("ds2"), 0755), 0);
    const char *base = tpath("ds1/base.vmdk");
    make_thin(base, NULL, 0);
    char hint[400];
    snprintf(hint, sizeof(hint), "%s", base);
    make_thin(tpath("ds2/lc.vmdk"), hint, image_cid(base));
    expect_refused(tpath("ds2/lc.vmdk"), -EPERM, "--allow-root");
    assert_int_equal(vd_allow_root(tpath("ds1")), 0);
    struct vd_image *img;
    assert_int_equal(vd_open(tpath("ds2/lc.vmdk"), VD_OPEN_RDONLY, &img), 0);
    vd_close(img);
}

/* Item 4 of issue 13: a VMDK whose magic is damaged opened as raw (and
 * check said 0 problems); now it is refused with the reason. */
static void test_damaged_vmdk_is_not_guessed_raw(void **state)
{
    (void)state;
    const char *p = tpath("dm.vmdk");
    make_thin(p, NULL, 0);
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "KDMX", 4, 0), 4);
    close(fd);
    expect_refused(p, -EMEDIUMTYPE, "damaged");
    struct vd_check_report r;
    assert_int_equal(vd_check(p, 0, NULL, &r), 0);
    assert_int_equal(r.errors, 1);
    /* the user's word opens it raw */
    struct vd_image *img;
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY | VD_OPEN_RAW, &img), 0);
    vd_close(img);
    /* a name that says nothing */
    fd = open(tpath("blob"), O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    expect_refused(tpath("blob"), -EMEDIUMTYPE, "--format raw");
    assert_int_equal(vd_check(tpath("blob"), 0, NULL, &r), 0);
    assert_int_equal(r.errors, 1);
    assert_int_equal(vd_check(tpath("blob"), VD_CHECK_RAW, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    /* VD_OPEN_VMDK: anything else is an error */
    fd = open(tpath("r.raw"), O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    assert_int_equal(vd_open(tpath("r.raw"), VD_OPEN_RDONLY, &img), 0);
    vd_close(img);
    assert_int_equal(vd_open(tpath("r.raw"), VD_OPEN_RDONLY | VD_OPEN_VMDK, &img), -EMEDIUMTYPE);
}

/* The reverse: a guest writes a VMDK header into sector 0 of its raw disk,
 * which then opened as a VMDK with a parent of the guest's choosing. */
static void test_guest_cannot_turn_probed_raw_into_vmdk(void **state)
{
    (void)state;
    const char *g = tpath("g.raw");
    int fd = open(g, O_CREAT | O_RDWR, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    /* a real VMDK header and descriptor to write */
    make_thin(tpath("h.vmdk"), NULL, 0);
    uint8_t hdr[1024];
    fd = open(tpath("h.vmdk"), O_RDONLY);
    assert_int_equal(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    close(fd);
    struct vd_image *img;
    assert_int_equal(vd_open(g, 0, &img), 0);
    log_clear_last_error();
    assert_int_equal(vd_pwrite(img, hdr, sizeof(hdr), 0, 0), -EPERM);
    assert_non_null(strstr(log_last_error(), "look like a VMDK"));
    assert_int_equal(vd_pwrite(img, hdr + 2, 2, 2, 0), 0);  /* bytes 2-3 alone: still raw */
    assert_int_equal(vd_pwrite(img, hdr, 2, 0, 0), -EPERM); /* completing the magic */
    const char *desc = "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n";
    assert_int_equal(vd_pwrite(img, desc, strlen(desc), 0, 0), -EPERM);
    uint8_t junk[4096];
    memset(junk, 0xab, sizeof(junk));
    assert_int_equal(vd_pwrite(img, junk, sizeof(junk), 0, 0), 0); /* raw stays raw */
    assert_int_equal(vd_pwrite(img, hdr, 512, 4096, 0), 0);        /* not sector 0 */
    vd_close(img);
    /* the user said raw: the guest may write anything */
    assert_int_equal(vd_open(g, VD_OPEN_RAW, &img), 0);
    assert_int_equal(vd_pwrite(img, hdr, sizeof(hdr), 0, 0), 0);
    vd_close(img);
    /* a raw-named file holding a VMDK header is ambiguous: refused */
    expect_refused(g, -EMEDIUMTYPE, "name says raw");
    assert_int_equal(vd_open(g, VD_OPEN_RDONLY | VD_OPEN_RAW, &img), 0);
    assert_int_equal(vd_size(img), 1 << 20);
    vd_close(img);
}

/* Issue 13 item 6: a multi-sector rewrite of an embedded descriptor torn
 * by a power cut (some sectors new, some old) is read from its journal copy,
 * and put back in place when the image is opened for writing. */
static void test_torn_descriptor_reads_journal_copy(void **state)
{
    (void)state;
    const char *p = tpath("torn.vmdk");
    make_thin(p, NULL, 0);
    uint8_t before[10240], after[10240];
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, before, sizeof(before), 512), (ssize_t)sizeof(before));
    struct vd_image *img;
    assert_int_equal(vd_open(p, 0, &img), 0);
    char k[64], v[64];
    for (int i = 0; i < 20; i++) { /* a tree's worth of keys: several sectors */
        snprintf(k, sizeof(k), "ddb.test.key%02d", i);
        snprintf(v, sizeof(v), "value number %d of the rewrite", i);
        assert_int_equal(vmdk_desc_ddb_set(&img->desc, k, v), 0);
    }
    assert_int_equal(vmdk_desc_write(img), 0);
    vd_close(img);
    assert_int_equal(pread(fd, after, sizeof(after), 512), (ssize_t)sizeof(after));
    assert_true(memcmp(before + 512, after + 512, 512) != 0); /* sector 2 of the area changed */
    /* the cut, before the journal was retired: the journal holds the new
     * text, the second sector of the text in place is still the old one */
    uint8_t j[5120] = {0};
    size_t tl = strnlen((const char *)after, 5120);
    memcpy(j, "VDJ1", 4);
    le32_put(j + 4, (uint32_t)tl);
    le32_put(j + 8, crc32c(after, tl));
    memcpy(j + 16, after, tl);
    assert_int_equal(pwrite(fd, j, sizeof(j), 512 + 5120), (ssize_t)sizeof(j));
    assert_int_equal(pwrite(fd, before + 512, 512, 1024), 512);
    log_clear_last_error();
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    assert_string_equal(vmdk_desc_ddb_get(&img->desc, "ddb.test.key19"),
                        "value number 19 of the rewrite");
    vd_close(img);
    struct vd_check_report r;
    assert_int_equal(vd_check(p, 0, NULL, &r), 0);
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.repairable, 1);
    /* check --repair (a writable open) puts the text back where QEMU reads it */
    assert_int_equal(vd_check(p, VD_CHECK_REPAIR, NULL, &r), 0);
    assert_int_equal(r.repaired, 1);
    assert_int_equal(vd_check(p, 0, NULL, &r), 0);
    assert_int_equal(r.errors, 0);
    uint8_t fixed[10240];
    assert_int_equal(pread(fd, fixed, sizeof(fixed), 512), (ssize_t)sizeof(fixed));
    assert_memory_equal(fixed, after, 5120);
    /* the journal was retired after the rewrite (first sector zeroed) */
    assert_true(fixed[5120] == 0 && fixed[5121] == 0);
    /* another program edits the text and keeps our stale checksum: no
     * journal, so the edit is taken as it is, not undone */
    char edit[] = "ddb.test.key00 = \"edited by hand, same length..\"";
    char *at = memmem(fixed, 5120, "ddb.test.key00", 14);
    assert_non_null(at);
    memcpy(at, edit, strlen(edit));
    assert_int_equal(pwrite(fd, fixed, 5120, 512), 5120);
    close(fd);
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    assert_string_equal(vmdk_desc_ddb_get(&img->desc, "ddb.test.key00"),
                        "edited by hand, same length..");
    vd_close(img);
}

/* A descriptor made elsewhere, longer than half of the area (no room for
 * the journal): the first write's CID update still works (in place). */
static void test_long_foreign_descriptor_still_takes_writes(void **state)
{
    (void)state;
    const char *p = tpath("long.vmdk");
    make_thin(p, NULL, 0);
    char text[7000];
    int n = snprintf(text, sizeof(text),
                     "# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=ffffffff\n"
                     "createType=\"monolithicSparse\"\nRW 2048 SPARSE \"long.vmdk\"\n");
    for (int i = 0; n < 6000; i++)
        n += snprintf(text + n, sizeof(text) - (size_t)n,
                      "ddb.foreign.key%03d = \"a value written by another program\"\n", i);
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    uint8_t area[10240] = {0};
    memcpy(area, text, (size_t)n);
    assert_int_equal(pwrite(fd, area, sizeof(area), 512), (ssize_t)sizeof(area));
    close(fd);
    write_byte(p, 0x42);
    struct vd_image *img;
    assert_int_equal(vd_open(p, VD_OPEN_RDONLY, &img), 0);
    assert_true(vd_cid(img) != 0x11111111u);
    assert_non_null(vd_desc_key(img, "ddb.foreign.key100"));
    vd_close(img);
}

/* Issue 13 item 8: check of a header with tiny grain tables (one entry per
 * table) must refuse up front, not try to allocate gigabytes. */
static void test_check_bounds_memory_of_tiny_grain_tables(void **state)
{
    (void)state;
    const char *p = tpath("tiny.vmdk");
    make_thin(p, NULL, 0);
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b[8];
    le64_put(b, 1ull << 31); /* capacity: 1 TiB */
    assert_int_equal(pwrite(fd, b, 8, 12), 8);
    le64_put(b, 8); /* grainSize: 4 KiB */
    assert_int_equal(pwrite(fd, b, 8, 20), 8);
    le32_put(b, 1); /* numGTEsPerGT: 1, so 2^28 grain tables */
    assert_int_equal(pwrite(fd, b, 4, 44), 4);
    close(fd);
    struct vd_check_report r;
    log_clear_last_error();
    assert_int_equal(vd_check(p, 0, NULL, &r), 0);
    assert_int_equal(r.errors, 1);
    struct vd_image *img;
    assert_true(vd_open(p, VD_OPEN_RDONLY, &img) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_absolute_hint_to_unrelated_disk_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dotdot_hint_leaving_the_folder_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_symlinked_parent_or_folder_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fifo_extent_fails_without_hanging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_file_twice_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bare_extent_or_cowd_parent_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_allow_root_admits_another_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_vmdk_is_not_guessed_raw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_descriptor_reads_journal_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_foreign_descriptor_still_takes_writes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_check_bounds_memory_of_tiny_grain_tables, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_guest_cannot_turn_probed_raw_into_vmdk, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
