#!/bin/bash
# Whole-LUN write/verify with 32 I/Os in flight, flush, FUA, unmap and
# write same, over iSCSI to a private tgtd: a 256 MiB thin LUN with 512-byte
# blocks (portal 127.0.0.1) and a 64 MiB LUN with 4096-byte blocks (portal
# 127.0.0.2).
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:rw
tgt_add_lun 1 1 256M
tgt_thin 1 1
tgt_add_lun 1 2 64M 4096

"$TEST_ISCSI_LUN" rw "$(tgt_uri 1 1)" | tee "$TGT_DIR/out1"
grep -q '^unmap: ok' "$TGT_DIR/out1" || { echo "FAIL: unmap not exercised on the thin LUN"; exit 1; }
"$TEST_ISCSI_LUN" rw "$(tgt_uri 1 2 127.0.0.2)"

# Guard: nothing was written past the end of either LUN.
for l in 1 2; do
    f=$(tgt_lun_file 1 $l)
    want=$([ $l = 1 ] && echo $((256 << 20)) || echo $((64 << 20)))
    size=$(stat -c %s "$f")
    [ "$size" = "$want" ] || { echo "FAIL: $f grew to $size bytes (expected $want)"; exit 1; }
done
echo "PASS"
