#!/bin/bash
# LUN benchmark over iSCSI: our LUN layer (lun-bench: lun_open + async
# lun_submit) beside two peers on the same tgt LUN in the same run:
#   - libiscsi alone (lun-bench --raw: libiscsi's async API on one thread,
#     the same workload generator, no LUN layer) for reads and writes;
#   - libiscsi's own iscsi-perf, for reads (it has no write mode).
# Sequential 1 MiB and random 4 KiB, reads and writes, queue depth $QD.
# Each case runs $REPS times alternating ours/peer; the best of each is kept
# (the machine is shared, the best run is the least disturbed one).
# Prints ours/peer ratios, CPU time and context switches per I/O of ours
# and of libiscsi alone (the lowest of the runs: less sensitive to a busy
# machine than IOPS), and our peak RSS. Needs root (tgtd).
#
#   bench/lun/run.sh [BUILDDIR]     env: SECS=5 REPS=3 QD=32 SIZE=1G
set -euo pipefail
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
BUILDDIR=${1:-${BUILDDIR:-$SRCDIR/build}}
BENCH=$BUILDDIR/bench/lun/lun-bench
SECS=${SECS:-5}
REPS=${REPS:-3}
QD=${QD:-32}
SIZE=${SIZE:-1G}
[ -x "$BENCH" ] || { echo "build $BENCH first (ninja -C $BUILDDIR bench/lun/lun-bench)" >&2; exit 1; }
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v iscsi-perf >/dev/null || { echo "iscsi-perf missing (Debian package libiscsi-bin)" >&2; exit 1; }
if [ -d /dev/shm ] && [ "$(df --output=avail -B1 /dev/shm | tail -n1)" -gt $((2 << 30)) ]; then
    TGT_BACKING_DIR=/dev/shm
fi
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.bench:lun
tgt_add_lun 1 1 "$SIZE"
f=$(tgt_lun_file 1 1)
# Allocate the whole backing file so reads hit real pages, not holes.
dd if=/dev/zero of="$f" bs=1M count=$(($(stat -c %s "$f") >> 20)) conv=notrunc status=none
URI=$(tgt_uri 1 1)

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
best() { sort -g | tail -n1; }
least() { sort -g | head -n1; }

echo "# LUN benchmark: tgt LUN $SIZE in ${TGT_BACKING_DIR:-$TGT_DIR}, QD $QD, ${SECS}s x $REPS (best), $(nproc) CPUs"
printf "%-14s %10s %14s %6s %11s %6s %10s %10s %9s %9s %8s\n" workload "ours IOPS" "libiscsi IOPS" ratio "iscsi-perf" ratio "ours us/IO" "lib us/IO" "ours cs/IO" "lib cs/IO" "RSS KiB"
for spec in "read 1M 2048 " "randread 4k 8 -r" "write 1M 2048 " "randwrite 4k 8 -r"; do
    set -- $spec
    mode=$1 bs=$2 blocks=$3 rflag=${4:-}
    ours=() raw=() perf=() rss=() ocpu=() rcpu=() ocsw=() rcsw=()
    for r in $(seq 1 "$REPS"); do
        o=$("$BENCH" "$URI" "$mode" "$bs" "$QD" "$SECS")
        ours+=("$(echo "$o" | field iops)")
        ocpu+=("$(echo "$o" | field cpu_us_per_io)")
        ocsw+=("$(echo "$o" | field csw_per_io)")
        rss+=("$(echo "$o" | field peak_rss_kib)")
        o=$("$BENCH" --raw "$URI" "$mode" "$bs" "$QD" "$SECS")
        raw+=("$(echo "$o" | field iops)")
        rcpu+=("$(echo "$o" | field cpu_us_per_io)")
        rcsw+=("$(echo "$o" | field csw_per_io)")
        if [ "${mode%read}" != "$mode" ]; then
            p=$(timeout $((SECS + 20)) iscsi-perf -m "$QD" -b "$blocks" -t "$SECS" $rflag "$URI" 2>&1 |
                tr '\r' '\n' | sed -n 's/^ *iops average \([0-9]*\) .*/\1/p' | tail -n1)
            perf+=("${p:-0}")
        fi
    done
    o_best=$(printf '%s\n' "${ours[@]}" | best)
    r_best=$(printf '%s\n' "${raw[@]}" | best)
    rss_max=$(printf '%s\n' "${rss[@]}" | best)
    ratio_raw=$(awk -v a="$o_best" -v b="$r_best" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    if [ ${#perf[@]} -gt 0 ]; then
        p_best=$(printf '%s\n' "${perf[@]}" | best)
        ratio_perf=$(awk -v a="$o_best" -v b="$p_best" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    else
        p_best="n/a" ratio_perf="n/a"
    fi
    oc=$(printf '%s\n' "${ocpu[@]}" | least)
    rc=$(printf '%s\n' "${rcpu[@]}" | least)
    os=$(printf '%s\n' "${ocsw[@]}" | least)
    rs=$(printf '%s\n' "${rcsw[@]}" | least)
    printf "%-14s %10.0f %14.0f %6s %11s %6s %10s %10s %9s %9s %8s\n" "$mode $bs" "$o_best" "$r_best" "$ratio_raw" "$p_best" "$ratio_perf" "$oc" "$rc" "$os" "$rs" "$rss_max"
done
echo "# ratio = ours / peer (goal >= 0.95). iscsi-perf has no write mode: writes compare with libiscsi alone only."
