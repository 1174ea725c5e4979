#!/bin/bash
# Cut one path of two in the middle of a long verified write stream: the
# caller sees zero errors, every byte verifies afterwards, the path shows
# failed while cut; restored, it comes back per the policy (fixed: fail
# back to the preferred path, which then carries the writes again).
# The cut: tgt_cut_portal deletes the portal (no new logins) and kills its
# TCP connections on both ends (ss -K).
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v ss >/dev/null || { echo "SKIP: ss (iproute2) missing" >&2; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:mpf
tgt_add_lun 1 1 64M
u1=$(tgt_uri 1 1 127.0.0.1)
u2=$(tgt_uri 1 1 127.0.0.2)
st=$TGT_DIR/state
out=$TGT_DIR/out

# path(index) field from the state file: "index state failures writes"
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

# --check-timeout-ms 5000: no false alarms on a loaded CI machine (the cut
# is seen at once anyway: the connection is reset).
"$MPATH_STREAM" --seconds 60 --stop-file "$TGT_DIR/stop" --check-timeout-ms 5000 --policy fixed --preferred 1 --bs 64k --qd 4 --state "$st" \
    "$u1" "$u2" >"$out" 2>"$TGT_DIR/err" &
pid=$!
tgt_on_exit "kill -KILL $pid"
wait_for 1 active 10
wait_for 0 standby 10
sleep 2
w0=$(field 0 4)
tgt_cut_portal 127.0.0.2
wait_for 1 failed 10
wait_for 0 active 10
sleep 2
w0b=$(field 0 4)
[ "$w0b" -gt "$w0" ] || { echo "FAIL: path 0 carried no writes after the cut ($w0 -> $w0b)" >&2; exit 1; }
tgt_restore_portal 127.0.0.2
wait_for 1 active 15  # fixed policy: fail back to the preferred path
wait_for 0 standby 10
w1=$(field 1 4)
sleep 1.5
w1b=$(field 1 4)
[ "$w1b" -gt "$w1" ] || { echo "FAIL: preferred path carried no writes after failback" >&2; exit 1; }
touch "$TGT_DIR/stop"
rc=0
wait $pid || rc=$?
cat "$out"
if [ $rc != 0 ]; then
    echo "FAIL: stream exit $rc" >&2
    cat "$TGT_DIR/err" >&2
    exit 1
fi
grep -q "errors=0 eio=0" "$out"
grep -q "verify=ok" "$out"
grep -Eq "path 1 .* failures=[1-9]" "$out"
grep -q "failed" "$TGT_DIR/err" # the failure was logged
echo PASS
