#!/usr/bin/env bash
# Full fine-tuning, LoRA and prompt tuning on scifact, one `attune train` each with the same
# recipe (all-MiniLM-L6-v2, 3 epochs, batch 32, 128 tokens, validation on the 300 test queries,
# which also picks nothing: validation runs before and after only). Each run is timed by
# /usr/bin/time for its peak memory; the table reads nDCG@10, trainable parameters and training
# seconds from the training card, and what the run wrote from the output directory.
#
#   scripts/quality-methods.sh            writes out/methods/ and prints a markdown table
#   env: ATTUNE_SHARED_DIR (default ../shared); LORA_LR (2e-4), PROMPT_LR (3e-3),
#        PROMPT_TOKENS (16)
# Finished runs are reused (delete out/methods/<method> to redo one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "${ATTUNE_SHARED_DIR:-$ROOT/../shared}" && pwd)
OUT=$ROOT/out/methods
DATA=$SHARED/data/scifact
MODEL=$ROOT/models/all-MiniLM-L6-v2
"$ROOT/scripts/fetch-model.sh"
(cd "$ROOT" && cargo build --release --quiet)
ATTUNE=$ROOT/target/release/attune
mkdir -p "$OUT"

train() { # method, flags...
  local name=$1; shift
  [ -f "$OUT/$name/training_card.json" ] && return
  echo "[quality-methods] training $name" >&2
  /usr/bin/time -v -o "$OUT/$name.time" "$ATTUNE" train --model "$MODEL" --data "$DATA" \
      --out "$OUT/$name" --epochs 3 --max-seq-len 128 --eval-data "$DATA" --eval-split test \
      --leakage allow "$@" > "$OUT/$name.log" 2>&1
}
train full
train lora --lora-rank 16 --lora-alpha 32 --lr "${LORA_LR:-2e-4}"
train prompt --prompt-tokens "${PROMPT_TOKENS:-16}" --lr "${PROMPT_LR:-3e-3}"

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, os, re, sys
out = sys.argv[1]
print("| method | scifact nDCG@10 (base → tuned) | trainable parameters | training time | peak memory | what it writes |")
print("|---|---:|---:|---:|---:|---|")
for name in ["full", "lora", "prompt"]:
    card = json.load(open(f"{out}/{name}/training_card.json"))
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{out}/{name}.time").read())
    sizes = {f: os.path.getsize(f"{out}/{name}/{f}") for f in os.listdir(f"{out}/{name}")
             if f.endswith(".safetensors")}
    files = ", ".join(f"{f} {s / 1e6:.2f} MB" if s >= 1e5 else f"{f} {s / 1e3:.1f} kB"
                      for f, s in sorted(sizes.items()))
    before, after = card["metrics_before"]["ndcg@10"], card["metrics_after"]["ndcg@10"]
    print(f"| {name} | {before:.4f} → {after:.4f} ({after - before:+.4f}) | "
          f"{card['trainable_parameters']:,} | {card['training_seconds']:.1f} s | "
          f"{int(rss.group(1)) / 1024:,.0f} MiB | {card['writes']}: {files} |")
PY
