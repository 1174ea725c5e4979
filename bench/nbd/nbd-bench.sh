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
# Each job runs REPEAT times, alternating the servers, and the median of
# each side is printed (the build machine is shared and noisy).
#
# LUN=1 adds a LUN section (root, tgt): a private tgtd (tests/lib/tgt.sh)
# with three LUNs of LUN_MB MiB (default 256), filled first; `vdisk serve
# --lun iscsi://...` (one path), `vdisk serve --lun URI1 --lun URI2` (two
# portals, the multipath engine, service-time) and `qemu-nbd` serving the
# iscsi:// URL (qemu's libiscsi block driver, one path), each on its own
# LUN. The cold job drops the LUN's backing file from the page cache.
#
# ONLY="raw vmdk lun" picks sections (e.g. LUN=1 ONLY=lun: the LUN section
# alone, about 4 minutes with 3 s jobs).
#
# usage: [LUN=1] [LUN_MB=256] [ONLY=...] bench/nbd/nbd-bench.sh [VDISK] [SIZE_MiB] [RUNTIME_s] [REPEAT]
set -euo pipefail
VDISK=${1:-${VDISK:-build/tools/vdisk}}
SIZE_MB=${2:-1024}
RT=${3:-5}
REPEAT=${4:-3}
for p in fio qemu-nbd qemu-img; do
    command -v $p >/dev/null || { echo "needs $p"; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio lacks the nbd engine"; exit 1; }

LUN=${LUN:-0}
LUN_MB=${LUN_MB:-256}
D=$(mktemp -d /tmp/nbd-bench.XXXXXX)
declare -A R PIDS
cleanup() {
    for p in "${PIDS[@]}"; do if [ -n "$p" ]; then kill -KILL "$p" 2>/dev/null || true; fi; done
    rm -rf "$D"
}
trap cleanup EXIT
if [ "$LUN" = 1 ]; then
    . "$(dirname "$0")/../../tests/lib/tgt.sh"
    tgt_require
    TGT_BACKING_DIR=$D
    tgt_start # replaces the EXIT trap: its cleanup runs ours first
    tgt_on_exit cleanup
    tgt_add_target 1 iqn.2026-11.org.clusterfs.bench:nbd
    for l in 1 2 3; do
        tgt_add_lun 1 $l ${LUN_MB}M
        fio --name=fill --filename="$(tgt_lun_file 1 $l)" --rw=write --bs=1M --size=${LUN_MB}M \
            --refill_buffers --output=/dev/null
    done
fi

echo "# data: ${SIZE_MB} MiB, fully written; ${RT}s per job, median of $REPEAT alternating runs;" \
    "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
qemu-img create -q -f raw "$D/src.raw" ${SIZE_MB}M
fio --name=fill --filename="$D/src.raw" --rw=write --bs=1M --size=${SIZE_MB}M \
    --refill_buffers --output=/dev/null
qemu-img convert -O vmdk "$D/src.raw" "$D/disk.vmdk"

# The servers of each section, and what each one serves.
servers() { if [ "$1" = lun ]; then echo vdisk vdisk-2p qemu-nbd; else echo vdisk qemu-nbd; fi; }
launch() { # IMG SERVER SOCK (run with &: exec, so that $! is the server)
    case $1:$2 in
    raw:vdisk | vmdk:vdisk) exec "$VDISK" serve --socket "$3" --shared 8 "$D/v.$1" ;;
    raw:qemu-nbd | vmdk:qemu-nbd) exec qemu-nbd -t -f "$1" --socket "$3" --shared 8 "$D/q.$1" ;;
    lun:vdisk) exec "$VDISK" serve --socket "$3" --shared 8 --lun "$(tgt_uri 1 1)" ;;
    lun:vdisk-2p)
        exec "$VDISK" serve --socket "$3" --shared 8 --lun "$(tgt_uri 1 2)" \
            --lun "$(tgt_uri 1 2 127.0.0.2)" ;;
    lun:qemu-nbd) exec qemu-nbd -t -f raw --socket "$3" --shared 8 "$(tgt_uri 1 3)" ;;
    esac
}
backing() { # IMG SERVER: the file whose pages the cold job drops
    case $1:$2 in
    lun:vdisk) tgt_lun_file 1 1 ;;
    lun:vdisk-2p) tgt_lun_file 1 2 ;;
    lun:qemu-nbd) tgt_lun_file 1 3 ;;
    *:qemu-nbd) echo "$D/q.$1" ;;
    *) echo "$D/v.$1" ;;
    esac
}
sockof() { echo "$D/$2.sock"; }

start() { # IMG SERVER: sets PIDS[SERVER]
    local sock
    sock=$(sockof "$1" "$2")
    rm -f "$sock"
    launch "$1" "$2" "$sock" 2>>"$D/server.log" &
    PIDS[$2]=$!
    for _ in $(seq 200); do [ -S "$sock" ] && return 0; sleep 0.05; done
    echo "server $2 did not start"; cat "$D/server.log"; exit 1
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
        --iodepth="$5" --size=${JOB_MB}M --time_based --runtime="$RT" --ramp_time=1 \
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

# The servers of a section run at once, each on its own copy of the data,
# and every job runs against one then the other back to back, so that a
# change in the machine's load during the run hits both sides alike.
JOBS=("randread 4k 32" "randwrite 4k 32" "read 1M 4" "write 1M 4")
IMGS=(raw vmdk)
[ "$LUN" = 1 ] && IMGS+=(lun)
[ -n "${ONLY:-}" ] && IMGS=($ONLY) # e.g. ONLY=lun (with LUN=1): one section
for img in "${IMGS[@]}"; do
    if [ $img != lun ]; then
        src=$D/src.raw
        [ $img = vmdk ] && src=$D/disk.vmdk
        cp "$src" "$D/v.$img"
        cp "$src" "$D/q.$img"
    fi
    JOB_MB=$SIZE_MB
    [ $img = lun ] && JOB_MB=$LUN_MB
    for srv in $(servers $img); do start $img $srv; done
    for j in "${JOBS[@]}" "cold randread 4k 32"; do
        set -- $j
        name=$1
        [ $name = cold ] && shift
        declare -A got=()
        for _ in $(seq $REPEAT); do
            for srv in $(servers $img); do
                if [ $name = cold ]; then
                    # cold cache: the image's pages dropped first, so reads
                    # go to the disk as they would on a datastore LUN
                    f=$(backing $img $srv)
                    sync "$f"
                    dd if="$f" iflag=nocache count=0 status=none
                fi
                got[$srv]+="$(job "$(sockof $img $srv)" "$name" "$1" "$2" "$3"),"
            done
        done
        for srv in $(servers $img); do
            IFS=, read -r -a runs <<<"${got[$srv]%,}"
            R[$img,$srv,$name]=$(median "${runs[@]}")
        done
        unset got
    done
    for srv in $(servers $img); do
        stop $srv
        R[$img,$srv,rss]=$HWM
    done
    rm -f "$D/v.$img" "$D/q.$img"
done

ratio() { # IMG SERVER JOB: SERVER vs qemu-nbd
    local a b
    set -- "$1" "$2" "$3" ${R[$1,$2,$3]} ${R[$1,qemu-nbd,$3]}
    if [ "$3" = read ] || [ "$3" = write ]; then a=$5 b=$7; else a=$4 b=$6; fi
    awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'
}
printf "%-6s %-10s %14s %14s %14s %14s %14s %10s\n" image server "randread4k" "randwrite4k" \
    "seqread1M" "seqwrite1M" "coldrandread4k" "peakRSS"
for img in "${IMGS[@]}"; do
    for srv in $(servers $img); do
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
    for srv in $(servers $img); do
        [ $srv = qemu-nbd ] && continue
        label=ratio
        [ $srv = vdisk-2p ] && label=ratio-2p
        printf "%-6s %-10s" $img $label
        for j in randread randwrite read write cold; do
            printf " %13sx" "$(ratio $img $srv $j)"
        done
        echo
    done
done
