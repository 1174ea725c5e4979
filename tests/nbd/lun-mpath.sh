#!/bin/bash
# A LUN export over two tgt portals (issue 6): `vdisk serve --lun URI1 --lun
# URI2` is one export through the multipath engine. fio's nbd engine writes
# with verify=crc32c at iodepth 32 without pause (back-to-back runs, each
# writing its own, never written 8 MiB region of a sparse LUN and reading
# every block back)
# while path 2 is cut and restored, then path 1 is cut and restored
# (tgt_cut_portal: the portal stops listening and its TCP connections are
# reset). Proves: no error reaches the NBD client (every fio run exits 0
# with error 0 and verifies every block; no backend error in the server
# log), fio keeps completing runs while a path is cut, the server logs each
# path failing and coming back, both paths carried writes and count a
# failure at exit, every run's data is on the target's backing file (fio
# --verify_only on the file), and nothing was written outside the regions.
#
# Why a fresh region per run: fio's crc32c verify checks a block's own
# header and checksum, not which run wrote it, so a lost overwrite of an
# older fio block would verify. A lost write to a never-written region
# leaves zeroes, which fail ("bad magic header").
#
# NBD_MPATH_ONE_PATH=1 serves the LUN through path 2 only (no multipath):
# the first cut must then make fio fail, which shows that this test catches
# a broken failover. Not run in CI.
set -euo pipefail
: "${VDISK:?}"
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
for p in fio jq ss; do
    command -v $p >/dev/null || { echo "SKIP: $p not installed"; exit 77; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "SKIP: fio has no nbd engine"; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:nbdmp
tgt_add_lun 1 1 1G # sparse; run n writes [16M + (n-1)*8M, +8M)
u1=$(tgt_uri 1 1 127.0.0.1)
u2=$(tgt_uri 1 1 127.0.0.2)
LUNF=$(tgt_lun_file 1 1)
OFF_M=16 SIZE_M=8 LUN_M=1024
MAX_RUNS=$(((LUN_M - OFF_M) / SIZE_M))

tmpdir D
cd "$D" # fio leaves verify state files in the current directory
SPID= DPID=
stop_all() {
    touch "$D/stop"
    [ -s "$D/fio.pid" ] && kill -KILL "$(cat "$D/fio.pid")" 2>/dev/null
    [ -n "$DPID" ] && kill -KILL "$DPID" 2>/dev/null
    [ -n "$SPID" ] && kill -KILL "$SPID" 2>/dev/null
    return 0
}
on_exit stop_all
fail() {
    echo "FAIL: $*" >&2
    echo "--- server log ---" >&2
    tail -n 30 "$D/server.log" >&2 || true
    exit 1
}

if [ "${NBD_MPATH_ONE_PATH:-0}" = 1 ]; then
    LUNS=(--lun "$u2")
else
    LUNS=(--lun "$u1" --lun "$u2")
fi
SOCK=$D/s.sock
start_server SPID "$D/server.log" "unix:$SOCK" \
    "$VDISK" serve --socket "$SOCK" "${LUNS[@]}" || fail "server died at start"
[ -S "$SOCK" ] || fail "server did not create $SOCK"
[ "${NBD_MPATH_ONE_PATH:-0}" = 1 ] ||
    grep -q 'serve: LUN naa\.[0-9a-f]*: 2 paths, policy service-time' "$D/server.log" ||
    fail "the two --lun paths were not opened as one multipath LUN"

# The load: fio runs back to back until $D/stop exists, run n on region n.
# $D/runs gets n when run n passed; $D/failed gets the reason when one did
# not.
FIO_JOB=(--rw=randwrite --bs=4k --size=${SIZE_M}M --verify=crc32c --verify_fatal=1)
region() { echo $(((OFF_M + ($1 - 1) * SIZE_M) << 20)); }
driver() {
    local n=0
    while [ ! -e "$D/stop" ]; do
        n=$((n + 1))
        if [ $n -gt $MAX_RUNS ]; then
            echo "the cuts took longer than $MAX_RUNS fio runs" >"$D/failed"
            return 1
        fi
        fio --name=mp --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --iodepth=32 \
            --offset="$(region $n)" "${FIO_JOB[@]}" --do_verify=1 --output-format=json \
            --output="$D/fio.$n.json" >/dev/null 2>"$D/fio.$n.err" &
        echo $! >"$D/fio.pid"
        if ! wait $!; then
            echo "fio run $n exited non-zero: $(tr '\n' ' ' <"$D/fio.$n.err" | cut -c1-300)" \
                >"$D/failed"
            return 1
        fi
        # error 0, every block written once and read back (verified)
        if ! jq -e --argjson k $((SIZE_M * 1024)) '.jobs[0] | .error == 0 and
                .write.io_kbytes == $k and .read.io_kbytes == $k' "$D/fio.$n.json" >/dev/null; then
            echo "fio run $n: error or short I/O: $(jq -c '.jobs[0] | {error,
                w: .write.io_kbytes, r: .read.io_kbytes}' "$D/fio.$n.json")" >"$D/failed"
            return 1
        fi
        echo $n >>"$D/runs"
    done
}
driver &
DPID=$!

runs() { if [ -f "$D/runs" ]; then wc -l <"$D/runs"; else echo 0; fi; }
check_load() {
    [ ! -s "$D/failed" ] || fail "$(cat "$D/failed")"
    kill -0 $DPID 2>/dev/null || [ -e "$D/stop" ] || fail "the fio driver died"
    kill -0 $SPID 2>/dev/null || fail "the server died"
}
count_log() { grep -cF -- "$1" "$D/server.log" || true; }
# wait_log TEXT COUNT SECONDS: until TEXT occurs COUNT times in the log
wait_log() {
    local t
    for t in $(seq $(($3 * 20))); do
        check_load
        [ "$(count_log "$1")" -ge "$2" ] && return 0
        sleep 0.05
    done
    fail "no '$1' (x$2) in the server log after $3 s"
}
# wait_runs COUNT SECONDS: until COUNT fio runs have passed
wait_runs() {
    local t
    for t in $(seq $(($2 * 20))); do
        check_load
        [ "$(runs)" -ge "$1" ] && return 0
        sleep 0.05
    done
    fail "fio stalled: $(runs) runs passed, waited for $1 ($2 s)"
}
# cut_restore IP URI: cut the portal under load; the server must log the
# path as failed, fio must pass two more runs (so at least one whole run
# went through the other path alone); restore; the path must come back.
cut_restore() {
    local ip=$1 uri=$2
    local nf nb r
    nf=$(count_log "path $uri failed")
    nb=$(count_log "path $uri is back")
    r=$(runs)
    tgt_cut_portal "$ip"
    echo "cut $ip at run $r"
    wait_log "path $uri failed" $((nf + 1)) 10
    wait_runs $((r + 2)) 40
    tgt_restore_portal "$ip"
    echo "restored $ip at run $(runs)"
    wait_log "path $uri is back" $((nb + 1)) 15
}

wait_runs 1 30 # the load is running
cut_restore 127.0.0.2 "$u2"
cut_restore 127.0.0.1 "$u1"
wait_runs $(($(runs) + 1)) 30 # both paths back: still no error
touch "$D/stop"
wait $DPID || true
DPID=
check_load
echo "fio runs passed: $(runs)"

kill -TERM $SPID
rc=0
wait $SPID || rc=$?
SPID=
[ $rc -eq 0 ] || fail "server exit $rc after SIGTERM"
grep -E '^vdisk: serve: LUN path' "$D/server.log"
! grep -E 'nbd: .* failed: ' "$D/server.log" || fail "an I/O error reached the NBD layer"
for i in 0 1; do
    grep -Eq "serve: LUN path $i iscsi://[^ ]+ active reads=[1-9][0-9]* writes=[1-9][0-9]* .*failures=[1-9]" \
        "$D/server.log" || fail "path $i: not active, no reads/writes, or no failure counted"
done

# Every run's data is on the target: verify each region from the backing
# file (the same job without writing: same offsets, same data).
last=$(tail -n 1 "$D/runs")
for n in $(seq 1 "$last"); do
    fio --name=mp --ioengine=psync --filename="$LUNF" --offset="$(region $n)" "${FIO_JOB[@]}" \
        --verify_only --output-format=json --output="$D/final.json" >/dev/null 2>"$D/final.err" ||
        fail "run $n's data does not verify on the backing file: $(head -c 300 "$D/final.err")"
    jq -e --argjson k $((SIZE_M * 1024)) '.jobs[0] | .error == 0 and .read.io_kbytes == $k' \
        "$D/final.json" >/dev/null || fail "final verify of run $n incomplete"
done
# Guard: nothing outside the regions was written (the LUN file is sparse).
end=$(region $((last + 1)))
cmp -n $((OFF_M << 20)) "$LUNF" /dev/zero || fail "write below the fio regions"
tail -c +$((end + 1)) "$LUNF" | cmp - <(head -c $(((LUN_M << 20) - end)) /dev/zero) ||
    fail "write above the fio regions"
echo "PASS"
