#!/bin/bash
# First-write throughput: every block of a fresh thin image and of a fresh
# delta (the top of a snapshot whose base is fully written) written once,
# then one vd_flush, timed together (vdisk-bench "first" mode). The delta
# case measures the cost of keeping a grain's data ahead of its grain table
# entry across power loss (docs/vdisk.md "Crash ordering").
#   bench/vdisk/first-write.sh BUILDDIR [MIB] [DIR]
# DIR must be on a real disk (fdatasync is free on tmpfs); default /var/tmp.
set -euo pipefail
B=${1:?usage: first-write.sh BUILDDIR [MIB] [DIR]}
MIB=${2:-256}
V=$B/tools/vdisk BENCH=$B/bench/vdisk/vdisk-bench
T=$(mktemp -d -p "${3:-/var/tmp}"); trap 'rm -rf "$T"' EXIT
"$V" create --type thin "$T/base.vmdk" ${MIB}M >/dev/null
"$BENCH" "$T/base.vmdk" seq first 1M 1 "$MIB" >/dev/null
printf '%-6s %-5s %-6s %-3s %s\n' layout order block thr result
for layout in thin delta; do
    for order in seq rand; do
        for bs in 64K 4K; do
            for thr in 1 4; do
                rm -f "$T"/w*.vmdk
                if [ $layout = thin ]; then
                    "$V" create --type thin "$T/w.vmdk" ${MIB}M >/dev/null
                else
                    cp "$T/base.vmdk" "$T/w.vmdk"
                    "$V" snapshot create "$T/w.vmdk" s1 >/dev/null
                fi
                sync
                printf '%-6s %-5s %-6s %-3s %s\n' $layout $order $bs $thr \
                    "$("$BENCH" "$T/w.vmdk" $order first $bs $thr "$MIB")"
            done
        done
    done
done
