#!/usr/bin/env bash
# How finely a BEIR set's nDCG@10 can judge a reduced precision: all-MiniLM-L6-v2 (or
# MODEL_NAME) embeds the set's corpus and test queries with `attune embed` in f32 and in REDUCED.
# Exact cosine rankings then give:
# - the reduced precision's nDCG@10 against f32's;
# - its score error on f32's top 10 (standard deviation of reduced − f32 cosine);
# - how many queries have, in f32's top 10, neighbours of different grades closer than 1e-3;
# - the nDCG@10 change that random score noise of a given size causes (ROUNDS draws per size).
#   The sizes are the measured error and fractions of it. Documents with the same vector share
#   their noise, as a deterministic encoder gives them.
#
# nDCG follows trec_eval (linear graded gains, ideal from all judged documents), as `attune eval`.
#
#   scripts/quality-noise-floor.sh           prints a markdown table
#   env: ATTUNE_SHARED_DIR (default ../shared), MODEL_NAME (default all-MiniLM-L6-v2),
#        SET (default haystack_icecat), REDUCED (default int8), ROUNDS (default 200),
#        VENV (default ~/.cache/attune-baselines/venv, made by ../shared/baselines/setup.sh: numpy)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
MODEL_NAME=${MODEL_NAME:-all-MiniLM-L6-v2}
SET=${SET:-haystack_icecat}
REDUCED=${REDUCED:-int8}
ROUNDS=${ROUNDS:-200}
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
MODEL=$ROOT/models/$MODEL_NAME
DATA=$SHARED/data/$SET
OUT=$ROOT/out/noise-floor/$MODEL_NAME/$SET
"$ROOT/scripts/fetch-model.sh" "$MODEL_NAME"
(cd "$ROOT" && cargo build --release --quiet)
mkdir -p "$OUT"

# The corpus and the queries read as `attune eval` reads and embeds them (`--input-format corpus`
# and `queries`: the "_id"s become the output's "id"s).
for precision in f32 "$REDUCED"; do
  for what in corpus queries; do
    "$ROOT/target/release/attune" embed --model "$MODEL" --input "$DATA/$what.jsonl" \
        --input-format "$what" --output "$OUT/$what-$precision.jsonl" --max-seq-len 256 \
        --precision "$precision" 2> "$OUT/$what-$precision.log"
  done
done

"$VENV/bin/python" - "$DATA" "$OUT" "$REDUCED" "$ROUNDS" <<'PY'
import csv, json, math, sys
import numpy as np
data, out, reduced, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
qrels = {}
with open(f"{data}/qrels/test.tsv") as f:
    for row in list(csv.reader(f, delimiter="\t"))[1:]:
        qrels.setdefault(row[0], {})[row[1]] = int(row[2])
def vectors(path):
    with open(path) as f:
        return {o["id"]: np.array(o["embedding"], dtype=np.float64) for o in map(json.loads, f)}
docs = {p: vectors(f"{out}/corpus-{p}.jsonl") for p in ("f32", reduced)}
queries = {p: vectors(f"{out}/queries-{p}.jsonl") for p in ("f32", reduced)}
ids = list(docs["f32"])
matrix = {p: np.stack([docs[p][i] for i in ids]) for p in docs}
scores = {p: {q: matrix[p] @ queries[p][q] for q in qrels} for p in docs}

def ndcg(q, s):
    top = np.argsort(-s, kind="stable")[:10]
    rel = qrels[q]
    dcg = sum(rel.get(ids[i], 0) / math.log2(r + 2) for r, i in enumerate(top))
    ideal = sorted(rel.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
def mean_ndcg(score_of):
    return float(np.mean([ndcg(q, score_of(q)) for q in qrels]))

base = mean_ndcg(lambda q: scores["f32"][q])
reduced_ndcg = mean_ndcg(lambda q: scores[reduced][q])
error, near_ties = [], 0
for q in qrels:
    top = np.argsort(-scores["f32"][q], kind="stable")[:10]
    error += list(scores[reduced][q][top] - scores["f32"][q][top])
    s, grade = scores["f32"][q][top], [qrels[q].get(ids[i], 0) for i in top]
    near_ties += any(s[r] - s[r + 1] < 1e-3 and grade[r] != grade[r + 1] for r in range(9))
sigma = float(np.std(error))
print(f"{len(qrels)} test queries, {len(ids)} documents; f32 nDCG@10 {base:.4f}, "
      f"{reduced} {reduced_ndcg:.4f} ({reduced_ndcg - base:+.4f})")
print(f"{reduced} score error on f32's top 10: standard deviation {sigma:.1e}, "
      f"largest {np.abs(error).max():.1e}")
print(f"queries with neighbours of different grades within 1e-3 in f32's top 10: "
      f"{near_ties} of {len(qrels)}\n")
_, group = np.unique(matrix["f32"].round(7), axis=0, return_inverse=True)
group = group.ravel()
rng = np.random.default_rng(0)
print(f"| score noise (sd) | mean nDCG@10 change | its sd over {rounds} draws | P(|change| > 0.002) |")
print("|---|---:|---:|---:|")
for size, label in ((sigma, "measured"), (sigma / 3, "measured / 3"), (sigma / 10, "measured / 10")):
    changes = np.array([
        mean_ndcg(lambda q: scores["f32"][q] + rng.normal(0, size, group.max() + 1)[group]) - base
        for _ in range(rounds)
    ])
    print(f"| {size:.1e} ({label}) | {changes.mean():+.4f} | {changes.std():.4f} | "
          f"{np.mean(np.abs(changes) > 0.002):.2f} |")
PY
