#!/usr/bin/env bash
# The standard recipe against the mask over several seeds, cheaply: `attune train` on a set's
# train split with `--eval-data` on its test split (trec_eval nDCG@10 of the base before and of
# the tuned weights after; the same figure the pipeline's eval stage gives), no general set, no
# index. Each (set, recipe, seed) trains all-MiniLM-L6-v2 once in out/seeds/<set>/<recipe>-s<seed>/.
#   standard  sentence-transformers' MNRL (--mask-judged-positives false)
#   masked    judged positives of a query are never its negatives (the trainer's default)
#
#   scripts/quality-seeds.sh [SET ...]        default: cranfield haystack_icecat
#   env: ATTUNE_SHARED_DIR (default ../shared), SEEDS (default "42 1 2 3 4"),
#        RECIPES (default "standard masked"), TRAIN_ARGS (more `attune train` flags for every run,
#        e.g. "--max-seq-len 128"; runs then go to <recipe>-<tag>-s<seed>/ with TAG, default "x"),
#        TABLE_ONLY=1 (print the table of the runs already made).
# Finished runs are reused (delete a run's directory to redo it). Prints a markdown table of
# each recipe's nDCG@10 per seed of SEEDS, its mean, and how many seeds the mask won, and writes
# it to out/seeds/table.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(cranfield haystack_icecat)
read -r -a SEED_LIST <<< "${SEEDS:-42 1 2 3 4}"
read -r -a RECIPES <<< "${RECIPES:-standard masked}"
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
SUFFIX=""
[ ${#EXTRA[@]} -eq 0 ] || SUFFIX="-${TAG:-x}"
OUT=$ROOT/out/seeds
if [ -z "${TABLE_ONLY:-}" ]; then
  "$ROOT/scripts/fetch-model.sh"
  (cd "$ROOT" && cargo build --release --quiet)
fi
ATTUNE=$ROOT/target/release/attune

for set in "${SETS[@]}"; do
  for seed in "${SEED_LIST[@]}"; do
    for recipe in "${RECIPES[@]}"; do
      [ -n "${TABLE_ONLY:-}" ] && break
      case "$recipe" in
        standard) mask=false ;;
        masked) mask=true ;;
        *) echo "quality-seeds: unknown recipe $recipe" >&2; exit 2 ;;
      esac
      dir=$OUT/$set/$recipe$SUFFIX-s$seed
      [ -f "$dir/done" ] && continue
      mkdir -p "$dir"
      echo "[quality-seeds] $set / $recipe$SUFFIX / seed $seed" >&2
      "$ATTUNE" train --model "$ROOT/models/all-MiniLM-L6-v2" --data "$SHARED/data/$set" \
        --out "$dir/model" --eval-data "$SHARED/data/$set" --eval-split test --seed "$seed" \
        --mask-judged-positives "$mask" "${EXTRA[@]}" > "$dir/train.log" 2>&1 \
        || { echo "[quality-seeds] failed; see $dir/train.log" >&2; exit 1; }
      touch "$dir/done"
    done
  done
done

python3 - "$OUT" "${SEED_LIST[*]}" "${SETS[@]}" <<'PY' | tee "$OUT/table.md"
import json, os, re, sys
out, seeds, sets = sys.argv[1], {int(x) for x in sys.argv[2].split()}, sys.argv[3:]
print("| set | recipe | nDCG@10 per seed | mean | base |")
print("|---|---|---|---:|---:|")
wins = []
for s in sets:
    runs = {}
    base = None
    for d in sorted(os.listdir(f"{out}/{s}")):
        if not os.path.exists(f"{out}/{s}/{d}/done"):
            continue
        recipe, seed = re.match(r"(.*)-s(\d+)$", d).groups()
        if int(seed) not in seeds:
            continue
        card = json.load(open(f"{out}/{s}/{d}/model/training_card.json"))
        base = card["metrics_before"]["ndcg@10"]
        runs.setdefault(recipe, {})[int(seed)] = card["metrics_after"]["ndcg@10"]
    for recipe, by_seed in sorted(runs.items()):
        cells = " / ".join(f"{seed}: {v:.4f}" for seed, v in sorted(by_seed.items()))
        mean = sum(by_seed.values()) / len(by_seed)
        print(f"| {s} | {recipe} | {cells} | {mean:.4f} | {base:.4f} |")
    for recipe in runs:
        if not recipe.startswith("masked"):
            continue
        other = runs.get("standard" + recipe[len("masked"):], {})
        common = sorted(set(other) & set(runs[recipe]))
        if common:
            won = sum(runs[recipe][k] > other[k] for k in common)
            wins.append(f"{s} {recipe}: above the standard recipe at {won} of {len(common)} seeds")
print()
print("\n".join(wins))
PY
