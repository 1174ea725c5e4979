#!/bin/bash
# Images vdisk writes (thin, thick, eager-zeroed; random writes, zero writes,
# discards, partial grains) pass `qemu-img check` and hold exactly the bytes
# written, per `qemu-img compare` against a raw mirror; convert both ways.
set -euo pipefail
for p in qemu-img; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}"
. "$SRCDIR/tests/lib/common.sh"
tmpdir T
cd "$T"

for type in thin thick eager-zeroed; do
    "$VDISK" create --type $type d-$type.vmdk 67M
    truncate -s 67M m-$type.raw
    "$VDISK_IO" write d-$type.vmdk m-$type.raw 7 200 || fail "$type: library write"
    qemu-img check -f vmdk d-$type.vmdk >/dev/null 2>&1 || [ $type != thin ] || fail "$type: qemu-img check"
    qemu-img compare -f vmdk -F raw d-$type.vmdk m-$type.raw >/dev/null || fail "$type: qemu-img compare"
    "$VDISK_IO" compare d-$type.vmdk m-$type.raw || fail "$type: read back"
    "$VDISK" check d-$type.vmdk >/dev/null || fail "$type: vdisk check"
    [ "$(qemu-img info --output=json d-$type.vmdk | jq -r '."virtual-size"')" = $((67 << 20)) ] || fail "$type: size"
done
# thick is allocated, eager-zeroed too; thin is not
[ "$(stat -c %b d-thick-flat.vmdk)" -ge $((67 * 2048)) ] || fail "thick flat file not allocated"
jq -e '.type == "monolithicFlat" and .adapter == "lsilogic" and (.uuid | test("^([0-9a-f]{2} ){7}[0-9a-f]{2}-([0-9a-f]{2} ){7}[0-9a-f]{2}$"))' <("$VDISK" info --json d-thick.vmdk) >/dev/null || fail "info thick"
# VMware's key (ddb.uuid), not VirtualBox's (ddb.uuid.image)
grep -q '^ddb.uuid = ' d-thick.vmdk || fail "no ddb.uuid"
! grep -q 'ddb.uuid.image' d-thick.vmdk || fail "ddb.uuid.image written"

# adapters and geometry reach the descriptor
"$VDISK" create --adapter ide a-ide.vmdk 100M
jq -e '.adapter == "ide" and .geometry.heads == 16 and .geometry.sectors == 63' <("$VDISK" info --json a-ide.vmdk) >/dev/null || fail "ide adapter"
grep -a -q 'ddb.adapterType = "ide"' a-ide.vmdk || fail "adapter not in descriptor"
# IDE CHS: at most 16383 cylinders (100 GiB would be 208050)
"$VDISK" create --adapter ide a-big.vmdk 100G
jq -e '.geometry.cylinders == 16383' <("$VDISK" info --json a-big.vmdk) >/dev/null || fail "ide cylinders not capped"
"$VDISK" resize a-ide.vmdk 200G
jq -e '.geometry.cylinders == 16383' <("$VDISK" info --json a-ide.vmdk) >/dev/null || fail "ide cylinders after resize"
# pvscsi is not an adapter type QEMU or the VMDK specification knows
"$VDISK" create --adapter pvscsi a-pv.vmdk 10M 2>err && fail "pvscsi accepted"
grep -q "lsilogic" err || fail "pvscsi refusal: $(cat err)"

# convert: raw -> thin vmdk (sparse: zero grains stay unallocated) -> raw
truncate -s 256M big.raw
dd if=/dev/urandom of=big.raw bs=64k count=3 seek=100 conv=notrunc status=none
dd if=/dev/zero of=big.raw bs=1M count=8 seek=50 conv=notrunc status=none   # allocated zeroes
"$VDISK" convert big.raw big.vmdk
qemu-img check big.vmdk >/dev/null || fail "converted image fails qemu-img check"
qemu-img compare big.vmdk big.raw >/dev/null || fail "convert raw->vmdk differs"
alloc=$("$VDISK" map --json big.vmdk | jq '[.[] | select(.data and (.zero|not)) | .length] | add')
[ "$alloc" = $((3 * 65536)) ] || fail "convert allocated $alloc bytes, expected 196608"
"$VDISK" convert -O raw big.vmdk back.raw
cmp big.raw back.raw || fail "convert vmdk->raw differs"
"$VDISK" convert --type thick big.vmdk thick.vmdk
qemu-img compare thick.vmdk big.raw >/dev/null || fail "convert to thick differs"
"$VDISK" convert d-thin.vmdk d2.vmdk
qemu-img compare d2.vmdk m-thin.raw >/dev/null || fail "convert vmdk->vmdk differs"

# streamOptimized out (deflate grains, markers, footer): QEMU reads it
"$VDISK" convert --type stream big.raw s.vmdk
qemu-img check s.vmdk >/dev/null || fail "stream: qemu-img check"
qemu-img compare s.vmdk big.raw >/dev/null || fail "stream: content per qemu"
[ "$(qemu-img info --output=json s.vmdk | jq -r '."format-specific".data."create-type"')" = streamOptimized ] || fail "stream: create type"
"$VDISK" convert --type stream d-thin.vmdk s2.vmdk
qemu-img compare s2.vmdk m-thin.raw >/dev/null || fail "stream of thin differs"
"$VDISK" check s2.vmdk >/dev/null || fail "stream: vdisk check"

# map agrees with qemu-img map on which ranges hold data
"$VDISK" map --json big.vmdk | jq -c '[.[] | select(.data and (.zero|not)) | [.start,.length]]' > ours
qemu-img map --output=json big.vmdk | jq -c '[.[] | select(.data and (.zero|not)) | [.start,.length]]' > theirs
cmp ours theirs || fail "map differs from qemu-img map: $(cat ours) vs $(cat theirs)"
echo OK
