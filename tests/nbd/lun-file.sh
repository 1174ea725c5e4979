#!/bin/bash
# A raw LUN as an export (`vdisk serve --lun URI`), on file LUNs with 512- and
# 4096-byte blocks: qemu-io aligned and unaligned writes (read-modify-write
# in the LUN adapter), write-zeroes and discard; the LUN's file equals the
# expected bytes after the server exits. Two --lun paths to the same file are
# either served (multipath landed) or refused with exit 1 and a message.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io jq

OPS=(-c 'write -P 0x11 0 4k' -c 'write -P 0x22 513 1000' -c 'write -P 0x33 4095 4098'
     -c 'aio_write -P 0x44 1M 1M' -c 'aio_write -P 0x45 3M 7' -c 'aio_flush'
     -c 'write -z 1200k 100k' -c 'write -z 2M 3333' -c 'discard 5M 1M' -c 'flush')

for bs in 512 4096; do
    LUNF=$T/lun$bs.img EXP=$T/exp$bs.raw
    head -c 8M /dev/urandom >"$LUNF"
    cp "$LUNF" "$EXP"
    start_unix "$T/l$bs.sock" --name lun0 --lun "file://$LUNF?block_size=$bs"
    URL="nbd+unix:///lun0?socket=$T/l$bs.sock"
    qemu-img info --output=json "$URL" | jq -e '."virtual-size" == 8388608' >/dev/null ||
        fail "LUN export size (bs $bs)"
    qemu-io -f raw "${OPS[@]}" "$URL" >"$T/q.log" || fail "qemu-io on the LUN export (bs $bs)"
    qemu-io -f raw "${OPS[@]}" "$EXP" >/dev/null
    # discard on a LUN is advisory: take the LUN's bytes for that range
    dd if="$LUNF" of="$EXP" bs=1M skip=5 seek=5 count=1 conv=notrunc status=none
    qemu-img compare -q "$URL" "$EXP" || fail "LUN export differs from expected (bs $bs)"
    stop_server
    cmp "$LUNF" "$EXP" || fail "LUN file differs from expected after exit (bs $bs)"
done

# two paths to one LUN: served, or refused cleanly until multipath lands
set +e
"$VDISK" serve --socket "$T/mp.sock" --lun "$T/lun512.img" --lun "file://$T/lun512.img" \
    >"$T/mp.log" 2>&1 &
SERVER_PID=$!
set -e
for _ in $(seq 100); do
    [ -S "$T/mp.sock" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
done
if [ -S "$T/mp.sock" ]; then
    qemu-io -f raw -c 'read 0 4k' "nbd+unix:///?socket=$T/mp.sock" >/dev/null ||
        fail "two-path LUN export unreadable"
    stop_server
else
    rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    [ $rc -eq 1 ] || fail "two --lun paths: expected served or exit 1, got $rc"
    grep -q 'LUN' "$T/mp.log" || fail "two --lun paths refused without a message"
fi
echo "PASS"
