#!/usr/bin/env python3
"""A failed flush is sticky (issue 13 item 3). After one fdatasync of an
image fails (syncfail-shim.c fails exactly one, when the test touches its
trigger file), every later flush of that image fails until it is reopened,
and the grain-table entries that waited for the failed sync are never
written: the delta keeps reading its parent there. Checked through the
library (vdisk-io syncfail) and through `vdisk serve` (NBD FLUSH twice:
the second must fail too; on the old code it succeeded and wrote the
entries of grains whose data the failed sync may have lost)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdclient  # noqa: E402

VDISK, VDISK_IO, SHIM = os.environ["VDISK"], os.environ["VDISK_IO"], os.environ["SYNCFAIL_SHIM"]
for p in ("qemu-img", "qemu-io"):
    if not shutil.which(p):
        sys.exit(77)
T = tempfile.mkdtemp(prefix="flush-error.")
failures = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(*args, **kw):
    return subprocess.run(args, cwd=T, capture_output=True, text=True, **kw)


def make_delta(name):
    """A 4 MiB base full of 0xaa and a thin delta `name` on it."""
    base = name + "-base.vmdk"
    assert run(VDISK, "create", base, "4M").returncode == 0
    r = run("qemu-io", "-f", "vmdk", "-c", "write -P 0xaa 0 4M", base)
    assert r.returncode == 0, r.stderr
    r = run(VDISK_IO, "child", base, name)
    assert r.returncode == 0, r.stderr


def reads(img, pattern, off, ln):
    r = run("qemu-io", "-r", "-f", "vmdk", "-c", "read -P %s %d %d" % (pattern, off, ln), img)
    return r.returncode == 0 and "Pattern verification failed" not in r.stdout


def qemu_check(img):
    r = run("qemu-img", "check", img)
    return r.returncode == 0, r.stdout + r.stderr


def env_for(img, trigger):
    env = dict(os.environ)
    env.update(LD_PRELOAD=SHIM, SYNCFAIL_FILE=os.path.join(T, img),
               SYNCFAIL_TRIGGER=os.path.join(T, trigger))
    env.pop("ASAN_OPTIONS", None)
    return env


try:
    # ---- through the library
    make_delta("api.vmdk")
    r = run(VDISK_IO, "syncfail", "api.vmdk", "api.trigger", env=env_for("api.vmdk", "api.trigger"))
    print(r.stdout, r.stderr, end="")
    check(r.returncode == 0, "API: after one failed fdatasync every flush, FUA write and close fail")
    check(not os.path.exists(os.path.join(T, "api.trigger")), "API: the shim failed one sync")
    check(reads("api.vmdk", "0xaa", 0, 4 << 20),
          "API: no grain-table entry of an unflushed grain reached the file")
    ok, out = qemu_check("api.vmdk")
    check(ok, "API: qemu-img check clean after the failed flushes: " + out.strip()[-200:])

    # ---- through vdisk serve
    make_delta("srv.vmdk")
    sock = os.path.join(T, "s.sock")
    log = open(os.path.join(T, "server.log"), "w")
    srv = subprocess.Popen([VDISK, "serve", "--socket", sock, "srv.vmdk"], cwd=T, stdout=log,
                           stderr=subprocess.STDOUT, env=env_for("srv.vmdk", "srv.trigger"))
    nbdclient.wait_for_socket(sock, srv)
    c = nbdclient.Client(sock)
    check(c.write(0, b"\x11" * 65536) == 0, "NBD: write 0x11")
    open(os.path.join(T, "srv.trigger"), "w").close()
    e1 = c.flush()
    check(e1 != 0, "NBD: the FLUSH whose fdatasync fails fails (errno %d)" % e1)
    e2 = c.flush()
    check(e2 == 5, "NBD: the second FLUSH fails too, EIO (errno %d)" % e2)
    check(c.write(65536, b"\x22" * 65536) == 0, "NBD: writes still work")
    e3 = c.flush()
    check(e3 == 5, "NBD: a FLUSH after a later write fails (errno %d)" % e3)
    e4 = c.write(131072, b"\x33" * 4096, nbdclient.F_FUA)
    check(e4 == 5, "NBD: a FUA write fails (errno %d)" % e4)
    check(c.read(0, 65536) == b"\x11" * 65536, "NBD: the server still reads what it was sent")
    c.close()
    srv.send_signal(signal.SIGTERM)
    rc = srv.wait(30)
    log.close()
    text = open(os.path.join(T, "server.log")).read()
    check(rc != 0, "NBD: the server's final flush fails too, exit status %d" % rc)
    check("an earlier flush failed" in text and "srv.vmdk" in text,
          "NBD: the log names the image and the earlier failure")
    check(reads("srv.vmdk", "0xaa", 0, 4 << 20),
          "NBD: no grain-table entry of an unflushed grain reached the file")
    ok, out = qemu_check("srv.vmdk")
    check(ok, "NBD: qemu-img check clean: " + out.strip()[-200:])
    # reopened: flushes work again
    r = run("qemu-io", "-f", "vmdk", "-c", "write -P 0x44 0 64k", "-c", "flush", "srv.vmdk")
    check(r.returncode == 0 and reads("srv.vmdk", "0x44", 0, 65536), "reopened image works")
finally:
    if failures:
        for f in ("server.log",):
            p = os.path.join(T, f)
            if os.path.exists(p):
                print("--- " + f + " ---\n" + open(p).read()[-3000:])
    shutil.rmtree(T, ignore_errors=True)
sys.exit(1 if failures else 0)
