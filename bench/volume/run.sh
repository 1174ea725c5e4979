#!/bin/bash
# Volume benchmark: file data through the volume library vs the raw LUN
# (sequential 1 MiB write/read of a 2 GiB file, 4 KiB random read), file
# creates per second, peak RSS; and the format time of a 1 TiB sparse file
# LUN beside mkfs.ext4 on a 1 TiB sparse file, in the same run.
#
#   bench/volume/run.sh [BUILDDIR] [LUN] [DATA_MIB] [FILES]
# LUN defaults to a 3 GiB file under /var/tmp (O_DIRECT).
set -euo pipefail
B=${1:-${BUILDDIR:-$(dirname "$0")/../../build}}
T=$(mktemp -d /var/tmp/volume-bench.XXXXXX); trap 'rm -rf "$T"' EXIT
LUN=${2:-}
MIB=${3:-2048}
FILES=${4:-2000}
if [ -z "$LUN" ]; then
    LUN=$T/lun.img
    truncate -s $(( (MIB + FILES + 1024) << 20 )) "$LUN"
fi
"$B/bench/volume/volume-bench" "$LUN" "$MIB" "$FILES"

echo
echo "format of a 1 TiB sparse file (best of 3):"
best() { sort -n | head -1; }
ours=$(for i in 1 2 3; do rm -f "$T/f.img"
    s=$(date +%s%N); "$B/tools/clusterfs" format --max-hosts 64 --size 1T "$T/f.img" >/dev/null
    echo $(( ($(date +%s%N) - s) / 1000000 )); done | best)
ext4=$(for i in 1 2 3; do rm -f "$T/e.img"; truncate -s 1T "$T/e.img"
    s=$(date +%s%N); mkfs.ext4 -q -F "$T/e.img" >/dev/null 2>&1
    echo $(( ($(date +%s%N) - s) / 1000000 )); done | best)
printf '%-34s %8s ms (whole command)\n%-34s %8s ms\n' "clusterfs format" "$ours" "mkfs.ext4 -F" "$ext4"
