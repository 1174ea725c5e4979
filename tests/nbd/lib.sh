# Shared helpers of the NBD tests (sourced). Every test gets its own temp
# dir and its own server, stopped by pid on exit.
set -euo pipefail

: "${VDISK:?VDISK must point at the built vdisk binary}"
T=$(mktemp -d /tmp/nbd-test.XXXXXX)
cd "$T" # fio leaves verify state files in the current directory
SERVER_PID=
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ $rc -ne 0 ] && [ -f "$T/server.log" ]; then
        echo "--- server log ---" >&2
        tail -n 40 "$T/server.log" >&2
    fi
    rm -rf "$T"
    exit $rc
}
trap cleanup EXIT

need() {
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 || { echo "SKIP: $p not installed"; exit 77; }
    done
}

fail() { echo "FAIL: $*" >&2; exit 1; }

# start_unix SOCK ARGS...: vdisk serve on a unix socket, wait until it listens.
start_unix() {
    local sock=$1; shift
    "$VDISK" serve --socket "$sock" "$@" >>"$T/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 200); do
        [ -S "$sock" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited at start"
        sleep 0.05
    done
    fail "server did not create $sock"
}

# start_tcp ARGS...: vdisk serve on 127.0.0.1 and a free port; sets PORT.
start_tcp() {
    for _ in $(seq 20); do
        PORT=$(( 20000 + (RANDOM * 7 + $$) % 30000 ))
        "$VDISK" serve --bind 127.0.0.1 --port "$PORT" "$@" >>"$T/server.log" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then return 0; fi
            sleep 0.05
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    done
    fail "could not start a TCP server"
}

# stop_server: SIGTERM, expect a clean exit 0.
stop_server() {
    kill -TERM "$SERVER_PID"
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    [ $rc -eq 0 ] || fail "server exited with $rc after SIGTERM"
}
