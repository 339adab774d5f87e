#!/usr/bin/env bash
# Quality of attune's fine-tuning on a non-BERT family: all-mpnet-base-v2 trained on scifact by
# attune and by sentence-transformers (one epoch of the scifact recipe, 29 steps of 32 pairs,
# 128 tokens, seed 42), both evaluated on the test split at 256 tokens, then the load check of
# attune's tuned directory in sentence-transformers. About an hour on 2 cores.
#
#   scripts/quality-mpnet.sh
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made
#        by ../shared/baselines/setup.sh), OUT (default out/mpnet-scifact)
#
# Writes OUT/attune (tuned directory with training_card.json), OUT/st (sentence-transformers' tuned
# directory), OUT/st.json (its training time and test metrics), OUT/eval (attune eval of the
# tuned model against the base: metrics.json and the report) and OUT/summary.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
OUT=${OUT:-$ROOT/out/mpnet-scifact}
MODEL=$ROOT/models/all-mpnet-base-v2
DATA=$SHARED/data/scifact
THREADS=${THREADS:-$(nproc)}
[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
"$ROOT/scripts/fetch-model.sh" all-mpnet-base-v2 "$MODEL"
(cd "$ROOT" && cargo build --release --quiet)
mkdir -p "$OUT"
rm -rf "$OUT/attune" "$OUT/attune.checkpoints" "$OUT/st" "$OUT/eval"

echo "[quality-mpnet] attune train (one epoch)" >&2
RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/attune" train --model "$MODEL" --data "$DATA" \
    --out "$OUT/attune" --epochs 1 --batch-size 32 --lr 2e-5 --warmup-ratio 0.1 \
    --weight-decay 0.01 --max-grad-norm 1.0 --temperature 0.05 --max-seq-len 128 --seed 42 \
    --device cpu > "$OUT/attune-train.out"
grep 'peak memory' "$OUT/attune-train.out" >&2 || true

echo "[quality-mpnet] sentence-transformers fine-tune (one epoch) and evaluation at 256 tokens" >&2
"$VENV/bin/python" "$SHARED/baselines/st_finetune.py" "$DATA" "$MODEL" "$OUT/st" \
    --doc-format space --threads "$THREADS" --seed 42 --out "$OUT/st.json" > /dev/null

echo "[quality-mpnet] attune eval of the tuned model against the base at 256 tokens" >&2
RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/attune" eval --model "$OUT/attune" \
    --baseline "$MODEL" --data "$DATA" --max-seq-len 256 --out "$OUT/eval" > "$OUT/eval.out"

echo "[quality-mpnet] load check in sentence-transformers" >&2
"$ROOT/scripts/st-load-check.sh" "$OUT/attune" | tail -1 > "$OUT/st-load-check.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
card = json.load(open(f"{out}/attune/training_card.json"))
st = json.load(open(f"{out}/st.json"))
metrics = json.load(open(f"{out}/eval/metrics.json"))
load = json.load(open(f"{out}/st-load-check.json"))
print(json.dumps({"attune_training_s": card["training_seconds"], "st_train": st.get("train"),
                  "st_test": {k: v for k, v in st["eval"].items() if k.startswith(("ndcg", "recall"))},
                  "attune_eval": metrics, "st_load_check": load}, indent=1))
PY
