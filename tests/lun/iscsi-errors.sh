#!/bin/bash
# Bad inputs and a failing target: each open fails within the timeout with
# a one-line message naming the URI (never the password) and the reason;
# a stalled target times I/O out, a dead one fails it with ENOTCONN.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
tgt_start
IQN=iqn.2026-11.org.clusterfs.test:err
tgt_add_target 1 $IQN
tgt_add_lun 1 1 16M
tgt_add_target 2 iqn.2026-11.org.clusterfs.test:chap
tgt_add_lun 2 1 16M
tgt_chap 2 alice secretpass1
closed=$(tgt_closed_port)

fails=0
# expect_fail URI PATTERN ERRNO_NAME
expect_fail() {
    local uri=$1 pat=$2 err=$3 out rc=0 t0 t1 msg
    t0=$(date +%s%N)
    out=$("$TEST_ISCSI_LUN" open "$uri" 2000 2>/dev/null) || rc=$?
    t1=$(date +%s%N)
    msg=$(echo "$out" | sed -n 's/^message=//p')
    echo "$uri -> rc=$rc $(echo "$out" | head -n1 | cut -d' ' -f1) : $msg"
    if [ $rc = 0 ]; then echo "FAIL: $uri opened"; fails=$((fails + 1)); return; fi
    if ! echo "$msg" | grep -q -- "$pat"; then echo "FAIL: message lacks '$pat'"; fails=$((fails + 1)); fi
    if ! echo "$out" | grep -q "^errno=$err"; then echo "FAIL: expected errno $err"; fails=$((fails + 1)); fi
    if echo "$msg" | grep -q secret; then echo "FAIL: the password leaked"; fails=$((fails + 1)); fi
    if [ $(((t1 - t0) / 1000000)) -gt 4500 ]; then echo "FAIL: took $(((t1 - t0) / 1000000)) ms"; fails=$((fails + 1)); fi
    # `clusterfs lun info` says the same, on one line, within the timeout.
    local cli rc2=0
    t0=$(date +%s%N)
    cli=$(timeout 20 "$CLUSTERFS" lun info --timeout 2000 "$uri" 2>&1 >/dev/null) || rc2=$?
    t1=$(date +%s%N)
    echo "   clusterfs lun info: rc=$rc2: $cli"
    if [ $rc2 = 0 ] || [ $rc2 = 124 ]; then echo "FAIL: clusterfs lun info rc=$rc2"; fails=$((fails + 1)); fi
    if ! echo "$cli" | grep -q -- "$pat"; then echo "FAIL: CLI message lacks '$pat'"; fails=$((fails + 1)); fi
    if [ "$(echo "$cli" | wc -l)" != 1 ]; then echo "FAIL: CLI message is not one line"; fails=$((fails + 1)); fi
    if echo "$cli" | grep -q secret; then echo "FAIL: the CLI leaked the password"; fails=$((fails + 1)); fi
    if [ $(((t1 - t0) / 1000000)) -gt 4500 ]; then echo "FAIL: CLI took $(((t1 - t0) / 1000000)) ms"; fails=$((fails + 1)); fi
}

expect_fail "iscsi://127.0.0.1:$TGT_PORT" "malformed iSCSI URI" "Invalid argument"
expect_fail "iscsi://127.0.0.1:$TGT_PORT/$IQN/notanumber" "malformed iSCSI URI" "Invalid argument"
expect_fail "iscsi://alice%secretpass1@127.0.0.1:$TGT_PORT/$IQN" "malformed iSCSI URI" "Invalid argument"
expect_fail "iscsi://127.0.0.1:$closed/$IQN/1" "connection refused" "Connection refused"
expect_fail "iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.clusterfs.test:nosuch/1" "no such target" "No such file"
expect_fail "iscsi://127.0.0.1:$TGT_PORT/$IQN/7" "LUN 7 does not exist" "No such file"
expect_fail "$(tgt_uri 2 1 127.0.0.1 alice%wrongsecret)" "CHAP authentication failed" "Permission denied"
expect_fail "$(tgt_uri 2 1)" "CHAP authentication failed" "Permission denied"
# The right password opens, from the URI or from libiscsi's environment.
"$TEST_ISCSI_LUN" open "$(tgt_uri 2 1 127.0.0.1 alice%secretpass1)" || { echo "FAIL: CHAP with the right password"; fails=$((fails + 1)); }
LIBISCSI_CHAP_USERNAME=alice LIBISCSI_CHAP_PASSWORD=secretpass1 "$TEST_ISCSI_LUN" open "$(tgt_uri 2 1)" ||
    { echo "FAIL: CHAP from LIBISCSI_CHAP_USERNAME/PASSWORD"; fails=$((fails + 1)); }

# A target that accepts TCP but never answers: login times out.
kill -STOP "$TGT_PID"
tgt_on_exit "kill -CONT $TGT_PID"
expect_fail "$(tgt_uri 1 1)" "timed out" "Connection timed out"
kill -CONT "$TGT_PID"

# I/O on a session whose target stalls, then dies.
"$TEST_ISCSI_LUN" stall "$(tgt_uri 1 1)" "$TGT_PID" 2>"$TGT_DIR/stall.err" || fails=$((fails + 1))
cat "$TGT_DIR/stall.err"
grep -q "SCSI command 0x8a timed out after 1500 ms" "$TGT_DIR/stall.err" ||
    { echo "FAIL: no timeout message"; fails=$((fails + 1)); }
"$TEST_ISCSI_LUN" lost "$(tgt_uri 1 1)" "$TGT_PID" 2>"$TGT_DIR/lost.err" || fails=$((fails + 1))
cat "$TGT_DIR/lost.err"
grep -q "iSCSI session lost" "$TGT_DIR/lost.err" ||
    { echo "FAIL: no session-lost message"; fails=$((fails + 1)); }

[ $fails = 0 ] || { echo "FAIL: $fails checks failed"; exit 1; }
echo "PASS"
