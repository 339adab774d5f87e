#!/usr/bin/env python3
"""Scoring cost of sentence-transformers' retrieval evaluation, after the embeddings exist.

The peer measurement for attune's `benches/eval.rs` (same shapes, same thread count):
  * retrieval: cosine scores of Q unit queries against D unit documents (384-d) and the top 100
    per query, done as InformationRetrievalEvaluator does it (`cos_sim` on corpus chunks of
    50,000, `torch.topk` per chunk, then a heap per query over the chunk results);
  * metrics: `InformationRetrievalEvaluator.compute_metrics` on 300 queries x 100 results.
Prints one JSON line with the median seconds of each (RUNS repeats).

Usage: st_scoring.py [--threads 2] [--runs 5]
"""
import argparse
import heapq
import json
import os
import random
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--runs", type=int, default=5)
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import torch  # noqa: E402
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator  # noqa: E402
from sentence_transformers.util import cos_sim  # noqa: E402

torch.set_num_threads(args.threads)
K = 100
CHUNK = 50_000


def unit(rows, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, dim, generator=g) * 2 - 1
    return torch.nn.functional.normalize(x, dim=1)


def retrieve(q, d, ids):
    """The evaluator's loop: chunked cos_sim + topk, then per-query heaps of (score, id)."""
    heaps = [[] for _ in range(q.shape[0])]
    with torch.inference_mode():
        for start in range(0, d.shape[0], CHUNK):
            scores = cos_sim(q, d[start:start + CHUNK])
            vals, idx = torch.topk(scores, min(K, scores.shape[1]), dim=1, largest=True, sorted=False)
            vals, idx = vals.tolist(), idx.tolist()
            for qi in range(len(vals)):
                for s, j in zip(vals[qi], idx[qi]):
                    cid = ids[start + j]
                    if len(heaps[qi]) < K:
                        heapq.heappush(heaps[qi], (s, cid))
                    else:
                        heapq.heappushpop(heaps[qi], (s, cid))
    return heaps


def median_seconds(fn):
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


result = {"threads": args.threads, "runs": args.runs, "torch": torch.__version__}
for name, nq, nd in [("scifact_300x5183", 300, 5183), ("1000x100000", 1000, 100_000)]:
    q, d = unit(nq, 384, 1), unit(nd, 384, 2)
    ids = [f"d{i}" for i in range(nd)]
    result[f"retrieval_{name}_s"] = median_seconds(lambda: retrieve(q, d, ids))

# Metrics on scifact's shape (300 queries x 100 results, ~1.1 relevant each).
rng = random.Random(3)
queries = {f"q{i}": "" for i in range(300)}
results, relevant = [], {}
for i in range(300):
    ranked = [{"corpus_id": f"d{rng.randrange(5183)}", "score": 1.0 - r / 100} for r in range(100)]
    relevant[f"q{i}"] = {ranked[rng.randrange(100)]["corpus_id"]}
    if i % 9 == 0:
        relevant[f"q{i}"].add(f"d{rng.randrange(5183)}")
    results.append(ranked)
ev = InformationRetrievalEvaluator(queries=queries, corpus={"d0": ""}, relevant_docs=relevant,
                                   mrr_at_k=[1, 3, 5, 10, 100], ndcg_at_k=[1, 3, 5, 10, 100],
                                   accuracy_at_k=[1, 3, 5, 10, 100], precision_recall_at_k=[1, 3, 5, 10, 100],
                                   map_at_k=[1, 3, 5, 10, 100], write_csv=False)
result["metrics_scifact_300x100_s"] = median_seconds(lambda: ev.compute_metrics(results))
print(json.dumps(result), flush=True)
