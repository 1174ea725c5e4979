#!/usr/bin/env python3
"""tcp-proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT

A one-process TCP relay for multipath tests. Writes "ready" on stdout once
it listens.

Two ways to make the path behind it misbehave without resetting anything:

- SIGSTOP / SIGCONT the process: the kernel still accepts and acknowledges
  the initiator's bytes (until the buffers fill), but nothing is forwarded
  either way while it is stopped (a hung switch or target).

- SIGUSR1 freezes, SIGUSR2 thaws: while frozen the relay forwards nothing
  and accepts no connection, but keeps every socket open, so the target
  keeps the old session (what a partition looks like to a target that does
  not time sessions out). On thaw everything held is delivered, in order,
  in each direction.

Each direction is relayed on its own: when one side closes or resets, what
the relay already holds from it is still delivered to the other side
before that direction is shut down (a real network delivers a write that
was on its way even if the sender has since closed its socket), and the
other direction goes on until it ends as well.
"""
import errno
import selectors
import signal
import socket
import sys

frozen = False


def on_freeze(signum, frame):
    global frozen
    frozen = True


def on_thaw(signum, frame):
    global frozen
    frozen = False


class Pipe:
    """One direction: bytes read from src, waiting to be written to dst."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.buf = bytearray()
        self.eof = False  # src ended: shut dst's write side once buf is out
        self.dead = False  # dst cannot take more: drop this direction


def main():
    lhost, lport, thost, tport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    signal.signal(signal.SIGUSR1, on_freeze)
    signal.signal(signal.SIGUSR2, on_thaw)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, lport))
    ls.listen(16)
    ls.setblocking(False)
    print("ready", flush=True)
    pipes = []  # every direction of every connection
    sel = selectors.DefaultSelector()

    def done(p):
        return p.dead or (p.eof and not p.buf)

    while True:
        sel.close()
        sel = selectors.DefaultSelector()
        if not frozen:
            sel.register(ls, selectors.EVENT_READ, None)
            for p in pipes:
                ev = 0
                if not p.eof and not p.dead and len(p.buf) < (4 << 20):
                    ev |= selectors.EVENT_READ
                if p.buf and not p.dead:
                    ev |= selectors.EVENT_WRITE
                if ev:
                    # A socket can be the src of one pipe and the dst of the other.
                    if ev & selectors.EVENT_READ:
                        add(sel, p.src, selectors.EVENT_READ, p)
                    if ev & selectors.EVENT_WRITE:
                        add(sel, p.dst, selectors.EVENT_WRITE, p)
        try:
            events = sel.select(timeout=0.05)
        except InterruptedError:
            continue
        if frozen:
            continue
        for key, mask in events:
            s = key.fileobj
            if s is ls:
                try:
                    c, _ = ls.accept()
                except OSError:
                    continue
                try:
                    t = socket.create_connection((thost, tport), timeout=5)
                except OSError:
                    c.close()
                    continue
                for x in (c, t):
                    x.setblocking(False)
                    x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pipes.append(Pipe(c, t))
                pipes.append(Pipe(t, c))
                continue
            for p in key.data:
                if (mask & selectors.EVENT_READ) and p.src is s and not p.eof and not p.dead:
                    try:
                        data = s.recv(1 << 20)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data is not None:
                        if data:
                            p.buf += data
                        else:
                            p.eof = True
                if (mask & selectors.EVENT_WRITE) and p.dst is s and p.buf and not p.dead:
                    try:
                        n = s.send(p.buf)
                        del p.buf[:n]
                    except BlockingIOError:
                        pass
                    except OSError:
                        p.dead = True
                        p.buf.clear()
        for p in pipes:
            if p.eof and not p.buf and not p.dead:
                try:
                    p.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                p.dead = True
        # Close a connection once both directions are over.
        keep = []
        for i in range(0, len(pipes), 2):
            a, b = pipes[i], pipes[i + 1]
            if done(a) and done(b):
                for x in (a.src, a.dst):
                    try:
                        x.close()
                    except OSError:
                        pass
            else:
                keep += [a, b]
        pipes = keep


def add(sel, sock, ev, pipe):
    try:
        key = sel.get_key(sock)
        sel.modify(sock, key.events | ev, key.data + [pipe])
    except KeyError:
        sel.register(sock, ev, [pipe])


if __name__ == "__main__":
    main()
