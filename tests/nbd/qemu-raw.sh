#!/bin/bash
# QEMU as the NBD client of `vdisk serve` on a raw image over a unix socket:
# qemu-img info / compare / convert, qemu-io write / discard / zero
# patterns (aligned and not), nbdinfo --map sees the holes, and after the
# server exits (SIGTERM -> 0) the file holds exactly what was written.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdinfo jq

IMG=$T/disk.raw EXP=$T/expected.raw SOCK=$T/nbd.sock
URL="nbd+unix:///?socket=$SOCK"
qemu-img create -q -f raw "$IMG" 64M
qemu-io -f raw -c 'write -P 0xab 1M 2M' -c 'write -P 0xcd 40M 64k' "$IMG" >/dev/null
cp --sparse=always "$IMG" "$EXP"

start_unix "$SOCK" --shared 4 "$IMG"

qemu-img info --output=json "$URL" | jq -e '."virtual-size" == 67108864' >/dev/null ||
    fail "qemu-img info: wrong virtual size"
qemu-img compare -q "$URL" "$EXP" || fail "compare before writes"

# the same patterns go to the server and to the local expected copy
OPS=(-c 'write -P 0x11 10M 1M' -c 'write -P 0x22 12345 777' -c 'write -P 0x33 8388097 1025'
     -c 'discard 1M 1M' -c 'write -z 20M 512k' -c 'write -z -u 40M 64k'
     -c 'write -P 0x44 63M 1M' -c 'aio_write -P 0x55 30M 64k' -c 'aio_write -P 0x66 31M 64k'
     -c 'aio_flush' -c 'flush')
qemu-io -f raw "${OPS[@]}" "$URL" >"$T/qio.log" || fail "qemu-io writes over NBD"
grep -qi 'error\|failed' "$T/qio.log" && fail "qemu-io reported an error: $(cat "$T/qio.log")"
qemu-io -f raw "${OPS[@]}" "$EXP" >/dev/null

qemu-io -f raw -c 'read -P 0x11 10M 1M' -c 'read -P 0x22 12345 777' -c 'read -P 0 1M 1M' \
    -c 'read -P 0xab 2M 1M' -c 'read -P 0 20M 512k' -c 'read -P 0 40M 64k' "$URL" >"$T/qr.log" ||
    fail "qemu-io read-back over NBD"
grep -q 'Pattern verification failed' "$T/qr.log" && fail "read-back pattern mismatch"
qemu-img compare -q "$URL" "$EXP" || fail "compare over NBD after writes"

# nbdinfo --map (base:allocation) shows the discarded megabyte as a hole
nbdinfo --map "$URL" >"$T/map"
awk '$1 <= 1048576 && $1 + $2 >= 2097152 && /hole/ {f=1} END {exit !f}' "$T/map" ||
    fail "nbdinfo --map does not show the hole at 1M: $(cat "$T/map")"
awk '$1 <= 10485760 && $1 + $2 >= 11534336 && /data/ {f=1} END {exit !f}' "$T/map" ||
    fail "nbdinfo --map does not show data at 10M: $(cat "$T/map")"

# convert from the server to a file, sparse
qemu-img convert -O raw "$URL" "$T/copy.raw"
qemu-img compare -q "$T/copy.raw" "$EXP" || fail "qemu-img convert from NBD differs"

stop_server
cmp "$IMG" "$EXP" || fail "image file after server exit differs from the expected bytes"
[ -e "$SOCK" ] && fail "socket not removed at exit"
echo "PASS"
