/* placeholder: being written */
#include "log.h"
#include "tools.h"

int cmd_locks(int argc, char **argv)
{
    log_err("%s: not available in this build yet", argv[0]);
    return 1;
}
