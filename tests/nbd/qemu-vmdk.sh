#!/bin/bash
# QEMU as the NBD client of `vdisk serve` on a VMDK (monolithicSparse made by
# qemu-img) over TCP 127.0.0.1, export chosen by name: qemu-io patterns
# across grain boundaries, qemu-img convert into the export (zero detection
# -> WRITE_ZEROES) and out of it, nbdinfo --map shows unallocated grains as
# holes; after SIGTERM the VMDK holds the data (qemu-img compare / check on
# the file).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdinfo jq

IMG=$T/disk.vmdk EXP=$T/expected.raw SRC=$T/src.raw
qemu-img create -q -f vmdk "$IMG" 128M
qemu-img create -q -f raw "$EXP" 128M

start_tcp --shared 4 --name vm1 "$IMG"
URL="nbd://127.0.0.1:$PORT/vm1"

qemu-img info --output=json "$URL" | jq -e '."virtual-size" == 134217728' >/dev/null ||
    fail "qemu-img info: wrong virtual size"
nbdinfo --map "$URL" | awk '$1 == 0 && $2 == 134217728 && /hole/ {f=1} END {exit !f}' ||
    fail "fresh VMDK is not one hole: $(nbdinfo --map "$URL")"

OPS=(-c 'write -P 0x11 0 4k' -c 'write -P 0x22 65000 1000' -c 'write -P 0x33 1M 3M'
     -c 'write -P 0x44 100M 129k' -c 'discard 2M 1M' -c 'write -z 3M 64k'
     -c 'aio_write -P 0x55 50M 1M' -c 'aio_write -P 0x66 60M 32k' -c 'aio_flush')
qemu-io -f raw "${OPS[@]}" "$URL" >"$T/qio.log" || fail "qemu-io over NBD"
qemu-io -f raw "${OPS[@]}" "$EXP" >/dev/null
qemu-img compare -q "$URL" "$EXP" || fail "compare over NBD after qemu-io"

# unwritten grains are holes; written ones data
nbdinfo --map "$URL" >"$T/map"
awk '$1 <= 10485760 && $1 + $2 >= 41943040 && /hole/ {f=1} END {exit !f}' "$T/map" ||
    fail "no hole at 10M-40M: $(cat "$T/map")"
awk '$1 <= 52428800 && $1 + $2 >= 53477376 && /data/ {f=1} END {exit !f}' "$T/map" ||
    fail "no data at 50M: $(cat "$T/map")"

# qemu-img convert into the export: data and zero runs (WRITE_ZEROES)
qemu-img create -q -f raw "$SRC" 128M
qemu-io -f raw -c 'write -P 0x77 70M 5M' -c 'write -P 0x78 90M 64k' "$SRC" >/dev/null
# a new content: the patterns above, overlaid with the data of SRC's second half
# (sparse dd); converting it with -n writes its zero runs as WRITE_ZEROES
qemu-img create -q -f raw "$EXP" 128M
qemu-io -f raw "${OPS[@]}" "$EXP" >/dev/null
dd if="$SRC" of="$EXP" bs=1M skip=64 seek=64 count=64 conv=notrunc,sparse status=none
qemu-img convert -n -f raw -O raw "$EXP" "$URL" || fail "qemu-img convert into NBD"
qemu-img compare -q "$URL" "$EXP" || fail "compare after convert into NBD"
qemu-img convert -O raw "$URL" "$T/out.raw" || fail "qemu-img convert out of NBD"
qemu-img compare -q "$T/out.raw" "$EXP" || fail "convert out of NBD differs"

stop_server
qemu-img check -q "$IMG" || fail "qemu-img check of the VMDK after serving"
qemu-img compare -q -f vmdk -F raw "$IMG" "$EXP" || fail "VMDK file differs after server exit"
echo "PASS"
