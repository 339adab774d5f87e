"""torch's f32 products at the shapes of a BERT encoder's forward pass, beside its square n = 1024
sgemm: the peer of attune's `gemm_shapes` example, with the same shapes and the same JSON lines
({"tool": "torch", "shape", "flops", "best_gflops", "median_gflops"}).

The linear layers are `torch.addmm` over all `batch * seq` rows (what
`torch.nn.functional.linear` runs for sentence-transformers); the attention is the two batched
products per head (`q @ k^T`, then `p @ v`) over all texts at once. Every product writes into a
buffer allocated once, as attune's example does: a fresh output each call would time the page
faults of a new allocation, not the product.

Usage: torch_gemm_shapes.py [--threads 2] [--hidden 384 --ff 1536 --heads 12 --seq 256 --batch 32]
"""
import argparse
import json
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--hidden", type=int, default=384)
ap.add_argument("--ff", type=int, default=1536)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--reps", type=int, default=9)
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import torch  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)


def report(shape, flops, run):
    run()
    seconds = []
    for _ in range(args.reps):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    print(json.dumps({"tool": "torch", "shape": shape, "flops": flops,
                      "best_gflops": round(flops / seconds[0] / 1e9, 1),
                      "median_gflops": round(flops / seconds[len(seconds) // 2] / 1e9, 1)}))


with torch.inference_mode():
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    report("square_1024", 2 * n ** 3, lambda: torch.mm(a, b, out=c))

    h, ff, heads, seq, batch = args.hidden, args.ff, args.heads, args.seq, args.batch
    rows = batch * seq
    for shape, k, out in [("qkv", h, 3 * h), ("output", h, h), ("up", h, ff), ("down", ff, h)]:
        x, w, bias, y = torch.randn(rows, k), torch.randn(out, k), torch.zeros(out), torch.empty(rows, out)
        report(shape, 2 * rows * k * out, lambda: torch.addmm(bias, x, w.t(), out=y))

    d = h // heads
    q, k, v = (torch.randn(batch * heads, seq, d) for _ in range(3))
    scores, context = torch.empty(batch * heads, seq, seq), torch.empty(batch * heads, seq, d)
    report("attention", 4 * batch * heads * seq * seq * d,
           lambda: torch.bmm(torch.bmm(q, k.transpose(1, 2), out=scores), v, out=context))
