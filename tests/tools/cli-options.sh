#!/bin/bash
# The option values of clusterfs and vdisk (tools/opt.c): every bad number
# is a usage error (exit 2) whose message names the option and the value,
# never a silent default; good values in every accepted form work. Paths
# of one LUN are one LUN for `clusterfs locks` as for `lun info`.
set -euo pipefail
: "${CLUSTERFS:?}" "${VDISK:?}"
. "$SRCDIR/tests/lib/common.sh"
tmpdir T
cd "$T"

# bad CMD...: exit 2, and stderr names the option ($opt) and the value ($val).
bad() {
    local opt=$1 val=$2; shift 2
    local rc=0
    "$@" >out 2>err || rc=$?
    [ $rc -eq 2 ] || fail "$* -> exit $rc, expected 2 (usage error); stderr: $(cat err)"
    grep -qF -- "$opt" err || fail "$*: the message does not name $opt: $(cat err)"
    grep -qF -- "'$val'" err || fail "$*: the message does not name '$val': $(cat err)"
}

truncate -s 16M lun.img
ln -s lun.img lun-link.img

# clusterfs locks init: --hosts abc was max_hosts 0, i.e. the default 256
bad --hosts abc "$CLUSTERFS" locks init --hosts abc lun.img
bad --hosts 12abc "$CLUSTERFS" locks init --hosts 12abc lun.img
bad --hosts 0 "$CLUSTERFS" locks init --hosts 0 lun.img
bad --hosts 5000 "$CLUSTERFS" locks init --hosts 5000 lun.img
bad --hosts -1 "$CLUSTERFS" locks init --hosts -1 lun.img
bad --locks x "$CLUSTERFS" locks init --locks x lun.img
bad --offset 8k "$CLUSTERFS" locks init --offset 8k lun.img
bad --offset " 8" "$CLUSTERFS" locks init --offset " 8" lun.img
bad --io-timeout 2x "$CLUSTERFS" locks init --io-timeout 2x lun.img
bad --io-timeout 0.001 "$CLUSTERFS" locks init --io-timeout 0.001 lun.img
bad --block-size 1000 "$CLUSTERFS" locks init --block-size 1000 lun.img
bad --block-size abc "$CLUSTERFS" locks init --block-size abc lun.img
# nothing was written by the refused commands
[ -z "$(tr -d '\0' <lun.img | head -c 1)" ] || fail "a refused init wrote"

# clusterfs locks: --samples 2x was 2, --offset x was 0
bad --samples 2x "$CLUSTERFS" locks --samples 2x lun.img
bad --samples 0 "$CLUSTERFS" locks --samples 0 lun.img
bad --offset x "$CLUSTERFS" locks --offset x lun.img
bad --timeout 5q "$CLUSTERFS" locks --timeout 5q lun.img
bad --policy bogus "$CLUSTERFS" locks --policy bogus lun.img

# clusterfs lun info / paths: the shared LUN options
bad --timeout 0 "$CLUSTERFS" lun info --timeout 0 lun.img
bad --timeout 5q "$CLUSTERFS" lun info --timeout 5q lun.img
bad --block-size 1k "$CLUSTERFS" lun info --block-size 1k lun.img
bad --initiator "" "$CLUSTERFS" lun info --initiator "" lun.img
bad --rr-ios 0 "$CLUSTERFS" paths --rr-ios 0 lun.img
bad --rr-ios 1.5 "$CLUSTERFS" paths --rr-ios 1.5 lun.img
bad --reads many "$CLUSTERFS" paths --reads many lun.img
bad --policy bogus "$CLUSTERFS" paths --policy bogus lun.img
bad --queue-timeout forever "$CLUSTERFS" paths --queue-timeout forever lun.img

# vdisk serve: --port http was a service name, --shared " 2" was 2
bad --port http "$VDISK" serve --port http lun.img
bad --port 70000 "$VDISK" serve --port 70000 lun.img
bad --shared " 2" "$VDISK" serve --shared " 2" lun.img
bad --shared 0x "$VDISK" serve --shared 0x lun.img
bad --workers 1.5 "$VDISK" serve --workers 1.5 lun.img
bad --policy bogus "$VDISK" serve --policy bogus --lun lun.img --lun lun-link.img
bad --timeout 1y "$VDISK" serve --timeout 1y --lun lun.img

# good values, every form
"$CLUSTERFS" locks init --hosts 0x10 --locks 8 --io-timeout 500ms --offset 8 lun.img >out ||
    fail "locks init with good values: $(cat out)"
grep -q "io_timeout 500 ms" out || fail "--io-timeout 500ms: $(cat out)"
"$CLUSTERFS" locks --json --samples 1 --offset 8 --timeout 2s lun.img >out ||
    fail "clusterfs locks: $(cat out)"
grep -q '"max_hosts":16' out || fail "--hosts 0x10 did not make 16 slots: $(cat out)"
grep -q '"io_timeout_ms":500' out || fail "io_timeout: $(cat out)"
"$CLUSTERFS" locks init --io-timeout 2 --offset 8 lun.img | grep -q "io_timeout 2000 ms" ||
    fail "--io-timeout 2 (seconds)"
"$CLUSTERFS" lun info --timeout 1.5s --block-size 4k lun.img >out || fail "lun info: $(cat out)"
grep -q "Logical block size: *4096" out || fail "--block-size 4k: $(cat out)"

# Two paths of one LUN: one lockspace, printed once, with its two paths.
"$CLUSTERFS" locks --samples 1 --offset 8 lun.img lun-link.img >out 2>err ||
    fail "locks on two paths: $(cat err)"
n=$(grep -c "lockspace at block" out) || true
[ "$n" = 1 ] || fail "two paths of one LUN printed $n lockspaces: $(cat out)"
grep -q "paths: 2" out || fail "the two paths are not shown: $(cat out)"
"$CLUSTERFS" locks --json --samples 1 --offset 8 lun.img lun-link.img >out
[ "$(grep -o '"offset"' out | wc -l)" = 1 ] || fail "JSON: one lockspace expected: $(cat out)"
grep -q "lun-link.img" out || fail "JSON: paths missing: $(cat out)"
# Two different LUNs: two lockspaces.
truncate -s 16M other.img
"$CLUSTERFS" locks init --offset 8 other.img >/dev/null
"$CLUSTERFS" locks --samples 1 --offset 8 lun.img other.img lun-link.img >out
[ "$(grep -c "lockspace at block" out)" = 2 ] || fail "two LUNs, three paths: $(cat out)"
echo "ok: option values checked; paths of one LUN shown once"
