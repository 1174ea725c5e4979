#!/bin/bash
# Capability probe on tgt: no COMPARE AND WRITE (and lun_compare_and_write
# refuses at once), persistent reservations, block sizes 512 and 4096, and
# `clusterfs lun info --json` agreeing with what tgt serves.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:caps
tgt_add_lun 1 1 64M
tgt_add_lun 1 2 32M 4096

"$TEST_ISCSI_LUN" caps "$(tgt_uri 1 1)" 512
"$TEST_ISCSI_LUN" caps "$(tgt_uri 1 2 127.0.0.2)" 4096

# Both portals lead to the same LUN identity.
id1=$("$TEST_ISCSI_LUN" caps "$(tgt_uri 1 1)" 512 | sed -n 's/.* id=\([^ ]*\) .*/\1/p')
id2=$("$TEST_ISCSI_LUN" caps "$(tgt_uri 1 1 127.0.0.2)" 512 | sed -n 's/.* id=\([^ ]*\) .*/\1/p')
[ -n "$id1" ] && [ "$id1" = "$id2" ] || { echo "FAIL: identity differs by portal: '$id1' vs '$id2'"; exit 1; }

# The CLI: `clusterfs lun info --json` parses and agrees with tgt.
for spec in "1 512 $((64 << 20))" "2 4096 $((32 << 20))"; do
    set -- $spec
    json=$("$CLUSTERFS" lun info --json "$(tgt_uri 1 "$1")")
    echo "$json"
    bs=$(echo "$json" | jq -r '.[0].block_size')
    bytes=$(echo "$json" | jq -r '.[0].capacity_bytes')
    blocks=$(echo "$json" | jq -r '.[0].num_blocks')
    caw=$(echo "$json" | jq -r '.[0].caps.compare_and_write')
    pr=$(echo "$json" | jq -r '.[0].caps.persistent_reservations')
    [ "$bs" = "$2" ] || { echo "FAIL: lun info block_size $bs, expected $2"; exit 1; }
    [ "$bytes" = "$3" ] && [ "$((blocks * bs))" = "$3" ] ||
        { echo "FAIL: lun info capacity $bytes ($blocks x $bs), expected $3 bytes"; exit 1; }
    [ "$caw" = false ] || { echo "FAIL: lun info says compare_and_write=$caw on tgt"; exit 1; }
    [ "$pr" = true ] || { echo "FAIL: lun info says persistent_reservations=$pr on tgt"; exit 1; }
done
echo "PASS"
