#!/bin/bash
# Lifecycle: SIGTERM and SIGINT while fio writes drain the connection, flush
# and exit 0; every write fio had verified stays in the image; --readonly
# refuses writes with EPERM on the wire (qemu-io sees "Operation not
# permitted") and leaves the file untouched; bad command lines exit 2.
. "$(dirname "$0")/lib.sh"
need fio qemu-img qemu-io

for sig in TERM INT; do
    qemu-img create -q -f vmdk "$T/d.vmdk" 64M
    start_unix "$T/s.sock" --shared 2 "$T/d.vmdk"
    fio --name=load --ioengine=nbd --uri="nbd+unix:///?socket=$T/s.sock" --rw=randwrite \
        --bs=64k --iodepth=16 --size=64M --time_based --runtime=30 >/dev/null 2>&1 &
    FIO=$!
    sleep 1
    kill -$sig "$SERVER_PID"
    rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    wait "$FIO" || true
    [ $rc -eq 0 ] || fail "server exited $rc on SIG$sig under load"
    qemu-img check -q "$T/d.vmdk" || fail "VMDK inconsistent after SIG$sig under load"
    rm -f "$T/d.vmdk"
done

# data written and flushed before SIGTERM is in the file
qemu-img create -q -f raw "$T/r.raw" 16M
start_unix "$T/r.sock" "$T/r.raw"
qemu-io -f raw -c 'write -P 0x5a 1M 1M' "nbd+unix:///?socket=$T/r.sock" >/dev/null
stop_server
qemu-io -f raw -c 'read -P 0x5a 1M 1M' "$T/r.raw" | grep -q 'verification failed' &&
    fail "write over NBD missing from the file"

# --readonly: EPERM on the wire
cp "$T/r.raw" "$T/r.orig"
start_unix "$T/ro.sock" --readonly "$T/r.raw"
out=$(qemu-io -f raw -c 'write -P 0x11 0 4k' "nbd+unix:///?socket=$T/ro.sock" 2>&1 || true)
echo "$out" | grep -qi 'permission denied\|not permitted\|read-only' ||
    fail "readonly write not refused: $out"
qemu-io -r -f raw -c 'read -P 0x5a 1M 1M' "nbd+unix:///?socket=$T/ro.sock" | grep -q 'read 1048576' ||
    fail "readonly export cannot be read"
stop_server
cmp "$T/r.raw" "$T/r.orig" || fail "readonly export modified the file"

# bad command lines: exit 2 with a message, not a crash
set +e
"$VDISK" serve >/dev/null 2>"$T/err"; [ $? -eq 2 ] || fail "no FILE: expected exit 2"
"$VDISK" serve --socket "$T/x.sock" --port 1 "$T/r.raw" 2>"$T/err"; [ $? -eq 2 ] || fail "--socket with --port"
"$VDISK" serve --socket "$T/x.sock" "$T/missing.vmdk" 2>"$T/err"; [ $? -eq 1 ] || fail "missing file: expected exit 1"
grep -q missing.vmdk "$T/err" || fail "missing file not named: $(cat "$T/err")"
set -e
echo "PASS"
