#!/bin/bash
# NBD over TLS benchmark: `vdisk serve --tls-psk` vs `qemu-nbd --tls-creds`
# (tls-creds-psk) with the same PSK on copies of the same raw image, and
# `vdisk serve` without TLS (the cost of TLS for our own server), all on
# TCP 127.0.0.1, in one run, driven by build/bench/nbd/nbd-load (libnbd's
# asynchronous API, one connection; fio's nbd engine refuses an nbds://
# URI with tls-psk-file):
#   4 KiB random read QD32 and 1 MiB sequential read QD4 (cache-hot image).
# Each job runs REPEAT times, alternating the servers, and the median of
# each side is printed, with the ratios vdisk-tls / qemu-nbd-tls and
# vdisk-tls / vdisk-plain. Never run as a test; numbers go to
# docs/performance.md.
#
# usage: bench/nbd/nbd-tls-bench.sh [VDISK] [SIZE_MiB] [RUNTIME_s] [REPEAT]
set -euo pipefail
VDISK=${1:-${VDISK:-build/tools/vdisk}}
LOAD=${LOAD:-$(dirname "$VDISK")/../bench/nbd/nbd-load}
[ -x "$LOAD" ] || { echo "needs $LOAD (install libnbd-dev and rebuild)"; exit 1; }
SIZE_MB=${2:-1024}
RT=${3:-5}
REPEAT=${4:-3}
for p in fio qemu-nbd qemu-img openssl; do
    command -v $p >/dev/null || { echo "needs $p"; exit 1; }
done

D=$(mktemp -d /tmp/nbd-tls-bench.XXXXXX)
declare -A R PIDS PORTS
cleanup() {
    for p in "${PIDS[@]}"; do if [ -n "$p" ]; then kill -KILL "$p" 2>/dev/null || true; fi; done
    rm -rf "$D"
}
trap cleanup EXIT

mkdir -p "$D/qpsk"
printf 'alice:%s\n' "$(openssl rand -hex 32)" >"$D/keys.psk"
cp "$D/keys.psk" "$D/qpsk/keys.psk"
chmod 600 "$D/keys.psk" "$D/qpsk/keys.psk"

echo "# data: ${SIZE_MB} MiB raw, fully written; ${RT}s per job, median of $REPEAT alternating" \
    "runs; TCP 127.0.0.1, PSK; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
qemu-img create -q -f raw "$D/src.raw" ${SIZE_MB}M
fio --name=fill --filename="$D/src.raw" --rw=write --bs=1M --size=${SIZE_MB}M \
    --refill_buffers --output=/dev/null
SERVERS=(vdisk-tls qemu-nbd-tls vdisk-plain)

launch() { # SERVER PORT (run with &: exec, so that $! is the server)
    case $1 in
    vdisk-tls) exec "$VDISK" serve --port "$2" --shared 8 --tls-psk "$D/keys.psk" "$D/$1.raw" ;;
    vdisk-plain) exec "$VDISK" serve --port "$2" --shared 8 "$D/$1.raw" ;;
    qemu-nbd-tls)
        exec qemu-nbd -t -f raw -b 127.0.0.1 -p "$2" --shared 8 \
            --object "tls-creds-psk,id=tls0,endpoint=server,dir=$D/qpsk" --tls-creds tls0 \
            "$D/$1.raw" ;;
    esac
}

start() { # SERVER: sets PIDS and PORTS
    local port
    for _ in $(seq 20); do
        port=$(( 20000 + (RANDOM * 7 + $$) % 30000 ))
        launch "$1" "$port" 2>>"$D/server.log" &
        PIDS[$1]=$!
        for _ in $(seq 100); do
            kill -0 "${PIDS[$1]}" 2>/dev/null || break
            if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then PORTS[$1]=$port; return 0; fi
            sleep 0.05
        done
        kill -KILL "${PIDS[$1]}" 2>/dev/null || true
    done
    echo "server $1 did not start"; cat "$D/server.log"; exit 1
}

stop() { # SERVER: sets HWM, the server's peak RSS in KiB
    local pid=${PIDS[$1]}
    HWM=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
    kill -TERM $pid
    wait $pid 2>/dev/null || true
    PIDS[$1]=
}

uri() { # SERVER
    case $1 in
    vdisk-plain) echo "nbd://127.0.0.1:${PORTS[$1]}/" ;;
    *) echo "nbds://alice@127.0.0.1:${PORTS[$1]}/?tls-psk-file=$D/keys.psk" ;;
    esac
}

job() { # SERVER RW BS QD -> prints "iops MiB/s"
    "$LOAD" "$(uri "$1")" "$2" "$3" "$4" "$RT" 2>>"$D/load.log" || echo "0 0"
}

median() { # "iops mibs"... -> the median of each column
    local n=$# m a b
    m=$(( (n + 1) / 2 ))
    a=$(printf '%s\n' "$@" | awk '{print $1}' | sort -n | sed -n "${m}p")
    b=$(printf '%s\n' "$@" | awk '{print $2}' | sort -n | sed -n "${m}p")
    echo "$a $b"
}

for srv in "${SERVERS[@]}"; do
    cp "$D/src.raw" "$D/$srv.raw"
    start $srv
done
# warm each copy into the page cache
for srv in "${SERVERS[@]}"; do cat "$D/$srv.raw" >/dev/null; done
JOBS=("randread 4096 32" "read 1048576 4")
for j in "${JOBS[@]}"; do
    set -- $j
    declare -A got=()
    for _ in $(seq $REPEAT); do
        for srv in "${SERVERS[@]}"; do
            got[$srv]+="$(job $srv "$1" "$2" "$3"),"
        done
    done
    for srv in "${SERVERS[@]}"; do
        IFS=, read -r -a runs <<<"${got[$srv]%,}"
        R[$srv,$1]=$(median "${runs[@]}")
    done
    unset got
done
for srv in "${SERVERS[@]}"; do
    stop $srv
    R[$srv,rss]=$HWM
done

ratio() { # A B JOB COL
    local a b
    a=$(echo ${R[$1,$3]} | cut -d' ' -f$4)
    b=$(echo ${R[$2,$3]} | cut -d' ' -f$4)
    awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'
}
printf "%-14s %16s %16s %10s\n" server "randread4k QD32" "seqread1M QD4" "peakRSS"
for srv in "${SERVERS[@]}"; do
    set -- ${R[$srv,randread]}; printf "%-14s %11s IOPS" $srv "$1"
    set -- ${R[$srv,read]}; printf " %10s MiB/s" "$2"
    printf " %6s MiB\n" $(( ${R[$srv,rss]} / 1024 ))
done
printf "%-14s %15sx %15sx\n" "tls/qemu-tls" "$(ratio vdisk-tls qemu-nbd-tls randread 1)" \
    "$(ratio vdisk-tls qemu-nbd-tls read 2)"
printf "%-14s %15sx %15sx\n" "tls/plain" "$(ratio vdisk-tls vdisk-plain randread 1)" \
    "$(ratio vdisk-tls vdisk-plain read 2)"
