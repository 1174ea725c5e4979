#!/bin/bash
# Install what the tests need, build, and run every test suite:
#   unit (cmocka), integration (tgtd, real processes), interop (qemu-img,
#   qemu-io, qemu-nbd, nbdinfo, fio), fault,
# then the unit suite again under AddressSanitizer + UBSan.
# Tests that start tgtd or servers start them themselves on loopback and
# stop them by pid. Must run as root (tgtd, network namespaces).
# Ends with one line "tests: N passed, N failed, N skipped". In CI
# (CI=true) a skipped test counts as a failure: CI installs everything.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh || exit 1
bash scripts/build.sh >/dev/null || { bash scripts/build.sh; exit 1; }

rc=0
meson test -C build --print-errorlogs --num-processes 2 "$@" || rc=1

if [ "${SKIP_ASAN:-}" != 1 ] && [ $# -eq 0 ]; then
  if [ ! -f build-asan/build.ninja ]; then
    meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
      ${CI:+--werror} >/dev/null || exit 1
  fi
  ninja -C build-asan >/dev/null || { ninja -C build-asan; exit 1; }
  meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 || rc=1
fi

# Count results over both runs from meson's JSON logs.
python3 - "$rc" <<'PY'
import json, os, sys
p = f = s = 0
for log in ("build/meson-logs/testlog.json", "build-asan/meson-logs/testlog.json"):
    if not os.path.exists(log):
        continue
    for line in open(log):
        r = json.loads(line).get("result")
        if r in ("OK", "EXPECTEDFAIL"): p += 1
        elif r == "SKIP": s += 1
        else: f += 1
ci = os.environ.get("CI") == "true"
print(f"tests: {p} passed, {f + (s if ci else 0)} failed, {s} skipped")
sys.exit(1 if (f or int(sys.argv[1]) or (ci and s)) else 0)
PY
