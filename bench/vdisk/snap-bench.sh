#!/bin/bash
# Snapshot / clone benchmark: `vdisk` beside the closest qemu-img operation,
# in the same run, on the same data (a 1 GiB disk holding 256 MiB of random
# data in 1 MiB pieces every 4 MiB; page cache warm). Prints seconds, the
# ratio vdisk/qemu (below 1: vdisk faster) and peak RSS of both. Both sides
# flush what they wrote (qemu-img convert runs with -t writeback).
#
#   full clone          vdisk clone             | qemu-img convert -O vmdk
#   snapshot create     vdisk snapshot create   | qemu-img create -b (overlay)
#   linked clone        vdisk clone --linked    | qemu-img create -b
#   delete base snap    vdisk snapshot delete   | qemu-img convert of the chain
#     (consolidate 256 MiB into the live delta)   (the same 256 MiB copied into a
#                                                  new image: QEMU's vmdk driver
#                                                  cannot drop a backing file)
#
#   [BENCH_DIR=/dev/shm] bench/vdisk/snap-bench.sh [BUILDDIR]
# (BENCH_DIR=/dev/shm takes the disk out: CPU and copy paths only)
set -euo pipefail
B=${1:-${BUILDDIR:-$(dirname "$0")/../../build}}
VDISK=$B/tools/vdisk
T=$(mktemp -d "${BENCH_DIR:-/var/tmp}"/snap-bench.XXXXXX); trap 'chmod -R u+w "$T"; rm -rf "$T"' EXIT
cd "$T"
truncate -s 1G d.raw
for i in $(seq 0 255); do
    dd if=/dev/urandom of=d.raw bs=1M count=1 seek=$((i * 4)) conv=notrunc status=none
done
"$VDISK" convert d.raw disk.vmdk
qemu-img convert -O vmdk d.raw q.vmdk
cat disk.vmdk q.vmdk d.raw >/dev/null

run() { # command... -> "secs rss_kib" (earlier dirty data written back first)
    sync
    /usr/bin/time -f '%e %M' -o t.out "$@" >/dev/null 2>&1
    cat t.out
}
row() { # name vd_out qemu_out
    read -r vs vr <<<"$2"
    read -r qs qr <<<"$3"
    awk -v n="$1" -v vs="$vs" -v vr="$vr" -v qs="$qs" -v qr="$qr" 'BEGIN {
        r = qs > 0 ? vs / qs : 0;
        printf "%-18s vdisk %6.2fs %7d KiB | qemu-img %6.2fs %7d KiB | ratio %.2f\n", n, vs, vr, qs, qr, r }'
}

row "full clone" "$(run "$VDISK" clone disk.vmdk full.vmdk)" \
                 "$(run qemu-img convert -t writeback -O vmdk q.vmdk qfull.vmdk)"
row "snapshot create" "$(run "$VDISK" snapshot create disk.vmdk s1)" \
                      "$(run qemu-img create -q -f vmdk -b q.vmdk -F vmdk qtop.vmdk)"
row "linked clone" "$(run "$VDISK" clone --linked disk.vmdk lc.vmdk)" \
                   "$(run qemu-img create -q -f vmdk -b q.vmdk -F vmdk qlc.vmdk)"
rm lc.vmdk
"$VDISK" snapshot delete disk.vmdk clone:lc.vmdk >/dev/null 2>&1
row "delete base snap" "$(run "$VDISK" snapshot delete disk.vmdk s1)" \
                       "$(run qemu-img convert -t writeback -O vmdk qtop.vmdk qflat.vmdk)"
qemu-img compare -q disk.vmdk d.raw && qemu-img compare -q qflat.vmdk d.raw ||
    echo "WARNING: results differ from the data"
du -k disk.vmdk qflat.vmdk full.vmdk qfull.vmdk | awk '{printf "%-12s %8d KiB on disk\n", $2, $1}'
