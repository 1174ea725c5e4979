/* vdisk serve: serve virtual disks (and raw LUNs) to VMMs over NBD.
 *
 *   vdisk serve [--socket PATH | --port N [--bind ADDR] [--insecure]] [--readonly]
 *               [--tls off|on|require] [--tls-psk FILE | --tls-certs DIR]
 *               [--tls-allow NAME]... [--name EXPORT]... [--shared N]
 *               [--workers N] [-v] [--lun URI]... [--policy P] [FILE...]
 *
 * TCP listens on loopback unless --bind says otherwise; an address other
 * hosts can reach needs --tls require (or --insecure: anyone who reaches
 * it may read and overwrite the disks). TLS credentials are files, never
 * arguments, so no key shows in `ps` or in a log.
 *
 * One export per FILE (opened through vdisk.h: VMDK or raw); --name gives
 * the export names in order (default: the file's base name; the first
 * export also answers to the empty name). Several --lun options are several
 * paths to ONE LUN (lun_open_paths: the multipath engine fails I/O over
 * between them, invisibly to the NBD clients; paths reaching different LUNs
 * are refused), exported as "lun" (or the next --name). SIGTERM/SIGINT
 * drain the connections, flush and exit 0; a multipath LUN's per-path
 * counters are logged at exit. Each image is held with QEMU's image locks (a
 * disk in use elsewhere is refused at open), and each VMDK export gets a
 * snapshot control socket (vdisk_ctl.c): `vdisk snapshot` of a served disk
 * is run by this server, between two requests.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "backend-lun.h"
#include "backend-vdisk.h"
#include "log.h"
#include "lun.h"
#include "opt.h"
#include "server.h"
#include "tls.h"
#include "tools.h"
#include "vdisk.h"
#include "vdisk_ctl.h"

#define SERVE_MAX_EXPORTS 64

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: vdisk serve [--socket PATH | --port N [--bind ADDR] [--insecure]]\n"
               "                   [--readonly] [--tls off|on|require]\n"
               "                   [--tls-psk FILE | --tls-certs DIR] [--tls-allow NAME]...\n"
               "                   [--name EXPORT]... [--shared N] [--workers N] [-v]\n"
               "                   [--lun URI]... [--policy P] [FILE...]\n"
               "  Serve each FILE (VMDK or raw) as an NBD export; several --lun URIs are\n"
               "  the paths of one raw LUN served as one export. Default: --port 10809\n"
               "  on loopback (127.0.0.1 and ::1).\n"
               "  --bind ADDR  listen on ADDR; an address beyond loopback needs\n"
               "               --tls require, or --insecure\n"
               "  --tls MODE   off (default without credentials), on (offered),\n"
               "               require (default with credentials: nothing but STARTTLS\n"
               "               before TLS)\n"
               "  --tls-psk FILE   PSK key file, \"identity:hexkey\" lines (nbdkit, psktool)\n"
               "  --tls-certs DIR  X.509: DIR/ca-cert.pem, server-cert.pem, server-key.pem\n"
               "  --tls-allow NAME only this PSK identity or client certificate CN / DN\n"
               "               (repeatable)\n"
               "  --shared N   clients at once (default 1)\n"
               "  --name NAME  export names, in the order of the FILEs then the LUN\n"
               "               (default: the file's base name, \"lun\"; the first export\n"
               "               also answers to the empty name)\n"
               "  --workers N  I/O worker threads (1..256)\n"
               "  --port N     TCP port (1..65535)\n" OPT_LUN_HELP);
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

/* Whether every address ADDR resolves to is a loopback address. 1 yes, 0
 * no, -errno when it does not resolve. */
static int serve_addr_is_loopback(const char *addr)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    int g = getaddrinfo(addr, "0", &hints, &res);
    if (g) {
        log_err("serve: --bind %s: %s", addr, gai_strerror(g));
        return -EADDRNOTAVAIL;
    }
    int loop = 1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)ai->ai_addr;
            if ((ntohl(s4->sin_addr.s_addr) >> 24) != 127)
                loop = 0;
        } else if (ai->ai_family == AF_INET6) {
            const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
            if (!IN6_IS_ADDR_LOOPBACK(a6) && !(IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127))
                loop = 0;
        } else {
            loop = 0;
        }
    }
    freeaddrinfo(res);
    return loop;
}

int cmd_serve(int argc, char **argv)
{
    static const struct option lopts[] = {{"socket", required_argument, NULL, 's'},
                                          {"port", required_argument, NULL, 'p'},
                                          {"bind", required_argument, NULL, 'b'},
                                          {"readonly", no_argument, NULL, 'r'},
                                          {"name", required_argument, NULL, 'n'},
                                          {"shared", required_argument, NULL, 'S'},
                                          {"lun", required_argument, NULL, 'l'},
                                          {"workers", required_argument, NULL, 'w'},
                                          {"verbose", no_argument, NULL, 'v'},
                                          {"help", no_argument, NULL, 'h'},
                                          {"tls", required_argument, NULL, 'T'},
                                          {"tls-psk", required_argument, NULL, 'K'},
                                          {"tls-certs", required_argument, NULL, 'C'},
                                          {"tls-allow", required_argument, NULL, 'A'},
                                          {"insecure", no_argument, NULL, 'I'},
                                          OPT_LUN_LONGOPTS,
                                          {NULL, 0, NULL, 0}};
    const char *sock = NULL, *port = NULL, *bind_addr = NULL;
    const char *names[SERVE_MAX_EXPORTS];
    const char *luns[SERVE_MAX_EXPORTS];
    unsigned nnames = 0, nluns = 0;
    bool ro = false, have_tls_mode = false, insecure = false;
    enum nbd_tls_mode tls_mode = NBD_TLS_OFF;
    const char *allow[SERVE_MAX_EXPORTS];
    struct nbd_tls_options tlso = {.allow = allow};
    struct nbd_tls *tls = NULL;
    const char *mpath_opt = NULL; /* a multipath option given: needs 2+ paths */
    struct lun_options lo;
    lun_options_init(&lo);
    struct nbd_server_config cfg = {0};
    unsigned v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:p:b:rn:S:l:w:vh", lopts, NULL)) != -1) {
        int r = opt_lun_parse(c, optarg, &lo);
        if (r < 0)
            return 2;
        if (r > 0) {
            if (c == OPT_LUN_POLICY)
                mpath_opt = "--policy";
            else if (c == OPT_LUN_RR_IOS)
                mpath_opt = "--rr-ios";
            else if (c == OPT_LUN_QUEUE)
                mpath_opt = "--queue-timeout";
            continue;
        }
        switch (c) {
        case 's':
            sock = optarg;
            break;
        case 'p':
            if (opt_uint("--port", optarg, 1, 65535, &v) < 0)
                return 2;
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
            if (opt_uint("--shared", optarg, 1, NBD_MAX_CONNS, &cfg.max_conns) < 0)
                return 2;
            break;
        case 'w':
            if (opt_uint("--workers", optarg, 1, 256, &cfg.workers) < 0)
                return 2;
            break;
        case 'l':
            if (nluns == SERVE_MAX_EXPORTS) {
                log_err("serve: too many --lun (max %d)", SERVE_MAX_EXPORTS);
                return 2;
            }
            luns[nluns++] = optarg;
            break;
        case 'T':
            if (nbd_tls_mode_parse(optarg, &tls_mode) < 0) {
                log_err("serve: --tls %s: expected off, on or require", optarg);
                return 2;
            }
            have_tls_mode = true;
            break;
        case 'K':
            tlso.psk_file = optarg;
            break;
        case 'C':
            tlso.cert_dir = optarg;
            break;
        case 'A':
            if (tlso.nallow == SERVE_MAX_EXPORTS) {
                log_err("serve: too many --tls-allow (max %d)", SERVE_MAX_EXPORTS);
                return 2;
            }
            allow[tlso.nallow++] = optarg;
            break;
        case 'I':
            insecure = true;
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
    if (mpath_opt && nluns < 2) {
        log_err("serve: %s needs a LUN with two or more --lun paths", mpath_opt);
        return 2;
    }
    if (!sock && !port)
        port = "10809";
    bool creds = tlso.psk_file || tlso.cert_dir;
    if (tlso.psk_file && tlso.cert_dir) {
        log_err("serve: --tls-psk and --tls-certs: give one kind of TLS credentials");
        return 2;
    }
    if (!have_tls_mode && creds)
        tls_mode = NBD_TLS_REQUIRE; /* credentials given: TLS it is */
    if (tls_mode != NBD_TLS_OFF && !creds) {
        log_err("serve: --tls %s needs --tls-psk FILE or --tls-certs DIR",
                tls_mode == NBD_TLS_ON ? "on" : "require");
        return 2;
    }
    if (tls_mode == NBD_TLS_OFF && creds) {
        log_err("serve: --tls off with %s: drop one of them",
                tlso.psk_file ? "--tls-psk" : "--tls-certs");
        return 2;
    }
    if (tlso.nallow && !creds) {
        log_err("serve: --tls-allow needs --tls-psk FILE or --tls-certs DIR");
        return 2;
    }
    if (sock && insecure) {
        log_err("serve: --insecure is for --bind; a unix socket is local");
        return 2;
    }
    if (!sock && bind_addr) {
        int loop = serve_addr_is_loopback(bind_addr);
        if (loop < 0)
            return 2;
        if (!loop && tls_mode != NBD_TLS_REQUIRE && !insecure) {
            log_err("serve: --bind %s reaches beyond this host and TLS is %s: anyone who can "
                    "connect could read and overwrite the disks. Use --tls require with "
                    "--tls-psk FILE or --tls-certs DIR, or --insecure if the network is "
                    "trusted",
                    bind_addr, tls_mode == NBD_TLS_ON ? "only offered (--tls on)" : "off");
            return 2;
        }
    }
    if (creds) {
        int trc = nbd_tls_new(&tlso, &tls); /* logs the file and the reason */
        if (trc < 0) {
            log_err("serve: cannot load the TLS credentials");
            return 2;
        }
    }
    cfg.tls_mode = tls_mode;
    cfg.tls = tls;

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
        nbd_tls_free(tls);
        return 1;
    }

    int ret = 1, rc;
    struct vd_image *imgs[SERVE_MAX_EXPORTS] = {0};
    struct lun *lun = NULL;
    struct nbd_lun_backend *lbe = NULL;
    struct nbd_server *srv = NULL;
    struct ctl_server *ctl = NULL;
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
        lo.read_only = ro;
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
    if (sock)
        rc = nbd_server_listen_unix(srv, sock);
    else if (bind_addr)
        rc = nbd_server_listen_tcp(srv, bind_addr, port);
    else /* nothing beyond this host unless asked */
        rc = nbd_server_listen_loopback(srv, port);
    if (rc < 0)
        goto out;
    log_info("serve: serving %u export(s) on %s%s%s, TLS %s%s", nfiles + (nluns ? 1 : 0),
             sock ? sock : (bind_addr ? bind_addr : "loopback"), sock ? "" : " port ",
             sock ? "" : port,
             tls_mode == NBD_TLS_OFF  ? "off"
             : tls_mode == NBD_TLS_ON ? "on"
                                      : "required",
             tls ? (tlso.psk_file ? " (PSK)" : " (X.509)") : "");
    /* snapshots of the served disks go through us (vdisk_ctl.c) */
    if (nfiles && ctl_server_start(imgs, argv + optind, nfiles, &ctl) < 0)
        log_warn("serve: no snapshot control socket: snapshots of the served disks are refused "
                 "while this server runs");
    rc = nbd_server_run(srv, sfd);
    ret = rc < 0 ? 1 : 0;

out:
    ctl_server_stop(ctl); /* waits for a snapshot operation in progress */
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
    nbd_tls_free(tls);
    return ret;
}
