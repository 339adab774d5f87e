#!/usr/bin/env bash
# The embedded store against Qdrant, measured in the same run (benches/vector_store.rs):
#
#   scripts/bench-qdrant.sh [PARTS]
#     PARTS  comma-separated subset of: clustered,scifact,api (default: all)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made
#        by ../shared/baselines/setup.sh; numpy), ATTUNE_QDRANT_BIN (default
#        ../shared/tools/qdrant/qdrant)
#
# clustered: 100k clustered 384-d unit vectors + 1k queries: re-index docs/s through the seam
#            (vectors given), recall@10 and single-client QPS through attune's store layer and
#            directly against Qdrant's REST API, resident memory per million documents.
# scifact:   the same on the scifact corpus embedded by all-MiniLM-L6-v2 (5,183 docs, 300 test
#            queries).
# api:       scifact through `attune serve` on each backend: `attune index build` docs/s (the
#            model embeds), then recall@10 and single-client QPS of text searches over HTTP.
# Writes bench-results/qdrant-*/ and prints a markdown table.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PARTS=${1:-clustered,scifact,api}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
QDRANT=${ATTUNE_QDRANT_BIN:-$SHARED/tools/qdrant/qdrant}
MODEL=$ROOT/models/all-MiniLM-L6-v2
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench-results/qdrant-$stamp
mkdir -p "$OUT"
has() { [[ ",$PARTS," == *",$1,"* ]]; }

[ -x "$QDRANT" ] || { echo "missing Qdrant binary $QDRANT" >&2; exit 1; }
"$ROOT/scripts/fetch-model.sh" "$MODEL"
(cd "$ROOT" && cargo build --release --quiet && cargo bench --no-run --quiet --bench ann --bench vector_store 2>/dev/null)
ANN=$(ls -t "$ROOT"/target/release/deps/ann-* | grep -v '\.d$' | head -1)
VS=$(ls -t "$ROOT"/target/release/deps/vector_store-* | grep -v '\.d$' | head -1)
ATTUNE=$ROOT/target/release/attune
{ lscpu | grep -E 'Model name|^CPU\(s\)'; uptime; } > "$OUT/host.txt"

if has clustered; then
  CL=$ROOT/bench-results/ann/clustered
  [ -f "$CL/data.npy" ] || "$ANN" --generate-clustered "$CL"
  echo "[bench-qdrant] clustered: embedded store and Qdrant" >&2
  ATTUNE_QDRANT_BIN=$QDRANT "$VS" --data "$CL/data.npy" --queries "$CL/queries.npy" --out "$OUT/clustered.json" >/dev/null
fi

SF=$OUT/scifact-vectors
if has scifact || has api; then
  [ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
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
  echo "[bench-qdrant] scifact: embedding the corpus and the test queries" >&2
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
fi

if has scifact; then
  echo "[bench-qdrant] scifact vectors: embedded store and Qdrant" >&2
  ATTUNE_QDRANT_BIN=$QDRANT "$VS" --data "$SF/docs.npy" --queries "$SF/queries.npy" --ids "$SF/docs.jsonl" \
      --out "$OUT/scifact.json" >/dev/null
fi

if has api; then
  QD=$(mktemp -d)
  QPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  GPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$QD" && QDRANT__TELEMETRY_DISABLED=true QDRANT__LOG_LEVEL=WARN QDRANT__SERVICE__HTTP_PORT=$QPORT \
     QDRANT__SERVICE__GRPC_PORT=$GPORT QDRANT__STORAGE__STORAGE_PATH=$QD/storage \
     QDRANT__STORAGE__SNAPSHOTS_PATH=$QD/snapshots exec "$QDRANT" > "$QD/log" 2>&1) &
  QPID=$!
  trap 'kill $QPID 2>/dev/null; rm -rf "$QD"' EXIT
  until curl -sf "http://127.0.0.1:$QPORT/readyz" >/dev/null; do sleep 0.2; done
  for backend in embedded qdrant; do
    case $backend in
      embedded) store=(--store "$OUT/store");;
      qdrant) store=(--backend qdrant --qdrant-url "http://127.0.0.1:$QPORT");;
    esac
    echo "[bench-qdrant] api: attune index build on $backend (the model embeds 5,183 documents)" >&2
    t0=$(date +%s.%N)
    "$ATTUNE" index build "${store[@]}" --collection scifact --corpus "$SHARED/data/scifact" \
        --space "base=$MODEL" --device cpu --json > "$OUT/build-$backend.json" 2>/dev/null
    t1=$(date +%s.%N)
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r['wall_seconds']=float(sys.argv[3])-float(sys.argv[2]); json.dump(r, open(sys.argv[1],'w'))" \
        "$OUT/build-$backend.json" "$t0" "$t1"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$ATTUNE" serve "${store[@]}" --bind "127.0.0.1:$PORT" --device cpu > "$OUT/serve-$backend.log" 2>&1 &
    SPID=$!
    until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.2; done
    echo "[bench-qdrant] api: searches through attune serve on $backend" >&2
    "$VS" --data "$SF/docs.npy" --queries "$SF/queries.npy" --ids "$SF/docs.jsonl" \
        --api-url "http://127.0.0.1:$PORT" --query-texts "$SF/queries.jsonl" --out "$OUT/api-$backend.json" >/dev/null
    kill $SPID; wait $SPID 2>/dev/null || true
  done
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
print(open(os.path.join(out, "host.txt")).read())
for name in ("clustered", "scifact"):
    r = load(f"{name}.json")
    if not r:
        continue
    e, q = r["embedded"], r["qdrant"]
    print(f"### {name}: {r['documents']} documents, {r['dim']} dimensions, {r['queries']} queries, k 10, ef 64\n")
    print("| | embedded store | Qdrant through attune | Qdrant directly |")
    print("|---|---|---|---|")
    print(f"| re-index, docs/s (vectors given) | {e['build_docs_per_s']:,.0f} | {q['build_docs_per_s']:,.0f} | |")
    print(f"| recall@10 | {e['recall_at_10']:.4f} | {q['recall_at_10']:.4f} | {q['direct']['recall_at_10']:.4f} |")
    print(f"| single-client QPS | {e['qps_through_attune']:,.0f} | {q['qps_through_attune']:,.0f} | {q['direct']['qps']:,.0f} |")
    print(f"| resident memory, MiB per million documents | {e['memory_mib_per_million_documents']:,.0f} | {q['memory_mib_per_million_documents']:,.0f} | |")
    print()
rows = [(b, load(f"build-{b}.json"), load(f"api-{b}.json")) for b in ("embedded", "qdrant")]
if all(b and a for _, b, a in rows):
    print("### scifact through `attune serve` (all-MiniLM-L6-v2 embeds documents and queries)\n")
    print("| | embedded store | Qdrant |")
    print("|---|---|---|")
    print("| `attune index build`, docs/s | " + " | ".join(f"{b['documents'] / b['wall_seconds']:.1f}" for _, b, _ in rows) + " |")
    print("| recall@10 (vs exact on the same vectors) | " + " | ".join(f"{a['recall_at_10']:.4f}" for _, _, a in rows) + " |")
    print("| single-client QPS over HTTP | " + " | ".join(f"{a['qps']:.1f}" for _, _, a in rows) + " |")
PY
