#!/bin/bash
# The main job on an embedded default: a file-backed datastore, no SAN.
# Installs what is missing, builds, then walks through what exists today:
#   a file LUN -> its identity and capabilities -> a lockspace with a host
#   heartbeat -> virtual disks (create, write, snapshot, clone, info) ->
#   one of them served over NBD and read back by qemu-img.
# Everything lives under $DEMO_DIR (default /var/tmp/clusterfs-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh >/dev/null
B=$PWD/build
CFS=$B/tools/clusterfs
VD=$B/tools/vdisk
D=${DEMO_DIR:-/var/tmp/clusterfs-demo}
rm -rf "$D"; mkdir -p "$D/datastore"
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "A file-backed LUN (256 MiB) stands in for the SAN"
truncate -s 256M "$D/lun0.img"
run "$CFS" lun info "$D/lun0.img"

step "A lockspace on the LUN: heartbeat slots and lock records (io_timeout 2 s)"
run "$CFS" locks init --offset 8 --io-timeout 2 "$D/lun0.img"
# Until the mount daemon exists, a host of the test cluster stands in for
# an ESX host: it claims a heartbeat slot, takes lock 0 and holds it.
"$B/locking/lockhost" hold --offset 8 --name esx-a --lock 0 "$D/lun0.img" \
  > "$D/esx-a.out" 2>&1 &
holder=$!
trap 'kill $holder 2>/dev/null || true; [ -n "${srv:-}" ] && kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q ACQUIRED "$D/esx-a.out" && break; sleep 0.1; done
run "$CFS" locks --offset 8 "$D/lun0.img"
kill "$holder"; wait "$holder" 2>/dev/null || true

step "Virtual disks: a thin 4 GiB VMDK, some data, a snapshot, a linked clone"
cd "$D/datastore"
run "$VD" create --type thin --adapter pvscsi vm1.vmdk 4G
run qemu-io -f vmdk -c "write -P 0x5a 0 1M" vm1.vmdk >/dev/null
run "$VD" snapshot create vm1.vmdk installed
run qemu-io -f vmdk -c "write -P 0x77 1M 1M" vm1.vmdk >/dev/null
run "$VD" snapshot list vm1.vmdk
run "$VD" clone --linked vm1.vmdk vm2.vmdk
run "$VD" info vm2.vmdk
run "$VD" map vm1.vmdk
run "$VD" check vm1.vmdk
run qemu-img check -f vmdk vm2.vmdk

step "A full clone (flattens the chain), judged by qemu-img compare"
run "$VD" clone vm1.vmdk vm1-copy.vmdk
run qemu-img compare -f vmdk -F vmdk vm1.vmdk vm1-copy.vmdk

step "vm1 served over NBD; QEMU reads it through the socket"
"$VD" serve --socket "$D/nbd.sock" --shared 4 --name vm1 vm1.vmdk > "$D/serve.out" 2>&1 &
srv=$!
for _ in $(seq 100); do [ -S "$D/nbd.sock" ] && break; sleep 0.1; done
run qemu-img info "nbd+unix:///vm1?socket=$D/nbd.sock"
run qemu-img compare -f raw -F vmdk "nbd+unix:///vm1?socket=$D/nbd.sock" vm1.vmdk
kill -TERM "$srv"; wait "$srv" 2>/dev/null || true; srv=

step "Done: everything is under $D"
