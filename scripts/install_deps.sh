#!/usr/bin/env bash
# Installs the Debian packages this project needs, then the pinned npm packages
# of the deployment schema checks (tests/deploy/package-lock.json) into
# tests/deploy/node_modules. Idempotent: packages that are already installed are
# skipped, apt is not touched when nothing is missing, and `npm ci` runs only
# when node_modules is missing or older than the lockfile (a stamp file records
# the last install). Node.js 20+ and kubectl (1.27+, kustomize built in) are not
# Debian packages of the right version; when missing, the script says how to
# get them (the deploy checks that need them report a skip, exit 77).
set -euo pipefail
cd "$(dirname "$0")/.."

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
  yamllint python3-jsonschema python3-yaml
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
else
  echo "install_deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages of the Kubernetes schema checks (tests/deploy/validate_k8s.mjs).
NPM_DIR=tests/deploy
NPM_STAMP="$NPM_DIR/node_modules/.lpdetr-npm-ci.stamp"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if [ -f "$NPM_STAMP" ] && [ ! "$NPM_DIR/package-lock.json" -nt "$NPM_STAMP" ] &&
     [ ! "$NPM_DIR/package.json" -nt "$NPM_STAMP" ]; then
    echo "install_deps: npm packages of $NPM_DIR up to date"
  else
    echo "install_deps: npm ci in $NPM_DIR (node $(node --version))"
    if npm ci --prefix "$NPM_DIR" --no-audit --no-fund; then
      touch "$NPM_STAMP"
    else
      echo "install_deps: npm ci failed (no registry access?): the Kubernetes schema checks" \
           "(ctest deploy_schemas, deploy_schemas_selftest) cannot run until it succeeds" >&2
    fi
  fi
else
  echo "install_deps: node/npm not found: the Kubernetes schema checks (ctest deploy_schemas," \
       "deploy_schemas_selftest) cannot run. Install Node.js 20 or newer, e.g. from NodeSource:" \
       "curl -fsSL https://deb.nodesource.com/setup_20.x | sudo bash - && sudo apt-get install -y nodejs" \
       "(Debian bookworm's nodejs is 18), then run this script again." >&2
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "install_deps: kubectl not found: the kustomize checks (ctest deploy_kustomize," \
       "deploy_schemas, deploy_yamllint) cannot run. Install kubectl 1.27+ (kustomize built in) from" \
       "https://pkgs.k8s.io (Debian bookworm's kubernetes-client is 1.20, too old)." >&2
fi
