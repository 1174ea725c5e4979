# common.sh: the one shell library of the tests. Source it first (tgt.sh,
# istgt.sh and the folders' lib.sh source it too); it is safe to source
# twice.
#
#   . "$SRCDIR/tests/lib/common.sh"
#   need qemu-img fio                # exit 77 (SKIP) unless each is installed
#   need_root                        # exit 77 unless root
#   tmpdir T [/dev/shm]              # T=a private temp dir, removed at exit
#                                    # (KEEP=1 keeps it and says where)
#   on_exit 'rm -f "$x"'             # run at exit, the last registered first
#   on_failure 'tail "$T/log" >&2'   # the same, only when the test fails
#   fail "what went wrong"           # "FAIL: ..." on stderr, exit 1
#   spawn PID LOG CMD...             # CMD in the background, output appended
#                                    # to LOG, its pid in $PID; killed by that
#                                    # pid (SIGKILL) at exit if still running
#   start_server PID LOG READY CMD...  # spawn, then wait until READY:
#                                    #   unix:PATH   the socket exists
#                                    #   tcp:HOST:PORT  a connect succeeds
#                                    #   log:REGEX   LOG matches (grep -E)
#                                    #   anything else: a shell condition
#                                    # 1 (with the log's tail) if CMD exits
#                                    # first or START_TIMEOUT_MS (10000) pass
#   reap PID [SIGNAL]                # signal (default TERM; 0: none, just wait),
#                                    # wait, return its exit status
#   wait_until SECONDS CMD...        # poll CMD every 50 ms; 1 on timeout
#   now_ms                           # CLOCK_MONOTONIC-ish milliseconds
#   port_free PORT                   # nothing uses TCP PORT
#   random_port [LO HI]              # a free TCP port (default 20000-60000)
#   cut_connections IP PORT          # kill every TCP connection to IP:PORT on
#                                    # both ends (ss -K), as when a link dies;
#                                    # a target's portal cut is this plus its
#                                    # portal removal (tgt_cut_portal)
#
# Exit: one EXIT trap runs the registry, keeps the test's exit status, and
# INT / TERM exit 130 through it, so nothing a test started is left behind
# even when it fails half-way. A test never sets its own EXIT trap: it
# registers with on_exit.

if [ -n "${_COMMON_SH:-}" ]; then
    return 0
fi
_COMMON_SH=1

_ON_EXIT=()

_on_exit_run() {
    local rc=$?
    trap - EXIT
    set +e
    local i c
    for ((i = ${#_ON_EXIT[@]} - 1; i >= 0; i--)); do
        c=${_ON_EXIT[i]}
        case $c in
        fail:*) [ "$rc" -ne 0 ] && eval "${c#fail:}" ;;
        *) eval "$c" ;;
        esac
    done
    _ON_EXIT=()
    exit "$rc"
}
trap _on_exit_run EXIT
trap 'exit 130' INT TERM

on_exit() { _ON_EXIT+=("$1"); }
on_failure() { _ON_EXIT+=("fail:$1"); }

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

need() {
    local p
    for p in "$@"; do
        if ! command -v "$p" >/dev/null 2>&1; then
            echo "SKIP: $p not installed" >&2
            exit 77
        fi
    done
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "SKIP: needs root" >&2
        exit 77
    fi
}

# tmpdir VAR [PARENT]
tmpdir() {
    local __d
    __d=$(mktemp -d "${2:-/tmp}/clusterfs-test.XXXXXX") || fail "mktemp in ${2:-/tmp}"
    printf -v "$1" '%s' "$__d"
    on_exit "_tmpdir_remove '$__d'"
}

_tmpdir_remove() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "common.sh: keeping $1" >&2
    else
        chmod -R u+w "$1" 2>/dev/null
        rm -rf "$1"
    fi
}

now_ms() {
    local t
    t=$(date +%s%N)
    echo $((t / 1000000))
}

# A pid is still ours to kill only while it is a job of this shell: once
# waited for (or reaped by bash), the number may belong to someone else.
_is_our_job() {
    local p
    for p in $(jobs -p); do
        [ "$p" = "$1" ] && return 0
    done
    return 1
}

_kill_job() {
    if _is_our_job "$1"; then
        kill -KILL "$1" 2>/dev/null
        wait "$1" 2>/dev/null
    fi
    return 0
}

# spawn VAR LOG CMD...
spawn() {
    local __var=$1 __log=$2
    shift 2
    "$@" >>"$__log" 2>&1 &
    local __pid=$!
    printf -v "$__var" '%s' "$__pid"
    on_exit "_kill_job $__pid"
}

_ready() { # READY LOG
    case $1 in
    unix:*) [ -S "${1#unix:}" ] ;;
    tcp:*)
        local hp=${1#tcp:}
        (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null
        ;;
    log:*) grep -Eq -- "${1#log:}" "$2" 2>/dev/null ;;
    *) eval "$1" ;;
    esac
}

# start_server VAR LOG READY CMD...
start_server() {
    local __var=$1 __log=$2 __ready=$3
    shift 3
    local __name=$1
    spawn "$__var" "$__log" "$@"
    local __pid=${!__var}
    local __end=$(($(now_ms) + ${START_TIMEOUT_MS:-10000}))
    while ! _ready "$__ready" "$__log"; do
        if ! kill -0 "$__pid" 2>/dev/null; then
            echo "common.sh: $__name exited before $__ready; its log ends:" >&2
            tail -n 20 "$__log" >&2
            return 1
        fi
        if [ "$(now_ms)" -ge "$__end" ]; then
            echo "common.sh: $__name not ready ($__ready) after ${START_TIMEOUT_MS:-10000} ms" >&2
            tail -n 20 "$__log" >&2
            return 1
        fi
        sleep 0.05
    done
}

# reap PID [SIGNAL]: the process's exit status.
reap() {
    local rc=0
    if _is_our_job "$1"; then
        kill "-${2:-TERM}" "$1" 2>/dev/null
    fi
    wait "$1" 2>/dev/null || rc=$?
    return $rc
}

# wait_until SECONDS CMD...
wait_until() {
    local end=$(($(now_ms) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(now_ms)" -ge "$end" ] && return 1
        sleep 0.05
    done
}

port_free() {
    ! ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .
}

random_port() {
    local lo=${1:-20000} hi=${2:-60000} p i
    for i in $(seq 50); do
        p=$((lo + (RANDOM * 32768 + RANDOM + $$ + i * 977) % (hi - lo + 1)))
        if port_free "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

cut_connections() {
    ss -K dst "$1" dport = ":$2" >/dev/null 2>&1
    ss -K src "$1" sport = ":$2" >/dev/null 2>&1
    return 0
}
