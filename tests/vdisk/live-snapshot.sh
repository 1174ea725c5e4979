#!/bin/bash
# Snapshots of a served disk (issue 13 item 1): `vdisk snapshot` of a disk
# that `vdisk serve` holds goes through that server, which flushes, switches
# to the new chain between two requests and carries on; the frozen snapshot
# holds what was written before it, the live disk what came after. Revert
# and delete while served too; snapshots while fio verifies the served disk;
# a killed server's stale control socket does not block a later snapshot.
# Judges: qemu-io over NBD, qemu-img check / compare, fio verify.
set -euo pipefail
for p in qemu-img qemu-io fio; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}"
T=$(mktemp -d /tmp/live-snap.XXXXXX)
export VDISK_RUN_DIR=$T/run # this test's servers only
SPID=
cleanup() {
    local rc=$?
    [ -n "$SPID" ] && { kill -KILL "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
    [ $rc -ne 0 ] && [ -f "$T/log" ] && tail -n 30 "$T/log" >&2
    chmod -R u+w "$T"; rm -rf "$T"
    exit $rc
}
trap cleanup EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
serve() {
    rm -f s.sock
    "$VDISK" serve --socket "$T/s.sock" --shared 8 "$@" >>log 2>&1 &
    SPID=$!
    for _ in $(seq 200); do
        [ -S s.sock ] && return 0
        kill -0 "$SPID" 2>/dev/null || fail "vdisk serve exited at start"
        sleep 0.05
    done
    fail "vdisk serve did not listen"
}
stop() { kill -TERM "$SPID"; wait "$SPID" || fail "server exit status $?"; SPID=; }
NBD="nbd+unix:///?socket=$T/s.sock"
nbd_io() { qemu-io -f raw "$NBD" "$@" >io.out 2>&1 || fail "qemu-io $*: $(cat io.out)"
           ! grep -q 'Pattern verification failed' io.out || fail "qemu-io $*: $(cat io.out)"; }
reads() { # IMG PATTERN OFF LEN
    qemu-io -r -f vmdk -c "read -P $2 $3 $4" "$1" >io.out 2>&1 &&
        ! grep -q 'Pattern verification failed' io.out
}
file_of() { "$VDISK" snapshot list --json d.vmdk | sed -n "s/.*\"name\":\"$1\",\"file\":\"\([^\"]*\)\".*/\1/p"; }
check_all() {
    for f in *.vmdk; do
        qemu-img check "$f" >chk.out 2>&1 || fail "qemu-img check $f ($1): $(tail -3 chk.out)"
    done
}

"$VDISK" create d.vmdk 64M >/dev/null

# ---- create while served: the snapshot holds 0x11, the live disk 0x22
serve d.vmdk
nbd_io -c 'write -P 0x11 0 1M'
"$VDISK" snapshot create d.vmdk s1 >out 2>&1 || fail "snapshot create while served: $(cat out)"
grep -q 'live, by the server' out || fail "not done by the server: $(cat out)"
nbd_io -c 'write -P 0x22 0 512k' -c 'read -P 0x11 512k 512k'
# a linked clone of the served disk would freeze it: refused, nothing made;
# a linked clone of its frozen snapshot works beside the server
if "$VDISK" clone --linked d.vmdk lc.vmdk >out 2>&1; then fail "linked clone of a served disk"; fi
grep -q 'in use: vdisk' out || fail "linked clone refusal: $(cat out)"
[ ! -e lc.vmdk ] && [ "$("$VDISK" snapshot list --json d.vmdk | grep -o '"name"' | wc -l)" = 1 ] ||
    fail "the refused linked clone left something behind"
"$VDISK" clone --linked d-000001.vmdk lc.vmdk >out 2>&1 || fail "clone of the frozen file: $(cat out)"
reads lc.vmdk 0x11 0 1M || fail "the linked clone of s1: $(cat io.out)"
rm -f lc.vmdk
stop
S1=$(file_of s1)
[ "$S1" = d-000001.vmdk ] || fail "frozen file of s1: '$S1'"
reads "$S1" 0x11 0 1M || fail "the snapshot does not hold 0x11: $(cat io.out)"
reads d.vmdk 0x22 0 512k && reads d.vmdk 0x11 512k 512k || fail "live disk: $(cat io.out)"
check_all "after create"
truncate -s 64M s1.raw
qemu-io -f raw -c 'write -P 0x11 0 1M' s1.raw >/dev/null
qemu-img compare -q -f vmdk -F raw "$S1" s1.raw || fail "s1 differs from what was written before it"
ok "snapshot of a served disk: the snapshot holds 0x11, the live disk 0x22, images check clean"

# ---- a snapshot before the server's first write: its CID update must not
# rewrite the frozen descriptor from a stale copy (the old code did)
"$VDISK" create e.vmdk 16M >/dev/null
qemu-io -f vmdk -c 'write -P 0x12 0 64k' e.vmdk >/dev/null
serve e.vmdk
"$VDISK" snapshot create e.vmdk first >out 2>&1 || fail "snapshot before any write: $(cat out)"
nbd_io -c 'write -P 0x13 0 4k'
stop
"$VDISK" info e.vmdk >out 2>&1 || fail "the chain no longer opens: $(cat out)"
grep -q 'ddb.frozen = "true"' e-000001.vmdk || fail "the frozen descriptor lost ddb.frozen"
reads e-000001.vmdk 0x12 0 64k && reads e.vmdk 0x13 0 4k && reads e.vmdk 0x12 4k 60k ||
    fail "after a snapshot before the first write: $(cat io.out)"
ok "a snapshot before the server's first write: the frozen descriptor stays intact"

# ---- revert while served: the server reads s1's data at once, and writes on
serve d.vmdk
nbd_io -c 'write -P 0x33 0 2M'
"$VDISK" snapshot revert d.vmdk s1 >out 2>&1 || fail "revert while served: $(cat out)"
nbd_io -c 'read -P 0x11 0 1M' -c 'read -P 0 1M 1M' -c 'write -P 0x44 1M 64k'
stop
reads d.vmdk 0x11 0 1M && reads d.vmdk 0x44 1M 64k && reads "$S1" 0x11 0 1M ||
    fail "after a revert while served: $(cat io.out)"
check_all "after revert"
ok "revert while served: the server serves the snapshot's data and writes on"

# ---- delete while served (consolidates s1 into the live delta)
serve d.vmdk
"$VDISK" snapshot create d.vmdk s2 >out 2>&1 || fail "create s2 while served: $(cat out)"
nbd_io -c 'write -P 0x55 64k 64k'
"$VDISK" snapshot delete d.vmdk s1 >out 2>&1 || fail "delete s1 while served: $(cat out)"
[ ! -e "$S1" ] || fail "$S1 still there"
nbd_io -c 'read -P 0x11 0 64k' -c 'read -P 0x55 64k 64k' -c 'read -P 0x11 128k 896k' \
    -c 'read -P 0x44 1M 64k' -c 'write -P 0x66 8M 64k'
stop
S2=$(file_of s2)
reads "$S2" 0x11 0 1M && reads "$S2" 0x44 1M 64k || fail "s2 after deleting s1: $(cat io.out)"
reads d.vmdk 0x55 64k 64k && reads d.vmdk 0x66 8M 64k || fail "live after delete: $(cat io.out)"
check_all "after delete"
ok "delete while served: s1 merged into s2, live data intact"

# ---- a revert to a snapshot of another size is refused while served
"$VDISK" snapshot create d.vmdk small >/dev/null
"$VDISK" resize d.vmdk 80M >/dev/null
serve d.vmdk
if "$VDISK" snapshot revert d.vmdk small >out 2>&1; then fail "revert across a size change while served"; fi
grep -q 'cannot change size' out || fail "message: $(cat out)"
nbd_io -c 'write -P 0x77 79M 64k'
stop
reads d.vmdk 0x77 79M 64k || fail "the server kept serving after the refused revert"
"$VDISK" snapshot delete d.vmdk small >/dev/null
ok "a revert that would change a served disk's size is refused, the server carries on"

# ---- a killed server leaves a stale control socket: snapshots work offline
serve d.vmdk
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
ls run/*.sock >/dev/null 2>&1 || fail "no control socket was left to test with"
"$VDISK" snapshot create d.vmdk offline >out 2>&1 || fail "offline create after a crash: $(cat out)"
grep -q 'live, by the server' out && fail "a dead server did it?"
"$VDISK" snapshot delete d.vmdk offline >/dev/null
ok "a dead server's stale socket: the snapshot is made locally"

# ---- snapshots while fio verifies the served disk
if fio --enghelp 2>/dev/null | grep -qw nbd; then
    serve d.vmdk
    fio --name=live --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k --iodepth=16 \
        --size=${LIVE_SNAP_FIO_MB:-24}M --verify=crc32c --do_verify=1 --verify_backlog=512 --verify_fatal=1 \
        --randrepeat=1 --output=fio.out >/dev/null 2>fio.err &
    FIO=$!
    n=0
    while kill -0 $FIO 2>/dev/null && [ $n -lt ${LIVE_SNAP_COUNT:-8} ]; do
        n=$((n + 1))
        "$VDISK" snapshot create d.vmdk "fio$n" >out 2>&1 || fail "snapshot fio$n under fio: $(cat out)"
        sleep 0.05
    done
    wait $FIO || fail "fio verify with $n live snapshots: $(tail -20 fio.err fio.out)"
    ! grep -q 'verify' fio.err || fail "fio verify: $(cat fio.err)"
    [ $n -ge 1 ] || fail "fio finished before any snapshot"
    stop
    check_all "after fio"
    ok "fio verify passes across $n snapshots taken while it ran"
fi
echo PASS
