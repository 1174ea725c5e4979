#!/bin/bash
# Synchronous commands survive a UNIT ATTENTION (issue 15 item 5): tgt
# raises REPORTED LUNS DATA HAS CHANGED (06/3F/0E) on every session of a
# target when a LUN is added or removed; READ KEYS, REGISTER and TEST UNIT
# READY issued next must retry it, not fail (the probe's VPD reads use the
# same code, so a unit attention there no longer yields a fallback
# identity).
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:ua
tgt_add_lun 1 1 16M
f=$(tgt_lun_file 1 1)
# Add LUN 2 the first time, remove it the next, and so on: each raises 3F/0E.
toggle="if tgtadm -C $TGT_CTL --lld iscsi --op show --mode target | grep -q 'LUN: 2'; then tgtadm -C $TGT_CTL --lld iscsi --op delete --mode logicalunit --tid 1 --lun 2; else tgtadm -C $TGT_CTL --lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --backing-store $f --bstype rdwr; fi"
"$TEST_ISCSI_LUN" ua "$(tgt_uri 1 1)" "$toggle"
echo PASS
