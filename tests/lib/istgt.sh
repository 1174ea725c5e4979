# istgt.sh: a private istgt (the second user-space iSCSI target, Debian
# package istgt) for one test, like tgt.sh for tgtd.
#
# istgt reads its whole configuration at start (no runtime control
# tool is used here), so LUNs are declared first and the target started
# after:
#
#   istgt_require                        # exit 77 unless istgt exists
#   istgt_init                           # temp dir, cleanup at exit (common.sh)
#   istgt_add_lun disk1 64M              # target iqn.2026-11.org.clusterfs.istgt:disk1,
#                                        # LUN 0, a sparse file in $ISTGT_DIR
#   istgt_add_lun disk2 16M 4096         # 4096-byte logical blocks
#   istgt_start                          # portals 127.0.0.1:$ISTGT_PORT and
#                                        # 127.0.0.2:$ISTGT_PORT, `istgt -D -c FILE`
#   uri=$(istgt_uri disk1)               # iscsi://127.0.0.1:PORT/IQN/0
#   uri2=$(istgt_uri disk1 127.0.0.2)    # the same LUN through the second portal
#   istgt_on_exit "kill $pid"            # more cleanup, run before istgt is stopped
#
# istgt runs in the foreground of a background job (-D), is killed by its
# pid on exit, and everything (config, pid file, LUN files, log) lives in
# $ISTGT_DIR. The port is chosen at random and checked free; start is
# retried on a collision, so tests using this run in parallel.
#
# Configuration format (istgt 0.4, /usr/share/doc/istgt/examples/istgt.conf):
# sections [Global], [UnitControl], [PortalGroupN], [InitiatorGroupN],
# [LogicalUnitN]; a logical unit names its target (TargetName, appended to
# NodeBase), maps a portal group to an initiator group and lists
# "LUNn Storage FILE SIZE".

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ISTGT_PID=
ISTGT_DIR=
ISTGT_PORT=
ISTGT_NODEBASE=iqn.2026-11.org.clusterfs.istgt
ISTGT_UNITS=()

istgt_log() { echo "istgt.sh: $*" >&2; }

istgt_require() {
    if ! command -v istgt >/dev/null 2>&1; then
        echo "SKIP: istgt not installed (Debian package istgt)" >&2
        exit 77
    fi
}

istgt_port_free() { port_free "$1"; }

# More cleanup, run at exit before istgt is stopped (on_exit, quietly).
istgt_on_exit() {
    on_exit "{ $1; } >/dev/null 2>&1"
}

istgt_stop() {
    if [ -n "$ISTGT_PID" ]; then
        kill -KILL "$ISTGT_PID" 2>/dev/null || true
        wait "$ISTGT_PID" 2>/dev/null || true
        ISTGT_PID=
    fi
    if [ -n "$ISTGT_DIR" ]; then
        if [ "${ISTGT_KEEP:-0}" = 1 ]; then
            istgt_log "keeping $ISTGT_DIR"
        else
            rm -rf "$ISTGT_DIR"
        fi
        ISTGT_DIR=
    fi
}

istgt_init() {
    ISTGT_DIR=$(mktemp -d /tmp/clusterfs-istgt.XXXXXX) || return 1
    on_exit istgt_stop
}

# istgt_add_lun NAME SIZE [BLOCKSIZE]: target $ISTGT_NODEBASE:NAME with
# LUN 0 backed by a sparse file of SIZE (truncate syntax).
istgt_add_lun() {
    local name=$1 size=$2 bs=${3:-512}
    local f="$ISTGT_DIR/$name.img"
    truncate -s "$size" "$f" || return 1
    ISTGT_UNITS+=("$name $f $bs")
}

istgt_lun_file() {
    echo "$ISTGT_DIR/$1.img"
}

istgt_write_config() {
    local port=$1 conf="$ISTGT_DIR/istgt.conf"
    cat >"$conf" <<EOF
[Global]
  Comment "clusterfs test target"
  NodeBase "$ISTGT_NODEBASE"
  PidFile $ISTGT_DIR/istgt.pid
  AuthFile $ISTGT_DIR/auth.conf
  MediaDirectory $ISTGT_DIR
  LogFacility "local7"
  Timeout 30
  NopInInterval 20
  DiscoveryAuthMethod Auto
  MaxSessions 64
  MaxConnections 4
  MaxR2T 32
  MaxOutstandingR2T 16
  DefaultTime2Wait 2
  DefaultTime2Retain 60
  FirstBurstLength 262144
  MaxBurstLength 1048576
  MaxRecvDataSegmentLength 262144
  InitialR2T Yes
  ImmediateData Yes
  DataPDUInOrder Yes
  DataSequenceInOrder Yes
  ErrorRecoveryLevel 0

[UnitControl]
  Comment "no controller portal"
  AuthMethod None

[PortalGroup1]
  Comment "two portals = two paths"
  Portal P1 127.0.0.1:$port
  Portal P2 127.0.0.2:$port

[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask 127.0.0.0/8
EOF
    : >"$ISTGT_DIR/auth.conf"
    local n=1 u name f bs
    for u in "${ISTGT_UNITS[@]}"; do
        read -r name f bs <<<"$u"
        cat >>"$conf" <<EOF

[LogicalUnit$n]
  TargetName $name
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod None
  UseDigest Auto
  UnitType Disk
  QueueDepth 32
  LUN0 Storage $f Auto
  LUN0 Option Serial "CFS$(printf '%05d' $$)$n"
EOF
        [ "$bs" != 512 ] && echo "  BlockLength $bs" >>"$conf"
        n=$((n + 1))
    done
}

istgt_start() {
    [ -n "$ISTGT_DIR" ] || istgt_init || return 1
    local attempt
    for attempt in 1 2 3 4 5 6 7 8; do
        local port=$((30000 + (RANDOM * 3 + $$ + attempt * 977) % 30000))
        istgt_port_free "$port" || continue
        ISTGT_PORT=$port
        istgt_write_config "$port" || return 1
        istgt -D -q -c "$ISTGT_DIR/istgt.conf" -p "$ISTGT_DIR/istgt.pid" \
            >"$ISTGT_DIR/istgt.log" 2>&1 &
        ISTGT_PID=$!
        local i ok=0
        for i in $(seq 1 50); do
            kill -0 "$ISTGT_PID" 2>/dev/null || break
            if ss -Htln "( sport = :$port )" | grep -q 127.0.0.2; then
                ok=1
                break
            fi
            sleep 0.1
        done
        [ $ok = 1 ] && return 0
        istgt_log "istgt start attempt $attempt failed (port $port): $(tail -n 3 "$ISTGT_DIR/istgt.log" | tr '\n' ' ')"
        kill -KILL "$ISTGT_PID" 2>/dev/null || true
        wait "$ISTGT_PID" 2>/dev/null || true
        ISTGT_PID=
    done
    istgt_log "cannot start istgt"
    return 1
}

# istgt_uri NAME [PORTAL_IP]
istgt_uri() {
    local ip=${2:-127.0.0.1}
    echo "iscsi://$ip:$ISTGT_PORT/$ISTGT_NODEBASE:$1/0"
}
