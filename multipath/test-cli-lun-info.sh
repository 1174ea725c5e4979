#!/bin/sh
# `clusterfs lun info` on file LUNs: text and JSON fields, several LUNs,
# one-line errors with exit 1, usage errors with exit 2, no password shown.
set -u
CLUSTERFS=${CLUSTERFS:-${BUILDDIR:?}/tools/clusterfs}
[ -x "$CLUSTERFS" ] || { echo "FAIL: $CLUSTERFS not built"; exit 1; }
command -v jq >/dev/null || { echo "SKIP: jq missing"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

truncate -s 64M "$dir/a.img"
truncate -s 1000 "$dir/small.img"

# Text output.
out=$("$CLUSTERFS" lun info "$dir/a.img") || fail "lun info rc=$?"
for want in "Vendor: *CLUSTERF" "Product: *FILE LUN" "Identity (VPD 0x83): *file\." \
            "Capacity: *67108864 bytes (131072 blocks" "Logical block size: *512" \
            "Compare and write (ATS): *yes" "Persistent reservations: *no" \
            "file *$dir/a.img"; do
    echo "$out" | grep -q "$want" || fail "text output lacks '$want'"
done

# JSON: the URI's block size and --block-size agree, identity is the file's.
j1=$("$CLUSTERFS" lun info --json "file://$dir/a.img?block_size=4096") || fail "json rc=$?"
j2=$("$CLUSTERFS" lun info "$dir/a.img" --block-size 4096 --json) || fail "json2 rc=$?"
[ "$(echo "$j1" | jq '.[0].block_size')" = 4096 ] || fail "block_size: $j1"
[ "$(echo "$j1" | jq '.[0].num_blocks')" = 16384 ] || fail "num_blocks: $j1"
[ "$(echo "$j1" | jq '.[0].capacity_bytes')" = 67108864 ] || fail "capacity: $j1"
[ "$(echo "$j1" | jq '.[0].caps.compare_and_write')" = true ] || fail "caw: $j1"
[ "$(echo "$j1" | jq '.[0].caps.persistent_reservations')" = false ] || fail "pr: $j1"
[ "$(echo "$j1" | jq -r '.[0].paths[0].kind')" = file ] || fail "path kind: $j1"
[ "$(echo "$j2" | jq '.[0].block_size')" = 4096 ] || fail "--block-size: $j2"
[ "$(echo "$j1" | jq -r '.[0].id')" = "$(echo "$j2" | jq -r '.[0].id')" ] || fail "ids differ"

# Several LUNs, one bad: the good ones are printed, one line for the bad,
# rc 1. Two arguments reaching the same LUN (a.img twice) are one LUN with
# two paths, each with its state and its own probed capabilities; b.img is
# another LUN.
truncate -s 32M "$dir/b.img"
rc=0
j3=$("$CLUSTERFS" lun info --json "$dir/a.img" "$dir/nope" "$dir/b.img" "$dir/a.img" 2>"$dir/err") || rc=$?
[ $rc = 1 ] || fail "mixed rc=$rc"
[ "$(echo "$j3" | jq length)" = 2 ] || fail "mixed: $j3"
[ "$(echo "$j3" | jq -r '.[0].lun')" = "$dir/a.img" ] || fail "first LUN: $j3"
[ "$(echo "$j3" | jq '.[0].paths | length')" = 2 ] || fail "a.img paths: $j3"
[ "$(echo "$j3" | jq '.[0].multipath')" = true ] || fail "a.img multipath: $j3"
[ "$(echo "$j3" | jq -r '[.[0].paths[].state] | join(",")')" = active,active ] || fail "states: $j3"
[ "$(echo "$j3" | jq -r '[.[0].paths[].index] | join(",")')" = 0,1 ] || fail "indexes: $j3"
[ "$(echo "$j3" | jq -r '.[0].paths[1].id')" = "$(echo "$j3" | jq -r '.[0].id')" ] || fail "path id: $j3"
[ "$(echo "$j3" | jq '.[0].paths[1].caps.compare_and_write')" = true ] || fail "path caps: $j3"
[ "$(echo "$j3" | jq '.[0].paths[0] | has("pings") and has("failures") and has("last_error")')" = true ] ||
    fail "path counters: $j3"
[ "$(echo "$j3" | jq '.[1].paths | length')" = 1 ] || fail "b.img paths: $j3"
[ "$(echo "$j3" | jq '.[1].capacity_bytes')" = 33554432 ] || fail "b.img: $j3"
[ "$(echo "$j3" | jq -r '.[1].paths[0].state')" = active ] || fail "b.img state: $j3"
t3=$("$CLUSTERFS" lun info "$dir/a.img" "$dir/a.img") || fail "grouped text rc=$?"
[ "$(echo "$t3" | grep -c "^$dir/a.img\$")" = 1 ] || fail "grouped text: not one LUN: $t3"
echo "$t3" | grep -q "Paths: *2 (policy service-time)" || fail "grouped text: $t3"
echo "$t3" | grep -Eq "^ +\|- 0 file +$dir/a.img active reads=" || fail "grouped text path 0: $t3"
echo "$t3" | grep -Eq '^ +`- 1 file +'"$dir/a.img"' active reads=' || fail "grouped text path 1: $t3"
echo "$t3" | grep -Eq "^ +id=file\..* ats=yes pr=no" || fail "grouped text caps: $t3"
[ "$(cat "$dir/err")" = "clusterfs: $dir/nope: No such file or directory" ] ||
    fail "missing file message: $(cat "$dir/err")"

rc=0
"$CLUSTERFS" lun info "file://$dir/small.img?block_size=4096" >/dev/null 2>"$dir/err" || rc=$?
[ $rc = 1 ] || fail "small file rc=$rc"
[ "$(wc -l <"$dir/err")" = 1 ] || fail "small file: not one line: $(cat "$dir/err")"
grep -q "^clusterfs: file://$dir/small.img?block_size=4096: 1000 bytes is smaller than one 4096-byte block$" \
    "$dir/err" || fail "small file message: $(cat "$dir/err")"

# iSCSI URI with a password, nothing listening: one line, no password.
rc=0
timeout 20 "$CLUSTERFS" lun info --timeout 2000 "iscsi://alice%s3cret@127.0.0.1:1/iqn.2026-11.test:none/0" \
    >/dev/null 2>"$dir/err" || rc=$?
[ $rc = 1 ] || fail "iscsi refused rc=$rc"
[ "$(wc -l <"$dir/err")" = 1 ] || fail "iscsi: not one line: $(cat "$dir/err")"
grep -q "s3cret" "$dir/err" && fail "password shown: $(cat "$dir/err")"
grep -q "^clusterfs: iscsi://alice@127.0.0.1:1/" "$dir/err" || fail "iscsi message: $(cat "$dir/err")"

# Usage errors: exit 2.
for args in "lun" "lun info" "lun info --block-size 1000 $dir/a.img" "lun frob" \
            "lun info --timeout x $dir/a.img" "lun info --bogus $dir/a.img"; do
    rc=0
    # shellcheck disable=SC2086
    "$CLUSTERFS" $args >/dev/null 2>&1 || rc=$?
    [ $rc = 2 ] || fail "'clusterfs $args' rc=$rc, expected 2"
done
"$CLUSTERFS" lun --help | grep -q "usage: clusterfs lun info" || fail "lun --help"

[ $fails = 0 ] || exit 1
echo "OK"
