"""A minimal NBD client for the vdisk tests (fixed newstyle, OPT_GO, simple
replies): enough to send WRITE / FLUSH / TRIM / WRITE_ZEROES one at a time
and see each request's error, which qemu-io does not show per request."""
import socket
import struct
import time

NBD_MAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
OPT_GO, REP_ACK, REP_INFO = 7, 1, 3
CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_ZERO = 0, 1, 3, 4, 6
F_FUA, F_NO_HOLE, F_FAST_ZERO = 1, 2, 16


class Client:
    def __init__(self, path, name=b"", timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        magic, opt, _ = struct.unpack(">QQH", self._recv(18))
        assert magic == NBD_MAGIC and opt == IHAVEOPT
        self.s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            magic, _, typ, ln = struct.unpack(">QIII", self._recv(20))
            assert magic == REP_MAGIC
            body = self._recv(ln)
            if typ == REP_INFO and struct.unpack(">H", body[:2])[0] == 0:
                self.size, self.tflags = struct.unpack(">QH", body[2:12])
            if typ == REP_ACK:
                break
            if typ & (1 << 31):
                raise OSError("export %r refused: %d" % (name, typ & 0x7fffffff))
        self.cookie = 0

    def _recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("server closed the connection")
            b += c
        return b

    def cmd(self, typ, off=0, ln=0, flags=0, payload=b""):
        """Send one request, wait for its reply: (errno, data)."""
        self.cookie += 1
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, self.cookie, off, ln)
                       + payload)
        magic, err, cookie = struct.unpack(">IIQ", self._recv(16))
        assert magic == SIMPLE_MAGIC and cookie == self.cookie
        data = self._recv(ln) if typ == CMD_READ and err == 0 else b""
        return err, data

    def write(self, off, data, flags=0):
        return self.cmd(CMD_WRITE, off, len(data), flags, data)[0]

    def read(self, off, ln):
        err, data = self.cmd(CMD_READ, off, ln)
        assert err == 0, "read failed: %d" % err
        return data

    def flush(self):
        return self.cmd(CMD_FLUSH)[0]

    def close(self):
        try:
            self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 2, 0, 0, 0))  # DISC
        except OSError:
            pass
        self.s.close()


def wait_for_socket(path, proc, timeout=10):
    import os
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise SystemExit("server exited at start (rc %s)" % proc.returncode)
        if time.time() > deadline:
            raise SystemExit("server did not create " + path)
        time.sleep(0.05)
