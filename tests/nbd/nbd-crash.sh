#!/bin/bash
# `vdisk serve` killed with SIGKILL under load loses nothing it acknowledged.
# A python NBD client pipelines batches of non-overlapping WRITE /
# WRITE_ZEROES / TRIM requests (partial grains, whole grains, unaligned,
# across grain tables) into a thin VMDK, with a FLUSH after each batch,
# while the server is killed at a random moment. Then, server dead:
# `qemu-img check` is clean, `vdisk check` finds nothing but leaks and crash
# leftovers it can repair (grain table entries whose redundant copy differs
# from the primary: the kill fell between the two writes), `vdisk check
# --repair` repairs exactly those and both checks are then clean; server
# restarted: every write whose reply arrived (and so every flushed one)
# reads back exactly, a sector whose request was in flight reads old or new,
# nothing else; QEMU reads the file the same (qemu-img compare). Rounds
# accumulate on the same image. Then a clean SIGTERM and a final compare.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img jq
ROUNDS=${NBD_CRASH_ROUNDS:-6}
SIZE=$((40 << 20))

cat >"$T/client.py" <<'EOF'
"""crash client: run SOCK STATE SEED | verify SOCK STATE OUT.raw"""
import hashlib, os, pickle, random, socket, struct, sys

NBD_MAGIC, IHAVEOPT, REP_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x0003E889045565A9
REQ_MAGIC, SIMPLE_MAGIC = 0x25609513, 0x67446698
CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_ZERO = 0, 1, 3, 4, 6
SEC, GRAIN = 512, 65536
SIZE = int(os.environ["SIZE"])
NSEC = SIZE // SEC


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = s.makefile("rwb", buffering=0)

    def rd(n):
        b = b""
        while len(b) < n:
            c = f.read(n - len(b))
            if not c:
                raise ConnectionError("closed")
            b += c
        return b
    magic, opt, _ = struct.unpack(">QQH", rd(18))
    assert magic == NBD_MAGIC and opt == IHAVEOPT
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, 6) + struct.pack(">IH", 0, 0))  # GO ""
    while True:
        m, o, typ, ln = struct.unpack(">QIII", rd(20))
        assert m == REP_MAGIC
        d = rd(ln)
        if typ == 1:
            break
        assert not typ & (1 << 31), "GO refused"
    return s, rd


def sector_data(wid, s):
    h = hashlib.blake2b(struct.pack("<II", wid, s), digest_size=32).digest()
    return struct.pack("<4sII", b"NBDC", wid, s) + h * 15 + h[:20]


def expect(wid, s):
    return bytes(SEC) if wid < 0 else sector_data(wid, s)


class State:
    def __init__(self):
        self.val = [-1] * NSEC      # value of every acknowledged write
        self.maybe = {}             # sector -> values of requests in flight at the kill
        self.next_id = 0
        self.acked = self.flushed = self.lost_in_flight = 0


def run(sock, path, seed):
    st = pickle.load(open(path, "rb")) if os.path.exists(path) else State()
    st.maybe = {}
    rnd = random.Random(seed)
    inflight = {}   # handle -> (kind, first sector, n sectors, wid)
    try:
        s, rd = connect(sock)
        while True:
            # one batch: non-overlapping requests in grains 0..39 and 512..523
            grains = rnd.sample(list(range(40)) + list(range(512, 524)), rnd.randint(4, 24))
            for h, g in enumerate(grains):
                wid = st.next_id
                st.next_id += 1
                k = rnd.random()
                first = g * (GRAIN // SEC) + (0 if k < 0.3 else rnd.randrange(GRAIN // SEC))
                n = GRAIN // SEC if k < 0.3 else rnd.randint(1, GRAIN // SEC - first % (GRAIN // SEC))
                kind = CMD_WRITE if k < 0.8 else (CMD_ZERO if k < 0.9 else CMD_TRIM)
                hdr = struct.pack(">IHHQQI", REQ_MAGIC, 0, kind, h, first * SEC, n * SEC)
                inflight[h] = (kind, first, n, wid)
                if kind == CMD_WRITE:
                    s.sendall(hdr + b"".join(sector_data(wid, first + i) for i in range(n)))
                else:
                    s.sendall(hdr)
            while inflight:
                m, err, h = struct.unpack(">IIQ", rd(16))
                assert m == SIMPLE_MAGIC and err == 0, (m, err)
                kind, first, n, wid = inflight.pop(h)
                for i in range(first, first + n):
                    st.val[i] = wid if kind == CMD_WRITE else -1
                st.acked += 1
            s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_FLUSH, 999, 0, 0))
            inflight[999] = None
            m, err, h = struct.unpack(">IIQ", rd(16))
            assert m == SIMPLE_MAGIC and err == 0 and h == 999, (m, err, h)
            inflight.clear()
            st.flushed = st.acked
            if not os.path.exists(path + ".go"):
                open(path + ".go", "w").close()  # first flush of the run answered
    except (ConnectionError, BrokenPipeError, ConnectionResetError):
        pass
    for h, r in inflight.items():
        if r:
            kind, first, n, wid = r
            st.lost_in_flight += 1
            for i in range(first, first + n):
                st.maybe.setdefault(i, []).append(wid if kind == CMD_WRITE else -1)
    pickle.dump(st, open(path, "wb"))
    print(f"{st.acked} requests acknowledged so far ({st.flushed} of them flushed), "
          f"{len(inflight)} in flight at the kill")


def verify(sock, path, out):
    st = pickle.load(open(path, "rb"))
    s, rd = connect(sock)
    bad = 0
    with open(out, "wb") as o:
        for off in range(0, SIZE, 1 << 20):
            s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 1, off, 1 << 20))
            m, err, h = struct.unpack(">IIQ", rd(16))
            assert m == SIMPLE_MAGIC and err == 0
            data = rd(1 << 20)
            o.write(data)
            for i in range(off // SEC, (off + (1 << 20)) // SEC):
                got = data[(i - off // SEC) * SEC:(i - off // SEC + 1) * SEC]
                if got == expect(st.val[i], i):
                    continue
                alt = [w for w in st.maybe.get(i, []) if got == expect(w, i)]
                if alt:
                    st.val[i] = alt[0]  # settled now
                    continue
                bad += 1
                if bad <= 5:
                    who = struct.unpack("<4sII", got[:12])
                    print(f"sector {i}: expected write {st.val[i]} (or {st.maybe.get(i, [])}),"
                          f" found {'zeroes' if got == bytes(SEC) else who}", file=sys.stderr)
    st.maybe = {}
    pickle.dump(st, open(path, "wb"))
    sys.exit(1 if bad else 0)


if sys.argv[1] == "run":
    run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
else:
    verify(sys.argv[2], sys.argv[3], sys.argv[4])
EOF
export SIZE

qcheck() {
    local rc=0
    qemu-img check -q -f vmdk "$T/d.vmdk" >"$T/qc" 2>&1 || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "$1: qemu-img check exit $rc: $(tail -3 "$T/qc")"
}
# checks on the dead server's file: qemu-img check; vdisk check: no errors
# but leaks and repairable primary/redundant differences, which --repair
# must fix, leaving both checks clean
check_file() {
    local j r lag other
    qcheck "$1, before repair"
    j=$("$VDISK" check --json "$T/d.vmdk" 2>&1) || true
    r=$(echo "$j" | jq -r '[.problems[] | select(.repairable and (.problem | test("primary and redundant tables differ$")))] as $lag |
        "\($lag | length) \([.problems[] | select(.repairable and (.problem | test("primary and redundant tables differ$")) | not) | .problem] | join("; "))"' 2>/dev/null) ||
        fail "$1: vdisk check: $j"
    read -r lag other <<<"$r"
    [ -z "$other" ] || fail "$1: vdisk check: $other"
    LAGS=$((LAGS + lag))
    [ "$lag" -gt 0 ] || return 0
    j=$("$VDISK" check --repair --json "$T/d.vmdk" 2>&1) || fail "$1: check --repair: $j"
    [ "$(echo "$j" | jq -r '[.errors, .repaired] | join(" ")')" = "$lag $lag" ] ||
        fail "$1: check --repair did not repair the $lag leftovers: $j"
    j=$("$VDISK" check --json "$T/d.vmdk" 2>&1) || fail "$1: check after --repair: $j"
    [ "$(echo "$j" | jq .errors)" = 0 ] || fail "$1: check after --repair: $j"
    qcheck "$1, after repair"
}

"$VDISK" create --type thin "$T/d.vmdk" $((SIZE >> 20))M >/dev/null
LAGS=0
for r in $(seq "$ROUNDS"); do
    start_unix "$T/s.sock" "$T/d.vmdk"
    rm -f "$T/state.go"
    python3 "$T/client.py" run "$T/s.sock" "$T/state" "$r" >"$T/run.out" 2>&1 &
    CLIENT=$!
    # kill at a random moment (0 to 0.5 s) after the first FLUSH was answered
    for _ in $(seq 400); do
        [ -e "$T/state.go" ] || ! kill -0 "$CLIENT" 2>/dev/null && break
        sleep 0.05
    done
    [ -e "$T/state.go" ] || fail "round $r: no FLUSH answered in 20 s: $(cat "$T/run.out")"
    sleep "0.$((RANDOM % 50))"
    kill -0 "$CLIENT" 2>/dev/null || fail "round $r: client ended before the kill: $(cat "$T/run.out")"
    kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    wait "$CLIENT" || fail "round $r: client: $(cat "$T/run.out")"
    check_file "round $r, after the kill"
    start_unix "$T/s.sock" "$T/d.vmdk"
    python3 "$T/client.py" verify "$T/s.sock" "$T/state" "$T/read.raw" 2>"$T/verify.err" ||
        fail "round $r: after restart: $(cat "$T/verify.err")"
    stop_server
    qemu-img compare -q -f vmdk -F raw "$T/d.vmdk" "$T/read.raw" ||
        fail "round $r: QEMU reads the VMDK differently from the server"
    echo "round $r: $(cat "$T/run.out"): all acknowledged data read back"
done
check_file "after $ROUNDS rounds and a clean stop"
echo "$ROUNDS kills; $LAGS grain table entries differed from their redundant copy (repaired)"
echo PASS
