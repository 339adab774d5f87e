#!/usr/bin/env bash
# Lexical, base, tuned, hybrid:base and hybrid:tuned on the test split of each set (README
# "Hybrid search"), and identifier queries on the demo store.
#
#   scripts/quality-hybrid.sh [SET ...]     default: haystack_icecat demo scifact cranfield
#
# tuned = the pipeline's tuned model for the set, with the trainer's default recipe: for the
# shared sets the `masked` run of scripts/quality-recipes.sh (made when missing), for the demo
# store the quick start's pipeline in out/demo (made when missing; its shopper texts are the
# ones `attune demo-data` writes now, identifiers only add metadata).
# Each set's corpus is built into collection <set> of out/hybrid/store (spaces base and tuned,
# and the lexical space; the demo's also indexes its brand, model and sku fields), then
# `attune eval --collection` searches the built collection at k=10 (the demo's identifier
# queries also at k=1: the share found at rank 1). Tables go to out/hybrid/<set>.md and
# out/hybrid/table.md.
#   env: ATTUNE_SHARED_DIR (default ../shared), FUSIONS (default "rrf weighted": the
#   fusions evaluated, each with its defaults)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(haystack_icecat demo scifact cranfield)
OUT=$ROOT/out/hybrid
mkdir -p "$OUT"
"$ROOT/scripts/fetch-model.sh"
(cd "$ROOT" && cargo build --release --quiet)
# A copy, so rebuilding the repository while this runs changes nothing here.
ATTUNE=$OUT/attune
cp "$ROOT/target/release/attune" "$ATTUNE"
BASE=$ROOT/models/all-MiniLM-L6-v2
SPACES=lexical,base,tuned,hybrid:base,hybrid:tuned
read -r -a FUSIONS <<< "${FUSIONS:-rrf weighted}"

for set in "${SETS[@]}"; do
  fields=()
  if [ "$set" = demo ]; then
    data=$OUT/demo-data
    "$ATTUNE" demo-data --out "$data" >/dev/null
    tuned=$ROOT/out/demo/work/tuned
    [ -d "$tuned" ] || "$ROOT/scripts/quickstart.sh"
    fields=(--lexical-fields brand,model,sku)
  else
    data=$SHARED/data/$set
    tuned=$ROOT/out/recipes/$set/masked/work/tuned
    [ -d "$tuned" ] || RECIPES=masked "$ROOT/scripts/quality-recipes.sh" "$set"
  fi
  echo "[hybrid] $set: building the collection (base, tuned, lexical)" >&2
  "$ATTUNE" index build --store "$OUT/store" --collection "$set" --corpus "$data" \
    --mode replace --space "base=$BASE" --space "tuned=$tuned" "${fields[@]}" --json \
    > "$OUT/$set-build.json"
  for fusion in "${FUSIONS[@]}"; do
    echo "[hybrid] $set: evaluating $SPACES (fusion $fusion)" >&2
    "$ATTUNE" eval --store "$OUT/store" --collection "$set" --data "$data" --split test \
      --spaces "$SPACES" --k 10 --fusion "$fusion" --device cpu --out "$OUT/$set-$fusion" \
      > "$OUT/$set-$fusion.md"
    if [ "$set" = demo ]; then
      "$ATTUNE" eval --store "$OUT/store" --collection demo --data "$data" --split identifiers \
        --queries "$data/queries-identifiers.jsonl" --spaces "$SPACES" --k 1 \
        --fusion "$fusion" --device cpu --out "$OUT/demo-identifiers-$fusion" \
        > "$OUT/demo-identifiers-$fusion.md"
    fi
  done
done

python3 - "$OUT" "${FUSIONS[*]}" "${SETS[@]}" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["| set | fusion | queries | " + " | ".join(f"{s} nDCG@10 / R@10" for s in
        ["lexical", "base", "tuned", "hybrid:base", "hybrid:tuned"]) + " | hybrid:tuned ≥ best part |",
        "|---|---|---:|" + "---:|" * 5 + "---|"]
for name, fusion in [(n, f) for n in sys.argv[3:] for f in sys.argv[2].split()]:
    body = json.loads((out / f"{name}-{fusion}" / "collection-metrics.json").read_text())
    evaluation = body["evaluations"][0]
    metrics = {s["space"]: s["metrics"] for s in evaluation["spaces"]}
    cells = [f'{metrics[s]["ndcg@10"]:.4f} / {metrics[s]["recall@10"]:.4f}'
             for s in ["lexical", "base", "tuned", "hybrid:base", "hybrid:tuned"]]
    best_part = max(metrics[s]["ndcg@10"] for s in ["lexical", "tuned"])
    verdict = "yes" if metrics["hybrid:tuned"]["ndcg@10"] >= best_part else \
        f'no ({metrics["hybrid:tuned"]["ndcg@10"] - best_part:+.4f})'
    rows.append(f'| {name} | {fusion} | {evaluation["evaluated_queries"]} | ' + " | ".join(cells) + f" | {verdict} |")
header = False
for fusion in sys.argv[2].split():
    ident = out / f"demo-identifiers-{fusion}" / "collection-metrics.json"
    if not ident.exists():
        continue
    evaluation = json.loads(ident.read_text())["evaluations"][0]
    if not header:
        rows += ["", "| demo identifier queries (model number or SKU): found at rank 1 | " + " | ".join(
            s["space"] for s in evaluation["spaces"]) + " |",
            "|---|" + "---:|" * len(evaluation["spaces"])]
        header = True
    rows.append(f'| fusion {fusion} ({evaluation["evaluated_queries"]} queries) | ' + " | ".join(
        f'{s["metrics"]["recall@1"]:.2f}' for s in evaluation["spaces"]) + " |")
table = "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
PY
