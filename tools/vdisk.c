/* vdisk: create, inspect, check, map, convert and resize virtual disk images
 * (VMDK and raw). `vdisk serve` is in vdisk_serve.c, `vdisk snapshot` and
 * `vdisk clone` in vdisk_snap.c. Exit status: 0 success, 1 failure (or
 * problems found by check), 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "progress.h"
#include "tools.h"
#include "util.h"
#include "vdisk.h"
#include "version.h"

unsigned vdisk_open_fmt;

static void usage(FILE *f)
{
    fprintf(
        f, "usage: vdisk COMMAND [options] ...\n"
           "  create [--type thin|thick|eager-zeroed] [--adapter ide|lsilogic|buslogic|legacyESX]\n"
           "         [--format vmdk|raw] FILE SIZE\n"
           "  info [--json] FILE\n"
           "  check [--repair] [--json] [--progress] FILE\n"
           "  map [--json] FILE\n"
           "  convert [-O vmdk|raw] [--type thin|thick|eager-zeroed|stream] [--adapter A]\n"
           "          [--progress] SRC DST\n"
           "  resize [--shrink] FILE SIZE\n"
           "  snapshot ... / clone ...   (see vdisk snapshot --help)\n"
           "  serve ...                  (see vdisk serve --help)\n"
           "Every command takes --allow-root DIR (repeatable): extent files and parents\n"
           "named by an image may lie in DIR too (default: only the image's own folder);\n"
           "and --format raw|vmdk for the image it opens (convert: the source). Without\n"
           "it raw is never guessed: a file without a VMDK header is raw only when its\n"
           "name says so (.raw, .img, .bin, .iso, .dd) or it is a block device.\n"
           "SIZE accepts suffixes K, M, G, T (binary). 'man vdisk' for the manual,\n"
           "'vdisk --version' for the version.\n");
}

static int parse_type(const char *s, enum vd_type *t)
{
    if (strcmp(s, "thin") == 0)
        *t = VD_TYPE_THIN;
    else if (strcmp(s, "thick") == 0)
        *t = VD_TYPE_THICK;
    else if (strcmp(s, "eager-zeroed") == 0 || strcmp(s, "eagerzeroedthick") == 0)
        *t = VD_TYPE_EAGER;
    else if (strcmp(s, "stream") == 0 || strcmp(s, "streamOptimized") == 0)
        *t = VD_TYPE_STREAM;
    else {
        log_err("unknown --type \"%s\" (thin, thick, eager-zeroed; convert: stream)", s);
        return -EINVAL;
    }
    return 0;
}

static int cmd_create(int argc, char **argv)
{
    static const struct option opts[] = {{"type", required_argument, NULL, 't'},
                                         {"adapter", required_argument, NULL, 'a'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct vd_create_opts o = {0};
    const char *fmt = "vmdk";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:a:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (parse_type(optarg, &o.type) < 0)
                return 2;
            break;
        case 'a':
            o.adapter = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    if (parse_size(argv[optind + 1], &o.size) < 0 || o.size == 0) {
        log_err("bad SIZE \"%s\"", argv[optind + 1]);
        return 2;
    }
    int rc;
    if (strcmp(fmt, "raw") == 0)
        rc = vd_create_raw(argv[optind], o.size);
    else if (strcmp(fmt, "vmdk") == 0)
        rc = vd_create(argv[optind], &o);
    else {
        log_err("unknown --format \"%s\" (vmdk, raw)", fmt);
        return 2;
    }
    if (rc < 0)
        return 1;
    char sz[32];
    format_size(o.size, sz, sizeof sz);
    static const char *const tnames[] = {"thin (monolithicSparse)", "thick (monolithicFlat)",
                                         "eager-zeroed (monolithicFlat)"};
    if (strcmp(fmt, "raw") == 0)
        printf("%s: raw, %s\n", argv[optind], sz);
    else
        printf("%s: %s VMDK, %s, adapter %s\n", argv[optind],
               (unsigned)o.type < 3 ? tnames[o.type] : "?", sz, o.adapter ? o.adapter : "lsilogic");
    return 0;
}

/* Options of the commands that take [--json] FILE: returns -1 to go on (FILE
 * is argv[optind]), else the exit status. */
static int parse_json_file(int argc, char **argv, bool *js)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    *js = false;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        if (c == 'j')
            *js = true;
        else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 1) {
        usage(stderr);
        return 2;
    }
    return -1;
}

static int cmd_info(int argc, char **argv)
{
    bool js;
    int prc = parse_json_file(argc, argv, &js);
    if (prc >= 0)
        return prc;
    struct vd_image *img;
    if (vd_open(argv[optind], VD_OPEN_SHARED | vdisk_open_fmt, &img) <
        0) /* as qemu-img -U: works on a disk in use */
        return 1;
    bool vmdk = vd_is_vmdk(img);
    uint64_t alloc = vd_allocated_bytes(img);
    const char *adapter = vd_desc_key(img, "ddb.adapterType");
    const char *cyl = vd_desc_key(img, "ddb.geometry.cylinders");
    const char *heads = vd_desc_key(img, "ddb.geometry.heads");
    const char *secs = vd_desc_key(img, "ddb.geometry.sectors");
    const char *uuid = vd_desc_key(img, "ddb.uuid");
    if (!uuid) /* images made by VirtualBox */
        uuid = vd_desc_key(img, "ddb.uuid.image");
    if (js) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "file", vd_path(img));
        json_str(&j, "format", vmdk ? "vmdk" : "raw");
        json_str(&j, "type", vd_create_type(img));
        json_u64(&j, "virtual_size", vd_size(img));
        json_u64(&j, "allocated_size", alloc);
        json_u64(&j, "granularity", vd_granularity(img));
        if (vmdk) {
            char b[16];
            snprintf(b, sizeof(b), "%08x", vd_cid(img));
            json_str(&j, "cid", b);
            snprintf(b, sizeof(b), "%08x", vd_parent_cid(img));
            json_str(&j, "parent_cid", b);
            json_str(&j, "parent_hint", vd_parent_hint(img));
            json_str(&j, "adapter", adapter);
            json_obj_begin(&j, "geometry");
            json_u64(&j, "cylinders", cyl ? strtoull(cyl, NULL, 10) : 0);
            json_u64(&j, "heads", heads ? strtoull(heads, NULL, 10) : 0);
            json_u64(&j, "sectors", secs ? strtoull(secs, NULL, 10) : 0);
            json_obj_end(&j);
            json_str(&j, "uuid", uuid);
            json_arr_begin(&j, "extents");
            for (int i = 0; i < vd_extent_count(img); i++) {
                struct vd_extent_info e;
                if (vd_extent_get(img, i, &e) < 0)
                    continue;
                json_obj_begin(&j, NULL);
                json_str(&j, "file", e.path);
                json_str(&j, "type", e.type);
                json_u64(&j, "start", e.start);
                json_u64(&j, "length", e.len);
                if (e.sparse) {
                    json_u64(&j, "grain_size", e.grain_size);
                    json_bool(&j, "compressed", e.compressed);
                    json_bool(&j, "zeroed_grain", e.zeroed_grain);
                    json_bool(&j, "cowd", e.cowd);
                    json_u64(&j, "version", e.version);
                }
                json_obj_end(&j);
            }
            json_arr_end(&j);
        }
        json_arr_begin(&j, "chain");
        for (struct vd_image *p = vd_parent(img); p; p = vd_parent(p)) {
            json_obj_begin(&j, NULL);
            json_str(&j, "file", vd_path(p));
            char b[16];
            snprintf(b, sizeof(b), "%08x", vd_cid(p));
            json_str(&j, "cid", b);
            json_u64(&j, "virtual_size", vd_size(p));
            json_obj_end(&j);
        }
        json_arr_end(&j);
        json_obj_end(&j);
        json_finish(&j);
    } else {
        char s1[32], s2[32];
        printf("file: %s\nformat: %s\n", vd_path(img), vmdk ? "vmdk" : "raw");
        if (vmdk)
            printf("type: %s\n", vd_create_type(img));
        printf("virtual size: %s (%" PRIu64 " bytes)\nallocated size: %s\n",
               format_size(vd_size(img), s1, sizeof(s1)), vd_size(img),
               format_size(alloc, s2, sizeof(s2)));
        if (vmdk) {
            printf("CID: %08x\nparentCID: %08x\n", vd_cid(img), vd_parent_cid(img));
            printf("adapter: %s\n", adapter ? adapter : "-");
            printf("geometry: %s/%s/%s (C/H/S)\n", cyl ? cyl : "-", heads ? heads : "-",
                   secs ? secs : "-");
            printf("UUID: %s\n", uuid ? uuid : "-");
            printf("granularity: %u\n", vd_granularity(img));
            for (int i = 0; i < vd_extent_count(img); i++) {
                struct vd_extent_info e;
                if (vd_extent_get(img, i, &e) == 0)
                    printf("extent %d: %s %s, %" PRIu64 " bytes at %" PRIu64 "\n", i, e.type,
                           e.path ? e.path : "-", e.len, e.start);
            }
        }
        int depth = 1;
        for (struct vd_image *p = vd_parent(img); p; p = vd_parent(p), depth++)
            printf("parent %d: %s (CID %08x)\n", depth, vd_path(p), vd_cid(p));
    }
    vd_close(img);
    return 0;
}

static int cmd_map(int argc, char **argv)
{
    bool js;
    int prc = parse_json_file(argc, argv, &js);
    if (prc >= 0)
        return prc;
    struct vd_image *img;
    if (vd_open(argv[optind], VD_OPEN_SHARED | vdisk_open_fmt, &img) <
        0) /* as qemu-img -U: works on a disk in use */
        return 1;
    struct json j;
    if (js) {
        json_init(&j, stdout);
        json_arr_begin(&j, NULL);
    } else {
        printf("%-16s %-16s %s\n", "Offset", "Length", "Status");
    }
    int rc = 0;
    uint64_t off = 0;
    while (off < vd_size(img)) {
        uint64_t n;
        unsigned st;
        rc = vd_block_status(img, off, vd_size(img) - off, &n, &st);
        if (rc < 0)
            break;
        if (js) {
            json_obj_begin(&j, NULL);
            json_u64(&j, "start", off);
            json_u64(&j, "length", n);
            json_bool(&j, "data", !(st & VD_STATUS_HOLE));
            json_bool(&j, "zero", (st & VD_STATUS_ZERO) != 0);
            json_obj_end(&j);
        } else if (!(st & VD_STATUS_HOLE)) {
            printf("0x%-14" PRIx64 " 0x%-14" PRIx64 " %s\n", off, n,
                   (st & VD_STATUS_ZERO) ? "zero" : "data");
        }
        off += n;
    }
    if (js) {
        json_arr_end(&j);
        json_finish(&j);
    }
    vd_close(img);
    return rc < 0 ? 1 : 0;
}

static int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {{"type", required_argument, NULL, 't'},
                                         {"adapter", required_argument, NULL, 'a'},
                                         {"progress", no_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct vd_create_opts o = {0};
    const char *fmt = "vmdk";
    bool force_progress = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "O:t:a:ph", opts, NULL)) != -1) {
        switch (c) {
        case 'O':
            fmt = optarg;
            break;
        case 't':
            if (parse_type(optarg, &o.type) < 0)
                return 2;
            break;
        case 'a':
            o.adapter = optarg;
            break;
        case 'p':
            force_progress = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2 || (strcmp(fmt, "vmdk") && strcmp(fmt, "raw"))) {
        usage(stderr);
        return 2;
    }
    const char *src_path = argv[optind], *dst_path = argv[optind + 1];
    struct vd_image *src, *dst = NULL;
    if (vd_open(src_path, VD_OPEN_RDONLY | vdisk_open_fmt, &src) < 0)
        return 1;
    o.size = vd_size(src);
    int rc;
    bool raw = strcmp(fmt, "raw") == 0;
    if (!raw && o.type == VD_TYPE_STREAM) {
        rc = vd_stream_write(src, dst_path, o.adapter, force_progress);
        vd_close(src);
        return rc < 0 ? 1 : 0;
    }
    rc = raw ? vd_create_raw(dst_path, o.size) : vd_create(dst_path, &o);
    if (rc < 0) {
        vd_close(src);
        return 1;
    }
    rc = vd_open(dst_path, raw ? VD_OPEN_RAW : VD_OPEN_VMDK, &dst);
    if (rc < 0)
        goto out;
    rc = vd_copy_sparse(src, dst, 65536, "convert", force_progress);
out:
    if (dst) {
        int rc2 = vd_close(dst);
        if (rc == 0)
            rc = rc2;
    }
    vd_close(src);
    if (rc < 0)
        log_err("convert %s -> %s failed: %s (the partial %s is left in place)", src_path, dst_path,
                strerror(-rc), dst_path);
    return rc < 0 ? 1 : 0;
}

static int cmd_resize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"shrink", no_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool shrink = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "sh", opts, NULL)) != -1) {
        if (c == 's')
            shrink = true;
        else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    uint64_t size;
    if (parse_size(argv[optind + 1], &size) < 0 || size == 0) {
        log_err("bad SIZE \"%s\"", argv[optind + 1]);
        return 2;
    }
    return vd_resize(argv[optind], size, (shrink ? VD_RESIZE_SHRINK : 0) | vdisk_open_fmt) < 0 ? 1
                                                                                               : 0;
}

static int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {{"repair", no_argument, NULL, 'r'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"progress", no_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool repair = false, js = false, prog = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "rjph", opts, NULL)) != -1) {
        if (c == 'r')
            repair = true;
        else if (c == 'j')
            js = true;
        else if (c == 'p')
            prog = true;
        else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 1) {
        usage(stderr);
        return 2;
    }
    struct json j;
    if (js)
        json_init(&j, stdout);
    struct vd_check_report r = {0};
    unsigned cf = (repair ? VD_CHECK_REPAIR : 0) | (prog ? VD_CHECK_PROGRESS : 0) |
                  (vdisk_open_fmt == VD_OPEN_RAW    ? VD_CHECK_RAW
                   : vdisk_open_fmt == VD_OPEN_VMDK ? VD_CHECK_VMDK
                                                    : 0);
    int rc = vd_check(argv[optind], cf, js ? &j : NULL, &r);
    if (js)
        json_finish(&j);
    else if (rc == 0) {
        printf("%s: %u problem(s) found, %u repaired, %u leaked grain(s)\n", argv[optind], r.errors,
               r.repaired, r.leaks);
        if (!repair && r.repairable)
            printf("%s: %u of the problems can be fixed by 'vdisk check --repair %s'\n",
                   argv[optind], r.repairable, argv[optind]);
    }
    if (rc < 0)
        return 1;
    return r.errors > r.repaired ? 1 : 0;
}

int main(int argc, char **argv)
{
    log_set_program("vdisk");
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    /* --allow-root DIR anywhere after the command: every command opens
     * chains through vd_open, which takes the roots from vd_allow_root();
     * --format FMT too, except for create (its own option: the new file) */
    bool fmt_opt = strcmp(argv[1], "create") != 0;
    int n = 2;
    for (int i = 2; i < argc; i++) {
        const char *dir = NULL;
        if (fmt_opt &&
            (strcmp(argv[i], "--format") == 0 || strncmp(argv[i], "--format=", 9) == 0)) {
            const char *f = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : "");
            if (strcmp(f, "raw") == 0)
                vdisk_open_fmt = VD_OPEN_RAW;
            else if (strcmp(f, "vmdk") == 0)
                vdisk_open_fmt = VD_OPEN_VMDK;
            else {
                log_err("--format \"%s\": expected raw or vmdk", f);
                return 2;
            }
            continue;
        }
        if (strcmp(argv[i], "--") == 0) {
            while (i < argc)
                argv[n++] = argv[i++];
            break;
        }
        if (strcmp(argv[i], "--allow-root") == 0) {
            if (i + 1 >= argc) {
                log_err("--allow-root needs a folder");
                return 2;
            }
            dir = argv[++i];
        } else if (strncmp(argv[i], "--allow-root=", 13) == 0) {
            dir = argv[i] + 13;
        } else {
            argv[n++] = argv[i];
            continue;
        }
        if (vd_allow_root(dir) < 0)
            return 2;
    }
    argv[n] = NULL;
    argc = n;
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
        printf("vdisk version %s (clusterfs)\n", CLUSTERFS_VERSION);
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"create", cmd_create}, {"info", cmd_info},         {"check", cmd_check},
        {"map", cmd_map},       {"convert", cmd_convert},   {"resize", cmd_resize},
        {"serve", cmd_serve},   {"snapshot", cmd_snapshot}, {"clone", cmd_clone},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cmds); i++)
        if (strcmp(cmd, cmds[i].name) == 0)
            return cmds[i].fn(argc - 1, argv + 1);
    log_err("unknown command \"%s\" (try vdisk --help)", cmd);
    return 2;
}
