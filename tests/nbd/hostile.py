#!/usr/bin/env python3
"""Hostile and protocol-corner clients against `vdisk serve`.

Starts its own server on a unix socket over a raw image, keeps a model of
the image's bytes, and for each bad input checks the server answers with an
NBD error or closes the connection -- never crashes, never writes outside
the export. At the end the server must exit 0 on SIGTERM and the image must
equal the model byte for byte (same size: nothing written past the end).
"""
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

VDISK = os.environ["VDISK"]
SIZE = 8 << 20

NBD_MAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXT_HEADERS = 8, 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = ERR | 1, ERR | 3, ERR | 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_ZERO, CMD_BS = 0, 1, 2, 3, 4, 6, 7
F_FUA, F_NO_HOLE, F_REQ_ONE = 1, 2, 8
EPERM, EINVAL, ENOSPC, EOVERFLOW = 1, 22, 28, 75

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    else:
        print("ok:", what, flush=True)


class Closed(Exception):
    pass


class Client:
    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        deadline = time.time() + timeout
        while True:  # a full backlog (after a flood) is EAGAIN for unix sockets
            try:
                self.s.connect(path)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
        self.structured = False

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise Closed()
            b += c
        return b

    def send(self, b):
        self.s.sendall(b)

    def greet(self, cflags=3):
        g = self.recv(18)
        magic, opt, hflags = struct.unpack(">QQH", g)
        assert magic == NBD_MAGIC and opt == IHAVEOPT, g
        if cflags is not None:
            self.send(struct.pack(">I", cflags))
        return hflags

    def opt(self, opt, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self):
        magic, opt, typ, ln = struct.unpack(">QIII", self.recv(20))
        assert magic == REP_MAGIC
        return opt, typ, self.recv(ln)

    def replies_until_final(self):
        out = []
        while True:
            r = self.reply()
            out.append(r)
            if r[1] == REP_ACK or r[1] & ERR:
                return out

    def go(self, name=b"", structured=True, meta=True):
        if structured:
            self.opt(OPT_STRUCTURED)
            assert self.reply()[1] == REP_ACK
            self.structured = True
            if meta:
                q = b"base:allocation"
                self.opt(OPT_SET_META, struct.pack(">I", len(name)) + name +
                         struct.pack(">II", 1, len(q)) + q)
                rs = self.replies_until_final()
                assert rs[-1][1] == REP_ACK and rs[0][1] == REP_META, rs
        self.opt(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        rs = self.replies_until_final()
        if rs[-1][1] != REP_ACK:
            return rs
        for _, typ, d in rs:
            if typ == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
                self.size, self.tflags = struct.unpack(">QH", d[2:12])
        return rs

    def request(self, typ, off, ln, flags=0, cookie=1, payload=b""):
        self.send(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, off, ln) + payload)

    def read_reply(self):
        """Returns (cookie, error, data, chunks) for one complete reply."""
        if not self.structured:
            magic, err, cookie = struct.unpack(">IIQ", self.recv(16))
            assert magic == SIMPLE_MAGIC
            return cookie, err, None, []
        data, chunks, err = b"", [], 0
        while True:
            magic, flags, typ, cookie, ln = struct.unpack(">IHHQI", self.recv(20))
            assert magic == STRUCT_MAGIC, hex(magic)
            body = self.recv(ln)
            chunks.append((typ, body))
            if typ == 1:
                data += body[8:]
            elif typ & 0x8000:
                err = struct.unpack(">I", body[:4])[0]
            if flags & 1:
                return cookie, err, data, chunks

    def cmd(self, typ, off, ln, flags=0, payload=b"", cookie=7):
        self.request(typ, off, ln, flags, cookie, payload)
        c, err, data, chunks = self.read_reply()
        assert c == cookie
        return err, data, chunks

    def closed(self, timeout=5):
        """True if the server closes the connection (EOF) within timeout."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def start_server(img, sock, *extra):
    log = open(sock + ".log", "ab")
    p = subprocess.Popen([VDISK, "serve", "--socket", sock, *extra, img], stdout=log, stderr=log)
    for _ in range(200):
        if os.path.exists(sock):
            return p
        if p.poll() is not None:
            raise SystemExit("server died at start")
        time.sleep(0.05)
    raise SystemExit("server did not listen")


def stop_server(p, what):
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = "hung"
    check(rc == 0, f"{what}: server exits 0 on SIGTERM (rc={rc})")


def main():
    tmp = tempfile.mkdtemp(prefix="nbd-hostile.")
    img = os.path.join(tmp, "disk.raw")
    rnd = random.Random(42)
    model = bytearray(rnd.randbytes(SIZE))
    with open(img, "wb") as f:
        f.write(model)
    sock = os.path.join(tmp, "s.sock")
    srv = start_server(img, sock, "--shared", "8")
    try:
        run_cases(sock, model, rnd, srv)
    finally:
        alive = srv.poll() is None
        check(alive, "server survived every hostile client")
        if alive:
            stop_server(srv, "read-write server")
    with open(img, "rb") as f:
        got = f.read()
    check(len(got) == SIZE, f"image size unchanged ({len(got)} == {SIZE}): nothing written past the end")
    check(got == model, "image equals the model: every acknowledged write landed, no stray write")

    # read-only server: writes, trims and zeroes refused with EPERM
    sock2 = os.path.join(tmp, "ro.sock")
    srv2 = start_server(img, sock2, "--readonly")
    c = Client(sock2)
    c.greet()
    c.go()
    check(c.tflags & 2, "readonly: NBD_FLAG_READ_ONLY advertised")
    err, _, _ = c.cmd(CMD_WRITE, 0, 4096, payload=b"x" * 4096)
    check(err == EPERM, f"readonly: WRITE -> EPERM (got {err})")
    err, _, _ = c.cmd(CMD_TRIM, 0, 4096)
    check(err == EPERM, f"readonly: TRIM -> EPERM (got {err})")
    err, _, _ = c.cmd(CMD_ZERO, 0, 4096)
    check(err == EPERM, f"readonly: WRITE_ZEROES -> EPERM (got {err})")
    err, data, _ = c.cmd(CMD_READ, 0, 4096)
    check(err == 0 and data == bytes(model[:4096]), "readonly: READ still works")
    c.close()
    stop_server(srv2, "read-only server")
    with open(img, "rb") as f:
        check(f.read() == model, "readonly: image unchanged")

    # --shared 1: a second client waits (no greeting) until the first leaves
    sock3 = os.path.join(tmp, "one.sock")
    srv3 = start_server(img, sock3, "--shared", "1", "--readonly")
    a = Client(sock3)
    a.greet()
    a.go()
    b = Client(sock3)
    b.s.settimeout(1)
    try:
        b.s.recv(1)
        waited = False
    except socket.timeout:
        waited = True
    check(waited, "--shared 1: second client gets no greeting while the first is connected")
    a.close()
    b.s.settimeout(10)
    b.greet()
    b.go()
    err, data, _ = b.cmd(CMD_READ, 0, 512)
    check(err == 0 and data == bytes(model[:512]), "--shared 1: second client served after the first left")
    b.close()
    stop_server(srv3, "--shared 1 server")

    # unix socket removed at exit
    check(not os.path.exists(sock) and not os.path.exists(sock2) and not os.path.exists(sock3),
          "socket paths removed at exit")
    if failures:
        print(f"{len(failures)} failure(s)")
        for p in (sock + ".log", sock2 + ".log", sock3 + ".log"):
            if os.path.exists(p):
                sys.stdout.write(open(p, errors="replace").read()[-3000:])
        return 1
    subprocess.run(["rm", "-rf", tmp])
    return 0


def run_cases(sock, model, rnd, srv):
    # --- handshake phase -------------------------------------------------
    c = Client(sock)
    c.recv(18)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + rnd.randbytes(200))
    check(c.closed(), "garbage instead of client flags: connection closed")
    c.close()

    c = Client(sock)
    c.greet(cflags=0xFFFF0003)
    check(c.closed(), "unknown client flags: connection closed")
    c.close()

    c = Client(sock)
    c.greet()
    c.send(struct.pack(">QII", 0xDEADBEEF, OPT_GO, 0))
    check(c.closed(), "bad option magic: connection closed")
    c.close()

    c = Client(sock)
    c.greet()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 1 << 30))
    check(c.closed(), "option length 1 GiB: connection closed")
    c.close()

    c = Client(sock)
    c.greet()
    for o in (99, OPT_STARTTLS, OPT_EXT_HEADERS, 0xFFFFFFFF):
        c.opt(o, b"abc" if o == 99 else b"")
        check(c.reply()[1] == REP_ERR_UNSUP, f"option {o}: NBD_REP_ERR_UNSUP")
    c.opt(OPT_SET_META, struct.pack(">I", 0) + struct.pack(">I", 0))
    check(c.reply()[1] == REP_ERR_INVALID, "SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID")
    c.opt(OPT_GO, struct.pack(">I", 1000) + b"short")
    check(c.reply()[1] == REP_ERR_INVALID, "GO with name length past the data: ERR_INVALID")
    c.opt(OPT_GO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    check(c.reply()[1] == REP_ERR_UNKNOWN, "GO for an unknown export: ERR_UNKNOWN")
    c.opt(OPT_INFO, struct.pack(">I", 0) + struct.pack(">H", 5) + b"\0\3")
    check(c.reply()[1] == REP_ERR_INVALID, "INFO with a bad request count: ERR_INVALID")
    c.opt(OPT_LIST)
    rs = c.replies_until_final()
    names = [d[4:4 + struct.unpack(">I", d[:4])[0]] for _, t, d in rs if t == REP_SERVER]
    check(rs[-1][1] == REP_ACK and names == [b"disk.raw"], f"LIST names the export ({names})")
    c.opt(OPT_STRUCTURED)
    c.reply()
    c.opt(OPT_LIST_META, struct.pack(">I", 0) + struct.pack(">I", 0))
    rs = c.replies_until_final()
    check(any(t == REP_META and d[4:] == b"base:allocation" for _, t, d in rs),
          "LIST_META_CONTEXT lists base:allocation")
    c.opt(OPT_INFO, struct.pack(">I", 0) + struct.pack(">HH", 1, 3))
    rs = c.replies_until_final()
    infos = {struct.unpack(">H", d[:2])[0]: d[2:] for _, t, d in rs if t == REP_INFO}
    check(rs[-1][1] == REP_ACK and 3 in infos, "INFO returns NBD_INFO_BLOCK_SIZE")
    if 3 in infos:
        mn, pref, mx = struct.unpack(">III", infos[3])
        check(mx == 32 << 20 and mn >= 1 and pref >= mn, f"block sizes {mn}/{pref}/{mx}")
    c.opt(OPT_ABORT)
    check(c.reply()[1] == REP_ACK and c.closed(), "ABORT: ACK then close")
    c.close()

    c = Client(sock)
    c.greet()
    c.opt(OPT_EXPORT_NAME, b"no-such-export")
    check(c.closed(), "EXPORT_NAME of an unknown export: connection closed")
    c.close()

    c = Client(sock)
    c.greet(cflags=1)  # no NO_ZEROES: 124 zero bytes follow
    c.opt(OPT_EXPORT_NAME, b"disk.raw")
    size, tflags = struct.unpack(">QH", c.recv(10))
    pad = c.recv(124)
    check(size == SIZE and pad == bytes(124), "EXPORT_NAME: size, flags and 124 zero bytes")
    err, _, _ = c.cmd(CMD_READ, 0, 512)  # simple reply: no data on the wire with the header
    data = c.recv(512)
    check(err == 0 and data == bytes(model[:512]), "simple-reply READ after EXPORT_NAME")
    c.request(CMD_DISC, 0, 0)
    check(c.closed(), "DISC: server closes")
    c.close()

    # --- transmission phase ------------------------------------------------
    c = Client(sock)
    c.greet()
    c.go()
    check(c.size == SIZE, "GO: export size")
    want = 1 | 4 | 8 | 32 | 64 | 128 | 256 | 2048
    check(c.tflags & want == want, f"transmission flags 0x{c.tflags:x} (flush fua trim zeroes df multi-conn fast-zero)")
    err, _, _ = c.cmd(CMD_READ, SIZE - 100, 200)
    check(err == EINVAL, "READ past the end: EINVAL")
    err, _, _ = c.cmd(CMD_READ, (1 << 64) - 512, 1024)
    check(err == EINVAL, "READ at offset 2^64-512 (wraps): EINVAL")
    err, _, _ = c.cmd(CMD_READ, 0, 64 << 20)
    check(err == EOVERFLOW, "READ of 64 MiB (> 32 MiB max): EOVERFLOW")
    err, _, _ = c.cmd(CMD_READ, 0, 0)
    check(err == EINVAL, "READ of length 0: EINVAL")
    err, _, _ = c.cmd(CMD_WRITE, SIZE - 10, 4096, payload=b"\xee" * 4096)
    check(err == ENOSPC, "WRITE past the end: ENOSPC, payload consumed")
    err, _, _ = c.cmd(CMD_ZERO, SIZE, 4096)
    check(err == ENOSPC, "WRITE_ZEROES past the end: ENOSPC")
    err, _, _ = c.cmd(CMD_TRIM, (1 << 63), 4096)
    check(err == ENOSPC, "TRIM far past the end: ENOSPC")
    err, _, _ = c.cmd(99, 0, 4096)
    check(err == EINVAL, "unknown command 99: EINVAL")
    err, _, _ = c.cmd(CMD_READ, 0, 4096, flags=0x400)
    check(err == EINVAL, "unknown command flag: EINVAL")
    err, _, _ = c.cmd(CMD_FLUSH, 5, 0)
    check(err == EINVAL, "FLUSH with an offset: EINVAL")
    err, _, chunks = c.cmd(CMD_BS, 0, SIZE, flags=F_REQ_ONE)
    bs = [b for t, b in chunks if t == 5]
    check(err == 0 and len(bs) == 1 and len(bs[0]) == 12, "BLOCK_STATUS REQ_ONE: one descriptor")
    err, data, _ = c.cmd(CMD_READ, 4096, 8192)
    check(err == 0 and data == bytes(model[4096:12288]), "READ still works after the errors")

    # many requests in flight, answered by cookie (out of order allowed);
    # sent from a thread while this one reads, as a real client does
    reqs, wire = {}, []
    # writes in flight together may run in any order: give each its own
    # 64 KiB slot so the model does not depend on the order
    slots = list(range(SIZE // 65536))
    rnd.shuffle(slots)
    for i in range(200):
        off = rnd.randrange(0, SIZE - 65536)
        ln = rnd.randrange(1, 65536)
        if i % 3 == 0:
            inner = rnd.randrange(0, 65536)
            off, ln = slots.pop() * 65536 + inner, rnd.randrange(1, 65536 - inner + 1)
            payload = rnd.randbytes(ln)
            wire.append((CMD_WRITE, off, ln, F_FUA if i % 2 else 0, 1000 + i, payload))
            model[off:off + ln] = payload
            reqs[1000 + i] = ("w", off, ln)
        else:
            wire.append((CMD_READ, off, ln, 0, 1000 + i, b""))
            reqs[1000 + i] = ("r", off, ln)
    sender = threading.Thread(target=lambda: [c.request(*w) for w in wire])
    sender.start()
    got = {}
    for _ in range(200):
        cookie, err, data, _ = c.read_reply()
        got[cookie] = (err, data)
    sender.join()
    check(sorted(got) == sorted(reqs) and all(e == 0 for e, _ in got.values()),
          "200 pipelined reads/writes: every cookie answered once, no error")
    err, _, _ = c.cmd(CMD_FLUSH, 0, 0)
    check(err == 0, "FLUSH")
    err, data, _ = c.cmd(CMD_READ, 0, SIZE // 2)
    check(err == 0 and data == bytes(model[:SIZE // 2]), "4 MiB READ equals the model after pipelined writes")

    # zeroes and trim
    err, _, _ = c.cmd(CMD_ZERO, 1 << 20, 1 << 20, flags=F_NO_HOLE)
    model[1 << 20:2 << 20] = bytes(1 << 20)
    check(err == 0, "WRITE_ZEROES NO_HOLE")
    err, _, _ = c.cmd(CMD_ZERO, 3 << 20, 1 << 20)
    model[3 << 20:4 << 20] = bytes(1 << 20)
    check(err == 0, "WRITE_ZEROES (may punch)")
    err, _, chunks = c.cmd(CMD_BS, 3 << 20, 1 << 20)
    flags = [struct.unpack(">II", b[4 + 8 * i:12 + 8 * i])[1] for t, b in chunks if t == 5
             for i in range((len(b) - 4) // 8)]
    check(err == 0 and flags and all(f & 2 for f in flags), f"BLOCK_STATUS after zeroing: zero ({flags})")
    err, data, _ = c.cmd(CMD_READ, 1 << 20, 3 << 20)
    check(err == 0 and data == bytes(model[1 << 20:4 << 20]), "zeroed ranges read back as zeroes")

    # garbage after the handshake closes the connection
    c.send(rnd.randbytes(28))
    check(c.closed(), "garbage request header: connection closed")
    c.close()

    # oversized WRITE: connection closed, nothing written
    c = Client(sock)
    c.greet()
    c.go()
    c.request(CMD_WRITE, 0, 64 << 20, payload=b"\xff" * 65536)
    check(c.closed(), "WRITE of 64 MiB: connection closed")
    c.close()

    # block status without a negotiated meta context
    c = Client(sock)
    c.greet()
    c.go(meta=False)
    err, _, _ = c.cmd(CMD_BS, 0, 4096)
    check(err == EINVAL, "BLOCK_STATUS without base:allocation: EINVAL")
    c.close()

    # a client that disconnects mid-request: every fully sent write lands
    c = Client(sock)
    c.greet()
    c.go()
    slots = list(range((4 << 20) // 65536, SIZE // 65536))
    rnd.shuffle(slots)
    for i in range(64):
        off = slots.pop() * 65536
        payload = rnd.randbytes(65536)
        c.request(CMD_WRITE, off, 65536, cookie=i, payload=payload)
        model[off:off + 65536] = payload
    c.request(CMD_WRITE, 0, 65536, cookie=99, payload=b"\x55" * 1000)  # half a request
    c.s.shutdown(socket.SHUT_RDWR)
    c.close()

    # flood of connections: more than --shared at once, then a real client
    flood = []
    for _ in range(300):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(sock)
            flood.append(s)
        except OSError:
            break
    for i, s in enumerate(flood):
        try:
            s.send(b"\0\0\0\3" if i % 2 else rnd.randbytes(50))
        except OSError:
            pass
    for s in flood:
        s.close()
    t0 = time.time()
    c = Client(sock, timeout=30)
    c.greet()
    c.go()
    err, data, _ = c.cmd(CMD_READ, 0, 4096)
    check(err == 0 and data == bytes(model[:4096]),
          f"after a flood of {len(flood)} connections a client is served ({time.time() - t0:.1f}s)")
    c.close()
    check(srv.poll() is None, "server alive after the flood")


if __name__ == "__main__":
    sys.exit(main())
