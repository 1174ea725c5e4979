#!/bin/bash
# Crash safety of snapshot create / revert / delete and linked clone: the
# command is killed (by the LD_PRELOAD shim snap-crash-shim.so) right before
# its 1st, 2nd, ... Nth file-changing system call. After every crash point:
# the disk's path opens and reads either the old or the new contents, every
# image passes qemu-img check, and re-running the command finishes the job
# (or says it was already done) with the expected end state.
set -euo pipefail
for p in qemu-img jq; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${VDISK_IO:?}" "${SNAP_CRASH_SHIM:?}"
# tmpfs when there is one: a process crash does not need the disk, and fsync is free
. "$SRCDIR/tests/lib/common.sh"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then tmpdir T /dev/shm; else tmpdir T; fi
cd "$T"
# an ASan build must tolerate a preloaded library ahead of its runtime
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

mkdir base && cd base
"$VDISK" create disk.vmdk 16M >/dev/null
truncate -s 16M ../s1.raw
"$VDISK_IO" write disk.vmdk ../s1.raw 51 30
"$VDISK" snapshot create disk.vmdk s1 >/dev/null
cp ../s1.raw ../m.raw
"$VDISK_IO" write disk.vmdk ../m.raw 52 30
cd ..

same_as_one_of() { # IMAGE RAW...: IMAGE reads as one of the RAW files
    local img=$1; shift
    for r in "$@"; do "$VDISK_IO" compare "$img" "$r" 2>/dev/null && return 0; done
    return 1
}
check_all() {
    for f in *.vmdk; do
        case "$f" in *-flat.vmdk) continue ;; esac
        qemu-img check "$f" >/dev/null 2>&1 || fail "$1: qemu-img check $f: $(qemu-img check "$f" 2>&1 | tail -2)"
    done
}
snaps() { "$VDISK" snapshot list --json disk.vmdk | jq -r '[.snapshots[].name] | join(",")'; }

# run_case NAME "COMMAND ARGS" OK_RAWS... -- FINAL_CHECK_FUNCTION
run_case() {
    local name=$1 cmd=$2 final=$3; shift 3
    local n=0 points=0
    rm -rf w && cp -a base w
    (cd w && SNAP_CRASH_COUNT_FILE=../count LD_PRELOAD="$SNAP_CRASH_SHIM" $VDISK $cmd >/dev/null 2>&1)
    points=$(cat count)
    [ "$points" -gt 3 ] || fail "$name: only $points file-changing calls counted (shim not active?)"
    # every crash point when there are few (<= 12), else an even spread plus the last
    local stride=$(( points > 12 ? points / 12 : 1 ))
    local list=$(seq 0 "$stride" $((points - 1)); echo $((points - 1)))
    # LAST_POINTS=K: every one of the last K points instead (where a long
    # copy ends in the few calls that publish its result)
    [ -z "${LAST_POINTS:-}" ] || list=$(seq $((points > LAST_POINTS ? points - LAST_POINTS : 0)) $((points - 1)))
    for n in $(echo "$list" | sort -nu); do
        rm -rf w && cp -a base w
        set +e
        (cd w && SNAP_CRASH_AFTER=$n LD_PRELOAD="$SNAP_CRASH_SHIM" $VDISK $cmd >/dev/null 2>&1)
        rc=$?
        set -e
        [ $rc = 99 ] || fail "$name: expected a crash after $n calls, got exit $rc"
        cd w
        same_as_one_of disk.vmdk "$@" || fail "$name: crash after $n calls: disk.vmdk reads neither old nor new contents"
        check_all "$name, crash after $n calls"
        # re-run: finishes, or reports it was done already
        $VDISK $cmd >/dev/null 2>err || grep -q "exists already\|no snapshot named" err ||
            fail "$name: re-run after crash at $n: $(cat err)"
        $final || fail "$name: end state after crash at $n and re-run"
        [ "$n" != $((points - 1)) ] || check_all "$name, end state after crash at $n"
        cd ..
    done
    echo "$name: $points file-changing calls, crash tested after $(echo "$list" | sort -nu | wc -l) of them: OK"
}

final_create() { [ "$(snaps)" = "s1,s2" ] && "$VDISK_IO" compare disk.vmdk ../m.raw &&
                 "$VDISK_IO" compare disk-000002.vmdk ../m.raw && [ ! -e .disk.vmdk.snap-tmp ] &&
                 [ "$(stat -c %a disk-000002.vmdk)" = 444 ] &&
                 [ "$(ls -- *.vmdk | wc -l)" = 3 ]; }
run_case create "snapshot create disk.vmdk s2" final_create ../m.raw

final_revert() { [ "$(snaps)" = "s1" ] && "$VDISK_IO" compare disk.vmdk ../s1.raw; }
run_case revert "snapshot revert disk.vmdk s1" final_revert ../m.raw ../s1.raw

final_delete() { [ "$(snaps)" = "" ] && "$VDISK_IO" compare disk.vmdk ../m.raw &&
                 [ ! -e disk-000001.vmdk ] && [ "$(qemu-img info --backing-chain --output=json disk.vmdk | jq length)" = 1 ]; }
run_case delete "snapshot delete disk.vmdk s1" final_delete ../m.raw

final_clone() { "$VDISK_IO" compare disk.vmdk ../m.raw && "$VDISK_IO" compare lc.vmdk ../m.raw &&
                "$VDISK" snapshot list --json disk.vmdk | jq -e '.current_name | startswith("clone:lc.vmdk")' >/dev/null; }
run_case linked-clone "clone --linked disk.vmdk lc.vmdk" final_clone ../m.raw

# a thick full clone interrupted between its renames must not block the next
final_thick() { "$VDISK_IO" compare full.vmdk ../m.raw && [ ! -e .full-clonetmp.vmdk ] &&
                [ ! -e .full-clonetmp-flat.vmdk ] && [ -e full-flat.vmdk ]; }
LAST_POINTS=30 run_case thick-clone "clone --type thick disk.vmdk full.vmdk" final_thick ../m.raw
echo OK
