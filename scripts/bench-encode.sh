#!/usr/bin/env bash
# Encode throughput, attune vs sentence-transformers, on the scifact corpus, measured in the same run.
#
#   scripts/bench-encode.sh [RUNS] [LIMIT]
#     RUNS   rounds; each round runs attune then sentence-transformers (default 3; medians reported)
#     LIMIT  embed only the first LIMIT documents (default 0 = all 5,183)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made by
#        ../shared/baselines/setup.sh), THREADS (default: all cores), BATCH (default 32),
#        MODEL_NAME (default all-MiniLM-L6-v2; all-mpnet-base-v2 is fetched on request),
#        PRECISIONS (attune's rounds, default "f32 bf16 int8"; leave out a reduced precision
#        the CPU would only emulate: bf16 needs AMX, int8 AVX-512 VNNI)
#
# Documents are `title + " " + text`, max 256 tokens, batch 32, CPU, same thread count for all.
# Each round runs attune in f32, attune with bf16 products (`--precision bf16`: AMX tiles where
# the CPU has them), attune with int8 products (`--precision int8`: AVX-512 VNNI where the CPU
# has it) and sentence-transformers (fp32). The host is recorded with the runs: CPU
# model and flags, the load average before and after, and the matrix-product rates at the same
# thread count (scripts/bench-host.sh: the gemm crate's sgemm and attune's bf16 and int8
# products, before the first round, before each round and after the last; torch's sgemm via
# st_encode.py --sgemm, in each round).
# attune f32's share of the host's sgemm is taken per round, against the better library's median
# product rate measured in that round (a sustained rate beside a sustained run), and its median
# over the rounds reported; the share of the best single product of the run is printed beside it.
# Writes bench-results/encode-*.jsonl and prints a markdown table of medians and ratios.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
LIMIT=${2:-0}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
THREADS=${THREADS:-$(nproc)}
BATCH=${BATCH:-32}
MODEL_NAME=${MODEL_NAME:-all-MiniLM-L6-v2}
PRECISIONS=${PRECISIONS:-f32 bf16 int8}
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
host() { # when
  THREADS=$THREADS "$ROOT/scripts/bench-host.sh" "$1" >> "$log"
}
attune_round() { # tool precision run
  echo "[bench-encode] round $3/$RUNS: $1" >&2
  summary=$(RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/attune" embed --model "$MODEL" --input "$texts" \
      --output /dev/null --batch-size "$BATCH" --max-seq-len 256 --device cpu --precision "$2" 2>&1 >/dev/null | grep 'texts/s')
  python3 - "$summary" "$1" "$3" >> "$log" <<'PY'
import json, re, sys
m = re.search(r"(\d+) texts, (\d+) tokens in ([\d.]+) s .*\(([\d.]+) texts/s, (\d+) tokens/s, ([\d.]+) GFLOP/s\)", sys.argv[1])
print(json.dumps({"tool": sys.argv[2], "run": int(sys.argv[3]), "texts": int(m[1]), "tokens": int(m[2]), "seconds": float(m[3]),
                  "texts_per_s": float(m[4]), "tokens_per_s": float(m[5]), "gflops_per_s": float(m[6])}))
PY
}
host before
for run in $(seq 1 "$RUNS"); do
  host "round-$run"
  for precision in $PRECISIONS; do
    case $precision in
      f32) attune_round attune f32 "$run" ;;
      bf16) attune_round attune-bf16 bf16 "$run" ;;
      int8) attune_round attune-int8 int8 "$run" ;;
      *) echo "PRECISIONS: unknown precision $precision (f32, bf16, int8)" >&2; exit 2 ;;
    esac
  done
  echo "[bench-encode] round $run/$RUNS: sentence-transformers" >&2
  "$VENV/bin/python" "$ROOT/benches/peer/st_encode.py" "$MODEL" "$texts" --batch-size "$BATCH" \
      --threads "$THREADS" --max-seq-len 256 --sgemm 2>/dev/null | tail -1 >> "$log"
done
host after

python3 - "$log" "$MODEL_NAME" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(tool, key):
    vals = [r[key] for r in rows if r["tool"] == tool and key in r]
    return statistics.median(vals) if vals else float("nan")
a, s = "attune", "sentence-transformers"
reduced = [t for t in ("attune-bf16", "attune-int8") if any(r["tool"] == t for r in rows)]
n = sum(1 for r in rows if r["tool"] == s)
first = next(r for r in rows if r["tool"].startswith("attune"))
hosts = [r for r in rows if r["tool"] == "host"]
names = [t.split("-")[1] for t in reduced]
print(f"| {sys.argv[2]}: scifact corpus ({first['texts']} docs, {first['tokens']} tokens), median of {n} "
      f"| attune f32 | " + "".join(f"attune {p} | " for p in names) + "sentence-transformers | f32 / ST | "
      + "".join(f"{p} / f32 | {p} / ST | " for p in names))
print("|---" * (4 + 3 * len(names)) + "|")
def num(v, form, unit=""):  # a figure, or a dash for a tool that was not run
    return "–" if v != v else format(v, form) + unit
for key, label in [("texts_per_s", "docs/s"), ("tokens_per_s", "tokens/s"), ("gflops_per_s", "GFLOP/s (matrix products)")]:
    cells = [num(med(a, key), '.1f')] + [num(med(t, key), '.1f') for t in reduced] + [num(med(s, key), '.1f'),
             num(med(a, key) / med(s, key), '.2f', 'x')]
    for t in reduced:
        cells += [num(med(t, key) / med(a, key), '.2f', 'x'), num(med(t, key) / med(s, key), '.2f', 'x')]
    print(f"| {label} | " + " | ".join(cells) + " |")
sgemm = max(h["sgemm_gflops"] for h in hosts)
torch = med(s, "sgemm_gflops")
best = max([sgemm] + [r.get("sgemm_best_gflops", r.get("sgemm_gflops", 0)) for r in rows if r["tool"] == s])
def round_share(run):  # attune f32 over the better library's median product rate in round `run`
    host = next((h for h in hosts if h["when"] == f"round-{run}" and "sgemm_median_gflops" in h), None)
    ours = next((r for r in rows if r["tool"] == a and r["run"] == run), None)
    peers = [r for r in rows if r["tool"] == s]  # one per round, in order
    if host is None or ours is None or len(peers) < run:
        return None
    return ours["gflops_per_s"] / max(host["sgemm_median_gflops"], peers[run - 1]["sgemm_gflops"])
shares = [x for x in (round_share(r) for r in range(1, n + 1)) if x is not None]
print(f"\nhost: {hosts[0]['cpu']}, {hosts[0]['cores']} cores, {' '.join(hosts[0]['flags'])}; "
      f"load average {hosts[0]['loadavg']:.2f} before, {hosts[-1]['loadavg']:.2f} after; {hosts[0]['threads']} threads")
print(f"sgemm n=1024: gemm crate {sgemm:.1f} GFLOP/s (best product), torch {torch:.1f} (median); attune's bf16 products "
      f"({hosts[0]['bf16_backend']}) {max(h['bf16_gflops'] for h in hosts):.1f}; int8 products "
      f"({hosts[0].get('int8_backend', '?')}) {max(h.get('int8_gops', float('nan')) for h in hosts):.1f} GOP/s")
if shares:
    print(f"attune f32 achieves {statistics.median(shares):.0%} of the host's sgemm (median over rounds of "
          f"its rate over the better library's median product rate that round; rounds "
          + ", ".join(f"{x:.0%}" for x in shares) + ")")
print(f"attune f32 achieves {med(a, 'gflops_per_s') / best:.0%} of the best single sgemm product of the run "
      f"({best:.1f} GFLOP/s), sentence-transformers {med(s, 'gflops_per_s') / torch:.0%} of torch's median")
print(f"\nraw runs: {sys.argv[1]}")
PY
