/* clusterfs: the administrator's command for LUNs, locks and volumes. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "tools.h"
#include "version.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: clusterfs COMMAND [ARGS...]\n"
               "\n"
               "commands:\n"
               "  lun info [--json] LUN...     identity, capacity and capabilities of a LUN\n"
               "  locks [--json] LUN...        hosts, heartbeats and held locks of a lockspace\n"
               "  paths [--json] LUN...        state and statistics of the paths of one LUN\n"
               "  format [OPTIONS] LUN...      lay a clustered volume on a LUN\n"
               "  status [--json] LUN...       label, size, free space, hosts, journals\n"
               "  check [--repair] [--json] LUN...  check (and repair) the volume\n"
               "\n"
               "A LUN is iscsi://[user[%%password]@]host[:port]/target-iqn/lun or a file path.\n"
               "Run 'clusterfs COMMAND --help' for a command's options, 'man clusterfs'\n"
               "for the manual; 'clusterfs --version' prints the version.\n");
}

int main(int argc, char **argv)
{
    log_set_program("clusterfs");
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("clusterfs version %s\n", CLUSTERFS_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "lun"))
        return cmd_lun(argc - 1, argv + 1);
    if (!strcmp(cmd, "locks"))
        return cmd_locks(argc - 1, argv + 1);
    if (!strcmp(cmd, "format"))
        return cmd_format(argc - 1, argv + 1);
    if (!strcmp(cmd, "status"))
        return cmd_status(argc - 1, argv + 1);
    if (!strcmp(cmd, "check"))
        return cmd_volume_check(argc - 1, argv + 1);
    if (!strcmp(cmd, "paths"))
        return cmd_paths(argc - 1, argv + 1);
    log_err("unknown command '%s' (try 'clusterfs --help')", cmd);
    return 2;
}
