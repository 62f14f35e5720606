#!/usr/bin/env bash
# Installs the Debian packages this project needs. Idempotent: packages that are
# already installed are skipped, and apt is not touched when nothing is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache pkg-config git
  libtorch-dev libopenblas0-pthread
  nlohmann-json3-dev
  libopencv-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-numpy python3-scipy python3-pil
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libssl-dev openssl curl libsqlite3-dev
  prometheus python3-grpcio python3-protobuf
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
