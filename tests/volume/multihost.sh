#!/bin/bash
# Several hosts (volhost processes, each with its own LUN session, heartbeat
# slot and journal) on one volume, on a file LUN (arg "file", default), on
# a tgt LUN over iSCSI (arg "tgt": no COMPARE AND WRITE, so Disk Paxos and
# delta-lease joins; smaller counts) or on an istgt LUN (arg "istgt":
# COMPARE AND WRITE and persistent reservations):
#  1. 2 then 4 hosts create, write, rename and delete in a shared and in
#     private directories at once: check is clean, every host lists the same
#     tree, each host's entries are all there;
#  2. two hosts create the same name at the same moment, 10 times: exactly
#     one succeeds each time, the other gets EEXIST;
#  3. a file open on one host and unlinked on another is read on, and its
#     blocks are freed at the holder's last close;
#  4. kill -9 of a host in the middle of its work, and of a host holding the
#     metadata lock with a transaction in its journal: the next host breaks
#     the lock after the dead time, replays the journal; check is clean;
#  5. (tgt, istgt) SIGSTOP past the dead time, then SIGCONT: nothing it
#     writes lands.
set -euo pipefail
: "${CLUSTERFS:?}" "${VOLHOST:?}"
MODE=${1:-file}
T=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$T"; }
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
if [ "$MODE" = tgt ]; then
    . "$SRCDIR/tests/lib/tgt.sh"
    tgt_require
    tgt_start
    tgt_on_exit cleanup
    tgt_add_target 1 iqn.2026-12.org.clusterfs.test:vol
    LUNS=()
    for i in 1 2 3 4; do tgt_add_lun 1 $i 1G; LUNS+=("$(tgt_uri 1 $i)"); done
    IO=1 N2=30 N4=12 RACES=3 DEAD_MS=6000
elif [ "$MODE" = istgt ]; then
    . "$SRCDIR/tests/lib/istgt.sh"
    istgt_require
    istgt_init
    for i in 1 2 3 4; do istgt_add_lun vol$i 1G; done
    istgt_start
    istgt_on_exit cleanup
    LUNS=()
    for i in 1 2 3 4; do LUNS+=("$(istgt_uri vol$i)"); done
    IO=1 N2=40 N4=15 RACES=5 DEAD_MS=6000
else
    trap cleanup EXIT
    LUN=lun.img
    IO=0.5 N2=150 N4=60 RACES=10 DEAD_MS=3000
fi
# Each scenario formats a fresh LUN: the hosts leave a Write Exclusive - All
# Registrants reservation behind on istgt, which refuses an unregistered
# initiator's writes (the format's).
NEXT=0
fmt() {
    if [ "$MODE" != file ]; then
        LUN=${LUNS[$NEXT]}; NEXT=$((NEXT + 1))
        "$CLUSTERFS" format --force --io-timeout $IO --max-hosts 4 --journal-size 2M "$LUN" >/dev/null
    else
        "$CLUSTERFS" format --force --io-timeout $IO --max-hosts 4 --journal-size 2M --size 1G "$LUN" >/dev/null
    fi
}
check_clean() {
    "$CLUSTERFS" check "$LUN" > check.out 2>&1 || fail "check: $(cat check.out)"
}

run_hosts() { # N_PER_HOST HOST...
    local n=$1; shift
    local hp=()
    for h in "$@"; do "$VOLHOST" "$LUN" "$h" work "$n" > "$h.out" 2> "$h.err" & hp+=($!); pids+=($!); done
    for p in "${hp[@]}"; do wait "$p" || fail "a host failed: $(cat ./*.err)"; done
    for h in "$@"; do grep -q DONE "$h.out" || fail "$h: $(cat "$h.err")"; done
}

expect_tree() { # N HOST...
    local n=$1; shift
    "$VOLHOST" "$LUN" lister1 list > l1 2>/dev/null
    "$VOLHOST" "$LUN" lister2 list > l2 2>/dev/null
    cmp -s l1 l2 || fail "two hosts list different trees"
    local kept=$(( n - (n + 4) / 5 )) renamed=$(( (n + 2) / 3 ))
    for h in "$@"; do
        [ "$(grep -c "^/shared/$h-[0-9]* 4096$" l1)" = $kept ] || fail "$h: shared files"
        [ "$(grep -c "^/shared/$h-r-[0-9]* 100$" l1)" = $renamed ] || fail "$h: renamed files"
        [ "$(grep -c "^/$h/p-[0-9]* 100$" l1)" = $(( n - renamed )) ] || fail "$h: private files"
    done
}

fmt
run_hosts $N2 h1 h2
check_clean
expect_tree $N2 h1 h2
echo "2 hosts: ok"

fmt
run_hosts $N4 h1 h2 h3 h4
check_clean
expect_tree $N4 h1 h2 h3 h4
echo "4 hosts: ok"

for i in $(seq 1 $RACES); do
    "$VOLHOST" "$LUN" ra race "same-$i" > ra.out 2>/dev/null & a=$!
    "$VOLHOST" "$LUN" rb race "same-$i" > rb.out 2>/dev/null & b=$!
    pids+=($a $b)
    wait $a; wait $b
    [ "$(cat ra.out rb.out | sort | tr '\n' ' ')" = "CREATED EXISTS " ] ||
        fail "race $i: $(cat ra.out rb.out)"
done
check_clean
echo "same name from two hosts: ok"

# A file open on one host, unlinked by another: the holder reads it on, and
# its blocks are freed at the holder's last close (check clean before and
# after, free space back to what it was).
fmt
free0=$("$CLUSTERFS" status --json "$LUN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["free_bytes"])')
"$VOLHOST" "$LUN" holder hold 6 > holder.out 2> holder.err & hpid=$!; pids+=($hpid)
for i in $(seq 1 100); do grep -q HOLDING holder.out && break; sleep 0.1; done
grep -q HOLDING holder.out || fail "holder: $(cat holder.err)"
"$VOLHOST" "$LUN" remover rm holder-open > rm.out 2> rm.err || fail "rm: $(cat rm.err)"
check_clean
free1=$("$CLUSTERFS" status --json "$LUN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["free_bytes"])')
[ "$free1" -lt "$free0" ] || fail "the open file's blocks were freed while it was open"
wait $hpid || fail "holder: $(cat holder.err)"
grep -q RELEASED holder.out || fail "holder did not finish"
check_clean
free2=$("$CLUSTERFS" status --json "$LUN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["free_bytes"])')
[ "$free2" = "$free0" ] || fail "blocks not freed after the last close ($free0 before, $free2 after)"
echo "open on one host, unlinked on another: ok"

fmt
"$VOLHOST" "$LUN" victim work 1000000 > victim.out 2> victim.err & v=$!; pids+=($v)
if [ "$MODE" != file ]; then sleep 8; else sleep 2; fi
kill -9 $v; wait $v 2>/dev/null || true
start=$(date +%s%N)
"$VOLHOST" "$LUN" survivor work 20 > survivor.out 2> survivor.err || fail "survivor: $(cat survivor.err)"
took=$(( ($(date +%s%N) - start) / 1000000 ))
grep -q DONE survivor.out || fail "survivor did not finish"
# Recovered if it was killed holding the metadata lock; otherwise its
# journal was empty (every operation checkpoints before it releases).
rec=no; grep -q "recovering host victim" survivor.err && rec=yes
check_clean
grep -q "victim" <("$VOLHOST" "$LUN" lister list 2>/dev/null) || fail "the victim's committed work is gone"
echo "kill -9: ok (recovered: $rec; survivor done after ${took} ms; dead time $DEAD_MS ms)"

# Killed holding the metadata lock, with a transaction in its journal: the
# next host breaks the lock, replays the journal (the file is there), check
# is clean.
( "$VOLHOST" "$LUN" dier die-holding from-the-dead > dier.out 2> dier.err ) 2>/dev/null || true
grep -q DYING dier.out || fail "dier: $(cat dier.err)"
"$VOLHOST" "$LUN" heir work 5 > heir.out 2> heir.err || fail "heir: $(cat heir.err)"
grep -q "recovering host dier .*replayed 1 journal transaction" heir.err ||
    fail "no replay of the dead holder's journal: $(cat heir.err)"
check_clean
grep -q "^/from-the-dead 0$" <("$VOLHOST" "$LUN" lister list 2>/dev/null) ||
    fail "the dead holder's committed create is gone"
echo "died holding the lock: ok (journal replayed by the next host)"

# SIGSTOP past the dead time, recovered by another host, then SIGCONT: the
# target refuses the paused host's writes (its key was preempted), it stops
# with an error, and nothing it wrote lands (check clean). iSCSI only: a file
# LUN has no reservations, and a host paused inside the file LUN's OFD
# byte-range lock would block the others (docs/locking.md).
if [ "$MODE" != file ]; then
    "$VOLHOST" "$LUN" sleeper work 1000000 > sleeper.out 2> sleeper.err & s=$!; pids+=($s)
    sleep 8
    kill -STOP $s
    "$VOLHOST" "$LUN" waker work 10 > waker.out 2> waker.err || fail "waker: $(cat waker.err)"
    # Recovered if it was paused holding the metadata lock; otherwise the
    # waker never needed it. Either way it is past its self-fence deadline.
    rec=no; grep -q "recovering host sleeper" waker.err && rec=yes
    kill -CONT $s
    rc=0; for i in $(seq 1 100); do kill -0 $s 2>/dev/null || break; sleep 0.1; done
    if kill -0 $s 2>/dev/null; then fail "the paused host still runs 10 s after SIGCONT"; fi
    wait $s || rc=$?
    [ $rc != 0 ] || fail "the paused host finished its work after being recovered"
    check_clean
    "$VOLHOST" "$LUN" lister3 list > l3 2>/dev/null
    grep -q "^/waker/" l3 || fail "the waker's work is gone"
    echo "SIGSTOP past the dead time: ok (recovered: $rec; paused host exited $rc: $(tail -1 sleeper.err))"
fi
echo PASS
