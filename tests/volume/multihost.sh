#!/bin/bash
# Several hosts (volhost processes, each with its own LUN session, heartbeat
# slot and journal) on one volume, on a file LUN:
#  1. 2 then 4 hosts create, write, rename and delete in a shared and in
#     private directories at once: check is clean, every host lists the same
#     tree, each host's entries are all there;
#  2. two hosts create the same name at the same moment, 10 times: exactly
#     one succeeds each time, the other gets EEXIST;
#  3. kill -9 of a host in the middle of its work: the next host breaks its
#     lock after the dead time, replays its journal; check is clean.
set -euo pipefail
: "${CLUSTERFS:?}" "${VOLHOST:?}"
T=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
fmt() { "$CLUSTERFS" format --force --io-timeout 0.5 --max-hosts 4 --journal-size 2M --size 1G lun.img >/dev/null; }
check_clean() {
    "$CLUSTERFS" check lun.img > check.out 2>&1 || fail "check: $(cat check.out)"
}

run_hosts() { # N_PER_HOST HOST...
    local n=$1; shift
    local hp=()
    for h in "$@"; do "$VOLHOST" lun.img "$h" work "$n" > "$h.out" 2> "$h.err" & hp+=($!); pids+=($!); done
    for p in "${hp[@]}"; do wait "$p" || fail "a host failed: $(cat ./*.err)"; done
    for h in "$@"; do grep -q DONE "$h.out" || fail "$h: $(cat "$h.err")"; done
}

expect_tree() { # N HOST...
    local n=$1; shift
    "$VOLHOST" lun.img lister1 list > l1 2>/dev/null
    "$VOLHOST" lun.img lister2 list > l2 2>/dev/null
    cmp -s l1 l2 || fail "two hosts list different trees"
    local kept=$(( n - (n + 4) / 5 )) renamed=$(( (n + 2) / 3 ))
    for h in "$@"; do
        [ "$(grep -c "^/shared/$h-[0-9]* 4096$" l1)" = $kept ] || fail "$h: shared files"
        [ "$(grep -c "^/shared/$h-r-[0-9]* 100$" l1)" = $renamed ] || fail "$h: renamed files"
        [ "$(grep -c "^/$h/p-[0-9]* 100$" l1)" = $(( n - renamed )) ] || fail "$h: private files"
    done
}

fmt
run_hosts 150 h1 h2
check_clean
expect_tree 150 h1 h2
echo "2 hosts: ok"

fmt
run_hosts 60 h1 h2 h3 h4
check_clean
expect_tree 60 h1 h2 h3 h4
echo "4 hosts: ok"

for i in $(seq 1 10); do
    "$VOLHOST" lun.img ra race "same-$i" > ra.out 2>/dev/null & a=$!
    "$VOLHOST" lun.img rb race "same-$i" > rb.out 2>/dev/null & b=$!
    pids+=($a $b)
    wait $a; wait $b
    [ "$(cat ra.out rb.out | sort | tr '\n' ' ')" = "CREATED EXISTS " ] ||
        fail "race $i: $(cat ra.out rb.out)"
done
check_clean
echo "same name from two hosts: ok"

fmt
"$VOLHOST" lun.img victim work 1000000 > victim.out 2> victim.err & v=$!; pids+=($v)
sleep 2
kill -9 $v; wait $v 2>/dev/null || true
start=$(date +%s%N)
"$VOLHOST" lun.img survivor work 20 > survivor.out 2> survivor.err || fail "survivor: $(cat survivor.err)"
took=$(( ($(date +%s%N) - start) / 1000000 ))
grep -q DONE survivor.out || fail "survivor did not finish"
grep -q "recovering host victim" survivor.err || fail "no recovery of the victim: $(cat survivor.err)"
check_clean
grep -q "victim" <("$VOLHOST" lun.img lister list 2>/dev/null) || fail "the victim's committed work is gone"
echo "kill -9: ok (survivor done after ${took} ms; dead time 3000 ms)"
echo PASS
