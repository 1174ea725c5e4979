#!/bin/bash
# Late paths: a path whose portal is down when the LUN is opened is probed
# and identity-checked when it first answers, before it carries I/O.
#  1. The LUN is opened thin (UNMAP claimed, from path 0). Portal 2 comes up
#     while the LUN no longer advertises UNMAP: path 1 answers but is kept
#     failed ("lacks UNMAP"), its probe results are visible; with UNMAP back
#     it comes up and carries reads.
#  2. Path 1's URI names another target: when its portal comes up it reaches
#     a different LUN and is kept failed naming both identities, and never
#     carries I/O.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:late
tgt_add_lun 1 1 16M
tgt_thin 1 1
thin() { echo "tgtadm -C $TGT_CTL --lld iscsi --mode logicalunit --op update --tid 1 --lun 1 --params thin_provisioning=$1"; }
restore="tgtadm -C $TGT_CTL --lld iscsi --op new --mode portal --param portal=127.0.0.2:$TGT_PORT"

u0=$(tgt_uri 1 1 127.0.0.1)
u1=$(tgt_uri 1 1 127.0.0.2)

echo "== late path without a capability the LUN has"
tgt_cut_portal 127.0.0.2
"$MPATH_CTL" --check-interval 100 --timeout 1000 "$u0" "$u1" <<SCRIPT
wait 0 active 10
wait 1 failed 10
err 1 not reachable when the LUN was opened
noinfo 1
cap 0 unmap yes
sh $(thin 0)
sh $restore
waiterr 1 10000 lacks UNMAP
cap 1 unmap no
cap 1 persistent_reservations yes
stay 1 failed 1000
expect 1 reads == 0
read 20
expect 1 reads == 0
sh $(thin 1)
wait 1 active 10000
cap 1 unmap yes
read 200
until 1 reads 1 10
print 1
SCRIPT

echo "== late path to another LUN"
tgt_add_target 2 iqn.2026-11.org.clusterfs.test:other
tgt_add_lun 2 1 16M
tgt_cut_portal 127.0.0.2
"$MPATH_CTL" --check-interval 100 --timeout 1000 "$u0" "$(tgt_uri 2 1 127.0.0.2)" <<SCRIPT
wait 1 failed 10
noinfo 1
sh $restore
waiterr 1 10000 reaches LUN naa.3000000200000001, not naa.3000000100000001
stay 1 failed 1500
read 100
expect 1 reads == 0
print 1
SCRIPT
echo PASS
