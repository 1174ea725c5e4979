#!/bin/bash
# Delta disks and QEMU writing into our images: qemu-io writes into a vdisk
# thin image without harm and we read it back; qemu reads our delta chains;
# the first write changes the CID (so stale children are refused); resize.
set -euo pipefail
for p in qemu-img qemu-io; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}"
. "$SRCDIR/tests/lib/common.sh"
tmpdir T
cd "$T"
cid() { "$VDISK" info --json "$1" | jq -r .cid; }

"$VDISK" create base.vmdk 64M
truncate -s 64M m.raw
"$VDISK_IO" write base.vmdk m.raw 11 100
# QEMU writes into our sparse image
qemu-io -f vmdk -c 'write -P 0xab 1M 64k' -c 'write -P 0xcd 3000k 10k' base.vmdk >/dev/null
printf '\xab%.0s' $(seq 1 65536) | dd of=m.raw bs=1k seek=1024 conv=notrunc status=none
printf '\xcd%.0s' $(seq 1 10240) | dd of=m.raw bs=1k seek=3000 conv=notrunc status=none
qemu-img check base.vmdk >/dev/null || fail "qemu-img check after qemu-io write"
"$VDISK_IO" compare base.vmdk m.raw || fail "we do not read what qemu wrote"
"$VDISK" check base.vmdk >/dev/null || fail "vdisk check after qemu wrote"

# a delta on top: qemu reads through it
"$VDISK_IO" child base.vmdk child.vmdk
qemu-img compare child.vmdk m.raw >/dev/null || fail "qemu reads the delta differently"
jq -e --arg c "$(cid base.vmdk)" '.chain[0].cid == $c and (.chain[0].file | endswith("base.vmdk"))' <("$VDISK" info --json child.vmdk) >/dev/null || fail "info chain"
cp m.raw base.raw
"$VDISK_IO" write child.vmdk m.raw 12 100
qemu-img check child.vmdk >/dev/null || fail "qemu-img check of delta"
qemu-img compare child.vmdk m.raw >/dev/null || fail "delta content per qemu"
qemu-img compare base.vmdk base.raw >/dev/null || fail "base changed under the delta"
# qemu writes into our delta
qemu-io -f vmdk -c 'write -P 0x77 100k 1k' child.vmdk >/dev/null
printf '\x77%.0s' $(seq 1 1024) | dd of=m.raw bs=1k seek=100 conv=notrunc status=none
"$VDISK_IO" compare child.vmdk m.raw || fail "delta after qemu write"
# writing the base changes its CID: the child is then refused, naming both
"$VDISK_IO" write base.vmdk base.raw 13 1
if "$VDISK" info child.vmdk 2>err; then fail "stale child opened"; fi
grep -q "parentCID" err && grep -q base.vmdk err || fail "CID mismatch message: $(cat err)"
"$VDISK" check child.vmdk >/dev/null 2>&1 && fail "check passes a CID mismatch"

# resize: grow keeps data and passes qemu-img check; shrink needs --shrink
"$VDISK" create r.vmdk 10M
truncate -s 10M r.raw
"$VDISK_IO" write r.vmdk r.raw 21 30
"$VDISK" resize r.vmdk 3G
truncate -s 3G r.raw
qemu-img check r.vmdk >/dev/null || fail "resized image fails qemu-img check"
[ "$(qemu-img info --output=json r.vmdk | jq '."virtual-size"')" = $((3 << 30)) ] || fail "resize size"
qemu-img compare r.vmdk r.raw >/dev/null || fail "resize lost data"
qemu-io -f vmdk -c 'write -P 0x42 2G 64k' r.vmdk >/dev/null
"$VDISK" resize r.vmdk 5M 2>/dev/null && fail "shrink without --shrink"
"$VDISK" resize --shrink r.vmdk 5M
truncate -s 5M r.raw
qemu-img compare r.vmdk r.raw >/dev/null || fail "shrink content"
"$VDISK" create --type thick rt.vmdk 10M
"$VDISK" resize rt.vmdk 20M
qemu-img check rt.vmdk >/dev/null || fail "resized flat image fails qemu-img check"
[ "$(qemu-img info --output=json rt.vmdk | jq '."virtual-size"')" = $((20 << 20)) ] || fail "flat resize"
echo OK
