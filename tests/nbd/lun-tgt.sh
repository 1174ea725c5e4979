#!/bin/bash
# A LUN export over iSCSI, as qemu-nbd serves iscsi:// URLs: `vdisk serve
# --lun iscsi://...` on a private tgtd (tests/lib/tgt.sh), thin 512-byte LUN
# and 4096-byte LUN; qemu-io aligned/unaligned writes and zeroes, fio
# verify at iodepth 32; the LUN's backing file holds the data afterwards.
set -euo pipefail
: "${VDISK:?}"
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
need qemu-io qemu-img fio
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:nbd
tgt_add_lun 1 1 32M
tgt_thin 1 1
tgt_add_lun 1 2 32M 4096

tmpdir D
cd "$D" # fio leaves verify state files in the current directory
on_failure 'tail -20 "$D/server.log" >&2'

OPS=(-c 'write -P 0x11 0 4k' -c 'write -P 0x22 513 1000' -c 'aio_write -P 0x44 1M 1M'
     -c 'aio_write -P 0x45 3M 7' -c 'aio_flush' -c 'write -z 1200k 100k' -c 'flush')

for l in 1 2; do
    SOCK=$D/l$l.sock
    start_server SPID "$D/server.log" "unix:$SOCK" \
        "$VDISK" serve --socket "$SOCK" --shared 4 --lun "$(tgt_uri 1 $l)" ||
        fail "server did not start (LUN $l)"
    URL="nbd+unix:///?socket=$SOCK"
    cp --sparse=always "$(tgt_lun_file 1 $l)" "$D/exp.raw"
    qemu-io -f raw "${OPS[@]}" "$URL" >/dev/null || fail "qemu-io over the iSCSI LUN $l"
    qemu-io -f raw "${OPS[@]}" "$D/exp.raw" >/dev/null
    qemu-img compare -q "$URL" "$D/exp.raw" || fail "iSCSI LUN $l export differs"
    fio --name=lun$l --ioengine=nbd --uri="$URL" --rw=randwrite --bs=4k --iodepth=32 \
        --size=8M --offset=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --output="$D/fio$l" >/dev/null 2>&1 || fail "fio verify over the iSCSI LUN $l"
    dd if="$(tgt_lun_file 1 $l)" of="$D/exp.raw" bs=1M skip=16 seek=16 count=8 conv=notrunc \
        status=none
    rc=0
    reap $SPID TERM || rc=$?
    [ $rc -eq 0 ] || fail "server exit $rc (LUN $l)"
    cmp "$(tgt_lun_file 1 $l)" "$D/exp.raw" || fail "LUN $l backing file differs"
    [ "$(stat -c %s "$(tgt_lun_file 1 $l)")" = $((32 << 20)) ] || fail "LUN $l file grew"
done
echo "PASS"
