#!/bin/bash
# Install what building and testing need (Debian 12, as root). Idempotent:
# installs only packages that are missing.
set -euo pipefail
PKGS=(
  meson ninja-build pkg-config gcc
  libfuse3-dev fuse3 libiscsi-dev libiscsi-bin libssl-dev liblz4-dev libzstd-dev
  libcmocka-dev zlib1g-dev
  tgt istgt qemu-utils fio libnbd-bin python3-libnbd nbdkit sg3-utils iproute2 jq python3 procps psmisc bc
  openssl libnbd-dev groff-base bsdextrautils
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
