#!/usr/bin/env bash
# Does a model directory written by attune load in sentence-transformers, with equal embeddings?
# Embeds the first N scifact queries and N scifact documents (documents up to the model's full
# max_seq_length, so truncation is exercised) with attune and with sentence-transformers, and
# compares them text by text (cosine >= 0.9999 passes).
#
#   scripts/st-load-check.sh MODEL_DIR [N]      (default N = 200)
#   env: ATTUNE_SHARED_DIR (default ../shared), VENV (default ~/.cache/attune-baselines/venv, made by
#        ../shared/baselines/setup.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:?usage: scripts/st-load-check.sh MODEL_DIR [N]}
N=${2:-200}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
[ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --quiet)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$SHARED/data/scifact" "$tmp/texts.jsonl" "$N" <<'PY'
import itertools, json, sys
root, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(dst, "w", encoding="utf-8") as o:
    for line in itertools.islice(open(f"{root}/queries.jsonl", encoding="utf-8"), n):
        q = json.loads(line)
        o.write(json.dumps({"id": "q" + q["_id"], "text": q["text"]}) + "\n")
    for line in itertools.islice(open(f"{root}/corpus.jsonl", encoding="utf-8"), n):
        d = json.loads(line)
        o.write(json.dumps({"id": "d" + d["_id"], "text": f"{d.get('title') or ''} {d.get('text') or ''}".strip()}) + "\n")
PY
"$ROOT/target/release/attune" embed --model "$MODEL" --input "$tmp/texts.jsonl" --input-format jsonl \
  --output "$tmp/attune.jsonl" --device cpu
"$VENV/bin/python" "$ROOT/scripts/st_load_check.py" "$MODEL" "$tmp/texts.jsonl" "$tmp/attune.jsonl"
