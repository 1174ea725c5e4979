#!/bin/bash
# Persistent-reservation keys across path reconnects on tgt (mpath-pr.c):
# a reconnected path re-registers the host's key after the register check,
# before carrying writes; a fenced host (preempted: 2A/03) never
# re-registers on reconnect and its writes stay refused.
set -euo pipefail
. "$SRCDIR/tests/lib/tgt.sh"
tgt_require
command -v ss >/dev/null || { echo "SKIP: ss (iproute2) missing" >&2; exit 77; }
tgt_start
tgt_add_target 1 iqn.2026-11.org.clusterfs.test:mpr
tgt_add_lun 1 1 16M
cut="tgtadm -C $TGT_CTL --lld iscsi --op delete --mode portal --param portal=127.0.0.2:$TGT_PORT && { ss -K dst 127.0.0.2 dport = :$TGT_PORT; ss -K src 127.0.0.2 sport = :$TGT_PORT; true; } >/dev/null 2>&1"
restore="tgtadm -C $TGT_CTL --lld iscsi --op new --mode portal --param portal=127.0.0.2:$TGT_PORT"
"$MPATH_PR" "$(tgt_uri 1 1 127.0.0.1)" "$(tgt_uri 1 1 127.0.0.2)" "$cut" "$restore"
