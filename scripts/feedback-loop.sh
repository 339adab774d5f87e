#!/usr/bin/env bash
# The closed loop on the demo store, learning from shoppers instead of judged pairs:
#   1. the base model (all-MiniLM-L6-v2) serves the demo store; every search of collection
#      "demo" is logged for feedback, and 20% swap one adjacent pair within the top 5
#      (exploration, to measure position bias);
#   2. simulated shoppers (`attune feedback simulate`, position-based click model driven by the
#      store's graded judgments of its *train* queries) send SESSIONS searches and their clicks,
#      add-to-carts and purchases through the public API;
#   3. the server stops; the pipeline exports pairs from the feedback log (`[data] feedback`),
#      trains, evaluates on the judged *test* queries (never searched by the shoppers) with the
#      gate, and promotes; once with inverse-propensity weights and once without;
#   4. the promoted store serves again: 300 shopper sessions, then 300 sessions of model numbers
#      and SKUs, and the drift of the tuned space (reference: its training card's queries) is
#      printed after each.
# Usage: scripts/feedback-loop.sh [SESSIONS (default 3000)]. Writes out/feedback-loop/ and prints
# a table of nDCG@10 on the test queries. Needs the model (scripts/fetch-model.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SESSIONS=${1:-3000}
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
MODEL=$ROOT/models/all-MiniLM-L6-v2
OUT=$ROOT/out/feedback-loop
PORT=${ATTUNE_LOOP_PORT:-8391}
scripts/fetch-model.sh all-MiniLM-L6-v2
cargo build --release --quiet
ATTUNE=$ROOT/target/release/attune

rm -rf "$OUT" && mkdir -p "$OUT"
"$ATTUNE" demo-data --out "$OUT/shoe-store" >/dev/null 2>&1
echo "[loop] base index of the demo store" >&2
"$ATTUNE" index build --store "$OUT/store" --collection demo --corpus "$OUT/shoe-store" \
  --space "base=$MODEL" --lexical-fields brand,model,sku >/dev/null
cat > "$OUT/serve.toml" <<TOML
[feedback]
log = ["demo"]
explore_share = 0.2
explore_ranks = 5
TOML
# serve STORE LOG: starts the server on STORE with the feedback settings; sets SERVER.
serve() {
  "$ATTUNE" serve --store "$1" --bind "127.0.0.1:$PORT" --config "$OUT/serve.toml" > "$2" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "[loop] the server did not come up; see $2" >&2
  exit 1
}
serve "$OUT/store" "$OUT/serve.log"
echo "[loop] $SESSIONS shopper sessions on the train queries" >&2
"$ATTUNE" feedback simulate --url "http://127.0.0.1:$PORT" --collection demo \
  --data "$OUT/shoe-store" --split shoppers --sessions "$SESSIONS" --seed 11 \
  | tee "$OUT/simulate.json"
kill $SERVER && wait $SERVER 2>/dev/null || true
trap - EXIT

general=""
if [ -f "$SHARED/data/cranfield/corpus.jsonl" ]; then
  general="general_data = \"$(cd "$SHARED/data/cranfield" && pwd)\""
fi
for run in ips plain; do
  correction=true
  [ "$run" = plain ] && correction=false
  cp -r "$OUT/store" "$OUT/store-$run"
  cat > "$OUT/pipeline-$run.toml" <<TOML
work_dir = "work-$run"
base_model = "$MODEL"

[data]
path = "shoe-store"
feedback = { collection = "demo", min_events = 2, position_correction = $correction }

[train]
epochs = 1

[gate]
$general

[index]
store = "store-$run"
collection = "demo"
TOML
  echo "[loop] pipeline on feedback pairs ($run)" >&2
  "$ATTUNE" pipeline --config "$OUT/pipeline-$run.toml" 2>&1 | grep -E "^pipeline: (check|.*done|.*skipped)|verdict|promoted" >&2 || true
done

python3 - "$OUT" "$SESSIONS" <<'PY'
import json, sys
out, sessions = sys.argv[1], sys.argv[2]
sim = json.load(open(f"{out}/simulate.json"))
print(f"\n{sessions} sessions on {sim['queries']} train queries by {sim['users']} shoppers: "
      f"events {sim['events']}, clicks by rank {sim['clicks_by_rank']}")
print("| run | pairs | nDCG@10 base | nDCG@10 tuned | gain (95% CI) | W/T/L | general (cranfield) base → tuned | promoted |")
print("|---|---|---|---|---|---|---|---|")
for run, label in (("ips", "feedback, inverse-propensity weights"), ("plain", "feedback, no position correction")):
    try:
        report = json.load(open(f"{out}/work-{run}/report/pipeline.json"))
    except FileNotFoundError:
        print(f"| {label} | pipeline failed: see out/feedback-loop | | | | | | |")
        continue
    d, g = report["domain"], report.get("general")
    base, tuned = d["base"]["ndcg@10"], d["tuned"]["ndcg@10"]
    pairs = sum(1 for _ in open(f"{out}/work-{run}/feedback-pairs.jsonl"))
    general = f"{g['base']['ndcg@10']:.4f} → {g['tuned']['ndcg@10']:.4f}" if g else "–"
    c = d["comparison"]
    ci = f"{c['mean_delta']:+.4f} ({c['ci95'][0]:+.4f}…{c['ci95'][1]:+.4f})"
    wtl = f"{c['wins']}/{c['ties']}/{c['losses']}"
    print(f"| {label} | {pairs} | {base:.4f} | {tuned:.4f} | {ci} | {wtl} | {general} | {report['promoted']} |")
PY

echo "[loop] drift of the promoted model (ips store): in-distribution, then model numbers and SKUs" >&2
serve "$OUT/store-ips" "$OUT/serve-ips.log"
drift() {
  curl -fsS "http://127.0.0.1:$PORT/v1/collections/demo/drift" > "$OUT/drift.json"
  python3 - "$OUT/drift.json" "$1" <<'PY'
import json, sys
label = sys.argv[2]
share = lambda v: "–" if v is None else f"{100 * v:.1f}%"
for s in json.load(open(sys.argv[1]))["spaces"]:
    if s["space"] != "tuned":
        continue
    status = "**retraining recommended**" if s["retraining_recommended"] else "below thresholds"
    print(f"| {label} | {s['reference']} ({s['reference_queries']}) | {s['window_queries']} | "
          f"{share(s['novel_share'])} | {share(s['weak_top_share'])} | "
          f"{share(s['unseen_word_share'])} | {status} |")
    for e in s["evidence"]:
        print(f"evidence: {e}", file=sys.stderr)
PY
}
# The reference (the card's training queries) is embedded in the background on first use.
curl -fsS "http://127.0.0.1:$PORT/v1/collections/demo/drift" >/dev/null; sleep 3
echo
echo "| traffic to the tuned space | reference (queries) | window | novel | weak top-1 | unseen words | status |"
echo "|---|---|---|---|---|---|---|"
"$ATTUNE" feedback simulate --url "http://127.0.0.1:$PORT" --collection demo --space tuned \
  --data "$OUT/shoe-store" --split shoppers --sessions 300 --seed 12 >/dev/null
drift "300 shopper sessions (train queries)"
"$ATTUNE" feedback simulate --url "http://127.0.0.1:$PORT" --collection demo --space tuned \
  --data "$OUT/shoe-store" --split identifiers --sessions 300 --seed 13 >/dev/null
drift "then 300 sessions of model numbers and SKUs"
kill $SERVER && wait $SERVER 2>/dev/null || true
