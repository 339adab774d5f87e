#!/usr/bin/env bash
# Points the official `openai` Python client at attune's /v1/embeddings and checks it gets the
# same vectors as `attune embed` (scripts/openai_check.py). Indexes scripts/sample.jsonl into a
# temporary store so the server has the model, serves it on a loopback port, runs the client.
#   env: TOOLS_VENV (default ~/.cache/attune-api-tools/venv; created with openai and numpy if
#        missing), PORT (default 18090)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$ROOT/models/all-MiniLM-L6-v2
TOOLS_VENV=${TOOLS_VENV:-$HOME/.cache/attune-api-tools/venv}
PORT=${PORT:-18090}
if [ ! -x "$TOOLS_VENV/bin/python" ] || ! "$TOOLS_VENV/bin/python" -c 'import openai, numpy' 2>/dev/null; then
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q openai numpy schemathesis
fi
"$ROOT/scripts/fetch-model.sh" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet)
ATTUNE=$ROOT/target/release/attune
WORK=$(mktemp -d)
SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill $SERVER_PID 2>/dev/null; rm -rf "$WORK"' EXIT

"$ATTUNE" embed --model "$MODEL" --input "$ROOT/scripts/sample.jsonl" --output "$WORK/expected.jsonl" 2>/dev/null
"$ATTUNE" index build --store "$WORK/store" --collection sample --corpus "$ROOT/scripts/sample.jsonl" \
    --space "base=$MODEL" >/dev/null 2>&1
"$ATTUNE" serve --store "$WORK/store" --bind "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
"$TOOLS_VENV/bin/python" "$ROOT/scripts/openai_check.py" "http://127.0.0.1:$PORT/v1" base \
    "$ROOT/scripts/sample.jsonl" "$WORK/expected.jsonl"
