#!/usr/bin/env python3
"""Encode throughput of sentence-transformers on a text file (one JSON {"text"} per line).

The peer measurement for attune's `benches/README.md`: same texts, same max_seq_length, same batch
size, same thread count. Times `model.encode` only (model load excluded). Prints one JSON line:
{"texts", "tokens", "seconds", "texts_per_s", "tokens_per_s", "gflops_per_s", "sgemm_gflops"}.

Usage: st_encode.py MODEL_DIR TEXTS_JSONL [--batch-size 32] [--threads 2] [--max-seq-len 256]
"""
import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("texts")
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--max-seq-len", type=int, default=256)
ap.add_argument("--sgemm", action="store_true", help="also measure torch's sgemm GFLOP/s (n=1024)")
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

torch.set_num_threads(args.threads)
texts = [json.loads(line)["text"] for line in open(args.texts, encoding="utf-8") if line.strip()]
model = SentenceTransformer(args.model, device="cpu")
model.max_seq_length = args.max_seq_len

tok = model.tokenizer(texts, truncation=True, max_length=args.max_seq_len, padding=False)
tokens = sum(len(ids) for ids in tok["input_ids"])
cfg = model[0].auto_model.config
h, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers

# FLOPs as attune counts them, over sentence-transformers' own batches (sorted by text length).
order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
flops = 0.0
for start in range(0, len(order), args.batch_size):
    batch = order[start:start + args.batch_size]
    seq = max(len(tok["input_ids"][i]) for i in batch)
    flops += layers * len(batch) * seq * (8 * h * h + 4 * h * ff + 4 * seq * h)

model.encode(texts[:64], batch_size=args.batch_size)  # warm-up
start = time.perf_counter()
emb = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=False)
seconds = time.perf_counter() - start
assert emb.shape[0] == len(texts)

result = {
    "tool": "sentence-transformers",
    "texts": len(texts),
    "tokens": tokens,
    "seconds": round(seconds, 3),
    "texts_per_s": round(len(texts) / seconds, 2),
    "tokens_per_s": round(tokens / seconds, 1),
    "gflops_per_s": round(flops / seconds / 1e9, 2),
    "threads": args.threads,
    "batch_size": args.batch_size,
    "torch": torch.__version__,
}
if args.sgemm:
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    runs = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        runs.append(time.perf_counter() - t)
    runs.sort()
    result["sgemm_gflops"] = round(2 * n ** 3 / runs[len(runs) // 2] / 1e9, 1)
    result["sgemm_best_gflops"] = round(2 * n ** 3 / runs[0] / 1e9, 1)
print(json.dumps(result))
