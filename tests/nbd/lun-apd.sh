#!/bin/bash
# All paths down on a multipath LUN export must not stall the other exports
# of the same server (docs/nbd.md, "Multipath LUN"). One `vdisk serve
# --workers 2` serves a raw image (export "img") and a LUN through two tgt
# portals (export "lun"). Both portals are cut; four clients each send an
# aligned 4 KiB write to the LUN, which the multipath engine queues (APD,
# queue_ms 60 s). Proves: while those writes wait, reads of "img" are
# answered at once (with synchronous LUN I/O the four writes held both
# workers and the reads waited up to 60 s: this test then fails on its
# 10 s timeout); when a portal is restored every queued write completes
# without error and its data is on the target's backing file; SIGTERM
# exits 0.
set -euo pipefail
: "${VDISK:?}"
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
for p in qemu-io ss; do
    command -v $p >/dev/null || { echo "SKIP: $p not installed"; exit 77; }
done
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:nbdapd
tgt_add_lun 1 1 64M
u1=$(tgt_uri 1 1 127.0.0.1)
u2=$(tgt_uri 1 1 127.0.0.2)
LUNF=$(tgt_lun_file 1 1)

tmpdir D
SPID=
CPIDS=()
stop_all() {
    for p in "${CPIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    [ -n "$SPID" ] && kill -KILL "$SPID" 2>/dev/null
    return 0
}
on_exit stop_all
fail() {
    echo "FAIL: $*" >&2
    echo "--- server log ---" >&2
    tail -n 30 "$D/server.log" >&2 || true
    exit 1
}

head -c $((8 << 20)) /dev/zero | tr '\0' '\063' >"$D/img.raw" # 0x33
SOCK=$D/s.sock
start_server SPID "$D/server.log" "unix:$SOCK" \
    "$VDISK" serve --socket "$SOCK" --workers 2 --shared 8 --name img --name lun "$D/img.raw" \
    --lun "$u1" --lun "$u2" || fail "server died at start"
[ -S "$SOCK" ] || fail "server did not create $SOCK"
IMG="nbd+unix:///img?socket=$SOCK"
LUN="nbd+unix:///lun?socket=$SOCK"
qemu-io -f raw -c 'write -P 0x5a 0 64k' "$LUN" >/dev/null || fail "LUN write with paths up"

# wait_log TEXT SECONDS
wait_log() {
    for _ in $(seq $(($2 * 20))); do
        grep -qF -- "$1" "$D/server.log" && return 0
        sleep 0.05
    done
    fail "no '$1' in the server log after $2 s"
}
img_read_ok() { # the image export answers a read within 10 s, with the right data
    local t0 t1
    t0=$(date +%s%N)
    timeout 10 qemu-io -f raw -r -c "read -P 0x33 4096 64k" "$IMG" >"$D/read.out" 2>&1 ||
        fail "read of the image export failed or took over 10 s while the LUN is in APD:" \
            "$(head -c 200 "$D/read.out")"
    t1=$(date +%s%N)
    ! grep -q "verification failed" "$D/read.out" || fail "wrong data from the image export"
    echo "image read answered in $(((t1 - t0) / 1000000)) ms"
}

tgt_cut_portal 127.0.0.1
tgt_cut_portal 127.0.0.2
wait_log "0 of 2 paths up" 15
echo "all paths down"

# Four clients, one aligned write each: they wait in the engine's queue.
for i in 1 2 3 4; do
    qemu-io -f raw -c "write -P 0x$i$i $((i << 20)) 4k" "$LUN" >"$D/w.$i.out" 2>&1 &
    CPIDS+=($!)
done
# Until the four LUN clients are connected (the socket was bound as
# $SOCK.<pid> then renamed, so ss shows that name; their requests follow the
# handshake at once), then the reads; the later ones come when the writes
# are surely waiting in the server.
for _ in $(seq 200); do
    n=$(ss -xH state connected | grep -cF " $SOCK.$SPID " || true)
    [ "$n" -ge 4 ] && break
    sleep 0.05
done
[ "$n" -ge 4 ] || fail "the LUN clients did not connect ($n): $(ss -xH | grep -F "$D" | head -3) $(head -c 300 "$D/w.1.out")"
for i in 1 2 3; do
    img_read_ok
    for p in "${CPIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || fail "a LUN write completed while every path is down"
    done
    sleep 0.5 # let the writes go deeper into the queue; not synchronisation
done

tgt_restore_portal 127.0.0.2
for i in 0 1 2 3; do
    wait "${CPIDS[$i]}" || fail "LUN write $((i + 1)) failed after the portal returned: $(cat "$D/w.$((i + 1)).out")"
done
CPIDS=()
tgt_restore_portal 127.0.0.1
kill -TERM $SPID
rc=0
wait $SPID || rc=$?
SPID=
[ $rc -eq 0 ] || fail "server exit $rc after SIGTERM"
! grep -E 'nbd: .* failed: ' "$D/server.log" || fail "an I/O error reached the NBD layer"
for i in 1 2 3 4; do
    cmp -n 4096 <(head -c 4096 /dev/zero | tr '\0' "\\$(printf '%03o' $((0x$i$i)))") \
        <(tail -c +$(((i << 20) + 1)) "$LUNF") || fail "write $i is not on the backing file"
done
cmp -n 65536 <(head -c 65536 /dev/zero | tr '\0' '\132') "$LUNF" || fail "first write lost"
echo "PASS"
