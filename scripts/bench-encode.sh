#!/usr/bin/env bash
# Encode throughput, attune vs sentence-transformers, on the scifact corpus, measured in the same run.
#
#   scripts/bench-encode.sh [RUNS] [LIMIT]
#     RUNS   rounds; each round runs attune then sentence-transformers (default 3; medians reported)
#     LIMIT  embed only the first LIMIT documents (default 0 = all 5,183)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made by
#        ../shared/baselines/setup.sh), THREADS (default: all cores), BATCH (default 32),
#        MODEL_NAME (default all-MiniLM-L6-v2; all-mpnet-base-v2 is fetched on request)
#
# Documents are `title + " " + text`, max 256 tokens, batch 32, fp32, CPU, same thread count for both.
# Writes bench-results/encode-*.json and prints a markdown table of medians and ratios.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
LIMIT=${2:-0}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
THREADS=${THREADS:-$(nproc)}
BATCH=${BATCH:-32}
MODEL_NAME=${MODEL_NAME:-all-MiniLM-L6-v2}
MODEL=$ROOT/models/$MODEL_NAME
OUT=$ROOT/bench-results
mkdir -p "$OUT"

[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
"$ROOT/scripts/fetch-model.sh" "$MODEL_NAME" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet)

texts=$OUT/scifact_docs.jsonl
python3 - "$SHARED/data/scifact/corpus.jsonl" "$texts" "$LIMIT" <<'PY'
import json, sys
src, dst, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as o:
    for i, line in enumerate(f):
        if limit and i >= limit:
            break
        d = json.loads(line)
        o.write(json.dumps({"id": d["_id"], "text": f"{d.get('title') or ''} {d.get('text') or ''}".strip()}) + "\n")
PY

stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/encode-$MODEL_NAME-$stamp.jsonl
: > "$log"
for run in $(seq 1 "$RUNS"); do
  echo "[bench-encode] round $run/$RUNS: attune" >&2
  summary=$(RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/attune" embed --model "$MODEL" --input "$texts" \
      --output /dev/null --batch-size "$BATCH" --max-seq-len 256 --device cpu 2>&1 >/dev/null | grep 'texts/s')
  python3 - "$summary" "$run" >> "$log" <<'PY'
import json, re, sys
m = re.search(r"(\d+) texts, (\d+) tokens in ([\d.]+) s .*\(([\d.]+) texts/s, (\d+) tokens/s, ([\d.]+) GFLOP/s\)", sys.argv[1])
print(json.dumps({"tool": "attune", "run": int(sys.argv[2]), "texts": int(m[1]), "tokens": int(m[2]), "seconds": float(m[3]),
                  "texts_per_s": float(m[4]), "tokens_per_s": float(m[5]), "gflops_per_s": float(m[6])}))
PY
  echo "[bench-encode] round $run/$RUNS: sentence-transformers" >&2
  "$VENV/bin/python" "$ROOT/benches/peer/st_encode.py" "$MODEL" "$texts" --batch-size "$BATCH" \
      --threads "$THREADS" --max-seq-len 256 --sgemm 2>/dev/null | tail -1 >> "$log"
done

python3 - "$log" "$MODEL_NAME" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(tool, key):
    vals = [r[key] for r in rows if r["tool"] == tool and key in r]
    return statistics.median(vals) if vals else float("nan")
a, s = "attune", "sentence-transformers"
n = sum(1 for r in rows if r["tool"] == a)
print(f"| {sys.argv[2]}: scifact corpus ({rows[0]['texts']} docs, {rows[0]['tokens']} tokens), median of {n} | attune | sentence-transformers | ratio |")
print("|---|---|---|---|")
for key, label in [("texts_per_s", "docs/s"), ("tokens_per_s", "tokens/s"), ("gflops_per_s", "GFLOP/s (matrix products)")]:
    print(f"| {label} | {med(a, key):.1f} | {med(s, key):.1f} | {med(a, key) / med(s, key):.2f}x |")
print(f"| torch sgemm n=1024 (GFLOP/s, same threads) | | {med(s, 'sgemm_gflops'):.1f} | |")
print(f"\nraw runs: {sys.argv[1]}")
PY
