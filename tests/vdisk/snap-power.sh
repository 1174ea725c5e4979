#!/bin/bash
# Power cuts during snapshot create / delete / revert of a disk with 20
# snapshots (issue 13 item 6). The command runs under snap-crash-shim.so in
# power mode: right before its Nth file-changing call, every write since
# each file's last fsync loses a random half of its 4 KiB pages, then the
# process dies. After every cut: the disk's path reads its old or its new
# contents; every snapshot still in the tree reads exactly what it froze;
# every image passes qemu-img check; vdisk check finds nothing but what
# --repair fixes (and leaked grains); re-running the command finishes the
# job with the expected end state.
#   SNAP_POWER_SNAPS   snapshots in the tree (default 20)
#   SNAP_POWER_POINTS  crash points per operation: an even sample of this
#                      many plus the last (default 6); "all": every one
#   SNAP_POWER_SEEDS   page-loss patterns tried at each point (default 1)
set -euo pipefail
for p in qemu-img jq; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}" "${SNAP_CRASH_SHIM:?}"
T=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d); trap 'chmod -R u+w "$T"; rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
N=${SNAP_POWER_SNAPS:-20} POINTS=${SNAP_POWER_POINTS:-6} SEEDS=${SNAP_POWER_SEEDS:-1}

mkdir base raws
cd base
"$VDISK" create disk.vmdk 8M >/dev/null
truncate -s 8M ../raws/m.raw
for i in $(seq 1 "$N"); do
    "$VDISK_IO" write disk.vmdk ../raws/m.raw $((100 + i)) 6
    cp ../raws/m.raw "../raws/s$i.raw"
    "$VDISK" snapshot create disk.vmdk "s$i" >/dev/null
done
"$VDISK_IO" write disk.vmdk ../raws/m.raw 99 6
cd ..
R=$PWD/raws

snaps() { "$VDISK" snapshot list --json disk.vmdk | jq -r '[.snapshots[].name] | join(",")'; }
# the whole tree: ids, names, files, CIDs, parents, and where the disk sits
tree() { "$VDISK" snapshot list --json disk.vmdk 2>/dev/null |
         jq -r '"\(.current) " + ([.snapshots[] | "\(.id):\(.name):\(.file):\(.cid):\(.parent)"] | join(","))' 2>&1; }
# every snapshot in the tree reads what it froze (a deleted one whose file
# is gone is the one being deleted)
frozen_ok() { # GONE_OK_NAME
    local name file
    while read -r name file; do
        if [ ! -e "$file" ]; then
            [ "$name" = "$1" ] || { echo "$name: $file is missing"; return 1; }
            continue
        fi
        "$VDISK_IO" compare "$file" "$R/$name.raw" >/dev/null 2>&1 || { echo "$name: $file reads other data"; return 1; }
    done < <("$VDISK" snapshot list --json disk.vmdk | jq -r '.snapshots[] | "\(.name) \(.file)"')
}
checks() { # WHAT: every image passes qemu-img check; vdisk check: only repairable problems
    local f j
    for f in *.vmdk; do
        local rc=0
        qemu-img check -q "$f" >qc 2>&1 || rc=$?
        [ $rc = 0 ] || [ $rc = 3 ] || fail "$1: qemu-img check $f exit $rc: $(tail -2 qc)"
    done
    j=$("$VDISK" check --json disk.vmdk 2>&1) || true
    echo "$j" | jq -e '.errors == .repairable' >/dev/null 2>&1 || fail "$1: vdisk check: $j"
    if ! echo "$j" | jq -e '.errors == 0' >/dev/null; then
        "$VDISK" check --repair disk.vmdk >/dev/null 2>&1 || fail "$1: check --repair"
    fi
}

# run_case NAME "COMMAND" FINAL GONE_OK OK_RAW...
run_case() {
    local name=$1 cmd=$2 final=$3 gone=$4; shift 4
    rm -rf w && cp -a base w
    (cd w && SNAP_CRASH_COUNT_FILE=../count LD_PRELOAD="$SNAP_CRASH_SHIM" $VDISK $cmd >/dev/null 2>&1)
    local points; points=$(cat count)
    [ "$points" -gt 3 ] || fail "$name: only $points file-changing calls counted (shim not active?)"
    local list
    if [ "$POINTS" = all ] || [ "$points" -le "$POINTS" ]; then
        list=$(seq 0 $((points - 1)))
    else
        list=$( (seq 0 $((points / POINTS)) $((points - 1)); echo $((points - 1))) | sort -nu)
    fi
    # the tree before and after the operation, without a crash
    local t_old t_new
    rm -rf w && cp -a base w
    t_old=$(cd w && tree)
    (cd w && $VDISK $cmd >/dev/null 2>&1) || fail "$name: without a crash"
    t_new=$(cd w && tree)
    local tested=0
    for n in $list; do
    for seed in $(seq 1 "$SEEDS"); do
        local what="$name, power cut before call $((n + 1)) of $points (pattern $seed)"
        rm -rf w && cp -a base w
        local rc=0
        (cd w && SNAP_CRASH_AFTER=$n SNAP_CRASH_MODE=power SNAP_CRASH_SEED=$((n * 100 + seed)) \
            LD_PRELOAD="$SNAP_CRASH_SHIM" $VDISK $cmd >/dev/null 2>&1) || rc=$?
        [ $rc = 99 ] || fail "$what: expected the crash, got exit $rc"
        cd w
        local ok=0 r
        for r in "$@"; do "$VDISK_IO" compare disk.vmdk "$R/$r" >/dev/null 2>&1 && ok=1 && break; done
        [ $ok = 1 ] || fail "$what: disk.vmdk reads neither old nor new contents: $("$VDISK" info disk.vmdk 2>&1 | tail -2)"
        out=$(frozen_ok "$gone") || fail "$what: $out"
        # the tree is the old one or the new one, never a mix (CIDs of the
        # deleted snapshot's children do not change)
        local t; t=$(tree)
        [ "$t" = "$t_old" ] || [ "$t" = "$t_new" ] ||
            fail "$what: the snapshot tree is neither the old nor the new one: $t"
        checks "$what"
        $VDISK $cmd >/dev/null 2>err || grep -q "exists already\|no snapshot named" err ||
            fail "$what: re-run: $(cat err)"
        $final || fail "$what: end state after the re-run"
        t=$(tree)
        [ "$t" = "$t_new" ] || fail "$what: tree after the re-run: $t, expected $t_new"
        out=$(frozen_ok "") || fail "$what: after the re-run: $out"
        checks "$what, after the re-run"
        cd ..
        tested=$((tested + 1))
    done
    done
    echo "$name: $points file-changing calls, $tested power cuts ($SEEDS patterns each): OK"
}

final_create() { [ "$(snaps)" = "$(seq -s, -f 's%g' 1 "$N"),new" ] && "$VDISK_IO" compare disk.vmdk "$R/m.raw" >/dev/null; }
cp "$R/m.raw" "$R/new.raw"
run_case create "snapshot create disk.vmdk new" final_create "" m.raw

mid=$((N / 2))
final_delete_mid() { ! snaps | tr , '\n' | grep -qx "s$mid" && "$VDISK_IO" compare disk.vmdk "$R/m.raw" >/dev/null; }
run_case delete-middle "snapshot delete disk.vmdk s$mid" final_delete_mid "s$mid" m.raw

final_delete_top() { ! snaps | tr , '\n' | grep -qx "s$N" && "$VDISK_IO" compare disk.vmdk "$R/m.raw" >/dev/null; }
run_case delete-newest "snapshot delete disk.vmdk s$N" final_delete_top "s$N" m.raw

rev=$((N / 4 + 1))
final_revert() { [ "$("$VDISK" snapshot list --json disk.vmdk | jq -r .current_name)" = "s$rev" ] &&
                 "$VDISK_IO" compare disk.vmdk "$R/s$rev.raw" >/dev/null; }
run_case revert "snapshot revert disk.vmdk s$rev" final_revert "" m.raw "s$rev.raw"
echo OK
