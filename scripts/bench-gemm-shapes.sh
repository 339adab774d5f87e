#!/usr/bin/env bash
# The host's f32 products at the shapes of an encoder's forward pass, through the gemm crate
# (attune's f32 products) and torch (sentence-transformers'), beside each library's square
# n = 1024 sgemm, measured in the same run. It answers: if a forward pass did nothing but its
# products, what share of the host's best square sgemm could it reach?
#
#   scripts/bench-gemm-shapes.sh [ROUNDS]
#     ROUNDS  rounds, each running both libraries (default 3; medians reported)
#   env: VENV (default ~/.cache/attune-baselines/venv, made by ../shared/baselines/setup.sh),
#        THREADS (default: all cores), SHAPE ("HIDDEN FF HEADS SEQ BATCH", default
#        "384 1536 12 256 32": all-MiniLM-L6-v2 on 32 texts of 256 tokens)
#
# Each library's shapes are weighed by one layer's FLOPs (Q/K/V, output, feed-forward up and
# down, attention): the forward's products-only rate is their FLOPs over the sum of their times.
# Its share is taken per round against the better library's median square product of that round,
# as scripts/bench-encode.sh takes attune's. Writes bench-results/gemm-shapes-*.jsonl and prints a
# markdown table of medians.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
THREADS=${THREADS:-$(nproc)}
read -r HIDDEN FF HEADS SEQ BATCH <<< "${SHAPE:-384 1536 12 256 32}"
OUT=$ROOT/bench-results
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run ../shared/baselines/setup.sh first" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --quiet -p attune-model --example gemm_shapes)

log=$OUT/gemm-shapes-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: > "$log"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/examples/gemm_shapes" \
    "$HIDDEN" "$FF" "$HEADS" "$SEQ" "$BATCH" | sed "s/^{/{\"round\": $round, /" >> "$log"
  "$VENV/bin/python" "$ROOT/benches/peer/torch_gemm_shapes.py" --threads "$THREADS" \
    --hidden "$HIDDEN" --ff "$FF" --heads "$HEADS" --seq "$SEQ" --batch "$BATCH" \
    | sed "s/^{/{\"round\": $round, /" >> "$log"
done

python3 - "$log" "$ROUNDS" "$THREADS" <<'PY'
import json, statistics, sys
log, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(line) for line in open(log)]
tools, layer = ["gemm", "torch"], ["qkv", "output", "up", "down", "attention"]
rate = {(r["tool"], r["round"], r["shape"]): r["median_gflops"] for r in rows}
flops = {r["shape"]: r["flops"] for r in rows}
med = statistics.median

def forward(tool, rnd):  # products-only rate of one layer's forward, GFLOP/s
    return sum(flops[s] for s in layer) / sum(flops[s] / rate[(tool, rnd, s)] for s in layer)

def best_square(rnd):
    return max(rate[(t, rnd, "square_1024")] for t in tools)

print(f"gemm shapes: {log}, {rounds} rounds, {threads} threads")
print("| shape (median of the rounds' medians, GFLOP/s) | gemm crate | torch | gemm / its square | torch / its square |")
print("|---|---:|---:|---:|---:|")
for s in ["square_1024"] + layer + ["forward"]:
    vals = {t: [forward(t, r) if s == "forward" else rate[(t, r, s)] for r in range(1, rounds + 1)] for t in tools}
    share = {t: med([v / rate[(t, r, "square_1024")] for r, v in enumerate(vals[t], 1)]) for t in tools}
    print(f"| {s} | {med(vals['gemm']):.1f} | {med(vals['torch']):.1f} | {share['gemm']:.0%} | {share['torch']:.0%} |")
for t in tools:
    shares = [forward(t, r) / best_square(r) for r in range(1, rounds + 1)]
    print(f"{t}: a products-only forward reaches {med(shares):.0%} of the round's best square sgemm "
          f"(rounds {', '.join(f'{x:.0%}' for x in shares)})")
PY
