#!/usr/bin/env bash
# Index benchmarks, attune vs hnswlib measured in the same run, and re-index vs embed throughput.
#
#   scripts/bench-index.sh [RUNS] [PARTS]
#     RUNS   rounds of the re-index vs embed comparison (default 3; medians reported)
#     PARTS  comma-separated subset of: clustered,scifact,store,reindex (default: all)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made by
#        ../shared/baselines/setup.sh)
#
# clustered: 100k clustered 384-d unit vectors + 1k queries (benches/ann.rs --generate-clustered);
#            hnswlib (ann_bench.py: M 16, ef_construction 200, 1-thread build, plus a 2-thread build)
#            and attune (same M/ef_construction; 1-thread and 2-thread builds); recall@10 vs exact,
#            single-thread QPS (median of 3 passes) for ef 10..256; attune also with its default
#            ef_construction (100) against hnswlib at 200.
# scifact:   the same on the scifact corpus embedded by attune (5,183 docs, 300 test queries).
# store:     benches/store.rs: a 100k-document store: build, bytes per document, open time,
#            identical results after reopening, search through the collection.
# reindex:   `attune embed` vs `attune index build` (one space, fresh store) on the scifact corpus.
# Writes bench-results/index-*/ and prints markdown tables.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
PARTS=${2:-clustered,scifact,store,reindex}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
MODEL=$ROOT/models/all-MiniLM-L6-v2
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench-results/index-$stamp
mkdir -p "$OUT"
EFS=10,16,24,32,48,64,96,128,256
has() { [[ ",$PARTS," == *",$1,"* ]]; }

[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
"$ROOT/scripts/fetch-model.sh" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet && cargo bench --no-run --quiet --bench ann --bench store 2>/dev/null)
ANN=$(ls -t "$ROOT"/target/release/deps/ann-* | grep -v '\.d$' | head -1)
STORE=$(ls -t "$ROOT"/target/release/deps/store-* | grep -v '\.d$' | head -1)
ATTUNE=$ROOT/target/release/attune

ann_pair() { # NAME DATA.npy QUERIES.npy
  local name=$1 data=$2 queries=$3
  echo "[bench-index] $name: hnswlib" >&2
  "$VENV/bin/python" "$SHARED/baselines/ann_bench.py" --npy "$data" --queries-npy "$queries" \
      --skip-faiss --efs "$EFS" --parallel-build-threads 2 --label "$name" --out "$OUT/$name-hnswlib.json" >/dev/null
  echo "[bench-index] $name: attune, 1-thread build" >&2
  RAYON_NUM_THREADS=1 "$ANN" --data "$data" --queries "$queries" --efs "$EFS" --out "$OUT/$name-attune-1t.json" >/dev/null
  echo "[bench-index] $name: attune, 2-thread build" >&2
  RAYON_NUM_THREADS=2 "$ANN" --data "$data" --queries "$queries" --efs "$EFS" --out "$OUT/$name-attune-2t.json" >/dev/null
  echo "[bench-index] $name: attune defaults (ef_construction 100), 1-thread build" >&2
  RAYON_NUM_THREADS=1 "$ANN" --data "$data" --queries "$queries" --efs "$EFS" --ef-construction 100 \
      --out "$OUT/$name-attune-efc100-1t.json" >/dev/null
}

if has clustered; then
  CL=$ROOT/bench-results/ann/clustered
  [ -f "$CL/data.npy" ] || "$ANN" --generate-clustered "$CL"
  ann_pair clustered "$CL/data.npy" "$CL/queries.npy"
fi

if has scifact; then
  SF=$OUT/scifact-vectors
  mkdir -p "$SF"
  python3 - "$SHARED/data/scifact" "$SF" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
with open(f"{src}/corpus.jsonl") as f, open(f"{dst}/docs.jsonl", "w") as o:
    for line in f:
        d = json.loads(line)
        o.write(json.dumps({"id": d["_id"], "text": f"{d.get('title') or ''} {d.get('text') or ''}".strip()}) + "\n")
test = {l.split("\t")[0] for l in list(open(f"{src}/qrels/test.tsv"))[1:]}
with open(f"{src}/queries.jsonl") as f, open(f"{dst}/queries.jsonl", "w") as o:
    for line in f:
        q = json.loads(line)
        if q["_id"] in test:
            o.write(json.dumps({"id": q["_id"], "text": q["text"]}) + "\n")
PY
  "$ATTUNE" embed --model "$MODEL" --input "$SF/docs.jsonl" --output "$SF/docs.emb.jsonl" --device cpu 2>/dev/null
  "$ATTUNE" embed --model "$MODEL" --input "$SF/queries.jsonl" --output "$SF/queries.emb.jsonl" --device cpu 2>/dev/null
  "$VENV/bin/python" - "$SF" <<'PY'
import json, sys
import numpy as np
d = sys.argv[1]
for name in ("docs", "queries"):
    rows = [json.loads(l)["embedding"] for l in open(f"{d}/{name}.emb.jsonl")]
    np.save(f"{d}/{name}.npy", np.asarray(rows, dtype=np.float32))
PY
  ann_pair scifact "$SF/docs.npy" "$SF/queries.npy"
fi

if has store; then
  echo "[bench-index] store: 100k documents" >&2
  "$STORE" --bench --n 100000 --opens 5 --out "$OUT/store.json" >/dev/null
fi

if has reindex; then
  RI=$OUT/reindex
  mkdir -p "$RI"
  python3 - "$SHARED/data/scifact/corpus.jsonl" "$RI/docs.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as o:
    for line in f:
        d = json.loads(line)
        o.write(json.dumps({"id": d["_id"], "text": f"{d.get('title') or ''} {d.get('text') or ''}".strip()}) + "\n")
PY
  : > "$RI/runs.jsonl"
  for run in $(seq 1 "$RUNS"); do
    echo "[bench-index] reindex round $run/$RUNS: attune embed" >&2
    t0=$(date +%s.%N)
    "$ATTUNE" embed --model "$MODEL" --input "$RI/docs.jsonl" --output /dev/null --device cpu 2>/dev/null
    t1=$(date +%s.%N)
    echo "[bench-index] reindex round $run/$RUNS: attune index build" >&2
    rm -rf "$RI/store"
    report=$("$ATTUNE" index build --store "$RI/store" --collection scifact --corpus "$SHARED/data/scifact" \
        --space "base=$MODEL" --device cpu --json 2>/dev/null)
    t2=$(date +%s.%N)
    python3 - "$run" "$t0" "$t1" "$t2" "$report" >> "$RI/runs.jsonl" <<'PY'
import json, sys
run, t0, t1, t2, report = int(sys.argv[1]), *map(float, sys.argv[2:5]), json.loads(sys.argv[5])
print(json.dumps({"run": run, "embed_seconds": t1 - t0, "index_build_seconds": t2 - t1,
                  "index_embed_phase_seconds": report["embed_seconds"], "index_graph_seconds": report["graph_seconds"],
                  "documents": report["documents"]}))
PY
  done
fi

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
def interp(curve, recall):
    """hnswlib's QPS at `recall`: `curve` is its (recall, QPS) points in ef order; linear between
    the two points around `recall`, the first point reaching it when equal (the fastest ef that
    does), and its lowest ef when even that is above `recall`. None when it never reaches it."""
    for i, (r, q) in enumerate(curve):
        if r >= recall:
            if i == 0 or r == recall:
                return q
            r0, q0 = curve[i - 1]
            return q0 + (q - q0) * (recall - r0) / (r - r0)
    return None
for name in ("clustered", "scifact"):
    h, a1, a2 = load(f"{name}-hnswlib.json"), load(f"{name}-attune-1t.json"), load(f"{name}-attune-2t.json")
    if not (h and a1 and a2):
        continue
    hs = h["hnswlib"]
    print(f"\n### {name}: n={h['n']}, d={h['dim']}, {h['nq']} queries, k={h['k']}, M={h['M']}, ef_construction={h['ef_construction']}\n")
    print("| ef | attune recall@10 | attune QPS | hnswlib recall@10 | hnswlib QPS | hnswlib QPS at attune's recall | ratio at equal recall |")
    print("|---|---|---|---|---|---|---|")
    curve = [(r["recall@10"], r["qps_1thread_median"]) for r in hs["search"]]
    saturated = False
    for ra, rh in zip(a1["search"], hs["search"]):
        at = None if saturated else interp(curve, ra["recall"])
        saturated = saturated or ra["recall"] >= 1.0
        ratio = f"{ra['qps_1thread_median'] / at:.2f}x" if at else "— (recall saturated)"
        print(f"| {ra['ef']} | {ra['recall']:.4f} | {ra['qps_1thread_median']:.0f} | {rh['recall@10']:.4f} | "
              f"{rh['qps_1thread_median']:.0f} | {at:.0f} | {ratio} |" if at else
              f"| {ra['ef']} | {ra['recall']:.4f} | {ra['qps_1thread_median']:.0f} | {rh['recall@10']:.4f} | "
              f"{rh['qps_1thread_median']:.0f} | | {ratio} |")
    d = load(f"{name}-attune-efc100-1t.json")
    if d:
        print(f"\nattune defaults (ef_construction 100, 1-thread build) against the same hnswlib curve (ef_construction 200):\n")
        print("| ef | attune recall@10 | attune QPS | hnswlib QPS at attune's recall | ratio at equal recall |")
        print("|---|---|---|---|---|")
        saturated = False
        for ra in d["search"]:
            at = None if saturated else interp(curve, ra["recall"])
            saturated = saturated or ra["recall"] >= 1.0
            ratio = f"{ra['qps_1thread_median'] / at:.2f}x" if at else "— (recall saturated)"
            print(f"| {ra['ef']} | {ra['recall']:.4f} | {ra['qps_1thread_median']:.0f} | {f'{at:.0f}' if at else ''} | {ratio} |")
    hb1, hb2 = hs["build_seconds"], hs.get("parallel_build", {}).get("build_seconds")
    print(f"\nbuild: attune 1 thread {a1['build_seconds']:.1f} s vs hnswlib 1 thread {hb1:.1f} s = {a1['build_seconds']/hb1:.2f}x; "
          f"attune 2 threads {a2['build_seconds']:.1f} s vs hnswlib 2 threads {hb2:.1f} s = {a2['build_seconds']/hb2:.2f}x "
          f"(attune 2 threads vs hnswlib 1 thread: {a2['build_seconds']/hb1:.2f}x)")
    if d:
        print(f"build at attune's defaults: {d['build_seconds']:.1f} s, 1 thread = {d['build_seconds']/hb1:.2f}x hnswlib's 1-thread build at ef_construction 200")
    print(f"graph file {a1['graph_file_bytes']/2**20:.1f} MiB (hnswlib index {hs['index_bytes']/2**20:.1f} MiB), read in {a1['graph_read_seconds']:.3f} s; "
          f"exact search 1 thread: attune {a1['exact_qps_1thread_median']:.0f} QPS, numpy {h['exact']['single_thread_qps_median']:.0f} QPS")
s = load("store.json")
if s:
    print(f"\n### store: {s['n']} documents, d={s['dim']}\n")
    print(f"build {s['build_seconds']:.1f} s (writes {s['write_seconds']:.1f} s, graph {s['graph_seconds']:.1f} s, {s['build_threads']} threads); "
          f"open median {s['open_seconds_median']:.3f} s (runs {', '.join(f'{x:.3f}' for x in s['open_seconds'])}); "
          f"{s['disk_bytes_per_document']:.0f} bytes/document on disk, of which sled {s['database_bytes_per_document']:.0f}")
    for r in s["search"]:
        print(f"- search through the collection, {r['filter']}: recall@10 {r['recall@10']:.4f}, {r['qps_1thread_median']:.0f} QPS (1 thread)")
p = os.path.join(out, "reindex", "runs.jsonl")
if os.path.exists(p):
    rows = [json.loads(l) for l in open(p)]
    n = rows[0]["documents"]
    e = statistics.median(r["embed_seconds"] for r in rows)
    b = statistics.median(r["index_build_seconds"] for r in rows)
    ph = statistics.median(r["index_embed_phase_seconds"] for r in rows)
    g = statistics.median(r["index_graph_seconds"] for r in rows)
    print(f"\n### re-index vs embed, scifact corpus ({n} docs), median of {len(rows)}\n")
    print("| command | seconds | docs/s | ratio to embed |\n|---|---|---|---|")
    print(f"| attune embed (wall) | {e:.1f} | {n/e:.1f} | 1.00 |")
    print(f"| attune index build (wall: load, embed, sled, graph, switch) | {b:.1f} | {n/b:.1f} | {e/b:.2f} |")
    print(f"| index build, embedding phase only (embed + sled writes) | {ph:.1f} | {n/ph:.1f} | {e/ph:.2f} |")
    print(f"\ngraph build inside index build: {g:.2f} s")
print(f"\nraw results: {out}")
PY
