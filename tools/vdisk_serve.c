/* vdisk serve: serve virtual disks (and raw LUNs) to VMMs over NBD.
 *
 *   vdisk serve [--socket PATH | --port N [--bind ADDR]] [--readonly]
 *               [--name EXPORT]... [--shared N] [--workers N] [-v]
 *               [--lun URI]... [--policy P] [FILE...]
 *
 * One export per FILE (opened through vdisk.h: VMDK or raw); --name gives
 * the export names in order (default: the file's base name; the first
 * export also answers to the empty name). Several --lun options are several
 * paths to ONE LUN (lun_open_paths: the multipath engine fails I/O over
 * between them, invisibly to the NBD clients; paths reaching different LUNs
 * are refused), exported as "lun" (or the next --name). SIGTERM/SIGINT
 * drain the connections, flush and exit 0; a multipath LUN's per-path
 * counters are logged at exit.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "log.h"
#include "lun.h"
#include "nbd_server.h"
#include "tools.h"
#include "vdisk.h"

#define SERVE_MAX_EXPORTS 64

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: vdisk serve [--socket PATH | --port N [--bind ADDR]] [--readonly]\n"
               "                   [--name EXPORT]... [--shared N] [--workers N] [-v]\n"
               "                   [--lun URI]... [--policy P] [FILE...]\n"
               "  Serve each FILE (VMDK or raw) as an NBD export; several --lun URIs are\n"
               "  the paths of one raw LUN served as one export. Default: --port 10809.\n"
               "  --shared N   clients at once (default 1)\n"
               "  --policy P   paths of a multipath LUN: service-time (default), round-robin,\n"
               "               fixed (the first --lun preferred), mru\n"
               "  --name NAME  export names, in the order of the FILEs then the LUN\n"
               "               (default: the file's base name, \"lun\"; the first export\n"
               "               also answers to the empty name)\n");
}

/* At exit, one line per path of a multipath LUN, in the manner of
 * `clusterfs paths`: what each path carried and how often it failed. */
static void serve_log_path_stats(struct lun *lun)
{
    if (!lun_is_multipath(lun))
        return;
    for (unsigned i = 0; i < lun_num_paths(lun); i++) {
        struct lun_path_stats st;
        if (lun_path_get_stats(lun, i, &st) < 0)
            continue;
        log_info("serve: LUN path %u %s %s%s reads=%llu writes=%llu other=%llu errors=%llu "
                 "failures=%llu%s%s",
                 i, lun_path_name(lun, i), lun_path_state_name(st.state), st.held ? "(held)" : "",
                 (unsigned long long)st.reads, (unsigned long long)st.writes,
                 (unsigned long long)st.others, (unsigned long long)st.errors,
                 (unsigned long long)st.failures, st.last_error[0] ? " last failure: " : "",
                 st.last_error);
    }
}

int cmd_serve(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"socket", required_argument, NULL, 's'}, {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},   {"readonly", no_argument, NULL, 'r'},
        {"name", required_argument, NULL, 'n'},   {"shared", required_argument, NULL, 'S'},
        {"lun", required_argument, NULL, 'l'},    {"workers", required_argument, NULL, 'w'},
        {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
        {"policy", required_argument, NULL, 'P'}, {NULL, 0, NULL, 0}};
    const char *sock = NULL, *port = NULL, *bind_addr = NULL;
    const char *names[SERVE_MAX_EXPORTS];
    const char *luns[SERVE_MAX_EXPORTS];
    unsigned nnames = 0, nluns = 0;
    bool ro = false, have_policy = false;
    enum lun_policy policy = LUN_POLICY_DEFAULT;
    struct nbd_server_config cfg = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:p:b:rn:S:l:w:P:vh", lopts, NULL)) != -1) {
        switch (c) {
        case 's':
            sock = optarg;
            break;
        case 'p':
            port = optarg;
            break;
        case 'b':
            bind_addr = optarg;
            break;
        case 'r':
            ro = true;
            break;
        case 'n':
            if (nnames == SERVE_MAX_EXPORTS) {
                log_err("serve: too many --name (max %d)", SERVE_MAX_EXPORTS);
                return 2;
            }
            names[nnames++] = optarg;
            break;
        case 'S':
        case 'w': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > (c == 'S' ? NBD_MAX_CONNS : 256)) {
                log_err("serve: --%s %s: expected 1..%d", c == 'S' ? "shared" : "workers", optarg,
                        c == 'S' ? NBD_MAX_CONNS : 256);
                return 2;
            }
            if (c == 'S')
                cfg.max_conns = (unsigned)v;
            else
                cfg.workers = (unsigned)v;
            break;
        }
        case 'l':
            if (nluns == SERVE_MAX_EXPORTS) {
                log_err("serve: too many --lun (max %d)", SERVE_MAX_EXPORTS);
                return 2;
            }
            luns[nluns++] = optarg;
            break;
        case 'P':
            if (lun_policy_parse(optarg, &policy) < 0) /* logs the choices */
                return 2;
            have_policy = true;
            break;
        case 'v':
            log_set_level(LOG_LVL_DEBUG);
            break;
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
    }
    unsigned nfiles = (unsigned)(argc - optind);
    if (nfiles == 0 && nluns == 0) {
        log_err("serve: nothing to serve: give FILEs or --lun URI");
        serve_usage(stderr);
        return 2;
    }
    if (nfiles > SERVE_MAX_EXPORTS) {
        log_err("serve: too many files (max %d)", SERVE_MAX_EXPORTS);
        return 2;
    }
    if (sock && (port || bind_addr)) {
        log_err("serve: --socket excludes --port and --bind");
        return 2;
    }
    if (nnames > nfiles + (nluns ? 1 : 0)) {
        log_err("serve: %u --name for %u exports", nnames, nfiles + (nluns ? 1 : 0));
        return 2;
    }
    if (have_policy && nluns < 2) {
        log_err("serve: --policy needs a LUN with two or more --lun paths");
        return 2;
    }
    if (!sock && !port)
        port = "10809";

    /* Block the stop signals in every thread; the main thread reads them
     * from a signalfd. */
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigaddset(&ss, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &ss, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &ss, SFD_CLOEXEC);
    if (sfd < 0) {
        log_err("serve: signalfd: %s", strerror(errno));
        return 1;
    }

    int ret = 1, rc;
    struct vd_image *imgs[SERVE_MAX_EXPORTS] = {0};
    struct lun *lun = NULL;
    struct nbd_lun_backend *lbe = NULL;
    struct nbd_server *srv = NULL;
    char *bases[SERVE_MAX_EXPORTS] = {0};

    rc = nbd_server_new(&cfg, &srv);
    if (rc < 0) {
        log_err("serve: cannot start the server: %s", strerror(-rc));
        goto out;
    }
    for (unsigned i = 0; i < nfiles; i++) {
        const char *path = argv[optind + (int)i];
        rc = vd_open(path, (ro ? VD_OPEN_RDONLY : 0) | vdisk_open_fmt, &imgs[i]);
        if (rc < 0) {
            log_err("serve: %s: cannot open: %s", path, strerror(-rc));
            goto out;
        }
        bases[i] = strdup(path);
        if (!bases[i])
            goto out;
        const char *name = i < nnames ? names[i] : basename(bases[i]);
        rc = nbd_server_add_export(srv, name, path, &nbd_vd_ops, imgs[i], ro);
        if (rc < 0)
            goto out;
    }
    if (nluns) {
        struct lun_options lo;
        lun_options_init(&lo);
        lo.read_only = ro;
        lo.policy = policy;
        /* One URI: a plain path (errors reach the clients at once). Several:
         * the multipath engine; the engine logs why paths were refused (a
         * path reaching another LUN names both identities). */
        rc = lun_open_paths(luns, nluns, &lo, &lun);
        if (rc < 0) {
            char *red = lun_uri_redact(luns[0]);
            if (nluns > 1)
                log_err("serve: LUN %s (%u paths): cannot open: %s", red ? red : "?", nluns,
                        strerror(-rc));
            else
                log_err("serve: LUN %s: cannot open: %s", red ? red : "?", strerror(-rc));
            free(red);
            goto out;
        }
        if (lun_is_multipath(lun))
            log_info("serve: LUN %s: %u paths, policy %s", lun_get_info(lun)->id,
                     lun_num_paths(lun), lun_policy_name(lun_get_policy(lun)));
        rc = nbd_lun_backend_new(lun, ro, &lbe);
        if (rc < 0)
            goto out;
        const char *name = nfiles < nnames ? names[nfiles] : "lun";
        rc = nbd_server_add_export(srv, name, lun_name(lun), &nbd_lun_ops, lbe, ro);
        if (rc < 0)
            goto out;
    }
    rc = sock ? nbd_server_listen_unix(srv, sock) : nbd_server_listen_tcp(srv, bind_addr, port);
    if (rc < 0)
        goto out;
    log_info("serve: serving %u export(s) on %s%s%s", nfiles + (nluns ? 1 : 0),
             sock ? sock : (bind_addr ? bind_addr : "*"), sock ? "" : " port ", sock ? "" : port);
    rc = nbd_server_run(srv, sfd);
    ret = rc < 0 ? 1 : 0;

out:
    nbd_server_free(srv);
    for (unsigned i = 0; i < nfiles && i < SERVE_MAX_EXPORTS; i++) {
        if (imgs[i]) {
            rc = vd_close(imgs[i]);
            if (rc < 0) {
                log_err("serve: %s: close failed: %s", argv[optind + (int)i], strerror(-rc));
                ret = 1;
            }
        }
        free(bases[i]);
    }
    nbd_lun_backend_free(lbe);
    if (lun) {
        serve_log_path_stats(lun);
        lun_close(lun);
    }
    close(sfd);
    return ret;
}
