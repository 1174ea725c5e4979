#!/bin/bash
# NOP-Out pings find a silent path that carries no I/O. Path 1 goes through
# a TCP relay (tcp-proxy.py) to the second portal; the relay is SIGSTOPped,
# so the link hangs without a reset. The TEST UNIT READY checker is slowed
# to once a minute and the fixed policy keeps all I/O on path 0, so only the
# pings can notice: path 1 must be failed ("no NOP-In ...") within
# (nop_max_missed + 1) intervals plus slack, with no command ever issued on
# it, and come back once the relay resumes. Control: with pings off the
# same silent path stays "standby" for as long as the pings needed.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v python3 >/dev/null || { echo "SKIP: python3 missing" >&2; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:nop
tgt_add_lun 1 1 16M

pport=$(tgt_closed_port)
start_server ppid "$TGT_DIR/proxy.out" log:ready \
    python3 "$SRCDIR/tests/mpath/tcp-proxy.py" 127.0.0.2 "$pport" 127.0.0.2 "$TGT_PORT" ||
    fail "the TCP relay did not start"
tgt_on_exit "kill -CONT $ppid"

u0=$(tgt_uri 1 1 127.0.0.1)
u1="iscsi://127.0.0.2:$pport/${TGT_IQN[1]}/1"

echo "== pings on (1000 ms interval, 2 missed)"
"$MPATH_CTL" --check-interval 600000 --policy fixed --timeout 1000 \
    --nop-interval 1000 --nop-missed 2 "$u0" "$u1" <<SCRIPT
wait 1 standby 3000
read 50
until 1 pings 2 5000
expect 1 nop_misses == 0
expect 1 reads == 0
print 1
stop $ppid
wait 1 failed 6000
within 2300
print 1
err 1 no NOP-In
expect 1 nop_misses >= 1
expect 1 reads == 0
expect 1 inflight == 0
wait 0 active 10
read 20
cont $ppid
wait 1 standby 15000
until 1 pings 3 5000
print 1
SCRIPT

echo "== pings off: nothing notices the silent idle path"
"$MPATH_CTL" --check-interval 600000 --policy fixed --timeout 1000 \
    --nop-interval off "$u0" "$u1" <<SCRIPT
wait 1 standby 3000
expect 1 pings == 0
stop $ppid
stay 1 standby 3500
cont $ppid
expect 1 nop_misses == 0
SCRIPT
echo PASS
