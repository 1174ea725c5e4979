# Shared helpers of the NBD tests (sourced). Every test gets its own temp
# dir and its own server, stopped by pid on exit.
set -euo pipefail

. "$SRCDIR/tests/lib/common.sh"
: "${VDISK:?VDISK must point at the built vdisk binary}"
tmpdir T
cd "$T" # fio leaves verify state files in the current directory
SERVER_PID=
on_failure 'if [ -f "$T/server.log" ]; then echo "--- server log ---" >&2; tail -n 40 "$T/server.log" >&2; fi'

# start_unix SOCK ARGS...: vdisk serve on a unix socket, wait until it listens.
start_unix() {
    local sock=$1
    shift
    start_server SERVER_PID "$T/server.log" "unix:$sock" "$VDISK" serve --socket "$sock" "$@" ||
        fail "vdisk serve did not start on $sock"
}

# start_tcp ARGS...: vdisk serve on 127.0.0.1 and a free port; sets PORT.
start_tcp() {
    local i
    for i in $(seq 20); do
        PORT=$(random_port) || continue
        START_TIMEOUT_MS=5000 start_server SERVER_PID "$T/server.log" "tcp:127.0.0.1:$PORT" \
            "$VDISK" serve --bind 127.0.0.1 --port "$PORT" "$@" 2>/dev/null && return 0
        reap "$SERVER_PID" KILL || true
    done
    fail "could not start a TCP server"
}

# stop_server: SIGTERM, expect a clean exit 0.
stop_server() {
    local rc=0
    reap "$SERVER_PID" TERM || rc=$?
    SERVER_PID=
    [ $rc -eq 0 ] || fail "server exited with $rc after SIGTERM"
}
