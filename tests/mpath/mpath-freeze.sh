#!/bin/bash
# No stale write after failover (issue 15 item 1). Path 0 goes through a TCP
# relay (tcp-proxy.py) that is frozen (SIGUSR1): it holds the bytes and
# keeps both sockets open, so the target keeps the old session and would
# execute whatever is still on its way once the relay thaws. 8 writes in
# flight (mpath-stream --qd 8, round-robin over both paths) keep
# overwriting their 4 KiB units (--bs 4096) with increasing pass numbers;
# the relay is frozen, the writes in flight on path 0 time out (1 s), the
# stream goes on through path 1, then stops; the relay thaws; 1.5 s later
# every unit must still hold the pass of its last acknowledged write.
# MPATH_FREEZE_BS=65536 runs the variant with 64 KiB writes (Data-Out
# PDUs); REPEAT=N runs it N times (default 1).
# MPATH_FREEZE_TARGET=istgt runs it on istgt, which reinstates sessions
# (RFC 7143): there the held writes must be released during the freeze, by
# a login with path 0's ISID through the other portal.
set -euo pipefail
target=${MPATH_FREEZE_TARGET:-tgt}
bs=${MPATH_FREEZE_BS:-4096}
repeat=${REPEAT:-1}
command -v python3 >/dev/null || { echo "SKIP: python3 missing" >&2; exit 77; }
if [ "$target" = istgt ]; then
    . "$SRCDIR/tests/lib/istgt.sh"
    istgt_require
    istgt_init
    istgt_add_lun freeze 16M
    istgt_start
    TGT_DIR=$ISTGT_DIR
    TGT_PORT=$ISTGT_PORT
    tgt_on_exit() { istgt_on_exit "$@"; }
    tgt_closed_port() {
        local p
        for p in $(seq $((40000 + $$ % 20000)) 65000); do
            istgt_port_free "$p" && { echo "$p"; return 0; }
        done
        return 1
    }
    u1=$(istgt_uri freeze 127.0.0.2)
    tpath="${ISTGT_NODEBASE}:freeze/0"
else
    . "$SRCDIR/tests/lib/tgt.sh"
    tgt_require
    tgt_start
    tgt_add_target 1 iqn.2026-11.org.clusterfs.test:freeze
    tgt_add_lun 1 1 16M
    u1=$(tgt_uri 1 1 127.0.0.2)
    tpath="${TGT_IQN[1]}/1"
fi

pport=$(tgt_closed_port)
python3 "$SRCDIR/tests/mpath/tcp-proxy.py" 127.0.0.1 "$pport" 127.0.0.1 "$TGT_PORT" \
    >"$TGT_DIR/proxy.out" 2>&1 &
ppid=$!
tgt_on_exit "kill $ppid; wait $ppid"
for _ in $(seq 1 100); do
    grep -q ready "$TGT_DIR/proxy.out" && break
    kill -0 $ppid || { cat "$TGT_DIR/proxy.out"; exit 1; }
    sleep 0.05
done
grep -q ready "$TGT_DIR/proxy.out"

u0="iscsi://127.0.0.1:$pport/$tpath"

for run in $(seq 1 "$repeat"); do
    echo "== run $run of $repeat: ${bs}-byte writes"
    rm -f "$TGT_DIR/stop" "$TGT_DIR/thawed" "$TGT_DIR/state"
    "$MPATH_STREAM" --seconds 120 --bs "$bs" --qd 8 --region $((16 * bs)) \
        --policy round-robin --timeout-ms 1000 --check-timeout-ms 1000 \
        --stop-file "$TGT_DIR/stop" --verify-wait-file "$TGT_DIR/thawed" \
        --state "$TGT_DIR/state" "$u0" "$u1" >"$TGT_DIR/stream.out" 2>&1 &
    spid=$!
    # Both paths carry writes before the freeze.
    for _ in $(seq 1 200); do
        [ -s "$TGT_DIR/state" ] && [ "$(awk '$4 > 50' "$TGT_DIR/state" | wc -l)" = 2 ] && break
        sleep 0.05
    done
    [ "$(awk '$4 > 50' "$TGT_DIR/state" | wc -l)" = 2 ] ||
        { echo "FAIL: the stream does not use both paths"; cat "$TGT_DIR/state"; exit 1; }
    kill -USR1 $ppid
    # Path 0 fails (timeouts, TUR watchdog); the stream goes on through path 1.
    for _ in $(seq 1 200); do
        grep -q '^0 failed' "$TGT_DIR/state" && break
        sleep 0.05
    done
    grep -q '^0 failed' "$TGT_DIR/state" || { echo "FAIL: path 0 not failed"; cat "$TGT_DIR/state"; exit 1; }
    if [ "$target" = istgt ]; then
        # Still frozen: the session must end by reinstatement, not by the thaw.
        for _ in $(seq 1 200); do
            grep -q "reinstated the session through another portal" "$TGT_DIR/stream.out" && break
            sleep 0.05
        done
    fi
    w1=$(awk '$1 == 1 {print $4}' "$TGT_DIR/state")
    sleep 1.5
    w2=$(awk '$1 == 1 {print $4}' "$TGT_DIR/state")
    echo "writes on path 1 during the freeze: $((w2 - w1)) in 1.5 s"
    [ "$w2" -gt "$w1" ] || { echo "FAIL: writes stopped during the freeze"; exit 1; }
    touch "$TGT_DIR/stop"
    sleep 0.5
    kill -USR2 $ppid
    touch "$TGT_DIR/thawed"
    rc=0
    wait $spid || rc=$?
    cat "$TGT_DIR/stream.out"
    [ $rc = 0 ] || { echo "FAIL: run $run: a unit lost its last acknowledged write (or the stream failed)"; exit 1; }
    grep -q "verify=ok" "$TGT_DIR/stream.out" || { echo "FAIL: run $run: verify"; exit 1; }
    if [ "$target" = istgt ]; then
        grep -q "session torn down after .* ms: the target reinstated the session" "$TGT_DIR/stream.out" ||
            { echo "FAIL: run $run: path 0's session was not reinstated during the freeze"; exit 1; }
    fi
done
echo "PASS"
