#!/bin/bash
# NBD server benchmark: `vdisk serve` vs `qemu-nbd` in one run, serving the
# same data as a VMDK (monolithicSparse, fully allocated) and as raw, over a
# unix socket, driven by fio's nbd engine:
#   4 KiB random read QD32, 4 KiB random write QD32, 1 MiB sequential read
#   and write QD4, and 4 KiB random read QD32 with the image's page cache
#   dropped first (cold).
# Prints IOPS / MiB/s per server, the ratio vdisk/qemu-nbd, and each
# server's peak RSS (VmHWM). Never run as a test; numbers go to docs/nbd.md.
#
# Each job runs REPEAT times, alternating the two servers, and the median
# of each side is printed (the build machine is shared and noisy).
#
# usage: bench/nbd/nbd-bench.sh [VDISK] [SIZE_MiB] [RUNTIME_s] [REPEAT]
set -euo pipefail
VDISK=${1:-${VDISK:-build/tools/vdisk}}
SIZE_MB=${2:-1024}
RT=${3:-5}
REPEAT=${4:-3}
for p in fio qemu-nbd qemu-img; do
    command -v $p >/dev/null || { echo "needs $p"; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio lacks the nbd engine"; exit 1; }

D=$(mktemp -d /tmp/nbd-bench.XXXXXX)
declare -A R PIDS
cleanup() {
    for p in "${PIDS[@]}"; do if [ -n "$p" ]; then kill -KILL "$p" 2>/dev/null || true; fi; done
    rm -rf "$D"
}
trap cleanup EXIT

echo "# data: ${SIZE_MB} MiB, fully written; ${RT}s per job, median of $REPEAT alternating runs;" \
    "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
qemu-img create -q -f raw "$D/src.raw" ${SIZE_MB}M
fio --name=fill --filename="$D/src.raw" --rw=write --bs=1M --size=${SIZE_MB}M \
    --refill_buffers --output=/dev/null
qemu-img convert -O vmdk "$D/src.raw" "$D/disk.vmdk"

start() { # KIND FILE SOCK: sets PIDS[KIND]
    local sock=$3
    rm -f "$sock"
    if [ "$1" = vdisk ]; then
        "$VDISK" serve --socket "$sock" --shared 8 "$2" 2>>"$D/server.log" &
    else
        local fmt=raw
        case "$2" in *.vmdk) fmt=vmdk ;; esac
        qemu-nbd -t -f $fmt --socket "$sock" --shared 8 "$2" 2>>"$D/server.log" &
    fi
    PIDS[$1]=$!
    for _ in $(seq 200); do [ -S "$sock" ] && return 0; sleep 0.05; done
    echo "server $1 did not start"; cat "$D/server.log"; exit 1
}

stop() { # KIND: sets HWM, the server's peak RSS in KiB
    local pid=${PIDS[$1]}
    HWM=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
    kill -TERM $pid
    wait $pid 2>/dev/null || true
    PIDS[$1]=
}

job() { # SOCK NAME RW BS QD -> prints "iops MiB/s"
    local out=$D/fio.json
    fio --name="$2" --ioengine=nbd --uri="nbd+unix:///?socket=$1" --rw="$3" --bs="$4" \
        --iodepth="$5" --size=${SIZE_MB}M --time_based --runtime="$RT" --ramp_time=1 \
        --output-format=json --output="$out" >/dev/null 2>&1
    sed -n '/^{/,$p' "$out" | jq -r '.jobs[0] | (.read.iops + .write.iops | floor | tostring) + " " +
           ((.read.bw + .write.bw) / 1024 | floor | tostring)'
}

median() { # "iops mibs"... -> the median of each column
    local n=$# m a b
    m=$(( (n + 1) / 2 ))
    a=$(printf '%s\n' "$@" | awk '{print $1}' | sort -n | sed -n "${m}p")
    b=$(printf '%s\n' "$@" | awk '{print $2}' | sort -n | sed -n "${m}p")
    echo "$a $b"
}

# Both servers run at once, each on its own copy of the image, and every job
# runs against one then the other back to back, so that a change in the
# machine's load during the run hits both sides alike.
JOBS=("randread 4k 32" "randwrite 4k 32" "read 1M 4" "write 1M 4")
for img in raw vmdk; do
    src=$D/src.raw
    [ $img = vmdk ] && src=$D/disk.vmdk
    cp "$src" "$D/v.$img"
    cp "$src" "$D/q.$img"
    start vdisk "$D/v.$img" "$D/v.sock"
    start qemu-nbd "$D/q.$img" "$D/q.sock"
    for j in "${JOBS[@]}" "cold randread 4k 32"; do
        set -- $j
        name=$1
        [ $name = cold ] && shift
        vs=() qs=()
        for _ in $(seq $REPEAT); do
            for srv in vdisk qemu-nbd; do
                f=$D/v.$img; s=$D/v.sock
                [ $srv = qemu-nbd ] && f=$D/q.$img && s=$D/q.sock
                if [ $name = cold ]; then
                    # cold cache: the image's pages dropped first, so reads
                    # go to the disk as they would on a datastore LUN
                    sync "$f"
                    dd if="$f" iflag=nocache count=0 status=none
                fi
                r=$(job "$s" "$name" "$1" "$2" "$3")
                if [ $srv = vdisk ]; then vs+=("$r"); else qs+=("$r"); fi
            done
        done
        R[$img,vdisk,$name]=$(median "${vs[@]}")
        R[$img,qemu-nbd,$name]=$(median "${qs[@]}")
    done
    for srv in vdisk qemu-nbd; do
        stop $srv
        R[$img,$srv,rss]=$HWM
    done
    rm -f "$D/v.$img" "$D/q.$img"
done

printf "%-6s %-10s %14s %14s %14s %14s %14s %10s\n" image server "randread4k" "randwrite4k" \
    "seqread1M" "seqwrite1M" "coldrandread4k" "peakRSS"
for img in raw vmdk; do
    for srv in vdisk qemu-nbd; do
        printf "%-6s %-10s" $img $srv
        for j in randread randwrite; do
            set -- ${R[$img,$srv,$j]}; printf " %9s IOPS" "$1"
        done
        for j in read write; do
            set -- ${R[$img,$srv,$j]}; printf " %8s MiB/s" "$2"
        done
        set -- ${R[$img,$srv,cold]}; printf " %9s IOPS" "$1"
        printf " %7s MiB\n" $(( ${R[$img,$srv,rss]} / 1024 ))
    done
    printf "%-6s %-10s" $img "ratio"
    for j in randread randwrite read write cold; do
        set -- ${R[$img,vdisk,$j]}; a=$([ $j = read ] || [ $j = write ] && echo $2 || echo $1)
        set -- ${R[$img,qemu-nbd,$j]}; b=$([ $j = read ] || [ $j = write ] && echo $2 || echo $1)
        printf " %13sx" "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')"
    done
    echo
done
