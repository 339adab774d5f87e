#!/usr/bin/env bash
# HTTP serving benchmarks on loopback with wrk (Debian package `wrk`), on the scifact corpus
# indexed with two spaces (base = all-MiniLM-L6-v2, tuned = a scifact-tuned model when
# out/scifact-tuned exists, else the base model again).
#
#   scripts/bench-serve.sh [RUNS] [SECONDS] [PARTS]
#     RUNS     wrk runs per configuration (default 3; medians reported)
#     SECONDS  length of each run (default 15)
#     PARTS    comma-separated subset of: inprocess,load,reindex (default: all)
#
# inprocess: benches/serve.rs — embed one query + search, in-process, over the 300 test queries.
# load:      `POST /v1/collections/scifact/search` (k 10, space tuned, the 300 test queries in
#            turn) at 1 and 16 connections, dynamic batching on and off: QPS, p50, p99.
# reindex:   wrk at 16 connections for max(4×SECONDS, 60) s while `attune index build` re-indexes the same
#            collection from a corpus with 10% of the documents changed; counts failed requests
#            and checks the server switched generation.
# Writes bench-results/serve-*/ and prints markdown tables.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
SECONDS_PER_RUN=${2:-15}
PARTS=${3:-inprocess,load,reindex}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
MODEL=$ROOT/models/all-MiniLM-L6-v2
TUNED=$ROOT/out/scifact-tuned
[ -f "$TUNED/model.safetensors" ] || TUNED=$MODEL
PORT=${PORT:-18080}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench-results/serve-$stamp
STORE=$ROOT/bench-results/serve-store
mkdir -p "$OUT"
has() { [[ ",$PARTS," == *",$1,"* ]]; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

"$ROOT/scripts/fetch-model.sh" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet && cargo bench --no-run --quiet --bench serve 2>/dev/null)
SERVE_BENCH=$(ls -t "$ROOT"/target/release/deps/serve-* | grep -v '\.d$' | head -1)
ATTUNE=$ROOT/target/release/attune
CORPUS=$SHARED/data/scifact/corpus.jsonl

# The 300 test queries, as search bodies.
python3 - "$SHARED/data/scifact" "$OUT/bodies.jsonl" <<'PY'
import json, sys
root, out = sys.argv[1], sys.argv[2]
test = {l.split("\t")[0] for l in open(f"{root}/qrels/test.tsv").read().splitlines()[1:] if l}
with open(out, "w") as f:
    for line in open(f"{root}/queries.jsonl"):
        q = json.loads(line)
        if q["_id"] in test:
            f.write(json.dumps({"query": q["text"], "k": 10, "space": "tuned"}) + "\n")
PY

build() { # CORPUS
  "$ATTUNE" index build --store "$STORE" --collection scifact --corpus "$1" \
      --space "base=$MODEL" --space "tuned=$TUNED" --json
}
if [ ! -d "$STORE" ]; then
  echo "[bench-serve] indexing scifact (base and tuned)" >&2
  build "$CORPUS" > "$OUT/build.json"
fi

SERVER_PID=
start_server() { # DYNAMIC_BATCHING
  "$ATTUNE" serve --store "$STORE" --bind "127.0.0.1:$PORT" --dynamic-batching "$1" \
      --config <(echo "reload_interval_ms = 250") 2>>"$OUT/server.log" &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start" >&2; exit 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }
trap 'stop_server' EXIT
run_wrk() { # CONNECTIONS SECONDS OUTFILE
  WRK_BODIES=$OUT/bodies.jsonl wrk -t1 -c"$1" -d"$2"s --timeout 10s -s "$ROOT/scripts/wrk-search.lua" \
      "http://127.0.0.1:$PORT/v1/collections/scifact/search" | grep '^WRK_JSON' | sed 's/^WRK_JSON //' > "$3"
  cat "$3" >&2
}

if has inprocess; then
  echo "[bench-serve] in-process embed + search" >&2
  "$SERVE_BENCH" --store "$STORE" --collection scifact --space tuned --queries "$OUT/bodies.jsonl" \
      --repeat 3 --out "$OUT/inprocess.json" >/dev/null
fi

if has load; then
  for batching in true false; do
    start_server "$batching"
    run_wrk 16 3 /dev/null  # warm-up
    for c in 1 16; do
      for r in $(seq 1 "$RUNS"); do
        echo "[bench-serve] batching=$batching connections=$c run $r" >&2
        run_wrk "$c" "$SECONDS_PER_RUN" "$OUT/load-$batching-c$c-r$r.json"
      done
    done
    curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-$batching.txt"
    stop_server
  done
fi

if has reindex; then
  echo "[bench-serve] re-index under load" >&2
  # Every 10th document gets new text (stamped, so each run has 10% to embed again).
  python3 - "$CORPUS" "$OUT/corpus-changed.jsonl" "$stamp" <<'PY'
import json, sys
with open(sys.argv[2], "w") as out:
    for i, line in enumerate(open(sys.argv[1])):
        d = json.loads(line)
        if i % 10 == 0:
            d["text"] = d["text"] + f" (revised {sys.argv[3]})"
        out.write(json.dumps(d) + "\n")
PY
  start_server true
  generation() { curl -s "http://127.0.0.1:$PORT/v1/collections/scifact" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])'; }
  before=$(generation)
  LOAD_SECONDS=$((4 * SECONDS_PER_RUN > 60 ? 4 * SECONDS_PER_RUN : 60))
  run_wrk 16 "$LOAD_SECONDS" "$OUT/reindex-wrk.json" &
  WRK_PID=$!
  sleep 2
  t0=$(date +%s.%N)
  build "$OUT/corpus-changed.jsonl" > "$OUT/reindex-build.json"
  t1=$(date +%s.%N)
  # The server checks the store every 250 ms here; wait for the switch while wrk still runs.
  for _ in $(seq 1 100); do
    after=$(generation)
    [ "$after" != "$before" ] && break
    sleep 0.1
  done
  t2=$(date +%s.%N)
  wait "$WRK_PID"
  echo "{\"generation_before\": $before, \"generation_after\": $after, \"build_seconds\": $(awk "BEGIN{print $t1 - $t0}"), \"switch_seconds\": $(awk "BEGIN{print $t2 - $t1}"), \"load_seconds\": $LOAD_SECONDS}" > "$OUT/reindex.json"
  stop_server
fi

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
def load(p): return json.load(open(p))
if os.path.exists(f"{out}/inprocess.json"):
    r = load(f"{out}/inprocess.json")
    print(f"\nIn-process, one query at a time ({r['queries']} queries × {r['repeat']}): embed p50 "
          f"{r['embed_p50_ms']:.2f} ms, search p50 {r['search_p50_ms']:.3f} ms, total p50 "
          f"{r['total_p50_ms']:.2f} ms, p99 {r['total_p99_ms']:.2f} ms, {r['sequential_qps']:.0f} queries/s\n")
rows = {}
for b in ("true", "false"):
    for c in (1, 16):
        runs = [load(p) for p in sorted(glob.glob(f"{out}/load-{b}-c{c}-r*.json"))]
        if runs:
            rows[(b, c)] = {k: statistics.median(r[k] for r in runs) for k in ("qps", "p50_ms", "p99_ms")}
            rows[(b, c)]["failed"] = sum(r["non_2xx"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] for r in runs)
            rows[(b, c)]["runs"] = len(runs)
if rows:
    print("| dynamic batching | connections | QPS | p50 ms | p99 ms | failed | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (b, c), r in rows.items():
        print(f"| {'on' if b == 'true' else 'off'} | {c} | {r['qps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['failed']} | {r['runs']} |")
    for c in (1, 16):
        if ("true", c) in rows and ("false", c) in rows:
            print(f"\nbatching on/off at {c} connection(s): {rows[('true', c)]['qps'] / rows[('false', c)]['qps']:.2f}×")
if os.path.exists(f"{out}/reindex.json"):
    r, w = load(f"{out}/reindex.json"), load(f"{out}/reindex-wrk.json")
    failed = w["non_2xx"] + w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
    b = load(f"{out}/reindex-build.json")
    print(f"\nRe-index under load: generation {r['generation_before']} → {r['generation_after']} "
          f"(served {r['switch_seconds']:.2f} s after the build exited), build {r['build_seconds']:.1f} s (embedded {b.get('embedded')}), wrk {w['requests']} requests at "
          f"{w['qps']:.0f} QPS, p99 {w['p99_ms']:.1f} ms, failed {failed}")
PY
echo "results in $OUT" >&2
