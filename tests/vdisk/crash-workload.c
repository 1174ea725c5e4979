/* crash-workload: the workload and the verifier of sparse-crash.sh.
 *
 *   crash-workload run IMG LOG SEED FIRST LAST
 *       run ops [FIRST, LAST) of the op sequence SEED on IMG through the
 *       vdisk library, appending "s I" before op I and "d I" after it to LOG
 *       (plain write(2) on another file: the crash shim leaves it alone, and
 *       a line written survives the process). Ops 0..27 write every grain
 *       the others use (run them first, as the base image); then ops allocate grains (partial,
 *       whole, across grain tables), overwrite allocated grains, FUA writes,
 *       zero whole grains (zeroed-grain entries + punch), zero with NO_HOLE,
 *       discard, and flush.
 *   crash-workload verify IMG LOG SEED FIRST LAST kill|kill-delta|power [OUT.raw]
 *       read IMG through the library and check every 512-byte sector against
 *       the model of ops [0, LAST) and the LOG of the crashed run (ops before
 *       FIRST were made and flushed before the run):
 *         kill:  every op that completed reads back exactly; sectors of the op
 *                in progress read the old or the new data;
 *         power: every sector as of the last completed flush (or FUA write of
 *                that sector) reads back exactly, except where ops after that
 *                touched it: there, the flushed value or a value one of those
 *                ops wrote; never anything else;
 *         kill-delta: as kill, except that a whole grain may read exactly
 *                its values as of the last flush: in a delta, the grain table
 *                entry of a grain first written since the last flush (it read
 *                the parent's data until then) reaches the file only at the
 *                next flush, so a killed process loses such a grain whole.
 *       OUT.raw: what the library read, for comparison with qemu-img convert.
 * Every written sector carries (op, sector) in its first 16 bytes, so a
 * failure says whose data was found. Exit 0 ok, 1 mismatch or error. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"
#include "vdisk.h"

#define SEC 512u
#define GRAIN (64u * 1024)
#define GSEC (GRAIN / SEC)

enum op_kind { OP_WRITE, OP_FUA, OP_ZERO, OP_ZERO_KEEP, OP_DISCARD, OP_FLUSH };
static const char *const op_name[] = {"write",        "fua-write", "zero",
                                      "zero-no-hole", "discard",   "flush"};

struct op {
    enum op_kind kind;
    uint64_t sec, nsec; /* range in sectors */
};

#define N_FILL 28 /* ops 0..27 write every grain used once */

/* Grains used: 0..19 (grain table 0) and 520..527 (grain table 1, with
 * 64 KiB grains and 512 entries per table), so ops collide often. */
static uint64_t pick_grain(unsigned *seed)
{
    unsigned r = (unsigned)rand_r(seed);
    return r % 4 == 0 ? 520 + r / 4 % 8 : r / 4 % 20;
}

static struct op op_make(unsigned seed0, int i, int *since_flush)
{
    unsigned seed = seed0 * 7919u + (unsigned)i * 104729u;
    struct op o = {0};
    if (i < N_FILL) { /* first, data in every grain the ops use */
        o.kind = OP_WRITE;
        o.sec = (i < 20 ? (uint64_t)i : 520 + (uint64_t)i - 20) * GSEC;
        o.nsec = GSEC;
        return o;
    }
    unsigned r = (unsigned)rand_r(&seed) % 20;
    uint64_t g = pick_grain(&seed);
    if (*since_flush >= 7 || r >= 18) {
        o.kind = OP_FLUSH;
        *since_flush = 0;
        return o;
    }
    (*since_flush)++;
    if (r < 7) { /* anywhere, any length up to 3 grains */
        o.kind = OP_WRITE;
        o.sec = g * GSEC + (uint64_t)rand_r(&seed) % GSEC;
        o.nsec = 1 + (uint64_t)rand_r(&seed) % (3 * GSEC);
    } else if (r < 9) { /* whole grains */
        o.kind = OP_WRITE;
        o.sec = g * GSEC;
        o.nsec = GSEC * (1 + (uint64_t)rand_r(&seed) % 2);
    } else if (r < 10) {
        o.kind = OP_FUA;
        o.sec = g * GSEC + (uint64_t)rand_r(&seed) % GSEC;
        o.nsec = 1 + (uint64_t)rand_r(&seed) % GSEC;
    } else if (r < 12) { /* whole grains: zeroed-grain entry */
        o.kind = OP_ZERO;
        o.sec = g * GSEC;
        o.nsec = GSEC * (1 + (uint64_t)rand_r(&seed) % 2);
    } else if (r < 13) {
        o.kind = OP_ZERO_KEEP;
        o.sec = g * GSEC + (uint64_t)rand_r(&seed) % GSEC;
        o.nsec = 1 + (uint64_t)rand_r(&seed) % (2 * GSEC);
    } else if (r < 15) { /* a partial grain, or one grain and pieces of its neighbours */
        o.kind = OP_DISCARD;
        o.sec = g * GSEC + (uint64_t)rand_r(&seed) % GSEC;
        o.nsec = 1 + (uint64_t)rand_r(&seed) % (2 * GSEC);
    } else {
        o.kind = OP_WRITE;
        o.sec = g * GSEC + (uint64_t)rand_r(&seed) % GSEC;
        o.nsec = 1 + (uint64_t)rand_r(&seed) % 8;
    }
    return o;
}

static struct op *ops_make(unsigned seed, int n)
{
    struct op *v = calloc((size_t)n, sizeof(*v));
    int since = 0;
    for (int i = 0; v && i < n; i++)
        v[i] = op_make(seed, i, &since);
    return v;
}

static bool op_writes_data(const struct op *o)
{
    return o->kind == OP_WRITE || o->kind == OP_FUA;
}

/* Contents of sector s as written by op i (-1: zeroes). */
static void sector_fill(uint8_t *b, int op, uint64_t s)
{
    if (op < 0) {
        memset(b, 0, SEC);
        return;
    }
    uint64_t x = ((uint64_t)op << 40) ^ s ^ 0x9e3779b97f4a7c15ull;
    memcpy(b, "OP\0\0", 4);
    uint32_t o32 = (uint32_t)op;
    memcpy(b + 4, &o32, 4);
    memcpy(b + 8, &s, 8);
    for (unsigned k = 16; k < SEC; k += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(b + k, &x, 8);
    }
}

static int log_line(int fd, char c, int i)
{
    char line[32];
    int n = snprintf(line, sizeof(line), "%c %d\n", c, i);
    return write(fd, line, (size_t)n) == n ? 0 : -EIO;
}

static int do_run(const char *img_path, const char *log_path, unsigned seed, int first, int last)
{
    struct op *ops = ops_make(seed, last);
    struct vd_image *img;
    if (!ops || vd_open(img_path, 0, &img) < 0)
        return 1;
    int lfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (lfd < 0) {
        fprintf(stderr, "crash-workload: %s: %s\n", log_path, strerror(errno));
        return 1;
    }
    uint8_t *buf = malloc(3 * GRAIN + SEC);
    int rc = 0;
    for (int i = first; i < last && rc == 0; i++) {
        const struct op *o = &ops[i];
        if ((rc = log_line(lfd, 's', i)) < 0)
            break;
        uint64_t off = o->sec * SEC, len = o->nsec * SEC;
        switch (o->kind) {
        case OP_WRITE:
        case OP_FUA:
            for (uint64_t k = 0; k < o->nsec; k++)
                sector_fill(buf + k * SEC, i, o->sec + k);
            rc = vd_pwrite(img, buf, len, off, o->kind == OP_FUA ? VD_FUA : 0);
            break;
        case OP_ZERO:
            rc = vd_write_zeroes(img, off, len, 0);
            break;
        case OP_ZERO_KEEP:
            rc = vd_write_zeroes(img, off, len, VD_NO_HOLE);
            break;
        case OP_DISCARD:
            rc = vd_discard(img, off, len);
            break;
        case OP_FLUSH:
            rc = vd_flush(img);
            break;
        }
        if (rc < 0)
            fprintf(stderr, "crash-workload: op %d (%s): %s\n", i, op_name[o->kind], strerror(-rc));
        else
            rc = log_line(lfd, 'd', i);
    }
    free(buf);
    free(ops);
    close(lfd);
    int crc = vd_close(img);
    return rc < 0 || crc < 0 ? 1 : 0;
}

static bool buf_is_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

static int do_verify(const char *img_path, const char *log_path, unsigned seed, int first, int last,
                     bool power, bool grain_lost_ok, const char *out_path)
{
    struct op *ops = ops_make(seed, last);
    if (!ops)
        return 1;
    /* which ops of [first, last) started / completed, from the log */
    int started = first - 1, done = first - 1;
    FILE *lf = fopen(log_path, "r");
    char c;
    int i;
    while (lf && fscanf(lf, " %c %d", &c, &i) == 2) {
        if (c == 's')
            started = i;
        else if (c == 'd')
            done = i;
    }
    if (lf)
        fclose(lf);
    int crashed = started > done ? started : -1; /* op in progress at the crash */

    struct vd_image *img;
    if (vd_open(img_path, VD_OPEN_RDONLY, &img) < 0)
        return 1; /* the library said why */
    uint64_t nsec = vd_size(img) / SEC;
    /* cur: value after the completed ops; dur: value as of the last flush
     * (or FUA) of that sector; win: first op whose value may also show */
    int *cur = malloc(nsec * sizeof(int)), *dur = malloc(nsec * sizeof(int));
    int *win = malloc(nsec * sizeof(int));
    /* alt / altd: another value cur / dur may read as (-2: none): a discard
     * of a piece of a grain is advisory (it zeroes a grain allocated in the
     * image, leaves one that is not), so that piece reads zeroes or what it
     * read before */
    int *alt = malloc(nsec * sizeof(int)), *altd = malloc(nsec * sizeof(int));
    for (uint64_t s = 0; s < nsec; s++)
        cur[s] = dur[s] = -1, win[s] = 0, alt[s] = altd[s] = -2;
    int last_flush = -1;
    for (i = 0; i <= done; i++) {
        const struct op *o = &ops[i];
        if (o->kind == OP_FLUSH || i < first) {
            if (o->kind != OP_FLUSH)
                for (uint64_t s = o->sec; s < o->sec + o->nsec; s++)
                    cur[s] = op_writes_data(o) ? i : -1, alt[s] = -2;
            memcpy(dur, cur, nsec * sizeof(int));
            memcpy(altd, alt, nsec * sizeof(int));
            for (uint64_t s = 0; s < nsec; s++)
                win[s] = i + 1;
            if (o->kind == OP_FLUSH)
                last_flush = i;
            continue;
        }
        for (uint64_t s = o->sec; s < o->sec + o->nsec; s++) {
            uint64_t g0 = s / GSEC * GSEC;
            bool piece = o->kind == OP_DISCARD && (g0 < o->sec || g0 + GSEC > o->sec + o->nsec);
            if (piece)
                alt[s] = cur[s] >= 0 ? cur[s] : alt[s];
            else
                alt[s] = -2;
            cur[s] = op_writes_data(o) ? i : -1;
            if (o->kind == OP_FUA) {
                dur[s] = i;
                win[s] = i + 1;
                altd[s] = -2;
            }
        }
    }
    int lastop = crashed >= 0 ? crashed : done; /* last op whose data may show */
    /* kill: only the op in progress may show old or new; power: every op
     * since the sector's last flush */
    uint8_t *got = malloc(GRAIN), *want = malloc(SEC);
    int ofd = out_path ? open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    uint64_t n_exact = 0, n_window = 0, n_old = 0, bad = 0, n_lost = 0;
    int rc = 0;
    for (uint64_t base = 0; base < nsec && rc == 0; base += GSEC) {
        uint64_t n = MIN(GSEC, nsec - base);
        rc = vd_pread(img, got, n * SEC, base * SEC);
        if (rc == 0 && ofd >= 0)
            rc = pwrite_full(ofd, got, n * SEC, base * SEC);
        if (rc == 0 && grain_lost_ok) {
            /* the grain as of the last flush, whole, and not as of now */
            bool all_dur = true, all_cur = true;
            for (uint64_t k = 0; k < n && all_dur; k++) {
                sector_fill(want, dur[base + k], base + k);
                all_dur = memcmp(got + k * SEC, want, SEC) == 0;
                sector_fill(want, cur[base + k], base + k);
                all_cur = all_cur && memcmp(got + k * SEC, want, SEC) == 0;
            }
            if (all_dur && !all_cur) {
                n_lost++;
                continue;
            }
        }
        for (uint64_t k = 0; k < n && rc == 0; k++) {
            uint64_t s = base + k;
            const uint8_t *g = got + k * SEC;
            int expect = power ? dur[s] : cur[s];
            sector_fill(want, expect, s);
            if (memcmp(g, want, SEC) == 0) {
                bool touched = false;
                for (int j = power ? win[s] : crashed; j >= 0 && j <= lastop && !touched; j++)
                    touched = j >= first && ops[j].kind != OP_FLUSH && s >= ops[j].sec &&
                              s < ops[j].sec + ops[j].nsec;
                n_exact += !touched;
                n_old += touched;
                continue;
            }
            /* not the settled value: what an advisory discard left, or a
             * value written by an op that may show */
            int a = power ? altd[s] : alt[s];
            bool ok = false;
            if (a != -2) {
                sector_fill(want, a, s);
                ok = memcmp(g, want, SEC) == 0;
            }
            for (int j = power ? win[s] : crashed; j >= 0 && j <= lastop && !ok; j++) {
                const struct op *o = &ops[j];
                if (j < first || o->kind == OP_FLUSH || s < o->sec || s >= o->sec + o->nsec)
                    continue;
                sector_fill(want, op_writes_data(o) ? j : -1, s);
                ok = memcmp(g, want, SEC) == 0;
            }
            if (ok) {
                n_window++;
                continue;
            }
            if (bad++ < 5) {
                char found[64];
                uint32_t fo;
                uint64_t fs;
                memcpy(&fo, g + 4, 4);
                memcpy(&fs, g + 8, 8);
                if (memcmp(g, "OP", 2) == 0)
                    snprintf(found, sizeof(found), "op %u's data for sector %" PRIu64, fo, fs);
                else
                    snprintf(found, sizeof(found), "%s",
                             buf_is_zero(g, SEC) ? "zeroes" : "other bytes");
                fprintf(stderr,
                        "crash-workload: %s: sector %" PRIu64 " reads %s; expected "
                        "%s%d (crash in op %d, last flush op %d)\n",
                        img_path, s, found, expect < 0 ? "zeroes" : "op ", expect < 0 ? 0 : expect,
                        crashed, last_flush);
            }
        }
    }
    if (rc < 0)
        fprintf(stderr, "crash-workload: %s: read: %s\n", img_path, strerror(-rc));
    printf("crash in op %d (%s), last flush op %d: %" PRIu64 " sectors settled, %" PRIu64
           " touched since then read old, %" PRIu64 " read a newer write, %" PRIu64
           " grains read as of the last flush, %" PRIu64 " bad\n",
           crashed, crashed >= 0 ? op_name[ops[crashed].kind] : "none", last_flush, n_exact, n_old,
           n_window, n_lost, bad);
    if (ofd >= 0)
        close(ofd);
    free(got);
    free(want);
    free(cur);
    free(dur);
    free(win);
    free(alt);
    free(altd);
    free(ops);
    vd_close(img);
    return rc < 0 || bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    log_set_program("crash-workload");
    if (argc == 7 && strcmp(argv[1], "run") == 0)
        return do_run(argv[2], argv[3], (unsigned)atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    if ((argc == 8 || argc == 9) && strcmp(argv[1], "verify") == 0 &&
        (strcmp(argv[7], "kill") == 0 || strcmp(argv[7], "kill-delta") == 0 ||
         strcmp(argv[7], "power") == 0))
        return do_verify(argv[2], argv[3], (unsigned)atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                         strcmp(argv[7], "power") == 0, strcmp(argv[7], "kill-delta") == 0,
                         argc == 9 ? argv[8] : NULL);
    fprintf(stderr, "usage: crash-workload run IMG LOG SEED FIRST LAST |\n"
                    "       crash-workload verify IMG LOG SEED FIRST LAST kill|kill-delta|power "
                    "[OUT.raw]\n");
    return 2;
}
