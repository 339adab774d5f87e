#!/usr/bin/env bash
# Property-based API testing with schemathesis against attune's /openapi.json: no 5xx, and every
# response conforms to the documented status codes, content types and schemas.
#   scripts/schemathesis.sh [MAX_SECONDS]   (default 300: the time budget of the fuzzing phases)
# Serves scripts/sample.jsonl as collection "products" (the example the schema names), with an
# API key so writes are exercised too (schemathesis sends it).
#   env: TOOLS_VENV (default ~/.cache/attune-api-tools/venv), PORT (default 18091)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAX_SECONDS=${1:-300}
PORT=${PORT:-18091}
# shellcheck source=scripts/api-tools.sh
source "$ROOT/scripts/api-tools.sh"
WORK=$(mktemp -d)
OUT=$ROOT/bench-results/schemathesis-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill $SERVER_PID 2>/dev/null; rm -rf "$WORK"' EXIT

"$ATTUNE" index build --store "$WORK/store" --collection products --corpus "$ROOT/scripts/sample.jsonl" \
    --space "base=$MODEL" --space "tuned=$MODEL" >/dev/null 2>&1
ATTUNE_API_KEY=schemathesis "$ATTUNE" serve --store "$WORK/store" --bind "127.0.0.1:$PORT" 2>"$OUT/server.log" &
SERVER_PID=$!
wait_ready

set +e
cd "$WORK"  # schemathesis keeps a cache directory in the working directory
"$TOOLS_VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection \
    --header "x-api-key: schemathesis" --max-time "$MAX_SECONDS" --workers 2 \
    --report junit --report-dir "$OUT" 2>&1 | tee "$OUT/summary.txt"
status=${PIPESTATUS[0]}
set -e
echo "schemathesis exit status $status; report in $OUT" >&2
exit "$status"
