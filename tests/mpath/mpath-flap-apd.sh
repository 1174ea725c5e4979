#!/bin/bash
# Flap a path repeatedly during I/O (round-robin): no errors, data
# verifies. Then all paths down for less than the queue time: I/O resumes,
# nothing lost. Then all paths down for longer: clean EIO, no hang.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v ss >/dev/null || { echo "SKIP: ss (iproute2) missing" >&2; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:mpa
tgt_add_lun 1 1 64M
u1=$(tgt_uri 1 1 127.0.0.1)
u2=$(tgt_uri 1 1 127.0.0.2)
out=$TGT_DIR/out

st=$TGT_DIR/state
field() { awk -v i="$1" -v f="$2" '$1 == i { print $f }' "$st" 2>/dev/null; }
wait_for() { # wait_for INDEX STATE SECONDS
    local t
    for t in $(seq 1 $(($3 * 20))); do
        [ "$(field "$1" 2)" = "$2" ] && return 0
        sleep 0.05
    done
    echo "FAIL: path $1 not $2 after $3 s (state: $(tr '\n' ';' <"$st"))" >&2
    return 1
}

echo "== flapping path 2 three times, then both paths down 1.5 s (queue 10 s)"
"$MPATH_STREAM" --seconds 60 --stop-file "$TGT_DIR/stop" --check-timeout-ms 5000 --policy round-robin --queue-ms 10000 \
    --bs 16k --qd 2 --state "$st" "$u1" "$u2" >"$out" 2>"$TGT_DIR/err1" &
pid=$!
tgt_on_exit "kill -KILL $pid"
for k in 1 2 3; do
    wait_for 1 active 10
    sleep 0.3
    tgt_cut_portal 127.0.0.2
    wait_for 1 failed 10
    sleep 0.3
    tgt_restore_portal 127.0.0.2
done
# Third failure within 30 s: held back 5 s although the portal is back.
sleep 1
[ "$(field 1 2)" = failed ] || { echo "FAIL: flapping path not held back" >&2; exit 1; }
sleep 0.5
tgt_cut_portal 127.0.0.1
tgt_cut_portal 127.0.0.2
sleep 1.5
tgt_restore_portal 127.0.0.1
tgt_restore_portal 127.0.0.2
wait_for 0 active 10
sleep 1 # I/O flowing again
touch "$TGT_DIR/stop"
rc=0
wait $pid || rc=$?
cat "$out"
if [ $rc != 0 ]; then
    echo "FAIL: stream exit $rc" >&2
    tail -20 "$TGT_DIR/err1" >&2
    exit 1
fi
grep -q "errors=0 eio=0" "$out"
grep -q "verify=ok" "$out"
f2=$(awk '/^path 1 / { for (i = 1; i <= NF; i++) if ($i ~ /^failures=/) { sub("failures=", "", $i); print $i } }' "$out")
[ "$f2" -ge 3 ] || { echo "FAIL: path 2 failed only $f2 times" >&2; exit 1; }
grep -q "flapping: held back" "$TGT_DIR/err1"

echo "== both paths down longer than the queue time (1 s): EIO, no hang"
"$MPATH_STREAM" --seconds 30 --check-timeout-ms 5000 --policy service-time --queue-ms 1000 --bs 4k --qd 2 \
    --expect-eio "$u1" "$u2" >"$out" 2>"$TGT_DIR/err2" &
pid=$!
tgt_on_exit "kill -KILL $pid"
sleep 1
start=$(date +%s%N)
tgt_cut_portal 127.0.0.1
tgt_cut_portal 127.0.0.2
rc=0
timeout 15 tail --pid=$pid -f /dev/null || { echo "FAIL: stream hung with all paths down" >&2; exit 1; }
wait $pid || rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$out"
echo "ended ${ms} ms after the cut"
[ $rc = 0 ] || { echo "FAIL: expected a clean EIO (exit $rc)" >&2; tail "$TGT_DIR/err2" >&2; exit 1; }
grep -q "all paths down" "$TGT_DIR/err2"
echo PASS
