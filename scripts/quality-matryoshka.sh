#!/usr/bin/env bash
# Matryoshka on scifact: all-MiniLM-L6-v2 trained with sentence-transformers' recipe (3 epochs,
# batch 32, 128 tokens) once with the standard loss and once with --matryoshka-dims
# 384,256,128,64; both evaluated on the test split at each dimension (vectors truncated and
# re-normalised, as `attune index build --dimension` serves them), the Matryoshka model against
# the standard one with the paired comparison (each model's corpus is embedded once, at full
# width, and cut for the other dimensions); then the Matryoshka model indexed at each dimension
# (the first 1,000 scifact documents, one space, default HNSW settings) to measure the store's
# bytes per document.
#
#   scripts/quality-matryoshka.sh          writes out/matryoshka/ and prints a markdown table
#   env: ATTUNE_SHARED_DIR (default ../shared), DIMS (default "384 256 128 64")
# Finished steps are reused (delete out/matryoshka/<step> to redo one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
read -r -a DIMS <<< "${DIMS:-384 256 128 64}"
OUT=$ROOT/out/matryoshka
DATA=$SHARED/data/scifact
MODEL=$ROOT/models/all-MiniLM-L6-v2
"$ROOT/scripts/fetch-model.sh"
(cd "$ROOT" && cargo build --release --quiet)
ATTUNE=$ROOT/target/release/attune
mkdir -p "$OUT"

train() { # name, extra flags...
  local name=$1; shift
  [ -f "$OUT/$name/training_card.json" ] && return
  echo "[quality-matryoshka] training $name" >&2
  "$ATTUNE" train --model "$MODEL" --data "$DATA" --out "$OUT/$name" --epochs 3 \
      --max-seq-len 128 --leakage allow "$@" > "$OUT/$name.log" 2>&1
}
train standard
train matryoshka --matryoshka-dims "$(IFS=,; echo "${DIMS[*]}")"

# Whole vectors first: they fill the embedding cache that the truncated evaluations cut.
if [ ! -f "$OUT/eval-whole/metrics.json" ]; then
  echo "[quality-matryoshka] evaluating the whole vectors" >&2
  "$ATTUNE" eval --model "$OUT/matryoshka" --baseline "$OUT/standard" --baseline-label standard \
      --data "$DATA" --out "$OUT/eval-whole" > "$OUT/eval-whole.log" 2>&1
fi
for dim in "${DIMS[@]}"; do
  [ -f "$OUT/eval-$dim/metrics.json" ] && continue
  echo "[quality-matryoshka] evaluating at $dim dimensions" >&2
  "$ATTUNE" eval --model "$OUT/matryoshka" --baseline "$OUT/standard" --baseline-label standard \
      --data "$DATA" --dimension "$dim" --out "$OUT/eval-$dim" > "$OUT/eval-$dim.log" 2>&1
done

head -n 1000 "$DATA/corpus.jsonl" > "$OUT/corpus-1000.jsonl"
for dim in "${DIMS[@]}"; do
  [ -f "$OUT/stats-$dim.json" ] && continue
  echo "[quality-matryoshka] indexing at $dim dimensions" >&2
  rm -rf "$OUT/store-$dim"
  "$ATTUNE" index build --store "$OUT/store-$dim" --collection scifact --corpus "$OUT/corpus-1000.jsonl" \
      --space "tuned=$OUT/matryoshka" --dimension "$dim" > "$OUT/index-$dim.log" 2>&1
  "$ATTUNE" index stats --store "$OUT/store-$dim" --collection scifact --json > "$OUT/stats-$dim.json"
done

python3 - "$OUT" "${DIMS[@]}" <<'PY' | tee "$OUT/table.md"
import json, sys
out, dims = sys.argv[1], sys.argv[2:]
print("| dimension | nDCG@10 standard (truncated) | nDCG@10 Matryoshka | Δ (95% CI) | W/T/L | recall@100 standard → Matryoshka | store bytes per document | of which vectors (4 × dim) |")
print("|---:|---:|---:|---|---|---|---:|---:|")
for dim in dims:
    d = json.load(open(f"{out}/eval-{dim}/metrics.json"))["datasets"][0]
    c, m = d["comparison"], d["models"]
    s = json.load(open(f"{out}/stats-{dim}.json"))[0]["stats"]
    print(f"| {dim} | {c['baseline_mean']:.4f} | {c['candidate_mean']:.4f} | {c['mean_delta']:+.4f} "
          f"({c['ci95'][0]:+.4f}…{c['ci95'][1]:+.4f}) | {c['wins']}/{c['ties']}/{c['losses']} | "
          f"{m['standard']['metrics']['recall@100']:.4f} → {m['tuned']['metrics']['recall@100']:.4f} | "
          f"{s['disk_bytes'] / s['documents']:,.0f} | {4 * int(dim):,} |")
PY
