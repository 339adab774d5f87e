#!/usr/bin/env bash
# Retrieval quality of the reduced precisions against f32: all-MiniLM-L6-v2 (or MODEL_NAME) on
# the test splits of scifact and haystack_icecat, each evaluated with `attune eval --precision f32`
# and with each of REDUCED (corpus embedded afresh, no cache), with the per-query paired
# difference. Prints a markdown table per reduced precision: nDCG@10 of each, the difference,
# and each run's wall time.
#
#   scripts/quality-precision.sh            writes out/precision/<set>-<precision>/
#   env: ATTUNE_SHARED_DIR (default ../shared), MODEL_NAME (default all-MiniLM-L6-v2),
#        SETS (default "scifact haystack_icecat"), REDUCED (default "bf16 int8")
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
MODEL_NAME=${MODEL_NAME:-all-MiniLM-L6-v2}
read -r -a SETS <<< "${SETS:-scifact haystack_icecat}"
read -r -a REDUCED <<< "${REDUCED:-bf16 int8}"
OUT=$ROOT/out/precision/$MODEL_NAME
MODEL=$ROOT/models/$MODEL_NAME
"$ROOT/scripts/fetch-model.sh" "$MODEL_NAME"
(cd "$ROOT" && cargo build --release --quiet)
ATTUNE=$ROOT/target/release/attune
mkdir -p "$OUT"

for set in "${SETS[@]}"; do
  for precision in f32 "${REDUCED[@]}"; do
    dir=$OUT/$set-$precision
    start=$(date +%s.%N)
    "$ATTUNE" eval --model "$MODEL" --data "$SHARED/data/$set" --precision "$precision" \
        --no-cache --out "$dir" > "$dir.log" 2>&1
    echo "$(date +%s.%N) - $start" | bc > "$dir.seconds"
  done
done

python3 - "$OUT" "${REDUCED[*]}" "${SETS[@]}" <<'PY'
import csv, json, sys
out, reduced, sets = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def ndcg(dir):
    d = json.load(open(f"{dir}/metrics.json"))["datasets"][0]["models"]
    return next(iter(d.values()))["metrics"]["ndcg@10"]
def per_query(dir):
    with open(f"{dir}/per_query.csv") as f:
        return {r["query_id"]: float(r["model:ndcg@10"]) for r in csv.DictReader(f)}
for p in reduced:
    print(f"\n| set | f32 nDCG@10 | {p} nDCG@10 | {p} − f32 | queries changed | f32 s | {p} s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in sets:
        f, b = f"{out}/{s}-f32", f"{out}/{s}-{p}"
        pf, pb = per_query(f), per_query(b)
        changed = sum(1 for q in pf if abs(pf[q] - pb.get(q, pf[q])) > 1e-9)
        secs = [float(open(f"{d}.seconds").read()) for d in (f, b)]
        print(f"| {s} | {ndcg(f):.4f} | {ndcg(b):.4f} | {ndcg(b) - ndcg(f):+.4f} | "
              f"{changed} of {len(pf)} | {secs[0]:.1f} | {secs[1]:.1f} |")
PY
