#!/usr/bin/env bash
# Training throughput, attune vs sentence-transformers, with the scifact recipe of
# ../shared/reference/st_scifact_tuned.json (batch 32, lr 2e-5, warmup 10%, weight decay 0.01,
# clip 1.0, scale 20, max 128 tokens, no-duplicate batches, seed 42), measured in the same run.
#
#   scripts/bench-train.sh [RUNS] [STEPS]
#     RUNS   rounds; each round trains with both tools, attune first in odd rounds and
#            sentence-transformers first in even ones (default 3)
#     STEPS  optimizer steps per run (default 10; the full recipe is 87)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made by
#        ../shared/baselines/setup.sh), THREADS (default: all cores),
#        MODEL_NAME (default all-MiniLM-L6-v2; all-mpnet-base-v2 is fetched on request)
#
# examples/s = pairs trained / wall seconds of the training loop (first step included, for both);
# peak memory is each process's peak RSS. The host is recorded before and after the rounds
# (scripts/bench-host.sh: CPU, flags, load average, sgemm). Writes bench-results/train-*.jsonl and
# prints a markdown table of medians and the ratio.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
STEPS=${2:-10}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
THREADS=${THREADS:-$(nproc)}
MODEL_NAME=${MODEL_NAME:-all-MiniLM-L6-v2}
MODEL=$ROOT/models/$MODEL_NAME
DATA=$SHARED/data/scifact
OUT=$ROOT/bench-results
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
"$ROOT/scripts/fetch-model.sh" "$MODEL_NAME" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/train-$MODEL_NAME-$stamp.jsonl
: > "$log"
run_attune() {
  echo "[bench-train] round $run/$RUNS: attune ($STEPS steps)" >&2
  rm -rf "$tmp/attune" "$tmp/attune.checkpoints"
  RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/attune" train --model "$MODEL" --data "$DATA" \
      --out "$tmp/attune" --max-steps "$STEPS" --batch-size 32 --lr 2e-5 --warmup-ratio 0.1 \
      --weight-decay 0.01 --max-grad-norm 1.0 --temperature 0.05 --max-seq-len 128 --seed 42 \
      --device cpu > "$tmp/attune.out"
  python3 - "$tmp/attune" "$tmp/attune.out" "$run" >> "$log" <<'PY'
import json, re, statistics, sys
card = json.load(open(f"{sys.argv[1]}/training_card.json"))
steps = [json.loads(l) for l in open(f"{sys.argv[1]}/training_log.jsonl") if '"train"' in l]
durations = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])]
peak = float(re.search(r"peak memory: (\d+) MiB", open(sys.argv[2]).read())[1])
tokens = sum(s["tokens"] for s in steps)
print(json.dumps({"tool": "attune", "run": int(sys.argv[3]), "steps": len(steps), "examples": card["examples"],
                  "seconds": card["training_seconds"], "examples_per_s": card["examples_per_second"],
                  "real_tokens_per_s": tokens / card["training_seconds"],
                  "median_step_s": statistics.median(durations), "peak_rss_mib": peak}))
PY
}

run_st() {
  echo "[bench-train] round $run/$RUNS: sentence-transformers ($STEPS steps)" >&2
  rm -rf "$tmp/st"
  "$VENV/bin/python" "$SHARED/baselines/st_finetune.py" "$DATA" "$MODEL" "$tmp/st" --max-steps "$STEPS" \
      --no-eval --doc-format space --threads "$THREADS" --seed 42 2>/dev/null | tail -1 > "$tmp/st.json"
  python3 - "$tmp/st.json" "$run" >> "$log" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["train"]
print(json.dumps({"tool": "sentence-transformers", "run": int(sys.argv[2]), "steps": t["steps_done"],
                  "examples": t["examples_seen"], "seconds": t["wall_seconds"], "examples_per_s": t["examples_per_s"],
                  "real_tokens_per_s": t["real_tokens_per_s"], "median_step_s": t["median_step_seconds"],
                  "peak_rss_mib": t["peak_rss_mib"]}))
PY
}

# The tools alternate which goes first: on a VM, the first of two processes pays for touching
# memory the host has not backed recently (seconds to a minute in its first step), the second
# reuses the pages the first just freed.
THREADS=$THREADS "$ROOT/scripts/bench-host.sh" before >> "$log"
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) -eq 1 ]; then run_attune; run_st; else run_st; run_attune; fi
  tail -2 "$log" >&2
done
THREADS=$THREADS "$ROOT/scripts/bench-host.sh" after >> "$log"

python3 - "$log" "$MODEL_NAME" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a, s = "attune", "sentence-transformers"
def med(tool, key):
    return statistics.median(r[key] for r in rows if r["tool"] == tool)
n = sum(1 for r in rows if r["tool"] == a)
ratios = [x["examples_per_s"] / y["examples_per_s"] for x, y in
          zip([r for r in rows if r["tool"] == a], [r for r in rows if r["tool"] == s])]
print(f"| {sys.argv[2]}: scifact recipe, {next(r for r in rows if r['tool'] == a)['steps']} steps of 32 pairs, median of {n} rounds | attune | sentence-transformers | ratio |")
print("|---|---|---|---|")
print(f"| examples/s | {med(a, 'examples_per_s'):.2f} | {med(s, 'examples_per_s'):.2f} | {med(a, 'examples_per_s') / med(s, 'examples_per_s'):.2f}x |")
print(f"| real tokens/s | {med(a, 'real_tokens_per_s'):.0f} | {med(s, 'real_tokens_per_s'):.0f} | {med(a, 'real_tokens_per_s') / med(s, 'real_tokens_per_s'):.2f}x |")
print(f"| median step (s) | {med(a, 'median_step_s'):.2f} | {med(s, 'median_step_s'):.2f} | |")
print(f"| peak memory (MiB) | {med(a, 'peak_rss_mib'):.0f} | {med(s, 'peak_rss_mib'):.0f} | {med(a, 'peak_rss_mib') / med(s, 'peak_rss_mib'):.2f}x |")
hosts = [r for r in rows if r["tool"] == "host"]
print(f"\nhost: {hosts[0]['cpu']} (family/model {hosts[0]['family_model']}), {hosts[0]['cores']} cores, "
      f"{' '.join(hosts[0]['flags'])}; load average {hosts[0]['loadavg']:.2f} before, {hosts[-1]['loadavg']:.2f} after; "
      f"sgemm n=1024 (gemm crate, {hosts[0]['threads']} threads) {hosts[0]['sgemm_gflops']:.1f} / {hosts[-1]['sgemm_gflops']:.1f} GFLOP/s")
print(f"per-round examples/s ratios: {', '.join(f'{r:.2f}' for r in ratios)}; raw runs: {sys.argv[1]}")
PY
