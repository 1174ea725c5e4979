#!/bin/bash
# vdisk benchmark: 4 KiB random read/write at queue depth 32 (32 threads) and
# 1 MiB sequential read/write on a fully allocated 2 GiB monolithicSparse
# image, through the vdisk library, beside `qemu-img bench` on the same image
# (-f vmdk) and on a raw copy (-f raw), in the same run. Prints ratios and
# peak RSS. Page cache warm for all (the image fits in RAM); qemu-img bench
# has no random mode, so it strides by 99991 blocks (a prime: every block is
# visited, no locality).
#
#   bench/vdisk/run.sh [BUILDDIR] [SECONDS]
set -euo pipefail
B=${1:-${BUILDDIR:-$(dirname "$0")/../../build}}
SECS=${2:-5}
VDISK=$B/tools/vdisk
BENCH=$B/bench/vdisk/vdisk-bench
T=$(mktemp -d /var/tmp/vdisk-bench.XXXXXX); trap 'rm -rf "$T"' EXIT
SIZE=$((2 << 30))
echo "preparing a fully allocated 2 GiB sparse image in $T ..."
head -c $SIZE /dev/urandom > "$T/disk.raw"
"$VDISK" convert "$T/disk.raw" "$T/disk.vmdk"
cat "$T/disk.vmdk" "$T/disk.raw" > /dev/null

qemu_iops() { # fmt file bs depth extra... -> IOPS, RSS
    local fmt=$1 f=$2 bs=$3 d=$4; shift 4
    local step=$(( bs == 4096 ? 4096 * 99991 : bs ))
    local count=$(( bs == 4096 ? 400000 : 4000 ))
    local out
    out=$(/usr/bin/time -f 'rss=%M' qemu-img bench -f $fmt -c $count -d $d -s $bs -S $step -t writeback "$@" "$f" 2>&1)
    local secs rss
    secs=$(echo "$out" | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
    rss=$(echo "$out" | sed -n 's/rss=//p')
    echo "$(echo "$count / $secs" | bc) $rss"
}
ours() { # file mode rw bs threads [flags]
    "$BENCH" "$@" "$SECS"
}
ratio() { echo "scale=2; $1 / $2" | bc; }

printf '%-28s %12s %12s %12s %8s %8s %s\n' test vdisk qemu-vmdk qemu-raw x-vmdk x-raw "rss vdisk/qemu KiB"
run() { # name mode rw bs threads
    local name=$1 mode=$2 rw=$3 bs=$4 th=$5 w=()
    [ $rw = write ] && w=(-w)
    local o; o=$(ours "$T/disk.vmdk" $mode $rw $bs $th)
    local oi=${o%% IOPS*} orss=${o##*peak_rss_kib=}
    read -r qi qrss < <(qemu_iops vmdk "$T/disk.vmdk" $bs $th "${w[@]}")
    read -r ri rrss < <(qemu_iops raw "$T/disk.raw" $bs $th "${w[@]}")
    printf '%-28s %12s %12s %12s %8s %8s %s/%s\n' "$name (IOPS)" $oi $qi $ri \
        "$(ratio $oi $qi)" "$(ratio $oi $ri)" $orss $qrss
}
run "4k rand read QD32" rand read 4096 32
run "4k rand write QD32" rand write 4096 32
run "1M seq read QD4" seq read 1048576 4
run "1M seq write QD4" seq write 1048576 4
o=$(ours "$T/disk.raw" rand read 4096 32)
echo "vdisk library on the raw copy, 4k rand read QD32: ${o%% IOPS*} IOPS"
