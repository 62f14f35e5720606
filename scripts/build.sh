#!/usr/bin/env bash
# Configures and builds everything into build/ (binaries in build/bin/).
# Env: BUILD_DIR (default build), BUILD_TYPE (default Release), JOBS (default: cores).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-$(nproc)}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$JOBS"
