# Helpers for the locking tests: start lockhost processes, wait for a line
# of their output, clean them up by pid. Source after setting LOCKHOST.
# The temp dir and the lockhost processes go at exit (tests/lib/common.sh).
. "$SRCDIR/tests/lib/common.sh"
LH_PIDS=()
tmpdir LH_DIR
on_exit lh_reap

# Our background jobs still running (bash reports the parent's jobs here).
lh_running() { echo " $(jobs -p | tr '\n' ' ') "; }

# lh_reap: kill (by pid) every lockhost started so far that still runs,
# then forget them. Only pids that are still our jobs are signalled, so a
# pid reused after an earlier wait is never hit.
lh_reap() {
    local p live
    live=$(lh_running)
    for p in "${LH_PIDS[@]}"; do
        case "$live" in
        *" $p "*)
            kill -CONT "$p" 2>/dev/null || true
            kill -KILL "$p" 2>/dev/null || true
            ;;
        esac
        wait "$p" 2>/dev/null || true
    done
    LH_PIDS=()
}

# The lockhosts first, then tgtd: tgt tests register this with tgt_on_exit.
lh_cleanup() { lh_reap; }

fail() {
    echo "FAIL: $*" >&2
    for f in "$LH_DIR"/*.out; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

# lh_start NAME ARGS... : run lockhost in the background, output in $LH_DIR/NAME.out
lh_start() {
    local name=$1
    shift
    "$LOCKHOST" "$@" --name "$name" >"$LH_DIR/$name.out" 2>&1 &
    LH_PIDS+=($!)
    eval "PID_${name//-/_}=$!"
}

# lh_wait NAME PATTERN SECONDS
lh_wait() {
    local i
    for i in $(seq 1 $(($3 * 20))); do
        grep -q "$2" "$LH_DIR/$1.out" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "$1: no '$2' within $3 s"
}


# stop_clean PID URI: SIGSTOP a host at a point where it holds none of the
# file LUN's OFD byte-range locks (its CAW emulation). A paused process
# stopped inside one would block every reader of that block -- something a
# real disk never does -- so retry until a reader gets through.
stop_clean() {
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        kill -STOP "$1"
        if timeout 2 "$CLUSTERFS" locks --offset 8 --samples 1 "$2" >/dev/null 2>&1; then
            return 0
        fi
        kill -CONT "$1"
        sleep 0.05
    done
    fail "could not stop $1 outside a file-LUN lock"
}
