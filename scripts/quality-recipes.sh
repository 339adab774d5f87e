#!/usr/bin/env bash
# Training recipes compared on data sets with overlapping judgments: the same pipeline (same
# seed, same batches) with
#   standard       sentence-transformers' MNRL: every other candidate is a negative
#   masked         judged positives of a query are never its negatives (the trainer's default)
#   masked-graded  masked, and pairs weighted by grade (--grade-weighting linear)
#   masked-guided  masked, and GISTEmbed's guide filter with the base model (--guide-filter)
#   masked-grouped masked, and batches that bring up to 4 pairs of a query together
#                  (--positives-per-query 4), so its judged answers meet and are masked
#   mined-masked   masked, on hard negatives mined with the base model (`[mine]`, defaults;
#                  on scifact about 10 GiB of activations: run it alone)
#   mined-standard the same without the mask
# Each run is `attune pipeline` (check, train, evaluate tuned vs base on the test split with the
# gate, index when promoted, report) with all-MiniLM-L6-v2 in out/recipes/<set>/<recipe>/.
#
#   scripts/quality-recipes.sh [SET ...]      default: cranfield haystack_icecat
#     scifact runs sentence-transformers' recipe (3 epochs, 128 tokens) with each loss.
#   env: ATTUNE_SHARED_DIR (default ../shared), RECIPES (default "standard masked masked-graded masked-guided"),
#        SEEDS (default 42; each other seed runs in <recipe>-seed<N>/ with `seed = N`, and the
#        table adds each recipe's mean over the seeds run),
#        TABLE_ONLY=1 (print the table of the runs already made; run nothing),
#        MINI_BATCH=N (GradCache: embed each batch N texts at a time; exact gradients with the
#        memory of N texts, other dropout draws, so another run than without it)
#
# General set: scifact for cranfield, cranfield for the others. Prints a markdown table and
# writes it to out/recipes/table.md. Finished pipelines are reused (delete a run's directory
# to redo it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(cranfield haystack_icecat)
read -r -a RECIPES <<< "${RECIPES:-standard masked masked-graded masked-guided}"
OUT=$ROOT/out/recipes
"$ROOT/scripts/fetch-model.sh"
(cd "$ROOT" && cargo build --release --quiet)
ATTUNE=$ROOT/target/release/attune

recipe_keys() {
  case "$1" in
    standard) echo 'mask_judged_positives = false' ;;
    masked) echo 'mask_judged_positives = true' ;;
    masked-graded) printf 'mask_judged_positives = true\ngrade_weighting = "linear"\n' ;;
    masked-guided) printf 'mask_judged_positives = true\nguide_filter = true\n' ;;
    masked-grouped) printf 'mask_judged_positives = true\npositives_per_query = 4\n' ;;
    mined-masked) printf 'mask_judged_positives = true\n\n[mine]\n' ;;
    mined-standard) printf 'mask_judged_positives = false\n\n[mine]\n' ;;
    *) echo "quality-recipes: unknown recipe $1" >&2; exit 2 ;;
  esac
}

for set in "${SETS[@]}"; do
  general=cranfield
  [ "$set" = cranfield ] && general=scifact
  extra_train="" extra_data=""
  if [ "$set" = scifact ]; then
    extra_train=$'epochs = 3\nmax_seq_len = 128'
    extra_data='allow_leakage = true'
  fi
  for seed in ${SEEDS:-42}; do
  for recipe in "${RECIPES[@]}"; do
    [ -n "${TABLE_ONLY:-}" ] && break
    name=$recipe seed_key=""
    [ "$seed" = 42 ] || { name=$recipe-seed$seed; seed_key="seed = $seed"; }
    dir=$OUT/$set/$name
    mkdir -p "$dir"
    cat > "$dir/pipeline.toml" <<TOML
# Written by scripts/quality-recipes.sh.
work_dir = "work"
base_model = "$ROOT/models/all-MiniLM-L6-v2"

[data]
path = "$SHARED/data/$set"
$extra_data

[train]
$extra_train
$seed_key
${MINI_BATCH:+mini_batch = $MINI_BATCH}
$(recipe_keys "$recipe")

[gate]
general_data = "$SHARED/data/$general"

[index]
store = "$OUT/store"
collection = "$set-$name"
TOML
    echo "[quality-recipes] $set / $name" >&2
    /usr/bin/time -f "%e" -o "$dir/wall_s" "$ATTUNE" pipeline --config "$dir/pipeline.toml" > "$dir/pipeline.log" 2>&1 \
      || { echo "[quality-recipes] $set / $name failed; see $dir/pipeline.log" >&2; exit 1; }
  done
  done
done

python3 - "$OUT" "${SETS[@]}" <<'PY' | tee "$OUT/table.md"
import json, sys
out, sets = sys.argv[1], sys.argv[2:]
print("| set | recipe | nDCG@10 base → tuned | Δ (95% CI) | W/T/L | recall@10 base → tuned | general nDCG@10 base → tuned | masked cells (judged / guide) | train stage s | verdict |")
print("|---|---|---|---|---|---|---|---:|---:|---|")
order = ["standard", "masked", "masked-graded", "masked-guided", "masked-grouped", "mined-standard", "mined-masked"]
import os
means = []
for s in sets:
    runs = {}
    key = lambda name: (order.index(name.split("-seed")[0]), name)
    for recipe in sorted((d for d in os.listdir(f"{out}/{s}") if os.path.isdir(f"{out}/{s}/{d}")), key=key):
        try:
            r = json.load(open(f"{out}/{s}/{recipe}/work/report/pipeline.json"))
        except FileNotFoundError:
            continue
        d, g, c = r["domain"], r["general"], r["domain"]["comparison"]
        card = json.load(open(f"{out}/{s}/{recipe}/work/tuned/training_card.json"))
        masked = f"{card['judged_negatives_masked']} / {card.get('guide_negatives_masked') or '–'}"
        train_s = next(t["seconds"] for t in r["stages"] if t["stage"] == "train")
        runs.setdefault(recipe.split("-seed")[0], []).append(d["tuned"]["ndcg@10"])
        print(f"| {s} | {recipe} | {d['base']['ndcg@10']:.4f} → {d['tuned']['ndcg@10']:.4f} | "
              f"{c['mean_delta']:+.4f} ({c['ci95'][0]:+.4f}…{c['ci95'][1]:+.4f}) | {c['wins']}/{c['ties']}/{c['losses']} | "
              f"{d['base']['recall@10']:.4f} → {d['tuned']['recall@10']:.4f} | "
              f"{g['base']['ndcg@10']:.4f} → {g['tuned']['ndcg@10']:.4f} | {masked} | {train_s:.0f} | "
              f"{'promoted' if r['promoted'] else 'refused'} |")
    for recipe, values in runs.items():
        if len(values) > 1:
            means.append(f"| {s} | {recipe} | {len(values)} | {sum(values) / len(values):.4f} | "
                         f"{min(values):.4f} … {max(values):.4f} |")
if means:
    print("\n| set | recipe | seeds | mean nDCG@10 | range |\n|---|---|---:|---:|---|")
    print("\n".join(means))
PY
