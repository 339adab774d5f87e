#!/usr/bin/env bash
# Evaluation scoring cost: attune vs sentence-transformers at the same shapes, and scoring as a
# share of embedding time in a real `attune eval` of scifact.
#
#   scripts/bench-eval.sh [RUNS]
#     RUNS  repeats of the peer's timings (default 5; criterion takes its own samples)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made by
#        ../shared/baselines/setup.sh), THREADS (default: all cores), SKIP_EVAL=1 skips the scifact run
#
# Writes bench-results/eval-*.json and prints a markdown table of medians and ratios.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-5}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
THREADS=${THREADS:-$(nproc)}
MODEL=$ROOT/models/all-MiniLM-L6-v2
OUT=$ROOT/bench-results
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)

echo "[bench-eval] attune: cargo bench --bench eval" >&2
(cd "$ROOT" && RAYON_NUM_THREADS=$THREADS cargo bench --quiet --bench eval -- --noplot >&2)
echo "[bench-eval] sentence-transformers: benches/peer/st_scoring.py" >&2
"$VENV/bin/python" "$ROOT/benches/peer/st_scoring.py" --threads "$THREADS" --runs "$RUNS" > "$OUT/eval-peer-$stamp.json"

if [ "${SKIP_EVAL:-0}" != 1 ]; then
  "$ROOT/scripts/fetch-model.sh" "$MODEL" >&2
  (cd "$ROOT" && cargo build --release --quiet)
  echo "[bench-eval] attune eval on scifact (no cache: the corpus is embedded)" >&2
  RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/attune" eval --model "$MODEL" \
    --data "$SHARED/data/scifact" --no-cache --out "$OUT/eval-scifact-$stamp" >&2
fi

python3 - "$ROOT/target/criterion" "$OUT/eval-peer-$stamp.json" "$OUT/eval-scifact-$stamp/metrics.json" \
  "$OUT/eval-summary-$stamp.json" <<'PY'
import json, os, sys
crit, peer_path, eval_path, out_path = sys.argv[1:]
def median_s(*parts):
    with open(os.path.join(crit, *parts, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"] / 1e9
peer = json.load(open(peer_path))
rows = [
    ("exact top-100, 300 q x 5,183 docs (scifact)", median_s("exact_top_k", "scifact_300x5183"), peer["retrieval_scifact_300x5183_s"]),
    ("exact top-100, 1,000 q x 100,000 docs", median_s("exact_top_k", "1000x100000"), peer["retrieval_1000x100000_s"]),
    ("metrics, 300 q x 100 results", median_s("metrics_scifact_300x100"), peer["metrics_scifact_300x100_s"]),
]
summary = {"rows": [], "peer": peer}
print("| step | attune (median) | sentence-transformers (median) | speed-up |")
print("|---|---:|---:|---:|")
for name, ours, theirs in rows:
    print(f"| {name} | {ours*1e3:.2f} ms | {theirs*1e3:.2f} ms | {theirs/ours:.1f}x |")
    summary["rows"].append({"step": name, "attune_s": ours, "peer_s": theirs})
if os.path.exists(eval_path):
    m = json.load(open(eval_path))["datasets"][0]["models"]
    t = next(iter(m.values()))["timings"]
    emb = t["corpus_embedding_s"] + t["query_embedding_s"]
    score = t["retrieval_s"] + t["metrics_s"]
    print()
    print(f"attune eval, scifact test: embedding {emb:.1f} s, scoring {score*1e3:.1f} ms = {100*score/emb:.3f}% of embedding time")
    summary["scifact_eval"] = {"embedding_s": emb, "scoring_s": score, "share": score / emb}
json.dump(summary, open(out_path, "w"), indent=1)
PY
