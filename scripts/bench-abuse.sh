#!/usr/bin/env bash
# The abuse run: a normal search's latency on an idle server and while 8 abusive clients send the
# requests of the data-safety issue's findings 4–6 (each probe at most 200 requests), against
# `attune serve` on loopback with all-MiniLM-L6-v2 over the haystack_icecat corpus.
#
#   scripts/bench-abuse.sh [ATTUNE_BINARY...]
#     Each binary given (default: ./target/release/attune) is measured in turn on the same
#     store, e.g. `scripts/bench-abuse.sh /tmp/attune-old ./target/release/attune`.
#     ROUNDS (default 3) rounds per binary; the medians are printed last.
#
# Abusive requests, cycled by each of the 8 clients:
#   spaces   POST /evaluate with spaces ["base","tuned"] repeated 200 times (finding 4)
#   auto1mb  POST /search, space "auto", a 1 MB query (finding 5)
#   query7mb POST /search, a 7 MB query (finding 6)
#   embed64  POST /v1/embeddings, 64 texts of about 256 tokens (finding 6)
# The normal client sends 200 short searches in turn, first alone (idle), then during the abuse.
# Prints p50 and p99 of both phases and their ratio; writes bench-results/abuse-*/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${ATTUNE_SHARED_DIR:-$ROOT/../shared}
MODEL=$ROOT/models/all-MiniLM-L6-v2
PORT=${PORT:-18090}
ROUNDS=${ROUNDS:-3}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench-results/abuse-$stamp
STORE=$ROOT/bench-results/abuse-store
mkdir -p "$OUT"
BINARIES=("$@")
[ ${#BINARIES[@]} -gt 0 ] || BINARIES=("$ROOT/target/release/attune")

"$ROOT/scripts/fetch-model.sh" "$MODEL"
if [ ! -d "$STORE" ]; then
  echo "[bench-abuse] indexing haystack_icecat (base and tuned = all-MiniLM-L6-v2)" >&2
  "${BINARIES[-1]}" index build --store "$STORE" --collection shop \
      --corpus "$SHARED/data/haystack_icecat/corpus.jsonl" \
      --space "base=$MODEL" --space "tuned=$MODEL" --json > "$OUT/build.json"
fi

for binary in "${BINARIES[@]}"; do
  name=$(basename "$(dirname "$binary")")-$(basename "$binary")
  copy=$OUT/store-$name
  rm -rf "$copy" && cp -r "$STORE" "$copy"
  "$binary" serve --store "$copy" --bind "127.0.0.1:$PORT" --device cpu > "$OUT/serve-$name.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
    sleep 0.1
  done
  echo "[bench-abuse] $binary" >&2
  for _ in $(seq 1 "$ROUNDS"); do
    python3 "$ROOT/benches/abuse.py" "http://127.0.0.1:$PORT" "$name" | tee -a "$OUT/results.jsonl"
  done
  kill $server; wait $server 2>/dev/null || true
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| binary | rounds | idle p50 ms | idle p99 ms | abuse p50 ms | abuse p99 ms | p99 ratio |")
print("|---|---|---|---|---|---|---|")
for name in dict.fromkeys(r["binary"] for r in rows):
    mine = [r for r in rows if r["binary"] == name]
    med = lambda k: statistics.median(r[k] for r in mine)
    print(f"| {name} | {len(mine)} | {med('idle_p50_ms'):.1f} | {med('idle_p99_ms'):.1f} | "
          f"{med('abuse_p50_ms'):.1f} | {med('abuse_p99_ms'):.1f} | {med('p99_ratio'):.2f} |")
PY
