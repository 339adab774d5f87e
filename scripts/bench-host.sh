#!/usr/bin/env bash
# One JSON line describing the host for a benchmark log: CPU model, family/model numbers and the
# vector flags that matter to attune's kernels, cores, the 1-minute load average, and the
# matrix-product rates at THREADS threads (the gemm crate's sgemm, attune's bf16 and int8 products,
# through the `host_gemm` example).
#
#   scripts/bench-host.sh WHEN      # WHEN: a label, e.g. "before" or "after"
#   env: THREADS (default: all cores)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${THREADS:-$(nproc)}
(cd "$ROOT" && cargo build --release --quiet -p attune-model --example host_gemm)
gemm=$(RAYON_NUM_THREADS=$THREADS "$ROOT/target/release/examples/host_gemm")
python3 - "$1" "$gemm" <<'PY'
import json, os, sys
lines = open("/proc/cpuinfo").read().splitlines()
def field(name):
    return next((l.split(":", 1)[1].strip() for l in lines if l.split(":", 1)[0].strip() == name), "?")
flags = field("flags").split()
wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"]
print(json.dumps({"tool": "host", "when": sys.argv[1], "cpu": field("model name"),
                  "family_model": f"{field('cpu family')}/{field('model')}", "cores": os.cpu_count(),
                  "flags": [f for f in wanted if f in flags], "loadavg": os.getloadavg()[0],
                  **json.loads(sys.argv[2])}))
PY
