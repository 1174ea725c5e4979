#!/bin/bash
# tests/lib/common.sh itself: the on-exit registry (order, failure-only
# hooks, exit status kept, INT), temp dirs, spawned processes killed by pid
# at exit, start_server's readiness and its failures, reap, random_port.
set -euo pipefail
: "${SRCDIR:?}"
LIB=$SRCDIR/tests/lib/common.sh
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT # the library under test is not trusted here
fail() { echo "FAIL: $*" >&2; exit 1; }

# run SCRIPT: a child bash that sources the library; prints its output, sets RC
run() {
    RC=0
    OUT=$(bash -c "set -euo pipefail; . '$LIB'; $1" 2>&1) || RC=$?
}

run 'on_exit "echo A"; on_exit "echo B"; on_failure "echo F"; echo body'
[ "$RC" = 0 ] && [ "$OUT" = $'body\nB\nA' ] || fail "success: rc $RC, out: $OUT"
run 'on_exit "echo A"; on_failure "echo F"; on_exit "echo B"; exit 3'
[ "$RC" = 3 ] && [ "$OUT" = $'B\nF\nA' ] || fail "exit 3: rc $RC, out: $OUT"
run 'on_exit "echo A"; fail "broken"'
[ "$RC" = 1 ] && [ "$OUT" = $'FAIL: broken\nA' ] || fail "fail: rc $RC, out: $OUT"
run 'on_exit "false"; on_exit "echo still"'
[ "$RC" = 0 ] && [ "$OUT" = still ] || fail "a failing hook stops the others: rc $RC, out: $OUT"
run 'on_exit "echo A"; false; echo not-reached'
[ "$RC" = 1 ] && [ "$OUT" = A ] || fail "set -e exit: rc $RC, out: $OUT"
run '. "'"$LIB"'"; on_exit "echo once"'
[ "$OUT" = once ] || fail "sourced twice: $OUT"
run 'need true sh; need no-such-program-xyz; echo not-reached'
[ "$RC" = 77 ] && [[ $OUT == *"SKIP: no-such-program-xyz"* ]] || fail "need: rc $RC, out: $OUT"

# INT: the hooks run, status 130
bash -c ". '$LIB'; on_exit 'echo ran >$W/int'; kill -INT \$\$; sleep 5" >/dev/null 2>&1 && RC=0 || RC=$?
[ "$RC" = 130 ] && [ "$(cat "$W/int")" = ran ] || fail "INT: rc $RC"

# tmpdir: removed at exit, kept with KEEP=1
run 'tmpdir D; touch "$D/x"; mkdir "$D/ro"; chmod 0500 "$D/ro"; echo "$D"'
[ -n "$OUT" ] && [ ! -e "$OUT" ] || fail "tmpdir left behind: $OUT"
OUT=$(KEEP=1 bash -c ". '$LIB'; tmpdir D; echo \$D" 2>/dev/null)
[ -d "$OUT" ] || fail "KEEP=1 removed the dir"
rm -rf "$OUT"

# spawn: killed by pid at exit; a reaped one is not signalled again
run 'spawn P "'"$W"'/s.log" sleep 300; echo $P'
! kill -0 "$OUT" 2>/dev/null || { kill "$OUT"; fail "spawned sleep survived the exit"; }
run 'spawn P "'"$W"'/s.log" sh -c "sleep 0.2; exit 7"; rc=0; reap $P 0 || rc=$?; echo $rc'
[ "$OUT" = 7 ] || fail "reap with signal 0 (wait for the exit): $OUT"
run 'spawn P "'"$W"'/s.log" sleep 300; rc=0; reap $P || rc=$?; echo $rc'
[ "$OUT" = 143 ] || fail "reap TERM: $OUT"

# start_server: unix socket, TCP port, log line; a server that dies at start
cat >"$W/unix.py" <<'PYEOF'
import socket, sys, time
time.sleep(0.3)
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
print("ready", flush=True)
time.sleep(300)
PYEOF
cat >"$W/tcp.py" <<'PYEOF'
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
time.sleep(300)
PYEOF
run "start_server P $W/u.log unix:$W/u.sock python3 $W/unix.py $W/u.sock; echo up \$P"
[ "$RC" = 0 ] && [[ $OUT == "up "* ]] || fail "unix server: rc $RC, $OUT"
! kill -0 "${OUT#up }" 2>/dev/null || fail "unix server survived the exit"
rm -f "$W/u.sock"
run "start_server P $W/l.log log:^ready python3 $W/unix.py $W/u.sock; echo up"
[ "$RC" = 0 ] && [ "$OUT" = up ] || fail "log readiness: rc $RC, $OUT"
run "p=\$(random_port); port_free \$p; start_server P $W/t.log tcp:127.0.0.1:\$p python3 $W/tcp.py \$p; ! port_free \$p; echo up"
[ "$RC" = 0 ] && [ "$OUT" = up ] || fail "tcp server: rc $RC, $OUT"
run 'start_server P "'"$W"'/d.log" unix:/nonexistent/x sh -c "echo bad config; exit 2"; echo not-reached'
[ "$RC" = 1 ] && [[ $OUT == *"sh exited before unix:/nonexistent/x"*"bad config"* ]] ||
    fail "dead server: rc $RC, $OUT"
run 'START_TIMEOUT_MS=300 start_server P "'"$W"'/n.log" log:never sleep 300; echo not-reached'
[ "$RC" = 1 ] && [[ $OUT == *"not ready (log:never) after 300 ms"* ]] || fail "timeout: rc $RC, $OUT"

# wait_until
run 'wait_until 1 test -e /nonexistent || echo timeout; wait_until 1 true && echo ok'
[ "$OUT" = $'timeout\nok' ] || fail "wait_until: $OUT"
echo "ok: common.sh"
