#!/bin/bash
# Joining a lockspace whose slots are all taken (file LUN, or tgt with PR):
#   a dead host's slot is taken by a new host after the dead time: recovery
#   hook called exactly once, slot at generation + 1, (tgt) the dead host's
#   PR key gone; `clusterfs locks` shows the dead host and its heartbeat age;
#   all slots live: join fails after a bounded time, "all N slots live";
#   two joiners racing for one dead slot: exactly one wins, the other fails;
#   a corrupt slot is never taken for a dead one (and left unchanged);
#   a join with another io_timeout or slot count than on disk is refused.
# Usage: locks-join.sh file [512|4096] | locks-join.sh tgt
set -euo pipefail
LOCKHOST=${LOCKHOST:?}
MODE=${1:-file}
if [ "$MODE" = tgt ]; then
    . "$SRCDIR/tests/lib/tgt.sh"
    . "$SRCDIR/tests/locking/lib.sh"
    tgt_require
    tgt_start
    tgt_on_exit lh_cleanup
    tgt_add_target 1 iqn.2026-11.org.clusterfs.test:join
    # one LUN per scenario: a killed host's key stays registered
    for l in 1 2 3 4; do tgt_add_lun 1 $l 16M; done
    LUN=0
    new_lun() {
        LUN=$((LUN + 1))
        URI=("$(tgt_uri 1 $LUN)" "$(tgt_uri 1 $LUN 127.0.0.2)")
    }
    IO=1000
    BSOPT=()
else
    . "$SRCDIR/tests/locking/lib.sh"
    BS=${2:-512}
    IMG="$LH_DIR/lun.img"
    truncate -s 16M "$IMG"
    URI=("file://$IMG?block_size=$BS")
    IO=500
    BSOPT=(--block-size "$BS")
    new_lun() { :; }
fi
DEAD=$((6 * IO))
BOUND=$((DEAD + 2 * IO)) # the joiner's watch: dead time + 2 renewals

# slot_of NAME: the slot a lockhost joined
slot_of() { sed -n 's/^JOINED slot \([0-9]*\) .*/\1/p' "$LH_DIR/$1.out"; }
key_of() { sed -n 's/^JOINED .* key \(0x[0-9a-f]*\)$/\1/p' "$LH_DIR/$1.out"; }
locks_json() { "$CLUSTERFS" locks --json --offset 8 "${BSOPT[@]}" "$@" "${URI[0]}"; }

# fill N: prep N slots, start N hosts h1..hN that stay joined
# (FILL_EXTRA: --paxos for a paxos lockspace)
FILL_EXTRA=()
fill() {
    local i
    new_lun
    "$LOCKHOST" prep "${FILL_EXTRA[@]}" --io-timeout $IO --hosts "$1" "${URI[@]}" ||
        fail "prep --hosts $1"
    for i in $(seq 1 "$1"); do
        lh_start "h$i" join "${FILL_EXTRA[@]}" --io-timeout $IO --linger 600000 "${URI[@]}"
    done
    for i in $(seq 1 "$1"); do lh_wait "h$i" JOINED 20; done
}

# ---- a dead host's slot is taken ------------------------------------------
fill 2
dslot=$(slot_of h2)
dkey=$(key_of h2)
kill -KILL "$PID_h2"
wait "$PID_h2" 2>/dev/null || true
# `clusterfs locks --settle` shows it dead, with its heartbeat age
js=$(locks_json --settle) || fail "clusterfs locks --settle"
echo "$js" | jq -e --argjson s "$dslot" --argjson d $DEAD '.[0].hosts[] | select(.slot == $s) |
    .name == "h2" and .state == "dead" and .heartbeat_age_ms >= $d and .generation == 1' \
    >/dev/null || fail "clusterfs locks: h2 not shown dead with age >= $DEAD ms: $js"
echo "$js" | jq -e --argjson r $IO '[.[0].hosts[] | select(.name == "h1")][0] |
    .state == "live" and .heartbeat_age_ms < 3 * $r' >/dev/null || fail "h1 not live: $js"
txt=$("$CLUSTERFS" locks --settle --offset 8 "${BSOPT[@]}" "${URI[0]}") || fail "clusterfs locks"
echo "$txt" | grep -Eq "^  $dslot +h2 +dead +1 +[0-9]+ +(>=)?[0-9]+\.[0-9]s$" ||
    fail "text output lacks the dead host and its age: $txt"
age=$(echo "$txt" | awk -v s="$dslot" '$1 == s {print $NF}' | tr -d '>=s')
awk -v a="$age" -v d=$DEAD 'BEGIN { exit !(a * 1000 >= d) }' || fail "age $age s < dead time: $txt"
echo "ok: clusterfs locks shows h2 dead, heartbeat age ${age}s (dead time ${DEAD} ms)"
t0=$(now_ms)
lh_start j1 join --io-timeout $IO --linger 300 "${URI[@]}"
wait "$PID_j1" || fail "j1 did not join the full lockspace with a dead host"
t1=$(now_ms)
[ "$(slot_of j1)" = "$dslot" ] || fail "j1 took slot $(slot_of j1), not the dead host's $dslot"
grep -q "^JOINED slot $dslot .* gen 2 " "$LH_DIR/j1.out" || fail "j1: slot not at generation 2"
[ "$(grep -c '^RECOVERED' "$LH_DIR/j1.out")" = 1 ] || fail "j1: recovery hook not called once"
grep -q "^RECOVERED h2 slot $dslot gen 1 key " "$LH_DIR/j1.out" || fail "j1: hook got the wrong host"
[ $((t1 - t0)) -ge $DEAD ] || fail "j1 took the slot after $((t1 - t0)) ms < dead time $DEAD ms"
[ $((t1 - t0)) -le $((BOUND + 4 * IO + 2000)) ] || fail "j1 took $((t1 - t0)) ms"
if [ "$MODE" = tgt ]; then
    keys=$("$LOCKHOST" prkeys "${URI[0]}") || fail "prkeys"
    echo "$keys" | grep -q "$dkey" && fail "the dead host's key $dkey is still registered: $keys"
    echo "$keys" | grep -q "$(key_of h1)" || fail "h1's key is gone: $keys"
    grep -q "^RECOVERED h2 .* registered 0$" "$LH_DIR/j1.out" ||
        fail "j1: the recovery hook ran before the dead host's key was gone"
    echo "ok: dead host's PR key $dkey preempted before the joiner's recovery hook"
fi
grep -q FENCED "$LH_DIR/h1.out" && fail "h1 fenced"
echo "ok: dead host's slot $dslot taken by a new host after $((t1 - t0)) ms (dead ${DEAD} ms), hook once"
lh_reap

# ---- all slots live -------------------------------------------------------
fill 2
t0=$(now_ms)
lh_start j2 join --io-timeout $IO --linger 300 "${URI[@]}"
wait "$PID_j2" && fail "j2 joined a lockspace whose slots are all live"
t1=$(now_ms)
grep -q "lockspace at block 8: no heartbeat slot for host j2: all 2 slots live" \
    "$LH_DIR/j2.out" || fail "j2: no clear error"
[ $((t1 - t0)) -le $((BOUND + 2000)) ] || fail "j2 failed only after $((t1 - t0)) ms"
grep -q RECOVERED "$LH_DIR/j2.out" && fail "j2 recovered a live host"
js=$(locks_json --samples 1) || fail "clusterfs locks"
echo "$js" | jq -e '[.[0].hosts[] | .generation] == [1, 1]' >/dev/null ||
    fail "live slots were touched: $js"
grep -q FENCED "$LH_DIR"/h[12].out && fail "a live host was fenced"
echo "ok: all slots live: join refused after $((t1 - t0)) ms: $(grep -o 'no heartbeat slot.*' "$LH_DIR/j2.out")"
lh_reap

# ---- two joiners race for one dead slot -----------------------------------
race() { # caw|paxos
    local extra=() n=0 w l
    [ "$1" = paxos ] && extra=(--paxos)
    FILL_EXTRA=("${extra[@]}")
    fill 3
    FILL_EXTRA=()
    local dslot
    dslot=$(slot_of h3)
    kill -KILL "$PID_h3"
    wait "$PID_h3" 2>/dev/null || true
    lh_start "r${1}1" join "${extra[@]}" --io-timeout $IO --linger $((3 * DEAD)) "${URI[@]}"
    lh_start "r${1}2" join "${extra[@]}" --io-timeout $IO --linger $((3 * DEAD)) "${URI[@]}"
    lh_wait "r${1}1" "JOINED\|no heartbeat slot" $((3 * BOUND / 1000 + 10))
    lh_wait "r${1}2" "JOINED\|no heartbeat slot" $((3 * BOUND / 1000 + 10))
    for w in "r${1}1" "r${1}2"; do
        grep -q JOINED "$LH_DIR/$w.out" && n=$((n + 1))
    done
    [ $n = 1 ] || fail "race ($1): $n joiners won"
    if grep -q JOINED "$LH_DIR/r${1}1.out"; then w=r${1}1 l=r${1}2; else w=r${1}2 l=r${1}1; fi
    [ "$(slot_of $w)" = "$dslot" ] || fail "race ($1): winner took slot $(slot_of $w)"
    grep -q "all 3 slots live" "$LH_DIR/$l.out" || fail "race ($1): loser's error unclear"
    [ "$(cat "$LH_DIR"/r${1}[12].out | grep -c '^RECOVERED')" = 1 ] ||
        fail "race ($1): the dead host was not recovered exactly once"
    echo "ok: two joiners raced for one dead slot ($1): $w won, $l: $(grep -o 'all 3 slots live' "$LH_DIR/$l.out")"
    lh_reap
}
race caw
[ "$MODE" = file ] && race paxos

# ---- a corrupt slot is never taken for a dead one -------------------------
if [ "$MODE" = file ]; then
    fill 2
    cslot=$(slot_of h2)
    kill -KILL "$PID_h2"
    wait "$PID_h2" 2>/dev/null || true
    # flip a byte of its host name (slot i is block 9 + i)
    printf '\x7f' | dd of="$IMG" bs=1 seek=$(((9 + cslot) * BS + 80)) conv=notrunc status=none
    before=$(dd if="$IMG" bs="$BS" skip=$((9 + cslot)) count=1 status=none | md5sum)
    t0=$(now_ms)
    lh_start j3 join --io-timeout $IO --linger 300 "${URI[@]}"
    wait "$PID_j3" && fail "j3 took a corrupt slot"
    t1=$(now_ms)
    grep -Eq "no heartbeat slot for host j3 after [0-9]+ ms: 1 live, 0 unknown, 0 being recovered, 1 corrupt" \
        "$LH_DIR/j3.out" || fail "j3: unclear error"
    after=$(dd if="$IMG" bs="$BS" skip=$((9 + cslot)) count=1 status=none | md5sum)
    [ "$before" = "$after" ] || fail "the corrupt slot was written"
    [ $((t1 - t0)) -ge $BOUND ] && [ $((t1 - t0)) -le $((BOUND + 2000)) ] ||
        fail "j3 gave up after $((t1 - t0)) ms, not about $BOUND"
    echo "ok: corrupt slot never taken for dead; join refused after $((t1 - t0)) ms, slot unchanged"
    lh_reap
fi

# ---- header check: another io_timeout or slot count is refused ------------
new_lun
"$LOCKHOST" prep --io-timeout $IO --hosts 2 "${URI[@]}" || fail prep
out=$("$LOCKHOST" join --io-timeout $((2 * IO)) --name j4 --linger 0 "${URI[@]}" 2>&1) &&
    fail "join with another io_timeout accepted"
echo "$out" | grep -q "lockspace at block 8: mount parameters differ from the on-disk ones (io_timeout $((2 * IO)) ms vs $IO ms on disk" ||
    fail "io_timeout mismatch: unclear error: $out"
out=$("$LOCKHOST" join --io-timeout $IO --hosts 4 --name j5 --linger 0 "${URI[@]}" 2>&1) &&
    fail "join with another slot count accepted"
echo "$out" | grep -q "max hosts 4 vs 2" || fail "slot count mismatch: unclear error: $out"
js=$(locks_json --samples 1) || fail "clusterfs locks"
echo "$js" | jq -e '.[0].hosts == []' >/dev/null || fail "a refused join wrote a slot: $js"
echo "ok: join with another io_timeout / slot count refused, nothing written"
echo PASS
