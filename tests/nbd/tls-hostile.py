#!/usr/bin/python3
"""NBD over TLS: clients that must be refused, against `vdisk serve --tls`.

Two servers on 127.0.0.1 over one raw image each, TLS required:
 - X.509 (`--tls-certs`, `--tls-allow client1`): a good client (Python ssl,
   client certificate CN=client1) stays connected through everything and
   reads back and writes after every hostile client; the hostile ones are
   plaintext clients (LIST, INFO, GO, STRUCTURED_REPLY, meta contexts
   before STARTTLS: NBD_REP_ERR_TLS_REQD and not a byte of the export's
   name or size; EXPORT_NAME before STARTTLS: closed), garbage after
   STARTTLS, bytes pipelined behind STARTTLS, STARTTLS with data and twice,
   a client certificate from another CA, a trusted certificate not in
   --tls-allow, no certificate, nbdinfo without TLS.
 - PSK (`--tls-psk`, `--tls-allow alice`): a good libnbd client stays
   connected; a wrong key, an unknown identity, a known identity not
   allowed (bob) and a plaintext libnbd client are refused.
Each refused client is closed cleanly (the server neither crashes nor
stalls), the good clients keep working, both servers exit 0 on SIGTERM,
each image equals the good client's writes byte for byte, and neither the
server's log nor its command line holds a key.
"""
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

try:
    import nbd  # python3-libnbd
except ImportError:
    print("SKIP: python3-libnbd not installed")
    sys.exit(77)

VDISK = os.environ["VDISK"]
SRCDIR = os.environ["SRCDIR"]
SIZE = 4 << 20
EXPORT = "secret-disk-name"

NBD_MAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
ERR = 1 << 31
REP_ERR_INVALID, REP_ERR_TLS_REQD = ERR | 3, ERR | 5
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3

failures = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


class Closed(Exception):
    pass


class Raw:
    """A raw NBD client: plaintext option haggling, STARTTLS, simple replies."""

    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.got = b""  # every byte received, to look for leaks
        g = self.recv(18)
        magic, opt, flags = struct.unpack(">QQH", g)
        assert magic == NBD_MAGIC and opt == IHAVEOPT, "bad greeting"
        self.send(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES

    def recv(self, n):
        b = b""
        while len(b) < n:
            try:
                c = self.s.recv(n - len(b))
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError) as e:
                raise Closed() from e
            if not c:
                raise Closed()
            b += c
        self.got += b
        return b

    def send(self, b):
        try:
            self.s.sendall(b)
        except (ssl.SSLError, OSError) as e:
            raise Closed() from e

    def opt(self, opt, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self):
        magic, opt, typ, ln = struct.unpack(">QIII", self.recv(20))
        assert magic == REP_MAGIC, "bad reply magic"
        return opt, typ, self.recv(ln)

    def final(self):
        """Replies until ACK or an error; returns (types, last data)."""
        types = []
        while True:
            _, typ, data = self.reply()
            types.append(typ)
            if typ == REP_ACK or typ & ERR:
                return types, data

    def starttls(self, credsdir):
        self.opt(OPT_STARTTLS)
        _, typ, _ = self.reply()
        if typ != REP_ACK:
            return typ
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(credsdir, "ca-cert.pem"))
        cert = os.path.join(credsdir, "client-cert.pem")
        if os.path.exists(cert):
            ctx.load_cert_chain(cert, os.path.join(credsdir, "client-key.pem"))
        try:
            self.s = ctx.wrap_socket(self.s, server_hostname="localhost")
        except (ssl.SSLError, OSError) as e:
            raise Closed() from e
        return REP_ACK

    def go(self, name=EXPORT):
        n = name.encode()
        self.opt(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
        types, _ = self.final()
        return types

    def cmd(self, typ, off, ln, data=b"", cookie=1):
        self.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, typ, cookie, off, ln) + data)
        magic, err, ck = struct.unpack(">IIQ", self.recv(16))
        assert magic == SIMPLE_MAGIC and ck == cookie
        return err, (self.recv(ln) if typ == CMD_READ and err == 0 else b"")

    def closed_by_server(self, wait=10):
        """True if the server closes the connection (EOF or reset) in time."""
        self.s.settimeout(wait)
        try:
            while True:
                c = self.s.recv(4096)
                if not c:
                    return True
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError, ssl.SSLEOFError):
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


SERVERS = []  # killed at exit, whatever happened


def start(args, img, log):
    for _ in range(20):
        port = random.randint(20000, 60000)
        p = subprocess.Popen([VDISK, "serve", "--bind", "127.0.0.1", "--port", str(port),
                              "--shared", "8", "--name", EXPORT, "-v"] + args + [img],
                             stdout=log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if p.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                SERVERS.append(p)
                return p, port
            except OSError:
                time.sleep(0.05)
        if p.poll() is None:
            p.kill()
            p.wait()
    raise RuntimeError("could not start vdisk serve")


def stop(p, what):
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=30)
    check(rc == 0, f"{what}: server exits 0 on SIGTERM (got {rc})")


def main():
    tmp = tempfile.mkdtemp(prefix="nbd-tls-hostile.")
    creds = os.path.join(tmp, "c")
    subprocess.run([os.path.join(SRCDIR, "tests/nbd/tls-creds.sh"), creds], check=True)
    cd = lambda d: os.path.join(creds, d)  # noqa: E731
    logpath = os.path.join(tmp, "server.log")
    log = open(logpath, "w")

    # ---- X.509, required, client1 allowed ---------------------------------
    img = os.path.join(tmp, "x.raw")
    model = bytearray(os.urandom(SIZE))
    with open(img, "wb") as f:
        f.write(model)
    srv, port = start(["--tls-certs", cd("server"), "--tls-allow", "client1"], img, log)

    good = Raw(port)
    check(good.starttls(cd("client")) == REP_ACK, "x509: STARTTLS acked for the good client")
    check(good.go()[-1] == REP_ACK, "x509: good client (CN=client1) reaches transmission")
    cookie = [100]

    def good_roundtrip(what):
        """The good client reads back a region and writes a new one."""
        cookie[0] += 1
        off = random.randrange(0, SIZE - 65536) & ~511
        err, data = good.cmd(CMD_READ, off, 65536, cookie=cookie[0])
        ok = err == 0 and data == bytes(model[off:off + 65536])
        buf = os.urandom(8192)
        woff = random.randrange(0, SIZE - 8192)
        cookie[0] += 1
        werr, _ = good.cmd(CMD_WRITE, woff, len(buf), buf, cookie=cookie[0])
        if werr == 0:
            model[woff:woff + len(buf)] = buf
        check(ok and werr == 0, f"x509: good client still served after {what}")

    good_roundtrip("connecting")

    # plaintext options before STARTTLS: refused, nothing about the export
    c = Raw(port)
    for opt, data in [(OPT_LIST, b""),
                      (OPT_INFO, struct.pack(">I", len(EXPORT)) + EXPORT.encode() + b"\0\0"),
                      (OPT_GO, struct.pack(">I", 0) + b"\0\0"),
                      (OPT_STRUCTURED, b""),
                      (OPT_LIST_META, struct.pack(">I", len(EXPORT)) + EXPORT.encode() +
                       struct.pack(">I", 0)),
                      (OPT_SET_META, struct.pack(">I", 0) + struct.pack(">I", 0))]:
        c.opt(opt, data)
        types, _ = c.final()
        check(types == [REP_ERR_TLS_REQD], f"x509: option {opt} before STARTTLS -> ERR_TLS_REQD "
              f"(got {[hex(t) for t in types]})")
    check(EXPORT.encode() not in c.got and struct.pack(">Q", SIZE) not in c.got,
          "x509: no export name or size in any reply before TLS")
    # ... and the client may still upgrade afterwards
    check(c.starttls(cd("client")) == REP_ACK, "x509: STARTTLS after refused options")
    check(c.go()[-1] == REP_ACK, "x509: GO over TLS after refused plaintext options")
    err, data = c.cmd(CMD_READ, 0, 4096)
    check(err == 0 and data == bytes(model[0:4096]), "x509: that client reads the disk")
    c.close()
    good_roundtrip("plaintext options")

    # STARTTLS with data, then twice
    c = Raw(port)
    c.opt(OPT_STARTTLS, b"xxxx")
    check(c.final()[0] == [REP_ERR_INVALID], "x509: STARTTLS with data -> ERR_INVALID")
    check(c.starttls(cd("client")) == REP_ACK, "x509: STARTTLS after that")
    c.opt(OPT_STARTTLS)
    check(c.final()[0] == [REP_ERR_INVALID], "x509: second STARTTLS (over TLS) -> ERR_INVALID")
    c.close()

    # EXPORT_NAME before STARTTLS: cannot be answered with an error: closed
    c = Raw(port)
    c.opt(OPT_EXPORT_NAME, EXPORT.encode())
    check(c.closed_by_server() and len(c.got) == 18,
          "x509: EXPORT_NAME before STARTTLS closes, no export data sent")
    c.close()
    good_roundtrip("EXPORT_NAME before STARTTLS")

    # garbage instead of a TLS ClientHello after STARTTLS
    c = Raw(port)
    c.opt(OPT_STARTTLS)
    _, typ, _ = c.reply()
    check(typ == REP_ACK, "x509: STARTTLS acked")
    c.send(os.urandom(4096))
    check(c.closed_by_server(), "x509: garbage after STARTTLS closes the connection")
    c.close()
    good_roundtrip("garbage after STARTTLS")

    # bytes pipelined behind STARTTLS, before its ack
    c = Raw(port)
    c.send(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) + b"\x16\x03\x01" + os.urandom(200))
    _, typ, _ = c.reply()
    check(typ == REP_ACK and c.closed_by_server(),
          "x509: bytes pipelined behind STARTTLS close the connection")
    c.close()

    # certificates: another CA, not allowed, none
    for d, what in [("evil", "a client certificate from another CA"),
                    ("client2", "a trusted certificate not in --tls-allow"),
                    ("noclient", "no client certificate")]:
        c = Raw(port)
        refused = False
        try:
            c.starttls(cd(d))
            types = c.go()
            refused = types[-1] != REP_ACK
        except (Closed, AssertionError):
            refused = True
        check(refused, f"x509: {what} is refused")
        c.close()
        good_roundtrip(what)

    # a plaintext NBD client (nbdinfo) against --tls require
    r = subprocess.run(["nbdinfo", f"nbd://127.0.0.1:{port}/{EXPORT}"], capture_output=True)
    check(r.returncode != 0 and EXPORT.encode() not in r.stdout,
          "x509: nbdinfo without TLS fails and learns nothing")
    good_roundtrip("nbdinfo without TLS")

    # and the server kept running: a second good client, then shut down
    c = Raw(port)
    c.starttls(cd("client"))
    check(c.go()[-1] == REP_ACK, "x509: a new good client connects at the end")
    c.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 0, 0, 0))
    c.close()
    cookie[0] += 1
    check(good.cmd(CMD_FLUSH, 0, 0, cookie=cookie[0])[0] == 0, "x509: good client flushes")
    good.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 0, 0, 0))
    good.close()
    stop(srv, "x509")
    with open(img, "rb") as f:
        check(f.read() == bytes(model), "x509: image equals the good client's writes, "
              "nothing else changed it")

    # ---- PSK, required ----------------------------------------------------
    img = os.path.join(tmp, "p.raw")
    model = bytearray(os.urandom(SIZE))
    with open(img, "wb") as f:
        f.write(model)
    srv, port = start(["--tls-psk", cd("keys.psk"), "--tls-allow", "alice"], img, log)

    def psk_handle(keyfile, user, tls=nbd.TLS_REQUIRE):
        h = nbd.NBD()
        h.set_tls(tls)
        if tls != nbd.TLS_DISABLE:
            h.set_tls_psk_file(keyfile)
            h.set_tls_username(user)
        h.set_export_name(EXPORT)
        h.connect_tcp("127.0.0.1", str(port))
        return h

    g = psk_handle(cd("keys.psk"), "alice")
    check(g.get_size() == SIZE, "psk: good libnbd client connects")

    def psk_roundtrip(what):
        off = random.randrange(0, SIZE - 65536)
        ok = g.pread(65536, off) == bytes(model[off:off + 65536])
        buf = os.urandom(8192)
        woff = random.randrange(0, SIZE - 8192)
        g.pwrite(buf, woff)
        model[woff:woff + len(buf)] = buf
        check(ok, f"psk: good client still served after {what}")

    for keyfile, user, tls, what in [
            (cd("wrong.psk"), "alice", nbd.TLS_REQUIRE, "a wrong key"),
            (cd("unknown.psk"), "mallory", nbd.TLS_REQUIRE, "an unknown identity"),
            (cd("bob.psk"), "bob", nbd.TLS_REQUIRE, "a known identity not in --tls-allow"),
            (None, None, nbd.TLS_DISABLE, "a plaintext client")]:
        refused = False
        try:
            h = psk_handle(keyfile, user, tls)
            h.shutdown()
        except nbd.Error:
            refused = True
        check(refused, f"psk: {what} is refused")
        psk_roundtrip(what)
    g.flush()
    g.shutdown()
    with open(f"/proc/{srv.pid}/cmdline", "rb") as f:
        cmdline = f.read()
    stop(srv, "psk")
    with open(img, "rb") as f:
        check(f.read() == bytes(model), "psk: image equals the good client's writes")

    # ---- no key in the log or on the command line -------------------------
    log.close()
    with open(logpath, "rb") as f:
        text = f.read()
    keys = []
    for name in ("keys.psk", "wrong.psk", "unknown.psk"):
        with open(cd(name)) as f:
            keys += [ln.split(":")[1].strip().encode() for ln in f if ":" in ln]
    check(not any(k in text or k.upper() in text for k in keys), "no key in the server log")
    check(not any(k in cmdline for k in keys), "no key on the server's command line")
    check(b"TLS PSK identity 'mallory' is unknown" in text,
          "the log names the unknown PSK identity")
    check(b"TLS PSK identity 'bob' is not in --tls-allow" in text,
          "the log names the PSK identity --tls-allow refused")
    check(b"certificate verify failed" in text, "the log says why a certificate was refused")

    if failures:
        sys.stdout.write(open(logpath).read()[-4000:])
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    subprocess.run(["rm", "-rf", tmp])
    print("all ok")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in SERVERS:
            if p.poll() is None:
                p.kill()
                p.wait()
