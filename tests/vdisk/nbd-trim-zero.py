#!/usr/bin/env python3
"""TRIM and FAST_ZERO through `vdisk serve` on a delta (issue 13 item 8).
A TRIM of 4 KiB does not copy a whole grain up from the parent; a
WRITE_ZEROES with FAST_ZERO fails with ENOTSUP (and changes nothing) when
it would have to write zero data, and succeeds when it does not (a whole
grain; an allocated grain zeroed in place with NO_HOLE). Judged by
qemu-img map (what the delta itself allocates) and qemu-io reads."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdclient as N  # noqa: E402

VDISK, VDISK_IO = os.environ["VDISK"], os.environ["VDISK_IO"]
for p in ("qemu-img", "qemu-io"):
    if not shutil.which(p):
        sys.exit(77)
T = tempfile.mkdtemp(prefix="nbd-trim-zero.")
failures = []
ENOTSUP = 95


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(*a):
    return subprocess.run(a, cwd=T, capture_output=True, text=True)


def local_alloc(img):
    """[(start, length)] the delta itself allocates (data or zeroed grains)."""
    r = run("qemu-img", "map", "--output=json", "-f", "vmdk", img)
    return [(m["start"], m["length"]) for m in json.loads(r.stdout)
            if m["depth"] == 0 and m.get("present", True)]


def allocated(img, off):
    return any(s <= off < s + n for s, n in local_alloc(img))


try:
    assert run(VDISK, "create", "b.vmdk", "4M").returncode == 0
    assert run("qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 0 4M", "b.vmdk").returncode == 0
    assert run(VDISK_IO, "child", "b.vmdk", "c.vmdk").returncode == 0
    sock = os.path.join(T, "s.sock")
    log = open(os.path.join(T, "log"), "w")
    srv = subprocess.Popen([VDISK, "serve", "--socket", sock, "c.vmdk"], cwd=T, stdout=log,
                           stderr=subprocess.STDOUT)
    N.wait_for_socket(sock, srv)
    c = N.Client(sock)
    check(c.cmd(N.CMD_TRIM, 4096, 4096)[0] == 0, "TRIM of 4 KiB in the delta")
    e = c.cmd(N.CMD_ZERO, 65536 + 4096, 4096, N.F_FAST_ZERO)[0]
    check(e == ENOTSUP, "FAST_ZERO of 4 KiB over the parent's data: ENOTSUP (errno %d)" % e)
    e = c.cmd(N.CMD_ZERO, 131072, 65536, N.F_FAST_ZERO)[0]
    check(e == 0, "FAST_ZERO of a whole grain: done (errno %d)" % e)
    check(c.write(196608, b"\x22" * 65536) == 0, "write a grain")
    e = c.cmd(N.CMD_ZERO, 196608 + 4096, 4096, N.F_FAST_ZERO | N.F_NO_HOLE)[0]
    check(e == 0, "FAST_ZERO with NO_HOLE in an allocated grain: done in place (errno %d)" % e)
    e = c.cmd(N.CMD_ZERO, 262144 + 4096, 4096, N.F_FAST_ZERO | N.F_NO_HOLE)[0]
    check(e == ENOTSUP, "FAST_ZERO with NO_HOLE over the parent's data: ENOTSUP (errno %d)" % e)
    check(c.flush() == 0, "flush")
    c.close()
    srv.send_signal(signal.SIGTERM)
    check(srv.wait(30) == 0, "server exits 0")
    check(allocated("c.vmdk", 196608) and allocated("c.vmdk", 131072),
          "qemu-img map sees the grains the delta allocated (the judge works)")
    check(not allocated("c.vmdk", 0), "the TRIM copied no grain up")
    check(not allocated("c.vmdk", 65536), "the refused FAST_ZERO changed nothing")
    check(not allocated("c.vmdk", 262144), "the refused FAST_ZERO with NO_HOLE changed nothing")
    r = run("qemu-io", "-r", "-f", "vmdk", "-c", "read -P 0x5a 0 128k", "-c", "read -P 0 128k 64k",
            "-c", "read -P 0x22 192k 4k", "-c", "read -P 0 196k 4k", "-c", "read -P 0x22 200k 56k",
            "-c", "read -P 0x5a 256k 64k", "c.vmdk")
    check(r.returncode == 0 and "verification failed" not in r.stdout,
          "what the delta reads: " + r.stdout.strip().replace("\n", " | ")[-300:])
    r = run("qemu-img", "check", "c.vmdk")
    check(r.returncode == 0, "qemu-img check: " + r.stdout.strip()[-200:])
finally:
    shutil.rmtree(T, ignore_errors=True)
sys.exit(1 if failures else 0)
