#!/usr/bin/env bash
# The standard recipe against the mask over several seeds, cheaply: `attune train` on a set's
# train split with `--eval-data` on its test split (trec_eval nDCG@10 of the base before and of
# the tuned weights after; the same figure the pipeline's eval stage gives), no general set, no
# index. Each (set, recipe, seed) trains all-MiniLM-L6-v2 once in out/seeds/<set>/<recipe>-s<seed>/.
#   standard  sentence-transformers' MNRL (--mask-judged-positives false)
#   masked    judged positives of a query are never its negatives (the trainer's default)
#   mined-masked, mined-standard
#             the same on hard negatives mined once per set with `attune mine`'s defaults (the
#             pipeline's `[mine]` defaults; out/seeds/<set>/mined.jsonl), a query's judged
#             answers being its lines of that file
#   st        sentence-transformers' own MNRL fine-tune (../shared/baselines/st_finetune.py: the
#             issue's standard recipe, 128 training tokens; ST_ARGS adds its flags, e.g.
#             "--max-seq-length 256"), its model scored by `attune eval` the same way
#             (needs the baselines' venv, VENV, made by ../shared/baselines/setup.sh)
#
#   scripts/quality-seeds.sh [SET ...]        default: cranfield haystack_icecat
#   env: ATTUNE_SHARED_DIR (default ../shared), SEEDS (default "42 1 2 3 4"),
#        RECIPES (default "standard masked"), TRAIN_ARGS (more `attune train` flags for every run,
#        e.g. "--max-seq-len 128"; runs then go to <recipe>-<tag>-s<seed>/ with TAG, default "x"),
#        ST_ARGS (more st_finetune.py flags for the st runs; with TAG as for TRAIN_ARGS),
#        TABLE_ONLY=1 (print the table of the runs already made).
# Finished runs are reused (delete a run's directory to redo it). Prints a markdown table of
# each recipe's nDCG@10 per seed of SEEDS, its mean, and at how many seeds the mask was above
# the standard recipe and above sentence-transformers' run (st), and writes it to
# out/seeds/table.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(cranfield haystack_icecat)
read -r -a SEED_LIST <<< "${SEEDS:-42 1 2 3 4}"
read -r -a RECIPES <<< "${RECIPES:-standard masked}"
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
read -r -a ST_EXTRA <<< "${ST_ARGS:-}"
SUFFIX=""
[ ${#EXTRA[@]} -eq 0 ] && [ ${#ST_EXTRA[@]} -eq 0 ] || SUFFIX="-${TAG:-x}"
VENV=${VENV:-$HOME/.cache/attune-baselines/venv}
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
        standard|mined-standard) mask=false ;;
        masked|mined-masked) mask=true ;;
        st) ;;
        *) echo "quality-seeds: unknown recipe $recipe" >&2; exit 2 ;;
      esac
      dir=$OUT/$set/$recipe$SUFFIX-s$seed
      [ -f "$dir/done" ] && continue
      mkdir -p "$dir"
      echo "[quality-seeds] $set / $recipe$SUFFIX / seed $seed" >&2
      if [ "$recipe" = st ]; then
        [ -x "$VENV/bin/python" ] || { echo "missing $VENV: run $SHARED/baselines/setup.sh first" >&2; exit 1; }
        "$VENV/bin/python" "$SHARED/baselines/st_finetune.py" "$SHARED/data/$set" \
          "$ROOT/models/all-MiniLM-L6-v2" "$dir/model" --seed "$seed" --no-eval \
          --out "$dir/st.json" "${ST_EXTRA[@]}" > "$dir/train.log" 2>&1 \
          && "$ATTUNE" eval --model "$dir/model" --data "$SHARED/data/$set" --split test \
            --out "$dir/eval" >> "$dir/train.log" 2>&1 \
          || { echo "[quality-seeds] failed; see $dir/train.log" >&2; exit 1; }
        touch "$dir/done"
        continue
      fi
      data=$SHARED/data/$set
      if [ "${recipe#mined-}" != "$recipe" ]; then
        data=$OUT/$set/mined.jsonl
        if [ ! -f "$data" ]; then
          "$ATTUNE" mine --model "$ROOT/models/all-MiniLM-L6-v2" --data "$SHARED/data/$set" \
            --out "$data.part" > "$OUT/$set/mine.log" 2>&1 \
            || { echo "[quality-seeds] mining failed; see $OUT/$set/mine.log" >&2; exit 1; }
          mv "$data.part" "$data"
        fi
      fi
      "$ATTUNE" train --model "$ROOT/models/all-MiniLM-L6-v2" --data "$data" \
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
# Two-sided 97.5% quantiles of Student's t by degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

def paired_interval(deltas):
    """The mean paired difference over seeds and its 95% t-interval (seeds as the samples)."""
    n = len(deltas)
    mean = sum(deltas) / n
    if n < 2:
        return f"; difference {mean:+.4f}"
    sd = (sum((d - mean) ** 2 for d in deltas) / (n - 1)) ** 0.5
    half = T975.get(n - 1, 1.96) * sd / n ** 0.5
    return f"; mean difference {mean:+.4f} (95% interval over seeds {mean - half:+.4f}…{mean + half:+.4f})"

def welch_interval(a, b):
    """The difference of the means of two independent samples and its 95% Welch interval."""
    mean = sum(a) / len(a) - sum(b) / len(b)
    if min(len(a), len(b)) < 2:
        return f"; difference of means {mean:+.4f}"
    var = lambda x: sum((v - sum(x) / len(x)) ** 2 for v in x) / (len(x) - 1)
    va, vb = var(a) / len(a), var(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else 1
    half = T975.get(max(1, int(df)), 1.96) * (va + vb) ** 0.5
    return f"; difference of means {mean:+.4f} (95% Welch interval {mean - half:+.4f}…{mean + half:+.4f})"

for s in sets:
    runs = {}
    base = None
    for d in sorted(os.listdir(f"{out}/{s}")):
        if not os.path.exists(f"{out}/{s}/{d}/done"):
            continue
        recipe, seed = re.match(r"(.*)-s(\d+)$", d).groups()
        if int(seed) not in seeds:
            continue
        if os.path.exists(f"{out}/{s}/{d}/eval/metrics.json"):  # an st run: attune eval's figure
            metrics = json.load(open(f"{out}/{s}/{d}/eval/metrics.json"))
            after = metrics["datasets"][0]["models"]["model"]["metrics"]["ndcg@10"]
        else:
            card = json.load(open(f"{out}/{s}/{d}/model/training_card.json"))
            base = card["metrics_before"]["ndcg@10"]
            after = card["metrics_after"]["ndcg@10"]
        runs.setdefault(recipe, {})[int(seed)] = after
    for recipe, by_seed in sorted(runs.items()):
        cells = " / ".join(f"{seed}: {v:.4f}" for seed, v in sorted(by_seed.items()))
        mean = sum(by_seed.values()) / len(by_seed)
        shown = "–" if base is None else f"{base:.4f}"
        print(f"| {s} | {recipe} | {cells} | {mean:.4f} | {shown} |")
    for recipe in runs:
        mined = recipe.startswith("mined-")
        rest = recipe[len("mined-"):] if mined else recipe
        if not rest.startswith("masked"):
            continue
        tag = rest[len("masked"):]
        # A recipe without the mask on the same data draws the same batches and dropout at a
        # seed (paired); the in-batch standard recipe at the same seed is paired by seed only
        # (other data) and the st runs draw their own (unpaired).
        others = [("the standard recipe", "standard" + tag, True)]
        if mined:
            others.insert(0, ("the same without the mask", "mined-standard" + tag, True))
        others.append(("sentence-transformers' own fine-tune", "st", False))
        for name, other, paired in others:
            common = sorted(set(runs.get(other, {})) & set(runs[recipe]))
            if not common:
                continue
            won = sum(runs[recipe][k] > runs[other][k] for k in common)
            line = f"{s} {recipe}: above {name} ({other}) at {won} of {len(common)} seeds"
            if paired:
                line += paired_interval([runs[recipe][k] - runs[other][k] for k in common])
            else:
                line += welch_interval([runs[recipe][k] for k in common], [runs[other][k] for k in common])
            wins.append(line)
print()
print("\n".join(wins))
PY
