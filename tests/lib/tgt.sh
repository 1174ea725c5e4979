# tgt.sh: a private tgtd (the user-space iSCSI target) for one test.
#
# Source it from a bash test, then:
#
#   tgt_require                      # exit 77 unless root and tgtd/tgtadm exist
#   tgt_start                        # own tgtd: private control port, portals
#                                    # 127.0.0.1:$TGT_PORT and 127.0.0.2:$TGT_PORT
#   tgt_add_target 1 iqn.2026-11.org.clusterfs.test:t1
#   tgt_add_lun 1 1 256M             # LUN 1 of target 1, sparse file, 512-byte blocks
#   tgt_add_lun 1 2 64M 4096         # 4096-byte logical blocks
#   tgt_thin 1 1                     # advertise thin provisioning (UNMAP) on LUN 1
#   tgt_chap 1 alice secretpass1     # require CHAP user alice on target 1
#   uri=$(tgt_uri 1 1)               # iscsi://127.0.0.1:PORT/IQN/1
#   uri2=$(tgt_uri 1 1 127.0.0.2)    # same LUN through the second portal
#   tgt_on_exit "kill $pid"          # more cleanup, run before tgtd is stopped
#
# Everything lives in $TGT_DIR (mktemp -d; backing files go to
# $TGT_BACKING_DIR, default $TGT_DIR). tgt_stop kills tgtd by its pid and
# removes its files; tgt_start registers it with common.sh's on_exit, so
# nothing is left behind even when the test fails. Tests using this run in parallel:
# the control port and the iSCSI port are chosen at random and checked free,
# and start is retried on a collision.

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TGT_PID=
TGT_DIR=
TGT_CTL=
TGT_PORT=
declare -A TGT_IQN

tgt_log() { echo "tgt.sh: $*" >&2; }

tgt_require() {
    if [ "$(id -u)" != 0 ]; then
        echo "SKIP: needs root (tgtd)" >&2
        exit 77
    fi
    for p in tgtd tgtadm; do
        if ! command -v "$p" >/dev/null 2>&1; then
            echo "SKIP: $p not installed (Debian package tgt)" >&2
            exit 77
        fi
    done
}

# Is TCP port $1 free on 127.0.0.1 and 127.0.0.2?
tgt_port_free() { port_free "$1"; }

tgt_adm() {
    tgtadm -C "$TGT_CTL" --lld iscsi "$@"
}

# More cleanup, run at exit before tgtd is stopped (on_exit, quietly).
tgt_on_exit() {
    on_exit "{ $1; } >/dev/null 2>&1"
}

tgt_stop() {
    if [ -n "$TGT_PID" ]; then
        # tgtd ignores SIGTERM while it has targets; nothing of it needs
        # to survive a test, so it is killed outright.
        kill -KILL "$TGT_PID" 2>/dev/null || true
        wait "$TGT_PID" 2>/dev/null || true
        TGT_PID=
    fi
    if [ -n "$TGT_CTL" ]; then
        rm -f "/var/run/tgtd/socket.$TGT_CTL" "/var/run/tgtd/socket.$TGT_CTL.lock"
        TGT_CTL=
    fi
    if [ -n "$TGT_DIR" ]; then
        if [ "${TGT_KEEP:-0}" = 1 ]; then
            tgt_log "keeping $TGT_DIR"
        else
            rm -rf "$TGT_DIR"
            [ -n "${TGT_BACKING_DIR:-}" ] && [ "$TGT_BACKING_DIR" != "$TGT_DIR" ] &&
                rm -f "$TGT_BACKING_DIR"/tgt-$$-*.img
        fi
        TGT_DIR=
    fi
}

tgt_start() {
    TGT_DIR=$(mktemp -d /tmp/clusterfs-tgt.XXXXXX) || return 1
    on_exit tgt_stop
    local attempt
    for attempt in 1 2 3 4 5 6 7 8; do
        local ctl=$((2000 + (RANDOM * 7 + $$ + attempt * 131) % 28000))
        local port=$((30000 + (RANDOM * 3 + $$ + attempt * 977) % 30000))
        [ -e "/var/run/tgtd/socket.$ctl" ] && continue
        tgt_port_free "$ctl" || continue
        tgt_port_free "$port" || continue
        TGT_CTL=$ctl
        TGT_PORT=$port
        tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" >"$TGT_DIR/tgtd.log" 2>&1 &
        TGT_PID=$!
        local i ok=0
        for i in $(seq 1 50); do
            if ! kill -0 "$TGT_PID" 2>/dev/null; then
                break
            fi
            if tgt_adm --mode sys --op show >/dev/null 2>&1 &&
                ss -Htln "( sport = :$port )" | grep -q 127.0.0.1; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if [ $ok = 1 ] && tgt_adm --op new --mode portal --param "portal=127.0.0.2:$port" >/dev/null 2>&1; then
            return 0
        fi
        tgt_log "tgtd start attempt $attempt failed (ctl $ctl port $port): $(tail -n 3 "$TGT_DIR/tgtd.log" | tr '\n' ' ')"
        local d=$TGT_DIR
        TGT_DIR=
        tgt_stop
        TGT_DIR=$d
    done
    tgt_log "cannot start tgtd"
    return 1
}

# tgt_add_target TID IQN: a target open to every initiator.
tgt_add_target() {
    tgt_adm --mode target --op new --tid "$1" --targetname "$2" || return 1
    tgt_adm --mode target --op bind --tid "$1" --initiator-address ALL || return 1
    TGT_IQN[$1]=$2
}

# tgt_add_lun TID LUN SIZE [BLOCKSIZE]: a LUN backed by a sparse file.
tgt_add_lun() {
    local tid=$1 lun=$2 size=$3 bs=${4:-512}
    local dir=${TGT_BACKING_DIR:-$TGT_DIR}
    local f="$dir/tgt-$$-t$tid-l$lun.img"
    truncate -s "$size" "$f" || return 1
    local extra=()
    [ "$bs" != 512 ] && extra=(--blocksize "$bs")
    tgt_adm --mode logicalunit --op new --tid "$tid" --lun "$lun" \
        --backing-store "$f" --bstype rdwr "${extra[@]}" || return 1
}

# The backing file of a LUN.
tgt_lun_file() {
    echo "${TGT_BACKING_DIR:-$TGT_DIR}/tgt-$$-t$1-l$2.img"
}

# tgt_thin TID LUN: LBPME/LBPU on (UNMAP, WRITE SAME with UNMAP).
tgt_thin() {
    tgt_adm --mode logicalunit --op update --tid "$1" --lun "$2" --params thin_provisioning=1
}

# tgt_chap TID USER PASSWORD: the target demands CHAP (one-way).
tgt_chap() {
    tgt_adm --mode account --op new --user "$2" --password "$3" || return 1
    tgt_adm --mode account --op bind --tid "$1" --user "$2"
}

# tgt_uri TID LUN [PORTAL_IP] [USER%PASS]
tgt_uri() {
    local ip=${3:-127.0.0.1} cred=${4:-}
    [ -n "$cred" ] && cred="$cred@"
    echo "iscsi://$cred$ip:$TGT_PORT/${TGT_IQN[$1]}/$2"
}

# A TCP port on 127.0.0.1 with nothing listening (for "unreachable" tests).
tgt_closed_port() {
    local p
    for p in $(seq $((40000 + $$ % 20000)) 65000); do
        if tgt_port_free "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# tgt_cut_portal IP: cut the path through portal IP:$TGT_PORT (multipath
# tests). The portal stops listening (new logins are refused) and every
# established TCP connection to it is killed on both ends (ss -K), as when
# a link dies; the target side closes the sessions. tgt_restore_portal IP
# listens again.
tgt_cut_portal() {
    tgt_adm --op delete --mode portal --param "portal=$1:$TGT_PORT" || return 1
    cut_connections "$1" "$TGT_PORT"
}

tgt_restore_portal() {
    tgt_adm --op new --mode portal --param "portal=$1:$TGT_PORT"
}
