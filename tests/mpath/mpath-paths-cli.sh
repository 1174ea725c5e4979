#!/bin/bash
# `clusterfs paths`: round-robin with two healthy paths really uses both
# (per-path counters), text and JSON output, and a path to a different LUN
# is refused naming both identities; a portal that is down at open time is
# a failed path, not a failed open.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v jq >/dev/null || { echo "SKIP: jq missing" >&2; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:mpc
tgt_add_lun 1 1 16M
tgt_add_lun 1 2 16M
u1=$(tgt_uri 1 1 127.0.0.1)
u2=$(tgt_uri 1 1 127.0.0.2)
j=$("$CLUSTERFS" paths --json --policy round-robin --reads 400 "$u1" "$u2")
echo "$j"
[ "$(echo "$j" | jq -r .policy)" = round-robin ]
[ "$(echo "$j" | jq '.paths | length')" = 2 ]
[ "$(echo "$j" | jq '.paths[0].reads')" = 200 ]
[ "$(echo "$j" | jq '.paths[1].reads')" = 200 ]
[ "$(echo "$j" | jq -r '.paths[0].state + .paths[1].state')" = activeactive ]
[ "$(echo "$j" | jq '.paths[1].read_bytes')" = $((200 * 4096)) ]

t=$("$CLUSTERFS" paths --policy fixed "$u1" "$u2")
echo "$t"
echo "$t" | grep -q "policy=fixed paths=2"
echo "$t" | grep -Eq "^\|- 0 iscsi .* active "
echo "$t" | grep -Eq "^\`- 1 iscsi .* standby "

# Portal 2 down at open: the LUN opens on path 1, path 2 shows failed.
tgt_cut_portal 127.0.0.2
j=$("$CLUSTERFS" paths --json --reads 10 "$u1" "$u2" 2>"$TGT_DIR/err")
echo "$j"
[ "$(echo "$j" | jq -r '.paths[0].state')" = active ]
[ "$(echo "$j" | jq -r '.paths[1].state')" = failed ]
[ "$(echo "$j" | jq '.paths[0].reads')" = 10 ]
echo "$j" | jq -r '.paths[1].last_error' | grep -q "not reachable"
tgt_restore_portal 127.0.0.2

rc=0
err=$("$CLUSTERFS" paths "$u1" "$(tgt_uri 1 2 127.0.0.2)" 2>&1) || rc=$?
echo "$err"
[ $rc = 1 ]
echo "$err" | grep -q "naa.3000000100000001"
echo "$err" | grep -q "naa.3000000100000002"
echo "$err" | grep -q "refusing to group"
echo PASS
