# Sourced by the API check scripts: the Python tools venv (openai, numpy, schemathesis) in
# $TOOLS_VENV (default ~/.cache/attune-api-tools/venv, created on first use), the base model, and a
# release build of attune in $ATTUNE.
TOOLS_VENV=${TOOLS_VENV:-$HOME/.cache/attune-api-tools/venv}
if [ ! -x "$TOOLS_VENV/bin/schemathesis" ] || ! "$TOOLS_VENV/bin/python" -c 'import openai, numpy' 2>/dev/null; then
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q openai numpy schemathesis
fi
MODEL=$ROOT/models/all-MiniLM-L6-v2
"$ROOT/scripts/fetch-model.sh" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet)
ATTUNE=$ROOT/target/release/attune
# Waits until the server on $PORT is ready.
wait_ready() {
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "the server on port $PORT did not become ready" >&2; return 1
}
