#!/bin/bash
# Crash safety of the sparse (monolithicSparse) write path. A workload
# (crash-workload: grain allocations, partial and whole, in two grain tables;
# overwrites of allocated grains; FUA writes; whole-grain zeroes; NO_HOLE
# zeroes; discards; flushes) runs under the LD_PRELOAD shim
# sparse-crash-shim.so, which ends the process right before its Nth
# pwrite/fsync/fdatasync/fallocate on the image, for N = 1, 2, ... (kill:
# every point, or an even sample when there are more than
# $SPARSE_CRASH_POINTS; power: half that sample plus every fsync/fdatasync):
#   kill:  the process dies (kill -9): everything written so far stays;
#   power: a power cut: a random half of the 4 KiB pages written since the
#          last fsync of the image is lost, then the process dies.
# After every crash: `qemu-img check` finds no corruption; `vdisk check`
# finds nothing but leaked grains and crash leftovers it can repair (a grain
# table entry whose redundant copy differs: the primary wins), `vdisk check
# --repair` repairs exactly those and the image then checks clean with both
# tools; before and after the repair, every flushed write (kill: every
# completed write, except, in the delta, grains first written since the last
# flush, whose entries wait for the next flush: such a grain reads whole as
# of that flush) reads back exactly and every other 512-byte sector reads its
# old data or data written to it since (crash-workload verify), and QEMU
# reads the same bytes as our library; the image takes more writes and
# stays clean.
set -euo pipefail
for p in qemu-img jq cmp; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}" "${CRASH_WORKLOAD:?}" "${SPARSE_CRASH_SHIM:?}"
. "$SRCDIR/tests/lib/common.sh"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then tmpdir T /dev/shm; else tmpdir T; fi
cd "$T"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
W=$CRASH_WORKLOAD
SEED=${SPARSE_CRASH_SEED:-7} PRE=34 LAST=84 MAX=${SPARSE_CRASH_POINTS:-24}

# two layouts: a thin disk alone, and the top of a snapshot chain (a delta
# whose unallocated grains read the parent's data, so a lost grain write or
# a swapped data/entry order shows as zeroes instead of the parent's bytes)
mkdir thin delta
"$VDISK" create --type thin thin/disk.vmdk 40M >/dev/null
"$W" run thin/disk.vmdk pre.log "$SEED" 0 $PRE || fail "prefill workload"
cp thin/disk.vmdk delta/disk.vmdk
"$VDISK" snapshot create delta/disk.vmdk s1 >/dev/null

qcheck() { # IMG WHAT: qemu-img check: no corruption (3: leaks only)
    local rc=0
    qemu-img check -q -f vmdk "$1" >qc 2>&1 || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "$2: qemu-img check exit $rc: $(tail -3 qc)"
}
# clean IMG WHAT: sets lag (crash leftovers found) and leaks. A grain table
# entry whose redundant copy differs from the primary (a crash between the
# two writes) must be reported as repairable; anything else fails.
clean() {
    local j r other
    qcheck "$1" "$2, before repair"
    j=$("$VDISK" check --json "$1" 2>&1) || true
    r=$(echo "$j" | jq -r '[.problems[] | select(.repairable and (.problem | test("primary and redundant tables differ$")))] as $lag |
        "\($lag | length) \(.leaked_grains) \([.problems[] | select(.repairable and (.problem | test("primary and redundant tables differ$")) | not) | .problem] | join("; "))"' 2>/dev/null) ||
        fail "$2: vdisk check: $j"
    read -r lag leaks other <<<"$r"
    [ -z "$other" ] || fail "$2: vdisk check: $other"
}
repair() { # IMG WHAT: check --repair fixes exactly the $lag leftovers
    [ "$lag" -gt 0 ] || return 0
    local j
    j=$("$VDISK" check --repair --json "$1" 2>&1) || fail "$2: check --repair: $j"
    [ "$(echo "$j" | jq '[.errors, .repaired]|join(" ")' -r)" = "$lag $lag" ] ||
        fail "$2: check --repair did not repair the $lag leftovers: $j"
    j=$("$VDISK" check --json "$1" 2>&1) || fail "$2: check after --repair: $j"
    [ "$(echo "$j" | jq .errors)" = 0 ] || fail "$2: check after --repair: $j"
    qcheck "$1" "$2, after repair"
}
verify() { # IMG WHAT MODE: our reads against the model, QEMU's against ours
    out=$("$W" verify "$1" w.log "$SEED" $PRE $LAST $3 lib.raw 2>&1) || fail "$2: $out"
    qemu-img convert -f vmdk -O raw "$1" qemu.raw
    cmp -s lib.raw qemu.raw || fail "$2: QEMU reads other bytes than vdisk: $(cmp lib.raw qemu.raw)"
}

for layout in thin delta; do
# count the crash points
rm -rf w w.log && cp -a $layout w
SPARSE_CRASH_FILE=w/disk.vmdk SPARSE_CRASH_COUNT_FILE=count SPARSE_CRASH_SYNCS_FILE=syncs \
    LD_PRELOAD="$SPARSE_CRASH_SHIM" \
    "$W" run w/disk.vmdk w.log "$SEED" $PRE $LAST || fail "$layout: workload without a crash"
points=$(cat count)
[ "$points" -gt 20 ] || fail "$layout: only $points write calls counted (shim not active?)"
"$W" verify w/disk.vmdk w.log "$SEED" $PRE $LAST kill >/dev/null ||
    fail "$layout: workload without a crash reads wrong"
sample() { # N: an even sample of N crash points, and the last
    local stride=$(( points > $1 ? (points + $1 - 1) / $1 : 1 ))
    seq 1 "$stride" "$points"; echo "$points"
}
# kill: an even sample ($MAX); power: half as many, plus every
# fsync/fdatasync: a power cut right before a sync is where a write the sync
# should have ordered (a flush's GT sectors after their grains' data) can
# reach the disk while what it depends on does not. (A kill right before a
# sync leaves what a kill right after the previous write leaves.)
kill_list=$(sample "$MAX" | sort -nu)
power_list=$( (sample $((MAX / 2)); cat syncs) | sort -nu)
for mode in kill power; do
    tested=0 leaked=0 newer=0 lagged=0 lost=0
    vmode=$mode; [ $mode$layout != killdelta ] || vmode=kill-delta
    list=$kill_list; [ $mode = kill ] || list=$power_list
    for n in $list; do
        what="$layout, $mode at write call $n"
        rm -rf w w.log && cp -a $layout w
        rc=0
        SPARSE_CRASH_FILE=w/disk.vmdk SPARSE_CRASH_AT=$n SPARSE_CRASH_MODE=$mode SPARSE_CRASH_SEED=$n \
            LD_PRELOAD="$SPARSE_CRASH_SHIM" "$W" run w/disk.vmdk w.log "$SEED" $PRE $LAST 2>err || rc=$?
        [ $rc = 99 ] || fail "$what: expected the crash (exit 99), got exit $rc: $(cat err)"
        clean w/disk.vmdk "$what"
        leaked=$((leaked + leaks)) lagged=$((lagged + lag))
        verify w/disk.vmdk "$what" $vmode
        case $out in *" 0 read a newer write"*) ;; *) newer=$((newer + 1)) ;; esac
        case $out in *" 0 grains read as of the last flush"*) ;; *) lost=$((lost + 1)) ;; esac
        repair w/disk.vmdk "$what"
        [ "$lag" = 0 ] || verify w/disk.vmdk "$what, after check --repair" $vmode
        # the crashed image takes more writes (new allocations after the lost
        # ones) and stays clean
        "$W" run w/disk.vmdk more.log $((SEED + 1)) 0 16 || fail "$what: writes after the crash"
        clean w/disk.vmdk "$what, then 16 more ops"
        [ "$lag" = 0 ] || fail "$what, then 16 more ops and a close: $lag entries differ"
        tested=$((tested + 1))
    done
    echo "$layout, $mode: crashed at $tested of $points write calls ($(wc -l <syncs) syncs):" \
         "clean, flushed data intact" \
         "($leaked leaked grains in all, $newer crashes kept some unflushed data," \
         "$lost lost whole unflushed grains, $lagged grain table entries differing from" \
         "their redundant copy, repaired by check --repair)"
done
done
echo OK
