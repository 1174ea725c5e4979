#!/bin/bash
# The vdisk command on bad input: clear errors naming the file and field,
# non-zero exit, file unchanged; check --repair fixes what is safe.
set -euo pipefail
: "${VDISK:?}"
. "$SRCDIR/tests/lib/common.sh"
tmpdir T
cd "$T"
expect_err() { # file needle
    local sum; sum=$(md5sum "$1")
    if "$VDISK" info "$1" >/dev/null 2>err; then fail "$1 opened"; fi
    grep -q -- "$2" err || fail "$1: expected '$2' in: $(cat err)"
    grep -q "$1" err || fail "$1: message does not name the file: $(cat err)"
    [ "$(md5sum "$1")" = "$sum" ] || fail "$1 changed"
}
"$VDISK" create good.vmdk 10M
cp good.vmdk v.vmdk; printf '\x09' | dd of=v.vmdk bs=1 seek=4 conv=notrunc status=none
expect_err v.vmdk "version 9"
cp good.vmdk g.vmdk; printf '\x03\x00' | dd of=g.vmdk bs=1 seek=20 conv=notrunc status=none
expect_err g.vmdk "grainSize"
head -c 300 good.vmdk > t.vmdk
expect_err t.vmdk "truncated"
printf '# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 100 FLAT "/etc/passwd" 0\n' > abs.vmdk
expect_err abs.vmdk "outside the image's folder"
printf '# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 100 FLAT "../x" 0\n' > dot.vmdk
expect_err dot.vmdk "outside the image's folder"
"$VDISK" create --type thick a.vmdk 1M 2>/dev/null
"$VDISK" create a.vmdk 1M 2>err && fail "create overwrote"
grep -q "File exists" err || fail "create error: $(cat err)"
"$VDISK" create x.vmdk 0 2>/dev/null && fail "size 0 accepted"
rc=0; "$VDISK" bogus 2>/dev/null || rc=$?; [ $rc -eq 2 ] || fail "unknown command exit"
"$VDISK" --help | grep -q convert || fail "--help"

# check: damage the redundant grain table entry and a primary entry
"$VDISK" create c.vmdk 10M
truncate -s 10M c.raw
gd=$(od -An -t u8 -j 56 -N 8 c.vmdk | tr -d ' ')
rgd=$(od -An -t u8 -j 48 -N 8 c.vmdk | tr -d ' ')
gt=$(od -An -t u4 -j $((gd * 512)) -N 4 c.vmdk | tr -d ' ')
rgt=$(od -An -t u4 -j $((rgd * 512)) -N 4 c.vmdk | tr -d ' ')
# entry 0 of both tables pointing past the end, entry 1 only in the primary
printf '\xff\xff\x00\x00' | dd of=c.vmdk bs=1 seek=$((gt * 512)) conv=notrunc status=none
printf '\xff\xff\x00\x00' | dd of=c.vmdk bs=1 seek=$((rgt * 512)) conv=notrunc status=none
"$VDISK" check c.vmdk 2>err && fail "check passed a bad image"
grep -q "past the end" err || fail "check message: $(cat err)"
expect_err c.vmdk "outside the grain area"
{ "$VDISK" check --json c.vmdk 2>/dev/null || true; } | jq -e '.errors >= 1 and .repaired == 0' >/dev/null || fail "check --json"
"$VDISK" check --repair c.vmdk 2>/dev/null || fail "repair"
"$VDISK" check c.vmdk >/dev/null || fail "still bad after repair"
qemu-img check c.vmdk >/dev/null || fail "qemu-img check after repair"

# format guessing (issue 13 item 4): a damaged magic is not raw
cp good.vmdk dm.vmdk; printf 'X' | dd of=dm.vmdk bs=1 seek=3 conv=notrunc status=none
expect_err dm.vmdk "damaged"
"$VDISK" check dm.vmdk >out 2>&1 && fail "check passed a damaged VMDK: $(cat out)"
grep -q "not a VMDK" out || fail "check message: $(cat out)"
"$VDISK" info --format raw dm.vmdk | grep -q "format: raw" || fail "--format raw"
head -c 1M /dev/zero > blob
expect_err blob "format unknown"
"$VDISK" info blob --format=raw >/dev/null || fail "--format=raw after FILE"
cp good.vmdk g.raw
expect_err g.raw "name says raw"

# hostile chains (issue 13 item 5): a delta naming a disk in an unrelated
# folder by its absolute path, with that disk's CID, must not read it
mkdir other vm
"$VDISK" create other/secret.vmdk 1M >/dev/null
cid=$("$VDISK" info --json other/secret.vmdk | jq -r .cid)
"$VDISK" create vm/d.vmdk 1M >/dev/null
"$VDISK" info --json vm/d.vmdk >/dev/null
# rewrite the delta's descriptor by hand (same length fields, as an attacker would)
python3 - "$PWD/other/secret.vmdk" "$cid" vm/d.vmdk <<'PY'
import sys
hint, cid, path = sys.argv[1], sys.argv[2], sys.argv[3]
b = bytearray(open(path, 'rb').read())
area = b[512:512 * 21].split(b'\0')[0].decode()
area = area.replace('parentCID=ffffffff', 'parentCID=' + cid)
area = area.replace('createType="monolithicSparse"',
                    'createType="monolithicSparse"\nparentFileNameHint="%s"' % hint)
enc = area.encode()
b[512:512 + len(enc)] = enc
b[512 + len(enc):512 * 21] = bytes(512 * 21 - 512 - len(enc))
open(path, 'wb').write(b)
PY
expect_err vm/d.vmdk "outside the folders"
"$VDISK" --allow-root other info vm/d.vmdk 2>/dev/null && fail "--allow-root before the command"
"$VDISK" info --allow-root other vm/d.vmdk | grep -q "secret.vmdk" || fail "--allow-root other"
"$VDISK" check vm/d.vmdk >/dev/null 2>&1 && fail "check passed a chain that leaves its folder"
"$VDISK" check --allow-root=other vm/d.vmdk >/dev/null || fail "check --allow-root"
mkfifo vm/p-flat.vmdk
printf '# Disk DescriptorFile
createType="monolithicFlat"
RW 100 FLAT "p-flat.vmdk" 0
' > vm/p.vmdk
timeout 20 "$VDISK" info vm/p.vmdk >/dev/null 2>err && fail "FIFO extent opened"
grep -q "not a regular file" err || fail "FIFO extent: $(cat err)"
timeout 20 "$VDISK" check vm/p.vmdk >/dev/null 2>&1 && fail "check passed a FIFO extent"
echo OK
