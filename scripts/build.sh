#!/bin/bash
# Configure (once) and build into ./build. With CI=true warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
opts=()
if [ "${CI:-}" = true ]; then opts+=(--werror); fi
if [ ! -f build/build.ninja ]; then
  meson setup build "${opts[@]}" >/dev/null
elif [ "${CI:-}" = true ]; then
  meson configure build --werror >/dev/null
fi
ninja -C build
