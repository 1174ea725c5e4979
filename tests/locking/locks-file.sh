#!/bin/bash
# Locks on a file LUN (COMPARE AND WRITE emulated, and the paxos fallback):
#   mutual exclusion: 4 processes hammer one lock, counter exact, guards intact;
#   kill -9 the holder: another host takes the lock after the dead time;
#   SIGSTOP the holder past its lease: another host breaks the lock; after
#   SIGCONT the paused host writes nothing (self-fenced), checked by data;
#   `clusterfs locks --json` shows the holder live and its lock;
#   a corrupt heartbeat slot is reported and its host's lock never broken.
# Usage: locks-file.sh BLOCKSIZE
set -euo pipefail
BS=${1:-512}
LOCKHOST=${LOCKHOST:?}
. "$SRCDIR/tests/locking/lib.sh"
IMG="$LH_DIR/lun.img"
truncate -s 64M "$IMG"
URI="file://$IMG?block_size=$BS"
IO=500

mutex() { # METHOD ROUNDS
    local extra=() i
    [ "$1" = paxos ] && extra=(--paxos)
    "$LOCKHOST" prep "${extra[@]}" --io-timeout $IO "$URI" || fail "prep"
    for i in 1 2 3 4; do
        lh_start "m$1$i" hammer "${extra[@]}" --io-timeout $IO --rounds "$2" "$URI"
    done
    for p in "${LH_PIDS[@]}"; do wait "$p" || fail "a hammer process failed ($1)"; done
    lh_reap
    "$LOCKHOST" check --expect $((4 * $2)) "$URI" || fail "counter/guards after $1 hammer"
    echo "ok: mutual exclusion, $1, 4 x $2 rounds, ${BS}-byte blocks"
}
mutex caw 600
mutex paxos 80

# kill -9 the holder
"$LOCKHOST" prep --io-timeout $IO "$URI" || fail prep
lh_start holder hold --io-timeout $IO "$URI"
lh_wait holder ACQUIRED 10
lh_start taker take --io-timeout $IO --linger 500 "$URI"
lh_wait taker JOINED 10
sleep 0.5
t0=$(now_ms)
kill -KILL "$PID_holder"
lh_wait taker ACQUIRED 20
t1=$(now_ms)
wait "$PID_taker" || fail "taker after kill -9"
grep -q "RESULT data intact" "$LH_DIR/taker.out" || fail "taker data"
echo "ok: kill -9 holder -> lock taken elsewhere after $((t1 - t0)) ms (dead time $((6 * IO)) ms)"
lh_reap

# The holder stops itself (SIGSTOP) exactly between its fence check and its
# data write (--pause-at-write, a test hook in the lockspace's I/O gate);
# another host breaks the lock and writes; after SIGCONT the paused write
# must not land: it carries the holder's self-fence deadline, which passed
# (a file LUN has no reservations: that deadline is all there is).
"$LOCKHOST" prep --io-timeout $IO "$URI" || fail prep
lh_start holder2 hold --pause-at-write --io-timeout $IO "$URI"
lh_wait holder2 PAUSED-AT-WRITE 10
timeout 3 "$CLUSTERFS" locks --offset 8 --samples 1 "$URI" >/dev/null 2>&1 ||
    fail "holder2 stopped inside a file-LUN byte-range lock (test artefact, rerun)"
lh_start taker2 take --io-timeout $IO --linger 1500 "$URI"
lh_wait taker2 WROTE 20
kill -CONT "$PID_holder2"
lh_wait holder2 "WRITE-REFUSED" 5
wait "$PID_taker2" || fail "taker2: the paused holder's write landed after the break"
grep -q "RESULT data intact" "$LH_DIR/taker2.out" || fail "taker2 data"
echo "ok: holder paused between its fence check and its write; after the break and SIGCONT the write was refused ($(grep -o 'WRITE-REFUSED [0-9]*' "$LH_DIR/holder2.out"))"
lh_reap

# The no-reservations warning, at join and in `clusterfs locks`
"$LOCKHOST" prep --io-timeout $IO "$URI" || fail prep
lh_start warn join --io-timeout $IO --linger 2000 "$URI"
lh_wait warn JOINED 10
grep -q "NO FENCING" "$LH_DIR/warn.out" || fail "no warning at join on a LUN without reservations"
out=$("$CLUSTERFS" locks --offset 8 --samples 1 "$URI" 2>&1) || fail "clusterfs locks: $out"
echo "$out" | grep -q "fencing: none" || fail "clusterfs locks does not say there is no fencing: $out"
js=$("$CLUSTERFS" locks --json --offset 8 --samples 1 "$URI") || fail "clusterfs locks --json"
echo "$js" | jq -e '.[0].fencing == "none" and .[0].atomic == "compare-and-write"' >/dev/null ||
    fail "clusterfs locks --json fencing/atomic: $js"
echo "ok: no persistent reservations said at join and by clusterfs locks"
lh_reap

# A corrupt heartbeat slot is reported, and never taken for a free or dead host
"$LOCKHOST" prep --io-timeout $IO "$URI" || fail prep
lh_start holder3 hold --io-timeout $IO "$URI"
lh_wait holder3 "JOINED slot 0" 10
lh_wait holder3 ACQUIRED 10
js=$("$CLUSTERFS" locks --json --offset 8 --samples 3 "$URI") || fail "clusterfs locks --json"
echo "$js" | jq -e '.[0].hosts[0].name == "holder3" and .[0].hosts[0].state == "live" and
    .[0].locks[0].mode == "exclusive" and .[0].locks[0].owners[0].name == "holder3" and
    .[0].locks[0].version == 1 and .[0].io_timeout_ms == '$IO >/dev/null ||
    fail "clusterfs locks --json: $js"
kill -KILL "$PID_holder3"
wait "$PID_holder3" 2>/dev/null || true
# slot 0 is block 9 (lockspace at block 8): flip a byte of its host name
printf '\x7f' | dd of="$IMG" bs=1 seek=$((9 * BS + 80)) conv=notrunc status=none
out=$("$CLUSTERFS" locks --offset 8 --block-size "$BS" --samples 1 "$URI" 2>&1) || true
echo "$out" | grep -q "corrupt" || fail "clusterfs locks did not report the corrupt slot: $out"
echo "$out" | grep -q "bad CRC32C" || fail "no CRC message: $out"
lh_start taker3 take --io-timeout $IO --timeout $((12 * IO)) "$URI"
wait "$PID_taker3" && fail "a lock held by a host with a corrupt slot was taken"
grep -q "RESULT not acquired" "$LH_DIR/taker3.out" || fail "taker3: expected a timeout"
echo "ok: corrupt heartbeat slot reported, its host's lock never broken"
echo PASS
