#!/bin/bash
# COMPARE AND WRITE on istgt, the second real target: istgt has no REPORT
# SUPPORTED OPERATION CODES and advertises ATS the SBC-3 / ESXi way, in the
# Block Limits VPD page (MAXIMUM COMPARE AND WRITE LENGTH > 0). `clusterfs
# lun info` must say "Compare and write (ATS): yes" (text and JSON, per
# path), and a real COMPARE AND WRITE and a miscompare (sense 0E/1D/00,
# the current block returned) work through lun_compare_and_write, on one
# path and on two, 512- and 4096-byte blocks.
set -euo pipefail
. "$SRCDIR/tests/lib/istgt.sh"
istgt_require
istgt_init
istgt_add_lun ats512 64M
istgt_add_lun ats4k 16M 4096
istgt_start

u1=$(istgt_uri ats512)
u2=$(istgt_uri ats512 127.0.0.2)
u3=$(istgt_uri ats4k)

out=$("$CLUSTERFS" lun info "$u1" "$u2")
echo "$out"
echo "$out" | grep -q "Compare and write (ATS):  yes" ||
    { echo "FAIL: lun info on istgt does not report compare-and-write"; exit 1; }
[ "$(echo "$out" | grep -c ' ats=yes ')" = 2 ] ||
    { echo "FAIL: not every path of the istgt LUN reports ats=yes"; exit 1; }
json=$("$CLUSTERFS" lun info --json "$u3")
[ "$(echo "$json" | jq -r '.[0].caps.compare_and_write')" = true ] ||
    { echo "FAIL: lun info --json: compare_and_write not true on istgt: $json"; exit 1; }
[ "$(echo "$json" | jq -r '.[0].block_size')" = 4096 ] ||
    { echo "FAIL: lun info --json: block size is not 4096: $json"; exit 1; }

"$TEST_ISCSI_LUN" caw "$u1"
"$TEST_ISCSI_LUN" caw "$u1" "$u2"
"$TEST_ISCSI_LUN" caw "$u3"
echo "PASS"
