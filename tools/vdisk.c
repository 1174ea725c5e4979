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
#include "vdisk_internal.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vdisk COMMAND [options] ...\n"
            "  create [--type thin|thick|eager-zeroed] [--adapter ide|lsilogic|buslogic|pvscsi]\n"
            "         [--format vmdk|raw] FILE SIZE\n"
            "  info [--json] FILE\n"
            "  check [--repair] [--json] [--progress] FILE\n"
            "  map [--json] FILE\n"
            "  convert [-O vmdk|raw] [--type thin|thick|eager-zeroed|stream] [--adapter A]\n"
            "          [--progress] SRC DST\n"
            "  resize [--shrink] FILE SIZE\n"
            "  snapshot ... / clone ...   (see vdisk snapshot --help)\n"
            "  serve ...                  (see vdisk serve --help)\n"
            "SIZE accepts suffixes K, M, G, T (binary).\n");
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
        rc = vmdk_create(argv[optind], &o);
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

static uint64_t file_alloc(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

static const char *ext_type_name(enum vmdk_ext_type t)
{
    switch (t) {
    case VMDK_EXT_SPARSE:
        return "SPARSE";
    case VMDK_EXT_FLAT:
        return "FLAT";
    case VMDK_EXT_VMFS:
        return "VMFS";
    case VMDK_EXT_VMFSSPARSE:
        return "VMFSSPARSE";
    case VMDK_EXT_ZERO:
        return "ZERO";
    }
    return "?";
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
    if (vd_open(argv[optind], VD_OPEN_SHARED, &img) < 0) /* as qemu-img -U: works on a disk in use */
        return 1;
    bool vmdk = img->kind == VD_KIND_VMDK;
    uint64_t alloc = img->desc_embedded ? 0 : file_alloc(img->path);
    for (int i = 0; i < img->n_ext; i++)
        if (img->ext[i].path)
            alloc += file_alloc(img->ext[i].path);
    const char *adapter = vmdk ? vmdk_desc_ddb_get(&img->desc, "ddb.adapterType") : NULL;
    const char *cyl = vmdk ? vmdk_desc_ddb_get(&img->desc, "ddb.geometry.cylinders") : NULL;
    const char *heads = vmdk ? vmdk_desc_ddb_get(&img->desc, "ddb.geometry.heads") : NULL;
    const char *secs = vmdk ? vmdk_desc_ddb_get(&img->desc, "ddb.geometry.sectors") : NULL;
    const char *uuid = vmdk ? vmdk_desc_ddb_get(&img->desc, "ddb.uuid.image") : NULL;
    if (js) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "file", img->path);
        json_str(&j, "format", vmdk ? "vmdk" : "raw");
        json_str(&j, "type", vmdk ? img->desc.create_type : "raw");
        json_u64(&j, "virtual_size", img->size);
        json_u64(&j, "allocated_size", alloc);
        json_u64(&j, "granularity", img->gran);
        if (vmdk) {
            char b[16];
            snprintf(b, sizeof(b), "%08x", img->desc.cid);
            json_str(&j, "cid", b);
            snprintf(b, sizeof(b), "%08x", img->desc.parent_cid);
            json_str(&j, "parent_cid", b);
            json_str(&j, "parent_hint", img->desc.parent_hint);
            json_str(&j, "adapter", adapter);
            json_obj_begin(&j, "geometry");
            json_u64(&j, "cylinders", cyl ? strtoull(cyl, NULL, 10) : 0);
            json_u64(&j, "heads", heads ? strtoull(heads, NULL, 10) : 0);
            json_u64(&j, "sectors", secs ? strtoull(secs, NULL, 10) : 0);
            json_obj_end(&j);
            json_str(&j, "uuid", uuid);
            json_arr_begin(&j, "extents");
            for (int i = 0; i < img->n_ext; i++) {
                struct vmdk_extent *e = &img->ext[i];
                json_obj_begin(&j, NULL);
                json_str(&j, "file", e->path);
                json_str(&j, "type", ext_type_name(e->type));
                json_u64(&j, "start", e->start);
                json_u64(&j, "length", e->len);
                if (e->sp) {
                    json_u64(&j, "grain_size", e->sp->grain_bytes);
                    json_bool(&j, "compressed", e->sp->compressed);
                    json_bool(&j, "zeroed_grain", e->sp->zero_grain);
                    json_bool(&j, "cowd", e->sp->cowd);
                    json_u64(&j, "version", e->sp->h.version);
                }
                json_obj_end(&j);
            }
            json_arr_end(&j);
        }
        json_arr_begin(&j, "chain");
        for (struct vd_image *p = img->parent; p; p = p->parent) {
            json_obj_begin(&j, NULL);
            json_str(&j, "file", p->path);
            char b[16];
            snprintf(b, sizeof(b), "%08x", p->desc.cid);
            json_str(&j, "cid", b);
            json_u64(&j, "virtual_size", p->size);
            json_obj_end(&j);
        }
        json_arr_end(&j);
        json_obj_end(&j);
        json_finish(&j);
    } else {
        char s1[32], s2[32];
        printf("file: %s\nformat: %s\n", img->path, vmdk ? "vmdk" : "raw");
        if (vmdk)
            printf("type: %s\n", img->desc.create_type);
        printf("virtual size: %s (%" PRIu64 " bytes)\nallocated size: %s\n",
               format_size(img->size, s1, sizeof(s1)), img->size,
               format_size(alloc, s2, sizeof(s2)));
        if (vmdk) {
            printf("CID: %08x\nparentCID: %08x\n", img->desc.cid, img->desc.parent_cid);
            printf("adapter: %s\n", adapter ? adapter : "-");
            printf("geometry: %s/%s/%s (C/H/S)\n", cyl ? cyl : "-", heads ? heads : "-",
                   secs ? secs : "-");
            printf("UUID: %s\n", uuid ? uuid : "-");
            printf("granularity: %u\n", img->gran);
            for (int i = 0; i < img->n_ext; i++)
                printf("extent %d: %s %s, %" PRIu64 " bytes at %" PRIu64 "\n", i,
                       ext_type_name(img->ext[i].type), img->ext[i].path ? img->ext[i].path : "-",
                       img->ext[i].len, img->ext[i].start);
        }
        int depth = 1;
        for (struct vd_image *p = img->parent; p; p = p->parent, depth++)
            printf("parent %d: %s (CID %08x)\n", depth, p->path, p->desc.cid);
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
    if (vd_open(argv[optind], VD_OPEN_SHARED, &img) < 0) /* as qemu-img -U: works on a disk in use */
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
    while (off < img->size) {
        uint64_t n;
        unsigned st;
        rc = vd_block_status(img, off, img->size - off, &n, &st);
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
    if (vd_open(src_path, VD_OPEN_RDONLY, &src) < 0)
        return 1;
    o.size = vd_size(src);
    int rc;
    bool raw = strcmp(fmt, "raw") == 0;
    if (!raw && o.type == VD_TYPE_STREAM) {
        rc = vmdk_stream_write(src, dst_path, o.adapter, force_progress);
        vd_close(src);
        return rc < 0 ? 1 : 0;
    }
    rc = raw ? vd_create_raw(dst_path, o.size) : vmdk_create(dst_path, &o);
    if (rc < 0) {
        vd_close(src);
        return 1;
    }
    rc = vd_open(dst_path, raw ? VD_OPEN_RAW : 0, &dst);
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
    return vd_resize(argv[optind], size, shrink) < 0 ? 1 : 0;
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
    int rc = vd_check(argv[optind], (repair ? VD_CHECK_REPAIR : 0) | (prog ? VD_CHECK_PROGRESS : 0),
                      js ? &j : NULL, &r);
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
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
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
