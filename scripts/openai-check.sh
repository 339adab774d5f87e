#!/usr/bin/env bash
# Points the official `openai` Python client at attune's /v1/embeddings and checks it gets the
# same vectors as `attune embed` (scripts/openai_check.py). Indexes scripts/sample.jsonl into a
# temporary store so the server has the model, serves it on a loopback port, runs the client.
#   env: TOOLS_VENV (default ~/.cache/attune-api-tools/venv; created with openai and numpy if
#        missing), PORT (default 18090)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-18090}
# shellcheck source=scripts/api-tools.sh
source "$ROOT/scripts/api-tools.sh"
WORK=$(mktemp -d)
SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill $SERVER_PID 2>/dev/null; rm -rf "$WORK"' EXIT

"$ATTUNE" embed --model "$MODEL" --input "$ROOT/scripts/sample.jsonl" --output "$WORK/expected.jsonl" 2>/dev/null
"$ATTUNE" index build --store "$WORK/store" --collection sample --corpus "$ROOT/scripts/sample.jsonl" \
    --space "base=$MODEL" >/dev/null 2>&1
"$ATTUNE" serve --store "$WORK/store" --bind "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
wait_ready
"$TOOLS_VENV/bin/python" "$ROOT/scripts/openai_check.py" "http://127.0.0.1:$PORT/v1" base \
    "$ROOT/scripts/sample.jsonl" "$WORK/expected.jsonl"
