#!/usr/bin/env python3
"""Writes the model-family test fixtures of model/tests/fixtures/families/ (committed; CI needs
no Python). Run with the baselines' environment (../shared/baselines/setup.sh):

    ~/.cache/attune-baselines/venv/bin/python scripts/make-family-fixtures.py

For each family it trains a small tokenizer with the `tokenizers` library, builds a tiny randomly
initialised model with transformers (fixed seed), writes a sentence-transformers directory in the
classic layout (`sentence_transformers.models.*` types, legacy pooling booleans,
sentence_bert_config.json), loads it with sentence-transformers and writes the reference
embeddings of TEXTS (`reference.jsonl`). Each directory is then saved again by
`SentenceTransformer(dir).save(...)`, and the small JSON files that sentence-transformers 6.x
writes are kept in `st6/` beside it (the tests add the weights and tokenizer of the classic
directory), so attune is checked on both layouts.

Also keeps the JSON files sentence-transformers 6.x writes for all-MiniLM-L6-v2
(`models/all-MiniLM-L6-v2`, scripts/fetch-model.sh) in `st6-all-MiniLM-L6-v2/`.
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "model", "tests", "fixtures", "families")
MAX_SEQ_LENGTH = 24

# Multilingual texts: accents, CJK, emoji, stray whitespace, and texts over MAX_SEQ_LENGTH.
TEXTS = [
    "red running shoes",
    "Chaussures de course rouges, taille 42 — très légères",
    "Laufschuhe für Damen: größe 38, Farbe grün",
    "zapatos de niño con envío gratis y devolución fácil",
    "红色跑步鞋 女款 透气",
    "東京の天気は晴れです",
    "빨간 운동화",
    "smartphone 📱 with 128GB 🔋 battery and a case 😀",
    "   stray   whitespace\tand\ttabs \n new lines  ",
    "",
    "a",
    "SKU-4711-XL model number B07XYZ1234 fits 15.6\" laptops",
    " ".join(["the return policy for leather jackets is thirty days from delivery"] * 6),
    "Ünïcödé ñoño çà et là — ½ price ™ ©",
    "Привет, как дела? Хорошие кроссовки.",
    "مرحبا بالعالم",
]

TRAINING_CORPUS = TEXTS + [
    "the quick brown fox jumps over the lazy dog",
    "running shoes for men and women in every size",
    "laptop battery replacement with warranty",
    "les chaussures rouges sont en solde cette semaine",
    "die Jacke ist aus Leder und sehr warm",
    "la camiseta de algodón es cómoda",
    "鞋子 衣服 手机 电脑 包",
    "靴 服 携帯 電話",
]


def unigram_metaspace_tokenizer():
    """SentencePiece-style (XLM-RoBERTa): Unigram model, Metaspace pre-tokenizer."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(TRAINING_CORPUS * 3, trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def byte_level_bpe_tokenizer():
    """GPT-2 style (RoBERTa): byte-level BPE."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TRAINING_CORPUS * 3, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True
    )
    return tok


def modernbert_bpe_tokenizer():
    """ModernBERT style: byte-level BPE with BERT-style special tokens around the text."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TRAINING_CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def modernbert(tok):
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    config = ModernBertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64, local_attention=8,
        pad_token_id=tok.token_to_id("[PAD]"), cls_token_id=tok.token_to_id("[CLS]"),
        sep_token_id=tok.token_to_id("[SEP]"), bos_token_id=tok.token_to_id("[CLS]"),
        eos_token_id=tok.token_to_id("[SEP]"),
    )
    model = ModernBertModel(config)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    return model, hf_tok


def wordpiece_tokenizer():
    """BERT style: WordPiece, lower-cased."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials)
    tok.train_from_iterator(TRAINING_CORPUS * 3, trainer)
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    )
    return tok


def roberta_like(model_type, tok, fast_class):
    from transformers import AutoConfig, AutoModel

    pad = tok.token_to_id("<pad>")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_SEQ_LENGTH + pad + 1 + 8,
        type_vocab_size=1,
        pad_token_id=pad,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
    )
    model = AutoModel.from_config(config)
    hf_tok = fast_class(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )
    return model, hf_tok


def bert_with_dense(tok):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.token_to_id("[PAD]"),
    )
    model = BertModel(config)
    hf_tok = BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    return model, hf_tok


def randomize(model, seed):
    """Larger random weights than the initializer's, so the texts embed far apart."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("LayerNorm" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def write_classic_dir(dest, model, hf_tok, pooling, dense=None):
    """A sentence-transformers directory in the classic (<= 5.x) layout."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    model.save_pretrained(dest, safe_serialization=True)
    hf_tok.save_pretrained(dest)
    for name in ["vocab.txt", "merges.txt", "vocab.json", "sentencepiece.bpe.model", "chat_template.jinja"]:
        if os.path.exists(os.path.join(dest, name)):
            os.remove(os.path.join(dest, name))
    hidden = model.config.hidden_size
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    os.makedirs(os.path.join(dest, "1_Pooling"))
    flags = {f"pooling_mode_{m}": False for m in
             ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken"]}
    flags[f"pooling_mode_{pooling}"] = True
    with open(os.path.join(dest, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": hidden, **flags}, f, indent=2)
    if dense is not None:
        idx = len(modules)
        folder = os.path.join(dest, f"{idx}_Dense")
        os.makedirs(folder)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"in_features": dense["in"], "out_features": dense["out"], "bias": True,
                       "activation_function": "torch.nn.modules.activation.Tanh"}, f, indent=2)
        gen = torch.Generator().manual_seed(7)
        from safetensors.torch import save_file
        save_file({"linear.weight": 0.5 * torch.randn((dense["out"], dense["in"]), generator=gen),
                   "linear.bias": 0.1 * torch.randn((dense["out"],), generator=gen)},
                  os.path.join(folder, "model.safetensors"))
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Dense",
                        "type": "sentence_transformers.models.Dense"})
    idx = len(modules)
    modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(dest, "modules.json"), "w") as f:
        json.dump(modules, f, indent=2)
    with open(os.path.join(dest, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}, f, indent=2)


def write_reference(dest, st_model):
    rows = []
    for batch_size in (32,):
        embeddings = st_model.encode(TEXTS, batch_size=batch_size, convert_to_numpy=True)
    for i, (text, emb) in enumerate(zip(TEXTS, embeddings)):
        ids = st_model.tokenize([text])["input_ids"][0].tolist()
        rows.append({"id": i, "text": text, "tokens": len(ids), "embedding": [float(x) for x in emb]})
    with open(os.path.join(dest, "reference.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    assert any(r["tokens"] >= MAX_SEQ_LENGTH for r in rows), "a text must reach the length limit"


def keep_st6_json(src_dir, dest):
    """Saves src_dir with sentence-transformers 6.x and keeps the small JSON files it writes."""
    model = SentenceTransformer(src_dir, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        for root, _, names in os.walk(tmp):
            for name in names:
                if name.endswith(".json") and name != "tokenizer.json":
                    rel = os.path.relpath(os.path.join(root, name), tmp)
                    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                    shutil.copy(os.path.join(root, name), os.path.join(dest, rel))


def main():
    from transformers import RobertaTokenizerFast, XLMRobertaTokenizerFast

    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    families = {
        "xlm-roberta": lambda: roberta_like("xlm-roberta", unigram_metaspace_tokenizer(), XLMRobertaTokenizerFast),
        "roberta": lambda: roberta_like("roberta", byte_level_bpe_tokenizer(), RobertaTokenizerFast),
        "bert-dense": lambda: bert_with_dense(wordpiece_tokenizer()),
        "modernbert": lambda: modernbert(modernbert_bpe_tokenizer()),
    }
    for seed, (name, build) in enumerate(families.items()):
        model, hf_tok = build()
        randomize(model, seed + 1)
        model.eval()
        dest = os.path.join(OUT, name)
        dense = {"in": 32, "out": 16} if name == "bert-dense" else None
        pooling = "cls_token" if name == "roberta" else "mean_tokens"
        write_classic_dir(dest, model, hf_tok, pooling, dense)
        st_model = SentenceTransformer(dest, device="cpu")
        # transformers 5 rebuilds XLM-R's and RoBERTa's pipelines from the tokenizer class (it
        # keeps tokenizer.json's vocabulary, not its normalizer and pre-tokenizer): store the
        # pipeline sentence-transformers actually runs, as a real model's tokenizer.json has it.
        backend = st_model[0].tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        backend.save(os.path.join(dest, "tokenizer.json"))
        st_model = SentenceTransformer(dest, device="cpu")
        write_reference(dest, st_model)
        keep_st6_json(dest, os.path.join(OUT, name + "-st6"))
        print(f"[fixtures] {name}: {sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(dest) for f in fs)} bytes", file=sys.stderr)

    minilm = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
    if os.path.exists(os.path.join(minilm, "model.safetensors")):
        keep_st6_json(minilm, os.path.join(OUT, "st6-all-MiniLM-L6-v2"))
    else:
        print("[fixtures] models/all-MiniLM-L6-v2 is absent (scripts/fetch-model.sh); st6 JSON not refreshed", file=sys.stderr)


if __name__ == "__main__":
    main()
