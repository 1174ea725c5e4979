#!/bin/bash
# clusterfs format / status / check on file LUNs: refusals with clear
# messages, the format of a 1 TiB sparse file in milliseconds (few blocks
# written), status in text and JSON, check exit codes (0 clean, 4 left,
# 1 fixed) on a corrupted bitmap-free volume.
set -euo pipefail
: "${CLUSTERFS:?}"
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
cd "$T"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$CLUSTERFS" format --label ds1 --max-hosts 8 --size 1T big.img > out
grep -q "clusterfs volume 'ds1'" out || fail "format output: $(cat out)"
grep -q "1.0 TiB" out || fail "format size: $(cat out)"
used=$(du -k big.img | cut -f1)
[ "$used" -lt 20000 ] || fail "format of 1 TiB wrote $used KiB"

# refusals
if "$CLUSTERFS" format big.img 2>err; then fail "formatted over a volume"; fi
grep -q "big.img: already holds a clusterfs volume (label 'ds1'" err || fail "$(cat err)"
if "$CLUSTERFS" format --max-hosts 64 --size 100M small.img 2>err; then fail "too small accepted"; fi
grep -q "small.img: too small for a volume: 100.0 MiB" err || fail "$(cat err)"
truncate -s 200M other.img
if "$CLUSTERFS" format --size 1T big.img other.img 2>err; then fail "--size with 2 LUNs"; fi
if "$CLUSTERFS" format --force big.img other.img 2>err; then fail "two LUNs accepted as one"; fi
grep -q "refusing to group them" err || fail "two LUNs: $(cat err)"
"$CLUSTERFS" locks init --hosts 4 other.img >/dev/null
if "$CLUSTERFS" format --max-hosts 4 other.img 2>err; then fail "formatted over a lockspace"; fi
grep -q "holds a lockspace" err || fail "$(cat err)"
"$CLUSTERFS" format --force --max-hosts 4 --block-size 256K --journal-size 2M other.img >/dev/null

# status
"$CLUSTERFS" status big.img > out
grep -q "1 of 8192 resource clusters laid out" out || fail "status: $(cat out)"
"$CLUSTERFS" status --json big.img > out
python3 - out <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["label"] == "ds1" and d["size_bytes"] == 1 << 40, d
assert d["max_hosts"] == 8 and d["clusters"] == 8192 and d["hosts"] == [], d
PY

# check: clean, then a corrupt superblock A (exit 4, then repaired: 1, then 0)
"$CLUSTERFS" check other.img > out || fail "check of a fresh volume: $?"
printf 'XX' | dd of=other.img bs=1 seek=100 conv=notrunc status=none
set +e
"$CLUSTERFS" check other.img > out 2>err; rc=$?
set -e
[ "$rc" = 4 ] || fail "check of a bad superblock exited $rc: $(cat out err)"
grep -q "superblock A at byte 0" out || fail "$(cat out)"
set +e
"$CLUSTERFS" check --repair --json other.img > out 2>err; rc=$?
set -e
[ "$rc" = 1 ] || fail "repair exited $rc: $(cat out err)"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["fixed"]==1 and d["exit"]==1, d' out
"$CLUSTERFS" check other.img > out || fail "check after repair: $(cat out)"
echo PASS
