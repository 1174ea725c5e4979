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
# NOP-Out pings run on both paths (the first goes out as the engine starts,
# ahead of the reads on the same connection).
[ "$(echo "$j" | jq '.paths[0].pings >= 1 and .paths[1].pings >= 1')" = true ]
[ "$(echo "$j" | jq '.paths[0].nop_misses + .paths[1].nop_misses')" = 0 ]

t=$("$CLUSTERFS" paths --policy fixed "$u1" "$u2")
echo "$t"
echo "$t" | grep -q "policy=fixed paths=2"
echo "$t" | grep -Eq "^\|- 0 iscsi .* active "
echo "$t" | grep -Eq "^\`- 1 iscsi .* standby "

# `clusterfs lun info`: arguments reaching the same LUN are one LUN with its
# paths (state, counters, each path's own probed capabilities); LUN 2 is
# another LUN.
u12=$(tgt_uri 1 2 127.0.0.1)
j=$("$CLUSTERFS" lun info --json "$u1" "$u12" "$u2")
echo "$j"
[ "$(echo "$j" | jq length)" = 2 ]
[ "$(echo "$j" | jq -r '.[0].id')" = naa.3000000100000001 ]
[ "$(echo "$j" | jq '.[0].paths | length')" = 2 ]
[ "$(echo "$j" | jq -r '[.[0].paths[].name] | join(" ")')" = "$u1 $u2" ]
[ "$(echo "$j" | jq -r '[.[0].paths[].state] | join(",")')" = active,active ]
[ "$(echo "$j" | jq -r '[.[0].paths[].id] | join(",")')" = naa.3000000100000001,naa.3000000100000001 ]
[ "$(echo "$j" | jq '[.[0].paths[].caps.persistent_reservations] | all')" = true ]
[ "$(echo "$j" | jq '[.[0].paths[].caps.compare_and_write] | any')" = false ]
[ "$(echo "$j" | jq -r '.[1].id')" = naa.3000000100000002 ]
[ "$(echo "$j" | jq '.[1].paths | length')" = 1 ]
t=$("$CLUSTERFS" lun info "$u1" "$u2")
echo "$t"
echo "$t" | grep -q "Paths: *2 (policy service-time)"
echo "$t" | grep -Eq "^ +\|- 0 iscsi $u1 active .*pings="
echo "$t" | grep -Eq "^ +id=naa.3000000100000001 ats=no pr=yes pr-we-ar=yes"

# Portal 2 down at open: the LUN opens on path 1, path 2 shows failed.
tgt_cut_portal 127.0.0.2
# lun info: the unreachable URI names the same target and LUN, so it is
# that LUN's failed path (never probed), not an error.
j=$("$CLUSTERFS" lun info --json --timeout 2000 "$u1" "$u2")
echo "$j"
[ "$(echo "$j" | jq length)" = 1 ]
[ "$(echo "$j" | jq -r '[.[0].paths[].state] | join(",")')" = active,failed ]
[ "$(echo "$j" | jq '.[0].paths[1].caps')" = null ]
echo "$j" | jq -r '.[0].paths[1].last_error' | grep -q "not reachable"
"$CLUSTERFS" lun info --timeout 2000 "$u1" "$u2" | grep -q "not probed: never answered"
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
