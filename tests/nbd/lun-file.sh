#!/bin/bash
# A raw LUN as an export (`vdisk serve --lun URI`), on file LUNs with 512- and
# 4096-byte blocks: qemu-io aligned and unaligned writes (read-modify-write
# in the LUN adapter), write-zeroes and discard; the LUN's file equals the
# expected bytes after the server exits. Two --lun paths to the same file are
# one export through the multipath engine (both paths carry writes); paths
# to different LUNs, or with different geometry, are refused (exit 1, the
# engine's message naming both identities).
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

# Two paths to one LUN (multipath engine, lun_open_paths): one export; with
# round-robin both paths carry writes; the data lands in the LUN's file.
cp "$T/lun512.img" "$EXP"
start_unix "$T/mp.sock" --policy round-robin --lun "$T/lun512.img" --lun "file://$T/lun512.img"
grep -q 'serve: LUN file\.[0-9a-f.]*: 2 paths, policy round-robin' "$T/server.log" ||
    fail "two --lun paths not opened as one multipath LUN"
URL="nbd+unix:///?socket=$T/mp.sock"
MPOPS=(-c 'write -P 0x5a 0 64k' -c 'write -P 0x5b 64k 64k' -c 'write -P 0x5c 128k 64k'
       -c 'write -P 0x5d 192k 64k' -c 'write -P 0x5e 7777 3000' -c 'flush')
qemu-io -f raw "${MPOPS[@]}" "$URL" >/dev/null || fail "writes through the two-path LUN export"
qemu-io -f raw "${MPOPS[@]}" "$EXP" >/dev/null
qemu-img compare -q "$URL" "$EXP" || fail "two-path LUN export differs from expected"
stop_server
cmp "$T/lun512.img" "$EXP" || fail "LUN file differs after the two-path export"
for i in 0 1; do
    grep -Eq "serve: LUN path $i .* active reads=[0-9]+ writes=[1-9][0-9]* .*errors=0 failures=0" \
        "$T/server.log" || fail "path $i of the two-path LUN carried no writes (or failed)"
done

# refuse: expect exit 1, a message matching $1, and no socket left behind
refuse() {
    local what=$1 pat=$2; shift 2
    local rc=0
    "$VDISK" serve --socket "$T/bad.sock" "$@" >"$T/bad.log" 2>&1 || rc=$?
    [ $rc -eq 1 ] || fail "$what: expected exit 1, got $rc"
    grep -Eq "$pat" "$T/bad.log" || fail "$what: no message matching '$pat': $(cat "$T/bad.log")"
    [ ! -e "$T/bad.sock" ] || fail "$what: socket left behind"
}
# Paths reaching different LUNs are refused with the engine's message,
# naming both identities.
id1=file.$(stat -c %D "$T/lun512.img").$(printf %x "$(stat -c %i "$T/lun512.img")")
id2=file.$(stat -c %D "$T/lun4096.img").$(printf %x "$(stat -c %i "$T/lun4096.img")")
refuse "paths to different LUNs" \
    "lun4096\.img: path reaches LUN $id2, but .*lun512\.img reaches LUN $id1: refusing to group them" \
    --lun "$T/lun512.img" --lun "file://$T/lun4096.img"
grep -q "serve: LUN .*lun512.img (2 paths): cannot open" "$T/bad.log" ||
    fail "different LUNs: no serve-level message"
# Same file, different geometry (block size): refused too.
refuse "paths with different block sizes" "path reports 2048 blocks of 4096 bytes" \
    --lun "$T/lun512.img" --lun "file://$T/lun512.img?block_size=4096"
# --policy needs several paths.
rc=0
"$VDISK" serve --socket "$T/bad.sock" --policy rr --lun "$T/lun512.img" >"$T/bad.log" 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q -- '--policy needs' "$T/bad.log" || fail "--policy with one path accepted"
echo "PASS"
