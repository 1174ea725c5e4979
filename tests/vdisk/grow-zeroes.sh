#!/bin/bash
# Old data must not reappear (issue 13 item 7): a delta shrunk then grown
# again, and a smaller frozen snapshot consolidated into its (larger) child,
# read zeroes in the newly grown area, not the parent's or the
# grandparent's old bytes. qemu-img judges as well as our library.
set -euo pipefail
for p in qemu-img qemu-io python3; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}"
T=$(mktemp -d); trap 'chmod -R u+w "$T"; rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
same() { # IMG RAW WHAT: QEMU and our library both read RAW's bytes
    qemu-img compare -q "$1" "$2" || fail "$3: qemu-img reads other bytes than $2: $(qemu-img compare "$1" "$2" 2>&1 | tail -1)"
    "$VDISK_IO" compare "$1" "$2" >/dev/null || fail "$3: vdisk reads other bytes than $2"
    qemu-img check -q "$1" || fail "$3: qemu-img check"
}
# expect RAW SIZE [BYTE START LEN]...: a raw file of SIZE zeroes with ranges of BYTE
expect() {
    python3 - "$@" <<'PY'
import sys
path, size, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
b = bytearray(size)
for i in range(0, len(rest), 3):
    v, s, n = int(rest[i], 0), int(rest[i + 1]), int(rest[i + 2])
    b[s:s + n] = bytes([v]) * n
open(path, 'wb').write(b)
PY
}
M=$((1 << 20)) CUT=$((M + 100 * 1024))   # the cut is not on a grain boundary

# 1. shrink a delta, grow it again
"$VDISK" create disk.vmdk 4M >/dev/null
qemu-io -f vmdk -c "write -P 0x11 0 4M" disk.vmdk >/dev/null
"$VDISK" snapshot create disk.vmdk s1 >/dev/null
"$VDISK" resize --shrink disk.vmdk $CUT
"$VDISK" resize disk.vmdk 4M
expect e1.raw $((4 * M)) 0x11 0 $CUT
same disk.vmdk e1.raw "delta shrunk to $CUT then grown to 4M"
# the frozen snapshot is untouched
expect s1.raw $((4 * M)) 0x11 0 $((4 * M))
same disk-000001.vmdk s1.raw "frozen s1 after the resizes"

# 2. a smaller frozen snapshot consolidated into a larger child
mkdir c && cd c
"$VDISK" create d.vmdk 4M >/dev/null
qemu-io -f vmdk -c "write -P 0x22 0 4M" d.vmdk >/dev/null
"$VDISK" snapshot create d.vmdk s1 >/dev/null
"$VDISK" resize --shrink d.vmdk $CUT
qemu-io -f vmdk -c "write -P 0x44 0 64k" d.vmdk >/dev/null
"$VDISK" snapshot create d.vmdk s2 >/dev/null
"$VDISK" resize d.vmdk 4M
qemu-io -f vmdk -c "write -P 0x33 3M 64k" d.vmdk >/dev/null
expect ../e2.raw $((4 * M)) 0x22 0 $CUT 0x44 0 65536 0x33 $((3 * M)) 65536
same d.vmdk ../e2.raw "child before the delete"
"$VDISK" snapshot delete d.vmdk s2 >/dev/null
same d.vmdk ../e2.raw "child after consolidating the smaller s2 into it"
[ "$(qemu-img info --backing-chain --output=json d.vmdk | jq length)" = 2 ] || fail "chain after delete"
"$VDISK" snapshot delete d.vmdk s1 >/dev/null
same d.vmdk ../e2.raw "child after deleting s1 too"
echo OK
