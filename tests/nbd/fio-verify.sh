#!/bin/bash
# fio's nbd engine against `vdisk serve`: 4 KiB random writes at iodepth 32
# with verify=crc32c, on a VMDK over a unix socket and on raw over TCP; then
# nbdcopy (multi-conn, 4 connections) copies the export out and the copy
# equals the served file after the server exits.
. "$(dirname "$0")/lib.sh"
need fio qemu-img nbdcopy
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "SKIP: fio lacks the nbd engine"; exit 77; }

run_fio() { # URI NAME
    fio --name="$2" --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=32 \
        --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --randrepeat=1 --output="$T/$2.fio" >/dev/null 2>"$T/$2.err" ||
        fail "fio $2: $(cat "$T/$2.err" "$T/$2.fio" | tail -20)"
    grep -q 'verify' "$T/$2.err" && fail "fio $2 verify: $(cat "$T/$2.err")"
    return 0
}

qemu-img create -q -f vmdk "$T/disk.vmdk" 64M
start_unix "$T/v.sock" --shared 8 "$T/disk.vmdk"
run_fio "nbd+unix:///?socket=$T/v.sock" vmdk
nbdcopy --connections=4 "nbd+unix:///?socket=$T/v.sock" "$T/vmdk-copy.raw" ||
    fail "nbdcopy from the VMDK export"
stop_server
qemu-img check -q "$T/disk.vmdk" || fail "VMDK check after fio"
qemu-img compare -q -f vmdk -F raw "$T/disk.vmdk" "$T/vmdk-copy.raw" ||
    fail "nbdcopy output differs from the VMDK"

qemu-img create -q -f raw "$T/disk.raw" 64M
start_tcp --shared 8 "$T/disk.raw"
run_fio "nbd://127.0.0.1:$PORT/" raw
stop_server
echo "PASS"
