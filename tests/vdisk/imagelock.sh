#!/bin/bash
# QEMU's image locks (issue 13 item 2): vdisk takes and honours the OFD
# byte-range locks QEMU's file driver holds on each file of a chain, so
# QEMU's tools and vdisk refuse each other's written disks, a second writer
# fails with an error naming what holds the disk, and readers share.
# Judges: real qemu-io, qemu-nbd and qemu-img, and two `vdisk serve`s.
set -euo pipefail
for p in qemu-img qemu-io qemu-nbd; do command -v $p >/dev/null || exit 77; done
: "${VDISK:?}"
T=$(mktemp -d /tmp/imagelock.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [ $rc -ne 0 ] && [ -f "$T/log" ] && tail -n 30 "$T/log" >&2
    chmod -R u+w "$T"; rm -rf "$T"
    exit $rc
}
trap cleanup EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# wait_locked FILE: until some process holds QEMU's consistent-read lock byte
wait_locked() {
    local ino dev
    ino=$(stat -c %i "$1")
    for _ in $(seq 200); do
        grep -q ":$ino 100 10[01]" /proc/locks && return 0
        sleep 0.05
    done
    fail "nobody locked $1"
}
# serve SOCK ARGS...: vdisk serve in the background; sets SPID once it listens
serve() {
    local sock=$1; shift
    "$VDISK" serve --socket "$sock" "$@" >>log 2>&1 &
    SPID=$!; PIDS+=("$SPID")
    for _ in $(seq 200); do
        [ -S "$sock" ] && return 0
        kill -0 "$SPID" 2>/dev/null || fail "vdisk serve $* exited at start: $(tail -n 3 log)"
        sleep 0.05
    done
    fail "vdisk serve $* did not listen"
}
stop() { kill -TERM "$1"; wait "$1" || fail "server $1 exit status $?"; }
# refused WHAT CMD...: CMD must fail; its stderr is in $OUT
refused() {
    local what=$1; shift
    if OUT=$("$@" 2>&1); then fail "$what: succeeded"; fi
}

"$VDISK" create d.vmdk 16M
qemu-io -f vmdk -c 'write -P 0x11 0 1M' d.vmdk >/dev/null

# ---- vdisk serve holds the disk for writing
serve s1 d.vmdk
S1=$SPID
wait_locked d.vmdk
refused "qemu-io writer on a served disk" qemu-io -f vmdk -c 'write -P 0x22 0 4k' d.vmdk
grep -q 'Failed to get .* lock' <<<"$OUT" || fail "qemu-io's refusal: $OUT"
ok "qemu-io refuses to write our served disk: $(head -n 1 <<<"$OUT")"
refused "qemu-io reader on a served disk" qemu-io -r -f vmdk -c 'read 0 4k' d.vmdk
ok "qemu-io -r refuses too (QEMU's readers do not share with writers)"
qemu-io -r -U -f vmdk -c 'read -P 0x11 0 4k' d.vmdk >/dev/null || fail "qemu-io -U"
qemu-img info -U d.vmdk >/dev/null || fail "qemu-img info -U"
"$VDISK" info d.vmdk >/dev/null || fail "vdisk info of a served disk (shared access)"
ok "force-share readers (qemu-io -U, qemu-img info -U, vdisk info) still work"
refused "second vdisk serve" "$VDISK" serve --socket s2 d.vmdk
grep -q "d.vmdk: in use: vdisk (pid $S1) has it open for writing" <<<"$OUT" || fail "second serve's message: $OUT"
ok "a second vdisk serve is refused: $(grep 'in use' <<<"$OUT" | head -n 1)"
refused "vdisk serve --readonly" "$VDISK" serve --readonly --socket s2 d.vmdk
grep -q "in use: vdisk (pid $S1)" <<<"$OUT" || fail "readonly serve's message: $OUT"
refused "vdisk resize" "$VDISK" resize d.vmdk 32M
grep -q "in use: vdisk (pid $S1)" <<<"$OUT" || fail "resize's message: $OUT"
refused "vdisk check" "$VDISK" check d.vmdk
grep -q "in use: vdisk (pid $S1)" <<<"$OUT" || fail "check's message: $OUT"
ok "vdisk serve --readonly, resize and check are refused too, naming the server"
stop "$S1"
qemu-io -f vmdk -c 'write -P 0x22 0 4k' d.vmdk >/dev/null || fail "qemu-io after the server stopped"
ok "the locks go with the server"

# ---- qemu-io holds the disk for writing
qemu-io -f vmdk -c 'sleep 60000' d.vmdk >/dev/null 2>&1 &
Q=$!; PIDS+=("$Q")
wait_locked d.vmdk
refused "vdisk serve of a disk qemu-io writes" "$VDISK" serve --socket s3 d.vmdk
grep -q "d.vmdk: in use: qemu-io (pid $Q) has it open for writing" <<<"$OUT" || fail "message: $OUT"
ok "vdisk serve refuses a disk qemu-io writes: $(grep 'in use' <<<"$OUT" | head -n 1)"
refused "vdisk snapshot create of a disk qemu-io writes" "$VDISK" snapshot create d.vmdk s1
grep -q "in use: qemu-io (pid $Q)" <<<"$OUT" || fail "snapshot message: $OUT"
[ ! -e d-000001.vmdk ] || fail "a snapshot file was made"
ok "vdisk snapshot create is refused too, and made nothing"
kill "$Q"; wait "$Q" 2>/dev/null || true

# ---- qemu-nbd holds it for writing, then for reading
qemu-nbd -k "$T/q.sock" -f vmdk d.vmdk >>log 2>&1 &
Q=$!; PIDS+=("$Q")
wait_locked d.vmdk
refused "vdisk serve of a disk qemu-nbd serves" "$VDISK" serve --socket s4 d.vmdk
grep -q "in use: qemu-nbd (pid $Q) has it open for writing" <<<"$OUT" || fail "message: $OUT"
ok "vdisk serve refuses a disk qemu-nbd serves read-write"
kill "$Q"; wait "$Q" 2>/dev/null || true
qemu-nbd -r -k "$T/q.sock" -f vmdk d.vmdk >>log 2>&1 &
Q=$!; PIDS+=("$Q")
wait_locked d.vmdk
refused "vdisk serve (rw) of a disk qemu-nbd reads" "$VDISK" serve --socket s4 d.vmdk
grep -q "in use: qemu-nbd (pid $Q) has it open for reading" <<<"$OUT" || fail "message: $OUT"
serve s5 --readonly d.vmdk
R1=$SPID
serve s6 --readonly d.vmdk
R2=$SPID
ok "readers share: qemu-nbd -r and two vdisk serve --readonly at once"
qemu-io -r -f vmdk -c 'read -P 0x22 0 4k' d.vmdk >/dev/null || fail "qemu-io -r beside readers"
refused "qemu-io writer beside readers" qemu-io -f vmdk -c 'write 0 4k' d.vmdk
stop "$R1"; stop "$R2"
kill "$Q"; wait "$Q" 2>/dev/null || true
ok "qemu-io -r shares with them; a qemu-io writer does not"

# ---- a chain: the parent of a served delta is held for reading
"$VDISK" snapshot create d.vmdk s1 >/dev/null
serve s7 d.vmdk
S7=$SPID
wait_locked d-000001.vmdk
qemu-io -r -f vmdk -c 'read -P 0x22 0 4k' d-000001.vmdk >/dev/null || fail "qemu-io -r of the frozen parent"
chmod u+w d-000001.vmdk
refused "qemu-io writer on the parent of a served delta" qemu-io -f vmdk -c 'write 0 4k' d-000001.vmdk
grep -q 'Failed to get .* lock' <<<"$OUT" || fail "qemu-io's refusal: $OUT"
chmod a-w d-000001.vmdk
stop "$S7"
ok "the parent of a served delta: readers share, writers are refused"
qemu-img check d.vmdk >/dev/null || fail "qemu-img check"
echo "PASS"
