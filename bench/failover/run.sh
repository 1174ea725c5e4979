#!/bin/bash
# Failover benchmark on a private tgtd with two portals (two paths to one
# 1 GiB LUN backed by /dev/shm), driven by tests/mpath/mpath-stream:
#
#  1. stall: a steady 4 KiB writer (queue depth 1) while one path is cut
#     (portal deleted, its TCP connections killed) after 3 s: the longest
#     time any single write took (the stall the caller saw), per policy.
#     Peer = the same writer with no cut, in the same run (its own max).
#  2. throughput: 64 KiB writes at QD 16 and 4 KiB writes at QD 32 through
#     1 path and through 2 paths (round-robin switching every I/O and
#     every 16 I/Os, service-time): MiB/s and
#     the 2-path / 1-path ratio. Best of $REPS runs each.
#     Also the writer's own CPU time and context switches per write
#     (lowest of the runs: less sensitive to a busy machine than MiB/s).
# Prints peak RSS of the writer. Needs root (tgtd).
#
#   bench/failover/run.sh [BUILDDIR]     env: SECS=5 REPS=3
set -euo pipefail
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
BUILDDIR=${1:-${BUILDDIR:-$SRCDIR/build}}
STREAM=$BUILDDIR/tests/mpath/mpath-stream
SECS=${SECS:-5}
REPS=${REPS:-3}
[ -x "$STREAM" ] || { echo "build $STREAM first (ninja -C $BUILDDIR tests/mpath/mpath-stream)" >&2; exit 1; }
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
if [ -d /dev/shm ] && [ "$(df --output=avail -B1 /dev/shm | tail -n1)" -gt $((2 << 30)) ]; then
    TGT_BACKING_DIR=/dev/shm
fi
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.bench:failover
tgt_add_lun 1 1 1G
U1=$(tgt_uri 1 1 127.0.0.1)
U2=$(tgt_uri 1 1 127.0.0.2)
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" | head -n1; }
best() { sort -g | tail -n1; }
rss=0
note_rss() { local r; r=$(echo "$1" | field peak_rss_kib); [ "${r:-0}" -gt "$rss" ] && rss=$r; return 0; }

echo "== stall across a path cut (4 KiB writes, QD 1, cut after 3 s of 8 s)"
printf "%-14s %12s %16s %8s\n" policy "no-cut max" "cut max stall" errors
for pol in service-time round-robin fixed mru; do
    base=$("$STREAM" --seconds 4 --bs 4k --qd 1 --region 64M --policy "$pol" "$U1" "$U2" 2>/dev/null)
    note_rss "$base"
    "$STREAM" --seconds 8 --bs 4k --qd 1 --region 64M --policy "$pol" --preferred 0 \
        "$U1" "$U2" >"$TGT_DIR/cut.out" 2>"$TGT_DIR/cut.err" &
    pid=$!
    sleep 3
    tgt_cut_portal 127.0.0.1
    wait $pid || true
    tgt_restore_portal 127.0.0.1
    out=$(cat "$TGT_DIR/cut.out")
    note_rss "$out"
    printf "%-14s %9s ms %13s ms %8s\n" "$pol" "$(echo "$base" | field max_stall_ms)" \
        "$(echo "$out" | field max_stall_ms)" "$(echo "$out" | field errors)"
    sleep 1
done

echo
echo "== throughput, 1 path vs 2 paths (writes, best of $REPS x ${SECS} s)"
printf "%-22s %10s %10s %10s %10s %8s %8s %8s\n" workload "1 path" "2p rr" "2p rr16" "2p st" "rr/1p" "rr16/1p" "st/1p"
for wl in "64k 16" "4k 32"; do
    set -- $wl
    bs=$1 qd=$2
    one=() rr=() rr16=() st=() c1=() crr=() crr16=() cst=() s1=() srr=() srr16=() sst=()
    for r in $(seq 1 "$REPS"); do
        o=$("$STREAM" --seconds "$SECS" --bs "$bs" --qd "$qd" --region 512M --no-verify "$U1" 2>/dev/null); note_rss "$o"
        one+=("$(echo "$o" | field mib_s)"); c1+=("$(echo "$o" | field cpu_us_per_op)"); s1+=("$(echo "$o" | field csw_per_op)")
        o=$("$STREAM" --seconds "$SECS" --bs "$bs" --qd "$qd" --region 512M --no-verify --policy round-robin "$U1" "$U2" 2>/dev/null); note_rss "$o"
        rr+=("$(echo "$o" | field mib_s)"); crr+=("$(echo "$o" | field cpu_us_per_op)"); srr+=("$(echo "$o" | field csw_per_op)")
        o=$("$STREAM" --seconds "$SECS" --bs "$bs" --qd "$qd" --region 512M --no-verify --policy round-robin --rr-ios 16 "$U1" "$U2" 2>/dev/null); note_rss "$o"
        rr16+=("$(echo "$o" | field mib_s)"); crr16+=("$(echo "$o" | field cpu_us_per_op)"); srr16+=("$(echo "$o" | field csw_per_op)")
        o=$("$STREAM" --seconds "$SECS" --bs "$bs" --qd "$qd" --region 512M --no-verify --policy service-time "$U1" "$U2" 2>/dev/null); note_rss "$o"
        st+=("$(echo "$o" | field mib_s)"); cst+=("$(echo "$o" | field cpu_us_per_op)"); sst+=("$(echo "$o" | field csw_per_op)")
    done
    b1=$(printf "%s\n" "${one[@]}" | best)
    brr=$(printf "%s\n" "${rr[@]}" | best)
    brr16=$(printf "%s\n" "${rr16[@]}" | best)
    bst=$(printf "%s\n" "${st[@]}" | best)
    printf "%-22s %10s %10s %10s %10s %8.2f %8.2f %8.2f\n" "${bs} writes QD${qd} MiB/s" "$b1" "$brr" \
        "$brr16" "$bst" "$(echo "$brr / $b1" | bc -l)" "$(echo "$brr16 / $b1" | bc -l)" \
        "$(echo "$bst / $b1" | bc -l)"
    least() { sort -g | head -n1; }
    printf "%-22s %10s %10s %10s %10s\n" "  our CPU us/op (min)" "$(printf "%s\n" "${c1[@]}" | least)" \
        "$(printf "%s\n" "${crr[@]}" | least)" "$(printf "%s\n" "${crr16[@]}" | least)" \
        "$(printf "%s\n" "${cst[@]}" | least)"
    printf "%-22s %10s %10s %10s %10s\n" "  ctx switches/op (min)" "$(printf "%s\n" "${s1[@]}" | least)" \
        "$(printf "%s\n" "${srr[@]}" | least)" "$(printf "%s\n" "${srr16[@]}" | least)" \
        "$(printf "%s\n" "${sst[@]}" | least)"
done
echo
echo "peak RSS of the writer: $rss KiB"
