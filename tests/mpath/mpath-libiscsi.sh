#!/bin/bash
# Sanity check of the test bed: libiscsi's own multipath regression
# (iscsi-test-cu ALL.MultipathIO) against the same two-portal tgt target.
# ALL.MultipathIO.CompareAndWriteAsync is left out: tgt has no COMPARE AND
# WRITE, and unlike the synchronous variant (which skips) the async one
# does not check for it and fails on the missing MISCOMPARE sense.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v iscsi-test-cu >/dev/null || { echo "SKIP: iscsi-test-cu (libiscsi-bin) missing" >&2; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:mpl
tgt_add_lun 1 1 16M
u1=$(tgt_uri 1 1 127.0.0.1)
u2=$(tgt_uri 1 1 127.0.0.2)
out=$TGT_DIR/cu.out
for t in Simple Reset CompareAndWrite; do
    rc=0
    iscsi-test-cu --dataloss --fail -n -t "ALL.MultipathIO.$t" "$u1" "$u2" >"$out" 2>&1 || rc=$?
    cat "$out"
    [ $rc = 0 ] || { echo "FAIL: iscsi-test-cu ALL.MultipathIO.$t exit $rc" >&2; exit 1; }
    grep -q "found matching LU device identifier for all (2) paths" "$out"
    # "tests  1  1  1  0  0": ran one, passed one (or skipped), none failed
    awk '$1 == "tests" && $5 != 0 { exit 1 }' "$out"
done
echo PASS
