#!/usr/bin/env python3
"""Load a model directory with sentence-transformers, embed texts, and compare with attune's
embeddings of the same texts (cosine per text).

    python st_load_check.py MODEL_DIR TEXTS_JSONL ATTUNE_JSONL [--min-cosine 0.9999]

TEXTS_JSONL: {"id", "text"} per line; ATTUNE_JSONL: `attune embed` output for it ({"id", "embedding"}).
Prints one JSON line (texts, min/mean cosine, max abs difference, pass) and exits 1 below the bar.
"""
import argparse
import json
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("texts")
    ap.add_argument("attune")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    texts = [json.loads(line) for line in open(a.texts, encoding="utf-8") if line.strip()]
    ours = [json.loads(line) for line in open(a.attune, encoding="utf-8") if line.strip()]
    assert len(texts) == len(ours), f"{len(texts)} texts, {len(ours)} attune embeddings"
    for t, o in zip(texts, ours):
        assert t["id"] == o["id"], (t["id"], o["id"])
    model = SentenceTransformer(a.model_dir, device="cpu")
    theirs = model.encode([t["text"] for t in texts], batch_size=32, convert_to_numpy=True,
                          normalize_embeddings=False)
    ours = np.array([o["embedding"] for o in ours], dtype=np.float32)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    worst = int(cos.argmin())
    result = {
        "model_dir": a.model_dir,
        "texts": len(texts),
        "max_seq_length": model.max_seq_length,
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "worst_text_id": texts[worst]["id"],
        "max_abs_difference": float(np.abs(ours - theirs).max()),
        "pass": bool(cos.min() >= a.min_cosine),
    }
    print(json.dumps(result))
    sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
