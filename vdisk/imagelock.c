/* imagelock.c: QEMU-compatible image locks (imagelock.h).
 *
 * Design notes
 * - Layout (QEMU block/file-posix.c, raw_apply_lock_bytes and
 *   raw_check_lock_bytes, since QEMU 2.10): for each permission bit i
 *   (consistent-read 0, write 1, write-unchanged 2, resize 3, graph-mod 4)
 *   an opener holds a shared (F_RDLCK) lock on byte 100 + i if it uses the
 *   permission, and on byte 200 + i if it does NOT share it with others.
 *   A conflict is tested with F_OFD_GETLK for an exclusive lock: wanting
 *   permission i conflicts with anyone holding 200 + i; not sharing i
 *   conflicts with anyone holding 100 + i. Nobody ever holds an exclusive
 *   lock, so holders of compatible modes never block each other.
 * - OFD locks (F_OFD_SETLK): they belong to the open file description, not
 *   the process, so two opens in one process conflict like two processes
 *   (a second `vdisk serve` export of the same file is refused too) and a
 *   close of some other fd of the file does not drop them (POSIX locks
 *   would). Where the file system has no OFD locks (EINVAL, ENOLCK,
 *   EOPNOTSUPP), we warn once and go on unlocked, as QEMU's locking=auto.
 * - Order as QEMU's: take our locks first, then check for conflicts. Two
 *   openers racing both see each other and both fail, never both succeed.
 * - Naming the holder: OFD locks carry no pid (F_OFD_GETLK returns -1, and
 *   so does /proc/locks), so we look through /proc/PID/fdinfo/FD of the
 *   processes we may read for a "lock:" line on our device:inode covering
 *   the byte, and name the process by /proc/PID/comm.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "imagelock.h"
#include "log.h"

static const char *const vd_perm_names[] = {"consistent read", "write", "write unchanged", "resize",
                                            "graph change"};

static void vd_lock_mode_perms(enum vd_lock_mode mode, unsigned *perm, unsigned *shared)
{
    *perm = 0;
    *shared = VD_PERM_ALL;
    switch (mode) {
    case VD_LOCK_NONE:
        *perm = 0;
        *shared = VD_PERM_ALL;
        break;
    case VD_LOCK_SHARED:
        *perm = VD_PERM_CONSISTENT_READ;
        *shared = VD_PERM_ALL;
        break;
    case VD_LOCK_READ:
        *perm = VD_PERM_CONSISTENT_READ;
        *shared = VD_PERM_ALL & ~(VD_PERM_WRITE | VD_PERM_RESIZE);
        break;
    case VD_LOCK_WRITE:
        *perm = VD_PERM_CONSISTENT_READ | VD_PERM_WRITE | VD_PERM_RESIZE;
        *shared = VD_PERM_ALL & ~(VD_PERM_WRITE | VD_PERM_RESIZE);
        break;
    }
}

static int vd_ofd_lock(int fd, int off, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1: someone (other than fd's description) holds a lock on byte off. */
static int vd_ofd_test(int fd, int off, int *pid)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    if (fl.l_type == F_UNLCK)
        return 0;
    *pid = fl.l_pid > 0 ? fl.l_pid : 0; /* a POSIX lock tells; an OFD lock says -1 */
    return 1;
}

static bool vd_lock_unsupported(int rc)
{
    return rc == -EINVAL || rc == -ENOLCK || rc == -EOPNOTSUPP || rc == -ENOSYS;
}

int vd_imagelock_set(int fd, const char *path, enum vd_lock_mode mode)
{
    unsigned perm, shared;
    vd_lock_mode_perms(mode, &perm, &shared);
    for (int i = 0; i < 5; i++) {
        int rc = vd_ofd_lock(fd, VD_LOCK_PERM_BASE + i, (perm >> i) & 1 ? F_RDLCK : F_UNLCK);
        if (rc == 0)
            rc = vd_ofd_lock(fd, VD_LOCK_SHARED_BASE + i, (shared >> i) & 1 ? F_UNLCK : F_RDLCK);
        if (rc < 0) {
            if (vd_lock_unsupported(rc)) {
                static int warned;
                if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
                    log_warn("%s: the file system has no OFD byte-range locks (%s): image "
                             "locking is off, nothing stops two writers",
                             path, strerror(-rc));
                return 0;
            }
            log_err("%s: image lock byte %d: %s", path,
                    (perm >> i) & 1 ? VD_LOCK_PERM_BASE + i : VD_LOCK_SHARED_BASE + i,
                    strerror(-rc));
            return rc;
        }
    }
    return 0;
}

/* Does the fdinfo text hold a lock line on dev:ino covering byte off? */
static bool vd_fdinfo_has_lock(const char *text, dev_t dev, ino_t ino, int off)
{
    char want[64];
    snprintf(want, sizeof(want), "%02x:%02x:%lu", major(dev), minor(dev), (unsigned long)ino);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, "lock:", 5) != 0)
            continue;
        const char *p = strstr(l, want);
        const char *eol = strchr(l, '\n');
        if (!p || (eol && p > eol))
            continue;
        p += strlen(want);
        if (*p != ' ')
            continue;
        long long start;
        char end[24];
        if (sscanf(p, " %lld %23s", &start, end) != 2)
            continue;
        long long last = strcmp(end, "EOF") == 0 ? (1ll << 62) : atoll(end);
        if (start <= off && off <= last)
            return true;
    }
    return false;
}

int vd_imagelock_holder_pid(int fd, int off)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    char self_fdinfo[64];
    snprintf(self_fdinfo, sizeof(self_fdinfo), "/proc/%d/fdinfo/%d", (int)getpid(), fd);
    DIR *proc = opendir("/proc");
    if (!proc)
        return 0;
    int found = 0;
    struct dirent *de;
    char *text = malloc(65536);
    while (text && !found && (de = readdir(proc))) {
        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        char dpath[300];
        snprintf(dpath, sizeof(dpath), "/proc/%s/fdinfo", de->d_name);
        DIR *fdd = opendir(dpath);
        if (!fdd)
            continue;
        struct dirent *fe;
        while (!found && (fe = readdir(fdd))) {
            if (!isdigit((unsigned char)fe->d_name[0]))
                continue;
            char ipath[600];
            snprintf(ipath, sizeof(ipath), "%s/%s", dpath, fe->d_name);
            if (strcmp(ipath, self_fdinfo) == 0)
                continue;
            int ifd = open(ipath, O_RDONLY | O_CLOEXEC);
            if (ifd < 0)
                continue;
            ssize_t n = read(ifd, text, 65535);
            close(ifd);
            if (n <= 0)
                continue;
            text[n] = 0;
            if (vd_fdinfo_has_lock(text, st.st_dev, st.st_ino, off))
                found = atoi(de->d_name);
        }
        closedir(fdd);
    }
    free(text);
    closedir(proc);
    return found;
}

static void vd_pid_name(int pid, char *buf, size_t len)
{
    snprintf(buf, len, "another process");
    if (pid <= 0)
        return;
    char p[64], comm[64] = "";
    snprintf(p, sizeof(p), "/proc/%d/comm", pid);
    FILE *f = fopen(p, "r");
    if (f) {
        if (fgets(comm, sizeof(comm), f))
            comm[strcspn(comm, "\n")] = 0;
        fclose(f);
    }
    if (pid == getpid())
        snprintf(buf, len, "this %s process (pid %d, another open of the same file)",
                 comm[0] ? comm : "vdisk", pid);
    else
        snprintf(buf, len, "%s (pid %d)", comm[0] ? comm : "process", pid);
}

bool vd_imagelock_held(int fd, unsigned perm, int *pid)
{
    *pid = 0;
    for (int i = 0; i < 5; i++) {
        if (!((perm >> i) & 1))
            continue;
        int p = 0;
        if (vd_ofd_test(fd, VD_LOCK_PERM_BASE + i, &p) == 1) {
            *pid = p ? p : vd_imagelock_holder_pid(fd, VD_LOCK_PERM_BASE + i);
            return true;
        }
    }
    return false;
}

int vd_imagelock_take(int fd, const char *path, enum vd_lock_mode mode)
{
    if (mode == VD_LOCK_NONE)
        return 0;
    int rc = vd_imagelock_set(fd, path, mode);
    if (rc < 0)
        return rc;
    unsigned perm, shared;
    vd_lock_mode_perms(mode, &perm, &shared);
    for (int i = 0; i < 5; i++) {
        int pid = 0, off = 0, t = 0;
        if ((perm >> i) & 1) {
            off = VD_LOCK_SHARED_BASE + i; /* someone forbids what we want */
            t = vd_ofd_test(fd, off, &pid);
        }
        if (t == 0 && !((shared >> i) & 1)) {
            off = VD_LOCK_PERM_BASE + i; /* someone does what we forbid */
            t = vd_ofd_test(fd, off, &pid);
        }
        if (t <= 0) {
            if (t < 0 && vd_lock_unsupported(t))
                return 0;
            continue;
        }
        if (!pid)
            pid = vd_imagelock_holder_pid(fd, off);
        char who[128];
        vd_pid_name(pid, who, sizeof(who));
        /* what the holder does: writing (it holds the write permission) or reading */
        int wpid = 0;
        bool writer = vd_ofd_test(fd, VD_LOCK_PERM_BASE + 1, &wpid) == 1;
        (void)vd_imagelock_set(fd, path, VD_LOCK_NONE);
        log_err("%s: in use: %s has it open for %s, so it cannot be opened for %s here "
                "(conflict on QEMU's \"%s\" image lock, byte %d); stop it first%s",
                path, who, writer ? "writing" : "reading",
                mode == VD_LOCK_WRITE ? "writing" : "reading", vd_perm_names[i], off,
                mode == VD_LOCK_WRITE ? "" : ", or read with shared access (vdisk info)");
        return -EBUSY;
    }
    return 0;
}
