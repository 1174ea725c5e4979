#!/usr/bin/env python3
"""tcp-proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT

A one-process TCP relay for multipath tests. Stopping it with SIGSTOP makes
the path behind it silent without closing anything: the kernel still
accepts and acknowledges the initiator's bytes, but no answer ever comes
back (a hung switch or target, not a reset). SIGCONT resumes it. Writes
"ready" on stdout once it listens.
"""
import selectors
import socket
import sys


def main():
    lhost, lport, thost, tport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    sel = selectors.DefaultSelector()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, lport))
    ls.listen(16)
    sel.register(ls, selectors.EVENT_READ, None)
    print("ready", flush=True)
    peer = {}

    def close(s):
        for x in (s, peer.get(s)):
            if x is not None and x in peer:
                sel.unregister(x)
                del peer[x]
                x.close()

    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ls:
                c, _ = ls.accept()
                try:
                    t = socket.create_connection((thost, tport), timeout=5)
                except OSError:
                    c.close()
                    continue
                for x in (c, t):
                    x.setblocking(True)
                    x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer[c], peer[t] = t, c
                sel.register(c, selectors.EVENT_READ, None)
                sel.register(t, selectors.EVENT_READ, None)
                continue
            if s not in peer:
                continue
            try:
                data = s.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                close(s)
                continue
            try:
                peer[s].sendall(data)
            except OSError:
                close(s)


if __name__ == "__main__":
    main()
