#!/bin/bash
# NBD over TLS with the ecosystem's clients, and where `vdisk serve` listens.
#  - PSK (`--tls-psk`, nbdkit's key file): qemu-io with tls-creds-psk writes,
#    nbdcopy writes a whole image through nbds://, nbdcopy reads it back,
#    qemu-img compare judges the export over TLS and the file after exit;
#    qemu-io with a wrong key is refused and changes nothing.
#  - X.509 (`--tls-certs`, qemu's layout, `--tls-allow client1`): qemu-io
#    with tls-creds-x509 writes, nbdcopy with tls-certificates= reads back,
#    qemu-img compare; a client certificate of another CA is refused.
#  - A raw LUN export (`--lun file://...`) over TLS, and `--tls on` (TLS
#    offered: TLS and plaintext clients both served).
#  - Listening: `--port` without `--bind` is loopback only (ss); a
#    non-loopback --bind without --tls require is refused with the reason,
#    accepted with --tls require or --insecure (inside a private network
#    namespace); a malformed key file is refused without quoting it.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need qemu-img qemu-io nbdinfo nbdcopy openssl ss unshare ip

"$HERE/tls-creds.sh" "$T/c"
C=$T/c
KEY=$(grep '^alice:' "$C/keys.psk" | cut -d: -f2)
KEYS=$(cut -d: -f2 "$C/keys.psk") # every key of the file, one per line (grep: any)
SIZE=16M

# ---- PSK -------------------------------------------------------------------
head -c $SIZE /dev/urandom >"$T/src.raw"
qemu-img create -q -f raw "$T/d.raw" $SIZE
start_tcp --tls-psk "$C/keys.psk" --shared 4 --name disk -v "$T/d.raw"
PSKURI="nbds://alice@127.0.0.1:$PORT/disk?tls-psk-file=$C/keys.psk"
QPSK=(--object "tls-creds-psk,id=tls0,endpoint=client,dir=$C/qpsk-ok,username=alice")
QOPTS="driver=nbd,host=127.0.0.1,port=$PORT,export=disk,tls-creds=tls0"

nbdinfo --size "$PSKURI" | grep -qx 16777216 || fail "nbdinfo over TLS (PSK): size"
nbdcopy "$T/src.raw" "$PSKURI" || fail "nbdcopy write over TLS (PSK)"
cp "$T/src.raw" "$T/ref.raw"
OPS=(-c 'write -P 0x11 0 1M' -c 'write -P 0x22 5000 70000' -c 'aio_write -P 0x33 8M 2M'
     -c 'aio_flush' -c 'write -z 12M 1M' -c 'flush')
qemu-io "${QPSK[@]}" --image-opts "$QOPTS" "${OPS[@]}" >"$T/q.log" ||
    fail "qemu-io write over TLS (PSK)"
qemu-io -f raw "${OPS[@]}" "$T/ref.raw" >/dev/null
qemu-img compare "${QPSK[@]}" --image-opts "$QOPTS" "driver=file,filename=$T/ref.raw" ||
    fail "qemu-img compare over TLS (PSK): export differs from the expected bytes"
nbdcopy "$PSKURI" "$T/back.raw" || fail "nbdcopy read over TLS (PSK)"
cmp "$T/back.raw" "$T/ref.raw" || fail "nbdcopy read back over TLS (PSK) differs"
# 16 coroutines writing out of order (qemu-img convert -m 16 -W) while
# nbdcopy (4 connections, 64 requests each) reads: replies and payloads
# cross on every TLS stream at once
head -c $SIZE /dev/urandom >"$T/src2.raw"
nbdcopy --connections=4 "$PSKURI" "$T/mid.raw" &
cp_pid=$!
qemu-img convert -n -m 16 -W "${QPSK[@]}" -f raw "$T/src2.raw" --target-image-opts "$QOPTS" ||
    fail "qemu-img convert -m 16 -W over TLS (PSK)"
wait $cp_pid || fail "nbdcopy read during concurrent writes over TLS"
cp "$T/src2.raw" "$T/ref.raw"
qemu-img compare "${QPSK[@]}" --image-opts "$QOPTS" "driver=file,filename=$T/ref.raw" ||
    fail "qemu-img compare after concurrent writes over TLS (PSK)"
# a wrong key: refused, nothing written
QBAD=(--object "tls-creds-psk,id=tls0,endpoint=client,dir=$C/qpsk-wrong,username=alice")
if qemu-io "${QBAD[@]}" --image-opts "$QOPTS" -c 'write -P 0x66 0 1M' >"$T/bad.log" 2>&1; then
    fail "qemu-io with a wrong PSK was served"
fi
# keys are files: not on the command line, not in the log
ps -ww -o args= -p "$SERVER_PID" | grep -qi "$KEYS" && fail "a key is on the command line"
stop_server
grep -qi "$KEYS" "$T/server.log" && fail "a key is in the server log"
grep -q "TLS TLSv1.[23] .*PSK identity 'alice'" "$T/server.log" ||
    fail "the log does not name the PSK identity"
qemu-img compare -q -f raw -F raw "$T/d.raw" "$T/ref.raw" ||
    fail "image after exit differs (PSK)"

# ---- X.509 -------------------------------------------------------------------
qemu-img create -q -f raw "$T/x.raw" $SIZE
start_tcp --tls-certs "$C/server" --tls-allow client1 --shared 4 --name disk "$T/x.raw"
QX=(--object "tls-creds-x509,id=tls0,endpoint=client,dir=$C/client")
QOPTS="driver=nbd,host=127.0.0.1,port=$PORT,export=disk,tls-creds=tls0"
qemu-io "${QX[@]}" --image-opts "$QOPTS" "${OPS[@]}" >"$T/q.log" ||
    fail "qemu-io write over TLS (X.509)"
qemu-img create -q -f raw "$T/xref.raw" $SIZE
qemu-io -f raw "${OPS[@]}" "$T/xref.raw" >/dev/null
qemu-img compare "${QX[@]}" --image-opts "$QOPTS" "driver=file,filename=$T/xref.raw" ||
    fail "qemu-img compare over TLS (X.509)"
nbdcopy "nbds://127.0.0.1:$PORT/disk?tls-certificates=$C/client" "$T/xback.raw" ||
    fail "nbdcopy read over TLS (X.509)"
cmp "$T/xback.raw" "$T/xref.raw" || fail "nbdcopy read back over TLS (X.509) differs"
if nbdcopy "$T/src.raw" "nbds://127.0.0.1:$PORT/disk?tls-certificates=$C/evil" 2>/dev/null; then
    fail "a client certificate of another CA was served"
fi
stop_server
grep -q "TLS handshake failed: certificate verify failed" "$T/server.log" ||
    fail "the log does not say why the certificate was refused"
qemu-img compare -q -f raw -F raw "$T/x.raw" "$T/xref.raw" || fail "image after exit (X.509)"

# ---- a LUN export over TLS; --tls on -----------------------------------------
head -c 8M /dev/urandom >"$T/lun.img"
cp "$T/lun.img" "$T/lunref.img"
start_tcp --tls on --tls-psk "$C/keys.psk" --shared 4 --name lun0 --lun "file://$T/lun.img"
QOPTS="driver=nbd,host=127.0.0.1,port=$PORT,export=lun0,tls-creds=tls0"
LOPS=(-c 'write -P 0x44 4096 1M' -c 'write -P 0x55 3M 12345' -c 'flush')
qemu-io "${QPSK[@]}" --image-opts "$QOPTS" "${LOPS[@]}" >/dev/null || fail "qemu-io on a LUN over TLS"
qemu-io -f raw "${LOPS[@]}" "$T/lunref.img" >/dev/null
nbdcopy "nbds://alice@127.0.0.1:$PORT/lun0?tls-psk-file=$C/keys.psk" "$T/lunback.img" ||
    fail "nbdcopy read of a LUN over TLS"
cmp "$T/lunback.img" "$T/lunref.img" || fail "LUN over TLS: read back differs"
# --tls on: a plaintext client is served too
qemu-img compare -q -f raw "nbd://127.0.0.1:$PORT/lun0" "$T/lunref.img" ||
    fail "--tls on: plaintext client not served"
stop_server
cmp "$T/lun.img" "$T/lunref.img" || fail "LUN file after exit (TLS)"

# ---- where it listens ----------------------------------------------------------
for _ in $(seq 20); do
    PORT=$(( 20000 + (RANDOM * 7 + $$) % 30000 ))
    "$VDISK" serve --port "$PORT" "$T/d.raw" >>"$T/server.log" 2>&1 &
    SERVER_PID=$!
    up=0
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then up=1; break; fi
        sleep 0.05
    done
    [ $up = 1 ] && break
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
done
[ -n "$SERVER_PID" ] || fail "could not start a server with --port alone"
ss -Hltn "sport = :$PORT" >"$T/ss.txt"
[ -s "$T/ss.txt" ] || fail "ss shows no listener on port $PORT"
awk '{print $4}' "$T/ss.txt" | grep -qvE '^(127\.0\.0\.1|\[::1\]):' &&
    { cat "$T/ss.txt"; fail "--port without --bind listens beyond loopback"; }
stop_server

# Non-loopback addresses, in a private network namespace (nothing of it
# reaches the machine's network). Refusals exit 2 and say why.
NS=(unshare -n)
[ "$(id -u)" = 0 ] || NS=(unshare -rn)
"${NS[@]}" bash -c '
    set -u
    ip link set lo up
    V=$1; C=$2; T=$3
    fail() { echo "FAIL: $*" >&2; exit 1; }
    "$V" serve --bind 0.0.0.0 --port 10809 "$T/d.raw" 2>"$T/e1"; [ $? = 2 ] || fail "0.0.0.0 without TLS not refused"
    grep -q "reaches beyond this host and TLS is off.*--tls require.*--insecure" "$T/e1" ||
        { cat "$T/e1"; fail "refusal does not say why"; }
    "$V" serve --bind 0.0.0.0 --port 10809 --tls on --tls-psk "$C/keys.psk" "$T/d.raw" 2>"$T/e2"
    [ $? = 2 ] || fail "0.0.0.0 with --tls on not refused"
    grep -q "only offered (--tls on)" "$T/e2" || { cat "$T/e2"; fail "--tls on refusal reason"; }
    "$V" serve --bind :: --port 10809 "$T/d.raw" 2>/dev/null; [ $? = 2 ] || fail ":: without TLS not refused"
    for args in "--tls-psk $C/keys.psk" "--insecure"; do
        "$V" serve --bind 0.0.0.0 --port 10809 $args "$T/d.raw" 2>>"$T/e3" &
        pid=$!
        ok=0
        for _ in $(seq 100); do
            ss -Hltn "sport = :10809" | grep -q "0.0.0.0:10809" && { ok=1; break; }
            kill -0 $pid 2>/dev/null || break
            sleep 0.05
        done
        kill -TERM $pid; wait $pid
        [ $ok = 1 ] || { cat "$T/e3"; fail "0.0.0.0 with $args did not listen"; }
    done
' ns "$VDISK" "$C" "$T" || fail "non-loopback bind checks"

# A malformed key file: refused, and the message does not quote it.
printf 'alice:%sZ\n' "$KEY" >"$T/bad.psk"
chmod 600 "$T/bad.psk"
rc=0
"$VDISK" serve --port 1 --tls-psk "$T/bad.psk" "$T/d.raw" 2>"$T/e4" || rc=$?
[ $rc = 2 ] || fail "malformed PSK file: exit $rc, expected 2"
grep -q "bad.psk line 1: expected identity:hexkey" "$T/e4" || { cat "$T/e4"; fail "PSK error"; }
grep -qi "$KEY" "$T/e4" && fail "the PSK error quotes the key"
rc=0
"$VDISK" serve --port 1 --tls require "$T/d.raw" 2>"$T/e5" || rc=$?
[ $rc = 2 ] || fail "--tls require without credentials: exit $rc"
rc=0
"$VDISK" serve --port 1 --tls-allow x "$T/d.raw" 2>"$T/e6" || rc=$?
[ $rc = 2 ] || fail "--tls-allow without credentials: exit $rc"
echo "ok"
