#!/usr/bin/env bash
# Drain soak: runs the end-to-end test ServerTest.DrainAnswersEveryAcceptedCall
# for many rounds. Each round starts lpdetr-server (--max_queue_size=64
# --max_batch_size=4), sends 20 concurrent Detect calls (one 640x8 JPEG each)
# over 4 channels, sends SIGTERM while most are queued, and counts the answers
# on the client side against the server's own count of OK Detects. Prints
# the test's verdict and how many drains lost answers (target: 0).
#
# Usage: bench/drain.sh [--build DIR] [--rounds N]     (defaults: build/, 50)
# Needs the converted fixture model (ctest -R convert_fixture_models).
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$src/build"
rounds=50
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "drain.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
binary="$build/bin/server_e2e_tests"
[ -x "$binary" ] || { echo "drain.sh: $binary not built" >&2; exit 1; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), rounds: $rounds"
start=$(date +%s)
set +e
LPDETR_DRAIN_ROUNDS="$rounds" LPDETR_BIN_DIR="$build/bin" \
  LPDETR_TEST_MODELS="$build/test_models" LPDETR_SOURCE_DIR="$src" \
  "$binary" --gtest_filter='ServerTest.DrainAnswersEveryAcceptedCall' 2>&1 |
  grep -E 'drains lost|round [0-9]+|\[  (PASSED|FAILED) |OK \]'
rc=${PIPESTATUS[0]}
set -e
echo "drains: $rounds, seconds: $(( $(date +%s) - start )), exit: $rc"
exit "$rc"
