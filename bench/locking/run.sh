#!/bin/bash
# Lock benchmark: uncontended acquire+release latency and I/Os per operation
# for each atomic method (COMPARE AND WRITE on a file LUN, the paxos
# fallback on the same file LUN, the paxos fallback on tgt, COMPARE AND
# WRITE (ATS) on istgt), and the time
# from kill -9 of a holder to the lock being taken by another host at the
# default io_timeout (2 s). Prints ratios against the CAW run.
#   bench/locking/run.sh [BUILDDIR]     (needs root for tgtd; skips tgt otherwise)
set -euo pipefail
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$SRCDIR/build}
LOCKHOST=$BUILD/locking/lockhost
[ -x "$LOCKHOST" ] || { echo "build $LOCKHOST first (ninja -C $BUILD locking/lockhost)"; exit 1; }
DIR=$(mktemp -d /tmp/clusterfs-lockbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
truncate -s 64M "$DIR/lun.img"
FILE="file://$DIR/lun.img"

field() { sed -n "s/.* $1 \([0-9.]*\).*/\1/p"; }

run_bench() { # LABEL ROUNDS URI [--paxos]
    local label=$1 rounds=$2 uri=$3
    shift 3
    "$LOCKHOST" prep --io-timeout 2000 "$@" "$uri" >/dev/null
    local out
    out=$("$LOCKHOST" bench --name bench --io-timeout 2000 --rounds "$rounds" "$@" "$uri" 2>/dev/null |
        grep RESULT)
    local us ios acq rss
    us=$(echo "$out" | field us_per_acq_rel)
    ios=$(echo "$out" | field ios_per_acq_rel)
    acq=$(echo "$out" | field ios_per_acquire)
    rss=$(echo "$out" | field peak_rss_kib)
    printf "%-22s %10s us/acq+rel %6s I/Os/acq+rel %3s I/Os/acquire  peak RSS %s KiB\n" \
        "$label" "$us" "$ios" "$acq" "$rss"
    eval "US_${label//[^a-zA-Z0-9]/_}=$us"
}

echo "== uncontended acquire + release (exclusive), io_timeout 2 s"
run_bench "file-caw" 3000 "$FILE"
run_bench "file-paxos" 500 "$FILE" --paxos
printf "ratio paxos/caw on the same file LUN: %.1fx\n" "$(echo "$US_file_paxos / $US_file_caw" | bc -l)"

if [ "$(id -u)" = 0 ] && command -v tgtd >/dev/null; then
    . "$SRCDIR/tests/lib/tgt.sh"
    tgt_start
    tgt_on_exit cleanup
    tgt_add_target 1 iqn.2026-11.org.clusterfs.bench:locks
    tgt_add_lun 1 1 64M
    run_bench "tgt-paxos" 200 "$(tgt_uri 1 1)"
    printf "ratio tgt-paxos/file-caw: %.1fx\n" "$(echo "$US_tgt_paxos / $US_file_caw" | bc -l)"
fi
if command -v istgt >/dev/null; then
    (
        . "$SRCDIR/tests/lib/istgt.sh"
        istgt_init
        istgt_add_lun b1 64M
        istgt_start
        run_bench "istgt-caw" 1000 "$(istgt_uri b1)"
    )
fi

echo "== kill -9 of the holder -> lock taken by another host (defaults: io_timeout 2 s, dead 12 s)"
"$LOCKHOST" prep --io-timeout 2000 "$FILE" >/dev/null
"$LOCKHOST" hold --name holder --io-timeout 2000 "$FILE" >"$DIR/holder.out" 2>&1 &
PIDS+=($!)
HOLDER=$!
for i in $(seq 100); do grep -q ACQUIRED "$DIR/holder.out" && break; sleep 0.1; done
"$LOCKHOST" take --name taker --io-timeout 2000 --linger 100 "$FILE" >"$DIR/taker.out" 2>&1 &
PIDS+=($!)
for i in $(seq 100); do grep -q JOINED "$DIR/taker.out" && break; sleep 0.1; done
sleep 3
t0=$(date +%s%N)
kill -KILL "$HOLDER"
for i in $(seq 600); do grep -q ACQUIRED "$DIR/taker.out" && break; sleep 0.05; done
t1=$(date +%s%N)
echo "break time after kill -9: $(((t1 - t0) / 1000000)) ms (goal <= 20000 ms)"
