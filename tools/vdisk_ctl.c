/* vdisk_ctl.c: the control socket of `vdisk serve` (vdisk_ctl.h).
 *
 * Design notes
 * - Why: a snapshot changes which file is the disk's live delta. A server
 *   that keeps writing the old file (now the frozen snapshot) corrupts the
 *   snapshot, so a snapshot of a served disk must be made BY the server,
 *   between two requests, or not at all. The disk's image lock
 *   (vdisk/imagelock.c) makes "not at all" hold: a snapshot run by another
 *   process needs the disk's writer lock, which the server holds. This
 *   socket is the "by the server" half.
 * - Discovery: one unix socket per served VMDK at RUNDIR/KEY.sock. RUNDIR is
 *   $VDISK_RUN_DIR, else /run/vdisk for root, else $XDG_RUNTIME_DIR/vdisk,
 *   else /tmp/vdisk-UID; created 0700, and refused if another user owns it
 *   or others may write it. KEY is a 64-bit FNV-1a hash of the device and
 *   inode of the disk's folder and the disk's file name: the same for any
 *   path naming the disk, and unchanged by snapshots (they replace the
 *   disk's inode, not its folder or name). A client that finds no socket,
 *   or one nobody answers on (a killed server's), does the operation
 *   itself, under the image lock.
 * - Protocol (one request per connection, text): the client sends
 *   "snapshot OP\nNAME\n" (OP: create, revert, delete); the server answers
 *   "RC ID\nMESSAGE\n" (RC 0 or -errno, ID the new snapshot's id, MESSAGE
 *   the operation's last error, or empty). Only the server's own user (or
 *   root) may ask: SO_PEERCRED.
 * - Threads: one control thread polls every socket and a stop pipe, and
 *   runs one operation at a time (vd_snapshot_*_open, which holds off the
 *   export's I/O while it runs). The socket is bound under a temporary name
 *   and renamed into place, so a client never connects to a half-made one.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "vdisk.h"
#include "vdisk_ctl.h"

#define CTL_MAX 64

struct ctl_server {
    unsigned n;
    int lfd[CTL_MAX];
    char *sock[CTL_MAX];
    struct vd_image *img[CTL_MAX];
    int stop_pipe[2];
    pthread_t thread;
    bool started;
};

static int ctl_run_dir(char *buf, size_t len)
{
    const char *env = getenv("VDISK_RUN_DIR"), *xdg = getenv("XDG_RUNTIME_DIR");
    if (env && *env)
        snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        snprintf(buf, len, "/run/vdisk");
    else if (xdg && *xdg)
        snprintf(buf, len, "%s/vdisk", xdg);
    else
        snprintf(buf, len, "/tmp/vdisk-%u", (unsigned)geteuid());
    if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
        int rc = -errno;
        log_err("%s: cannot create the control socket folder: %s", buf, strerror(-rc));
        return rc;
    }
    struct stat st;
    if (lstat(buf, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 022)) {
        log_err("%s: the control socket folder must be a folder of user %u that others cannot "
                "write",
                buf, (unsigned)geteuid());
        return -EPERM;
    }
    return 0;
}

char *ctl_socket_path(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    char *dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup(".");
    struct stat st;
    if (!dir || stat(dir, &st) < 0) {
        log_err("%s: folder: %s", path, dir ? strerror(errno) : "out of memory");
        free(dir);
        return NULL;
    }
    free(dir);
    char key[512];
    snprintf(key, sizeof(key), "%llx:%llu:%s", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino, base);
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = key; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    char rd[200], *out;
    if (ctl_run_dir(rd, sizeof(rd)) < 0)
        return NULL;
    if (asprintf(&out, "%s/%016" PRIx64 ".sock", rd, h) < 0)
        return NULL;
    if (strlen(out) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        log_err("%s: control socket path too long for a unix socket", out);
        free(out);
        return NULL;
    }
    return out;
}

static int ctl_connect(const char *sock)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

static int ctl_listen(const char *sock)
{
    int fd = ctl_connect(sock);
    if (fd >= 0) {
        close(fd);
        log_err("%s: another server answers on this disk's control socket", sock);
        return -EADDRINUSE;
    }
    (void)unlink(sock); /* a killed server's: nobody answers on it */
    char tmp[sizeof(((struct sockaddr_un *)0)->sun_path) + 32];
    snprintf(tmp, sizeof(tmp), "%s.%d", sock, (int)getpid());
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(tmp) >= sizeof(a.sun_path))
        return -ENAMETOOLONG;
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", tmp);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    (void)unlink(tmp);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 8) < 0 ||
        rename(tmp, sock) < 0) {
        int rc = -errno;
        log_err("%s: control socket: %s", sock, strerror(-rc));
        (void)unlink(tmp);
        close(fd);
        return rc;
    }
    return fd;
}

/* Read up to len-1 bytes until the peer has sent `lines` newlines. */
static int ctl_read_lines(int fd, char *buf, size_t len, int lines)
{
    size_t got = 0;
    int seen = 0;
    while (got + 1 < len && seen < lines) {
        ssize_t n = read(fd, buf + got, len - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            seen += buf[got + (size_t)i] == '\n';
        got += (size_t)n;
    }
    buf[got] = 0;
    return seen >= lines ? 0 : -EPROTO;
}

static void ctl_handle(struct ctl_server *c, unsigned i, int fd)
{
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0 ||
        (cr.uid != geteuid() && cr.uid != 0)) {
        log_err("%s: control request from user %u refused", c->sock[i], (unsigned)cr.uid);
        return;
    }
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char req[256];
    if (ctl_read_lines(fd, req, sizeof(req), 2) < 0)
        return;
    char *nl = strchr(req, '\n');
    *nl = 0;
    char *name = nl + 1;
    name[strcspn(name, "\n")] = 0;
    int rc, id = 0;
    log_clear_last_error();
    struct vd_image *img = c->img[i];
    if (strcmp(req, "snapshot create") == 0) {
        log_info("serve: %s: snapshot \"%s\" requested by pid %d", vd_path(img), name, (int)cr.pid);
        rc = vd_snapshot_create_open(img, name, &id);
    } else if (strcmp(req, "snapshot revert") == 0) {
        log_info("serve: %s: revert to snapshot \"%s\" requested by pid %d", vd_path(img), name,
                 (int)cr.pid);
        rc = vd_snapshot_revert_open(img, name);
    } else if (strcmp(req, "snapshot delete") == 0) {
        log_info("serve: %s: delete of snapshot \"%s\" requested by pid %d", vd_path(img), name,
                 (int)cr.pid);
        rc = vd_snapshot_delete_open(img, name);
    } else {
        log_err("%s: unknown control request \"%s\"", c->sock[i], req);
        rc = -EINVAL;
    }
    if (rc == 0)
        log_info("serve: %s: done; serving the new chain", vd_path(img));
    char rep[1200];
    int n = snprintf(rep, sizeof(rep), "%d %d\n%s\n", rc, id, rc < 0 ? log_last_error() : "");
    if (n > 0)
        (void)!write(fd, rep, (size_t)n < sizeof(rep) ? (size_t)n : sizeof(rep) - 1);
}

static void *ctl_main(void *arg)
{
    struct ctl_server *c = arg;
    struct pollfd pf[CTL_MAX + 1];
    for (;;) {
        for (unsigned i = 0; i < c->n; i++)
            pf[i] = (struct pollfd){.fd = c->lfd[i], .events = POLLIN};
        pf[c->n] = (struct pollfd){.fd = c->stop_pipe[0], .events = POLLIN};
        if (poll(pf, c->n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[c->n].revents)
            break;
        for (unsigned i = 0; i < c->n; i++) {
            if (!(pf[i].revents & POLLIN))
                continue;
            int fd = accept4(c->lfd[i], NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                continue;
            ctl_handle(c, i, fd);
            close(fd);
        }
    }
    return NULL;
}

int ctl_server_start(struct vd_image **imgs, char *const *paths, unsigned n,
                     struct ctl_server **out)
{
    *out = NULL;
    struct ctl_server *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->stop_pipe[0] = c->stop_pipe[1] = -1;
    int rc = 0;
    for (unsigned i = 0; i < n && c->n < CTL_MAX; i++) {
        if (!vd_snapshot_capable(imgs[i]))
            continue;
        char *sock = ctl_socket_path(paths[i]);
        if (!sock) {
            rc = -EINVAL;
            break;
        }
        int fd = ctl_listen(sock);
        if (fd < 0) {
            free(sock);
            rc = fd;
            break;
        }
        c->lfd[c->n] = fd;
        c->sock[c->n] = sock;
        c->img[c->n] = imgs[i];
        c->n++;
    }
    if (rc == 0 && pipe2(c->stop_pipe, O_CLOEXEC) < 0)
        rc = -errno;
    if (rc == 0 && c->n) {
        rc = -pthread_create(&c->thread, NULL, ctl_main, c);
        c->started = rc == 0;
    }
    if (rc < 0) {
        ctl_server_stop(c);
        return rc;
    }
    *out = c;
    return 0;
}

void ctl_server_stop(struct ctl_server *c)
{
    if (!c)
        return;
    if (c->started) {
        (void)!write(c->stop_pipe[1], "x", 1);
        pthread_join(c->thread, NULL);
    }
    for (unsigned i = 0; i < c->n; i++) {
        close(c->lfd[i]);
        (void)unlink(c->sock[i]);
        free(c->sock[i]);
    }
    if (c->stop_pipe[0] >= 0) {
        close(c->stop_pipe[0]);
        close(c->stop_pipe[1]);
    }
    free(c);
}

int ctl_snapshot_request(const char *path, const char *op, const char *name, int *rc, int *id)
{
    *rc = 0;
    *id = 0;
    enum log_level lv = log_get_level();
    log_set_level(LOG_LVL_ERR);
    char *sock = ctl_socket_path(path);
    log_set_level(lv);
    if (!sock)
        return 0; /* no run folder: no server made a socket either */
    int fd = ctl_connect(sock);
    free(sock);
    if (fd < 0)
        return 0; /* none, or a dead server's socket */
    char req[256], rep[1200];
    int n = snprintf(req, sizeof(req), "snapshot %s\n%s\n", op, name);
    int r = 0;
    if (n <= 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n)
        r = -EIO;
    if (r == 0)
        r = ctl_read_lines(fd, rep, sizeof(rep), 2);
    close(fd);
    if (r < 0) {
        log_err("%s: the server holding this disk did not answer the snapshot request; see "
                "its log",
                path);
        return r;
    }
    char *msg = strchr(rep, '\n') + 1;
    msg[strcspn(msg, "\n")] = 0;
    if (sscanf(rep, "%d %d", rc, id) != 2) {
        log_err("%s: malformed answer from the server", path);
        return -EPROTO;
    }
    if (*rc < 0)
        log_err("%s: the server holding this disk refused: %s", path, *msg ? msg : strerror(-*rc));
    return 1;
}
