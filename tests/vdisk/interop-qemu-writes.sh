#!/bin/bash
# Everything qemu-img create / qemu-io writes, in each subformat, vdisk reads
# byte-identically (convert -O raw, and through the library).
set -euo pipefail
for p in qemu-img qemu-io; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}"
. "$SRCDIR/tests/lib/common.sh"
tmpdir T
cd "$T"
# $1 = mono: monolithic subformats + streamOptimized, vmfs, vmfsSparse;
# $1 = twogb: the split (2 GiB per extent) subformats. Two test runs, so each
# stays short.
part=${1:-mono}
seed=1
formats="monolithicSparse monolithicFlat"
[ "$part" = twogb ] && formats="twoGbMaxExtentSparse twoGbMaxExtentFlat"
for sf in $formats; do
  for zg in off on; do
    [ $zg = on ] && [ $sf != monolithicSparse ] && continue
    f=q-$sf-$zg.vmdk
    opts=subformat=$sf; [ $zg = on ] && opts=$opts,zeroed_grain=on
    mib=300; case $sf in twoGb*) mib=2064;; esac
    qemu-img create -q -f vmdk -o $opts $f ${mib}M
    cmds=()
    for i in $(seq 1 12); do
        seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
        off=$(( (seed % (mib - 1)) * 1048576 + (seed % 7) * 4096 ))
        len=$(( (seed % 300 + 1) * 1024 ))
        cmds+=(-c "write -P $((seed % 255 + 1)) $off $len")
    done
    cmds+=(-c "write -z $((mib / 2))M 1M")
    qemu-io -f vmdk "${cmds[@]}" $f >/dev/null || fail "qemu-io on $f"
    "$VDISK" convert -O raw $f ours.raw || fail "vdisk convert $f"
    if [ "$part" = twogb ]; then # 2 GiB files: let qemu-img compare skip the holes
        qemu-img compare -f vmdk -F raw $f ours.raw >/dev/null || fail "$f: vdisk convert differs"
        mv ours.raw ref.raw
    else
        qemu-img convert -f vmdk -O raw $f ref.raw
        cmp ref.raw ours.raw || fail "$f: vdisk convert differs from qemu-img convert"
        "$VDISK_IO" compare $f ref.raw || fail "$f: library read differs"
    fi
    "$VDISK" check $f >/dev/null || fail "$f: vdisk check"
    # and we can write into what QEMU made (descriptor rewritten for the CID)
    "$VDISK_IO" write $f ref.raw $seed 40 || fail "$f: library write"
    qemu-img compare -f vmdk -F raw $f ref.raw >/dev/null || fail "$f: qemu reads our writes differently"
    case $sf in *Sparse) qemu-img check -q $f || fail "$f: qemu-img check after our writes";; esac
    rm -f ref.raw ours.raw
  done
done
[ "$part" = twogb ] && { echo OK; exit 0; }

# streamOptimized (deflate-compressed grains with markers)
truncate -s 100M s.raw
dd if=/dev/urandom of=s.raw bs=4k count=300 seek=77 conv=notrunc status=none
{ yes "compressible text" || true; } | head -c 3M > txt
dd if=txt of=s.raw bs=1M seek=60 conv=notrunc status=none
qemu-img convert -O vmdk -o subformat=streamOptimized s.raw so.vmdk
"$VDISK" convert -O raw so.vmdk so-out.raw
cmp s.raw so-out.raw || fail "streamOptimized read differs"
"$VDISK_IO" compare so.vmdk s.raw || fail "streamOptimized library read differs"
"$VDISK" check so.vmdk >/dev/null || fail "vdisk check of streamOptimized"
jq -e '.type == "streamOptimized" and .extents[0].compressed' <("$VDISK" info --json so.vmdk) >/dev/null || fail "info streamOptimized"

# ESXi-style "vmfs" flat descriptor
truncate -s 10M e-flat.vmdk
dd if=/dev/urandom of=e-flat.vmdk bs=1M count=1 seek=3 conv=notrunc status=none
printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\nRW 20480 VMFS "e-flat.vmdk"\n\nddb.adapterType = "lsilogic"\n' > e.vmdk
"$VDISK" convert -O raw e.vmdk e.raw
cmp e.raw e-flat.vmdk || fail "vmfs flat read differs"

# ESXi vmfsSparse delta (COWD extent, 512-byte grains, 4096 entries per table)
# on a monolithicFlat parent: QEMU and vdisk must read the chain alike.
qemu-img create -q -f vmdk -o subformat=monolithicFlat cbase.vmdk 16M
qemu-io -f vmdk -c 'write -P 0x61 0 16M' cbase.vmdk >/dev/null
pcid=$("$VDISK" info --json cbase.vmdk | jq -r .cid)
python3 - <<'PY'
import struct, random
N, G, GTES = 16 * 2048, 1, 4096
ngt = (N // G + GTES - 1) // GTES
gd_off, gt_off = 4, 5
free = gt_off + ngt * GTES * 4 // 512
gts = [[0] * GTES for _ in range(ngt)]
data = {}
rnd = random.Random(7)
for s in list(range(100, 164)) + list(range(5000, 5011)) + [N - 1]:
    gts[s // G // GTES][s // G % GTES] = free
    data[free] = bytes(rnd.randrange(256) for _ in range(512 * G))
    free += G
with open("cdelta-delta.vmdk", "wb") as f:
    f.write(b"COWD" + struct.pack("<9I", 1, 3, N, G, gd_off, ngt, free, 0, 0).ljust(2044, b"\0"))
    f.seek(gd_off * 512)
    f.write(struct.pack("<%dI" % ngt, *[gt_off + i * GTES * 4 // 512 for i in range(ngt)]))
    for i, t in enumerate(gts):
        f.seek((gt_off + i * GTES * 4 // 512) * 512)
        f.write(struct.pack("<%dI" % GTES, *t))
    for sec, b in data.items():
        f.seek(sec * 512)
        f.write(b)
PY
printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=%s\ncreateType="vmfsSparse"\nparentFileNameHint="cbase.vmdk"\n\nRW 32768 VMFSSPARSE "cdelta-delta.vmdk"\n' "$pcid" > cdelta.vmdk
qemu-img convert -f vmdk -O raw cdelta.vmdk cref.raw
"$VDISK" convert -O raw cdelta.vmdk cours.raw
# QEMU 7.2 lists a VMFSSPARSE extent twice (virtual size doubled); the
# first 16 MiB are the disk.
cmp -n $((16 << 20)) cref.raw cours.raw || fail "vmfsSparse delta read differs from qemu"
cmp -s -n $((16 << 20)) cours.raw cbase-flat.vmdk && fail "delta data not visible"
"$VDISK_IO" compare cdelta.vmdk cref.raw || fail "vmfsSparse library read differs"
"$VDISK" check cdelta.vmdk >/dev/null && "$VDISK" check cdelta-delta.vmdk >/dev/null || fail "vdisk check of vmfsSparse"
jq -e '.type == "vmfsSparse" and .extents[0].cowd and (.chain | length) == 1' <("$VDISK" info --json cdelta.vmdk) >/dev/null || fail "info vmfsSparse"
sum=$(cat cdelta.vmdk cdelta-delta.vmdk | md5sum)
truncate -s 16M m.raw
if "$VDISK_IO" write cdelta.vmdk m.raw 1 3 2>err; then fail "write into COWD accepted"; fi
grep -q "COWD" err || fail "COWD write error: $(cat err)"
[ "$(cat cdelta.vmdk cdelta-delta.vmdk | md5sum)" = "$sum" ] || fail "refused write changed files"
echo OK
