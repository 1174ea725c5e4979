#!/bin/bash
# Snapshots and clones as QEMU sees them: at every snapshot point every
# image passes `qemu-img check`, the live disk (qemu follows
# parentFileNameHint) and every frozen file compare identical with raw files
# holding the expected bytes, and `qemu-img info --backing-chain` shows the
# chain. Then revert, delete (consolidation into two children), linked
# clones (same and other folder), full clones, and the refusals.
set -euo pipefail
for p in qemu-img qemu-io jq; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}"
. "$SRCDIR/tests/lib/common.sh"
tmpdir T
cd "$T"
check_all() { # every image in the folder passes qemu-img check
    for f in *.vmdk vm2/*.vmdk; do
        [ -e "$f" ] || continue
        case "$f" in *-flat.vmdk) continue ;; esac
        qemu-img check "$f" >/dev/null 2>&1 || fail "qemu-img check $f ($1): $(qemu-img check "$f" 2>&1 | tail -3)"
    done
}
same() { qemu-img compare "$1" "$2" >/dev/null || fail "$1 differs from $2 ($3)"; }
chain_len() { qemu-img info --backing-chain --output=json "$1" | jq length; }
file_of() { "$VDISK" snapshot list --json disk.vmdk | jq -r --arg n "$1" '.snapshots[] | select(.name == $n) | .file'; }

"$VDISK" create disk.vmdk 64M
truncate -s 64M m.raw
"$VDISK_IO" write disk.vmdk m.raw 41 60
"$VDISK" snapshot create disk.vmdk s1 >/dev/null
cp m.raw s1.raw
check_all "after s1"
same disk.vmdk m.raw "live after s1"
same "$(file_of s1)" s1.raw "frozen s1"
[ "$(file_of s1)" = disk-000001.vmdk ] || fail "frozen name $(file_of s1)"
[ "$(stat -c %a disk-000001.vmdk)" = 444 ] || fail "frozen file is writable"
[ "$(chain_len disk.vmdk)" = 2 ] || fail "chain after s1"

"$VDISK_IO" write disk.vmdk m.raw 42 60
# QEMU writes into the live delta too
qemu-io -f vmdk -c 'write -P 0x5a 5M 200k' disk.vmdk >/dev/null
printf '\x5a%.0s' $(seq 1 204800) | dd of=m.raw bs=1k seek=5120 conv=notrunc status=none
"$VDISK" snapshot create disk.vmdk s2 >/dev/null
cp m.raw s2.raw
check_all "after s2"
same disk.vmdk m.raw "live after s2"
same "$(file_of s2)" s2.raw "frozen s2"
same "$(file_of s1)" s1.raw "frozen s1 after s2"
qemu-img info --backing-chain --output=json disk.vmdk >chain.json
jq -e 'length == 3 and (.[0]."backing-filename" == "disk-000002.vmdk") and
       (.[1]."backing-filename" == "disk-000001.vmdk") and (.[2] | has("backing-filename") | not)' \
    chain.json >/dev/null || fail "backing chain: $(cat chain.json)"
"$VDISK" snapshot list --json disk.vmdk >list.json
jq -e '.current_name == "s2" and (.snapshots | length == 2) and .snapshots[1].parent_name == "s1"' \
    list.json >/dev/null || fail "snapshot list --json: $(cat list.json)"
"$VDISK" snapshot list disk.vmdk | grep -q "s2.*current" || fail "text list"

# revert to s1, then branch: s1 gets a second child s3
"$VDISK_IO" write disk.vmdk m.raw 43 20
"$VDISK" snapshot revert disk.vmdk s1 >/dev/null
cp s1.raw m.raw
same disk.vmdk m.raw "after revert to s1"
[ "$(chain_len disk.vmdk)" = 2 ] || fail "chain after revert"
"$VDISK_IO" write disk.vmdk m.raw 44 40
"$VDISK" snapshot create disk.vmdk s3 >/dev/null
cp m.raw s3.raw
"$VDISK_IO" write disk.vmdk m.raw 45 40
check_all "after s3"
same disk.vmdk m.raw "live after s3"
same "$(file_of s3)" s3.raw "frozen s3"

# delete s1: its grains go into both children (s2 and s3)
f1=$(file_of s1)
"$VDISK" snapshot delete disk.vmdk s1 >/dev/null
[ ! -e "$f1" ] || fail "deleted snapshot file $f1 still there"
check_all "after delete s1"
same disk.vmdk m.raw "live after delete s1"
same "$(file_of s2)" s2.raw "s2 after delete s1"
same "$(file_of s3)" s3.raw "s3 after delete s1"
[ "$(chain_len disk.vmdk)" = 2 ] || fail "chain after delete s1"
# delete s3, the one the live delta sits on
"$VDISK" snapshot delete disk.vmdk s3 >/dev/null
same disk.vmdk m.raw "live after delete s3"
[ "$(chain_len disk.vmdk)" = 1 ] || fail "chain after delete s3"
check_all "after delete s3"

# linked clones, in the same folder and in another one
"$VDISK" clone --linked disk.vmdk lc.vmdk >/dev/null
mkdir vm2
# the clone's parent is outside its folder: refused unless that folder is allowed
if "$VDISK" clone --linked disk.vmdk vm2/far.vmdk 2>err; then fail "far clone without --allow-root"; fi
grep -q "outside the folders" err || fail "far clone refusal: $(cat err)"
"$VDISK" clone --allow-root "$PWD" --linked disk.vmdk vm2/far.vmdk >/dev/null
check_all "after linked clones"
same lc.vmdk m.raw "linked clone"
same vm2/far.vmdk m.raw "linked clone in another folder"
cp m.raw lc.raw
"$VDISK_IO" write lc.vmdk lc.raw 46 30
"$VDISK_IO" write disk.vmdk m.raw 47 30
same lc.vmdk lc.raw "linked clone after writes"
same disk.vmdk m.raw "source after clone writes"
qemu-img info --backing-chain --output=json lc.vmdk | jq -e 'length == 2' >/dev/null || fail "clone chain"
for c in "clone:lc.vmdk" "clone:far.vmdk"; do
    if "$VDISK" snapshot delete disk.vmdk "$c" 2>err; then fail "deleted $c with dependents"; fi
done
grep -q "far.vmdk" err || fail "refusal does not name the clone: $(cat err)"
if "$VDISK" snapshot create "$(file_of 'clone:lc.vmdk')" x 2>err; then fail "snapshot of a frozen file"; fi
grep -q "read-only\|frozen" err || fail "frozen refusal: $(cat err)"

# full clones flatten the chain; never overwrite
"$VDISK" clone lc.vmdk full.vmdk >/dev/null
"$VDISK" clone --type thick --progress disk.vmdk thick.vmdk 2>prog >/dev/null
grep -q "clone" prog || fail "no progress output"
same full.vmdk lc.raw "full clone"
same thick.vmdk m.raw "thick full clone"
[ "$(chain_len full.vmdk)" = 1 ] || fail "full clone has a backing file"
[ "$(qemu-img info --output=json thick.vmdk | jq -r '."format-specific".data["create-type"]')" = monolithicFlat ] || fail "thick clone type"
check_all "after full clones"
if "$VDISK" clone disk.vmdk full.vmdk 2>err; then fail "clone overwrote"; fi
grep -q "exists already" err || fail "clone overwrite message: $(cat err)"
if "$VDISK" snapshot revert disk.vmdk nosuch 2>err; then fail "revert to unknown"; fi
grep -q 'no snapshot named "nosuch"' err || fail "revert message: $(cat err)"

# once the clones are gone their frozen states can be consolidated
rm lc.vmdk vm2/far.vmdk
"$VDISK" snapshot delete disk.vmdk "clone:far.vmdk" >/dev/null
"$VDISK" snapshot delete disk.vmdk "clone:lc.vmdk" >/dev/null
same disk.vmdk m.raw "after deleting the clone states"
[ "$(chain_len disk.vmdk)" = 1 ] || fail "chain after clone states deleted"

# an image qemu-img made can be snapshotted, and qemu reads the result
qemu-img create -q -f vmdk q.vmdk 32M
qemu-io -f vmdk -c 'write -P 0x11 0 1M' q.vmdk >/dev/null
qemu-img convert -O raw q.vmdk q0.raw
"$VDISK" snapshot create q.vmdk base >/dev/null
qemu-io -f vmdk -c 'write -P 0x22 512k 1M' q.vmdk >/dev/null
qemu-img convert -O raw q.vmdk q1.raw
"$VDISK" snapshot revert q.vmdk base >/dev/null
same q.vmdk q0.raw "qemu-made image after revert"
check_all "end"
echo OK
