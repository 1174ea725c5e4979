#!/bin/bash
# Persistent reservations and fencing on tgt: three sessions (initiators
# host-a, host-b, host-c), WE-AR reservation, unregistered writer refused,
# PREEMPT of B's key fences B's writes (-EBADE) while its reads work.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:pr
tgt_add_lun 1 1 16M
"$TEST_ISCSI_LUN" pr "$(tgt_uri 1 1)"
echo "PASS"
