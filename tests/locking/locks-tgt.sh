#!/bin/bash
# Usage: locks-tgt.sh [mutex|faults|all]
# Locks on tgt (no COMPARE AND WRITE: the paxos fallback; fencing by
# persistent reservations), 512- and 4096-byte LUNs, one LUN per scenario,
# every host with two paths (portals 127.0.0.1 and 127.0.0.2), i.e. two
# sessions each registering the host's key:
#   mutual exclusion: 4 processes with their own sessions hammer one lock;
#   kill -9 the holder: the lock is taken elsewhere after the dead time;
#   SIGSTOP the holder past its lease: another host breaks the lock and
#   preempts its key; after SIGCONT the paused host writes WITHOUT its
#   self-fence check (--raw) and the target refuses it; data checked;
#   a storage stall (SIGSTOP tgtd) shorter than the dead time: nobody is
#   declared dead, the holder keeps its lock and is not fenced.
set -euo pipefail
LOCKHOST=${LOCKHOST:?}
. "$SRCDIR/tests/lib/tgt.sh"
. "$SRCDIR/tests/locking/lib.sh"
tgt_require
tgt_start
tgt_on_exit lh_cleanup
IQN=iqn.2026-11.org.clusterfs.test:locks
tgt_add_target 1 $IQN
tgt_add_lun 1 1 64M
tgt_add_lun 1 2 64M 4096
tgt_add_lun 1 3 64M
tgt_add_lun 1 4 64M 4096
tgt_add_lun 1 5 64M
IO=1000

mutex() {
for lun in 1 2; do
    URI=("$(tgt_uri 1 $lun)" "$(tgt_uri 1 $lun 127.0.0.2)")
    "$LOCKHOST" prep --io-timeout $IO "${URI[@]}" || fail prep
    for i in 1 2 3 4; do
        lh_start "m$lun$i" hammer --io-timeout $IO --rounds 25 "${URI[@]}"
    done
    for p in "${LH_PIDS[@]}"; do wait "$p" || fail "a hammer process failed on LUN $lun"; done
    lh_reap
    grep -q "JOINED slot .* paxos" "$LH_DIR/m${lun}1.out" || fail "expected the paxos fallback on tgt"
    "$LOCKHOST" check --expect 100 "${URI[@]}" || fail "counter/guards on LUN $lun"
    echo "ok: mutual exclusion on tgt LUN $lun, 4 x 25 rounds"
done
}

faults() {
# kill -9 the holder
URI=("$(tgt_uri 1 3)" "$(tgt_uri 1 3 127.0.0.2)")
"$LOCKHOST" prep --io-timeout $IO "${URI[@]}" || fail prep
lh_start holder hold --io-timeout $IO "${URI[@]}"
lh_wait holder ACQUIRED 15
lh_start taker take --io-timeout $IO --linger 500 "${URI[@]}"
lh_wait taker JOINED 15
sleep 1
t0=$(now_ms)
kill -KILL "$PID_holder"
lh_wait taker ACQUIRED 30
t1=$(now_ms)
wait "$PID_taker" || fail "taker after kill -9"
grep -q "RESULT data intact" "$LH_DIR/taker.out" || fail "taker data"
echo "ok: kill -9 holder -> lock taken elsewhere after $((t1 - t0)) ms (dead time $((6 * IO)) ms)"
lh_reap

# SIGSTOP past the lease; the resumed host's raw write is refused by the target
URI=("$(tgt_uri 1 4)" "$(tgt_uri 1 4 127.0.0.2)")
"$LOCKHOST" prep --io-timeout $IO "${URI[@]}" || fail prep
lh_start holder2 hold --raw --io-timeout $IO "${URI[@]}"
lh_wait holder2 ACQUIRED 15
kill -STOP "$PID_holder2"
lh_start taker2 take --io-timeout $IO --linger 3000 "${URI[@]}"
lh_wait taker2 WROTE 30
kill -CONT "$PID_holder2"
lh_wait holder2 "WRITE-REFUSED" 10
wait "$PID_taker2" || fail "taker2: the paused holder's write reached the disk"
grep -q "RESULT data intact" "$LH_DIR/taker2.out" || fail "taker2 data"
grep -q "WRITE-REFUSED 52" "$LH_DIR/holder2.out" || fail "holder2: expected RESERVATION CONFLICT (EBADE)"
echo "ok: SIGSTOP holder broken and preempted; its writes after SIGCONT refused by the target"

# storage stall shorter than the dead time
URI=("$(tgt_uri 1 5)" "$(tgt_uri 1 5 127.0.0.2)")
"$LOCKHOST" prep --io-timeout $IO "${URI[@]}" || fail prep
lh_start holder3 hold --io-timeout $IO "${URI[@]}"
lh_wait holder3 ACQUIRED 15
lh_start taker3 take --io-timeout $IO --timeout $((9 * IO)) "${URI[@]}"
lh_wait taker3 JOINED 15
kill -STOP "$TGT_PID"
sleep $((2 * IO / 1000))
kill -CONT "$TGT_PID"
wait "$PID_taker3" && fail "taker3 got the lock during a short storage stall"
grep -q "RESULT not acquired" "$LH_DIR/taker3.out" || fail "taker3: expected a timeout"
grep -q FENCED "$LH_DIR/holder3.out" && fail "holder3 fenced by a short stall"
grep -qi "dead" "$LH_DIR/taker3.out" && fail "taker3 declared somebody dead"
echo "ok: a $((2 * IO)) ms storage stall declared nobody dead"
}

case "${1:-all}" in
mutex) mutex ;;
faults) faults ;;
all) mutex; faults ;;
esac
echo PASS
