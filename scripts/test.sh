#!/usr/bin/env bash
# The test suite: fetches the base model if needed (the parity tests use it), then runs every
# crate's tests, the benchmarks once each in test mode, and the doc examples. Ends with one line
# "tests: N passed, M failed, K skipped" summed over every cargo test run; a test that could not
# run (no browser, no all-mpnet-base-v2) is counted as skipped, not passed, and listed.
# Reference data is read from ../shared (or ATTUNE_SHARED_DIR).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/fetch-model.sh
# The browser test's driver (playwright-core, pinned by tests/browser/package-lock.json); the test
# is skipped without it or without Chromium, unless ATTUNE_REQUIRE_BROWSER=1.
if command -v npm >/dev/null && [ ! -d tests/browser/node_modules/playwright-core ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error || echo "[test] npm ci failed; the browser test will be skipped or fail" >&2
fi
log=$(mktemp)
export ATTUNE_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$ATTUNE_SKIP_LOG"' EXIT
status=0
cargo test --release --workspace --all-targets 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ]; then
  cargo test --release --workspace --doc 2>&1 | tee -a "$log" || status=$?
fi
skipped=$(sort -u "$ATTUNE_SKIP_LOG" | grep -c . || true)
sort -u "$ATTUNE_SKIP_LOG" | sed 's/^/skipped: /'
awk -v s="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
exit "$status"
