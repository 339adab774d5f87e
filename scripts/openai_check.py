"""The official `openai` client against attune's /v1/embeddings, compared with `attune embed`.

usage: openai_check.py BASE_URL MODEL TEXTS.jsonl ATTUNE_EMBED_OUTPUT.jsonl
Exits 1 when any vector differs from attune embed's by more than 1e-5 (max abs difference).
"""
import json
import sys

import numpy as np
import openai

base_url, model, texts_path, expected_path = sys.argv[1:5]
texts = [json.loads(line)["text"] for line in open(texts_path) if line.strip()]
expected = np.array([json.loads(line)["embedding"] for line in open(expected_path) if line.strip()])

client = openai.OpenAI(base_url=base_url, api_key="unused-without-a-server-key")
worst = 0.0
for encoding in (None, "float"):  # None: the client's default (base64, decoded by the client)
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    response = client.embeddings.create(model=model, input=texts, **kwargs)
    got = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])
    single = client.embeddings.create(model=model, input=texts[0], **kwargs).data[0].embedding
    diff = float(np.abs(got - expected).max())
    diff_single = float(np.abs(np.array(single) - expected[0]).max())
    cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    label = encoding or "default (base64)"
    print(f"openai {openai.__version__}, encoding {label}: {len(got)} texts, dim {got.shape[1]}, "
          f"max |attune serve - attune embed| = {diff:.2e} (single input {diff_single:.2e}), "
          f"min cosine {cos.min():.7f}, usage {response.usage.prompt_tokens} tokens")
    worst = max(worst, diff, diff_single)
print("OK" if worst <= 1e-5 else "MISMATCH")
sys.exit(0 if worst <= 1e-5 else 1)
