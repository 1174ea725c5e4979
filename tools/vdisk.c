/* placeholder: being written */
#include "log.h"
#include "tools.h"

int main(int argc, char **argv)
{
    log_set_program("vdisk");
    if (argc > 1 && argv[1][0] == 's')
        return cmd_serve(argc - 1, argv + 1);
    log_err("not available in this build yet");
    return 1;
}
