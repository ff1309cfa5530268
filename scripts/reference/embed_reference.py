#!/usr/bin/env python3
"""Reference sentence embeddings for inference/tests/embed.rs, computed without candle.

all-MiniLM-L6-v2 as sentence-transformers runs it (BERT, mean pooling over the
real tokens, L2 normalisation, truncation at max_seq_length 256), written out
in float64 numpy from the same model.safetensors. The token ids come from the
`tokenizers` package and are checked against a plain-Python WordPiece written
here from the vocabulary, so neither the ids nor the vectors depend on the
Rust code they check.

Usage (a venv under target/, nothing installed system-wide):

    python3 -m venv target/embed-venv
    target/embed-venv/bin/pip install numpy safetensors tokenizers
    target/embed-venv/bin/python scripts/reference/embed_reference.py \
        [MODEL_DIR] > inference/tests/fixtures/embed/reference.json

MODEL_DIR defaults to where scripts/models.sh puts the model.
"""

import json
import math
import os
import sys
import unicodedata

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_TOKENS = 256  # sentence_bert_config.json "max_seq_length" of all-MiniLM-L6-v2

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "How do I reset my password?",
    "Quarterly revenue grew by 12% in 2023.",
    "Café au lait, s'il vous plaît!",
    "",
    "Unbelievably hyperparameterized tokenization of ACRONYMS like GPU and TPU.",
    "The quick brown fox jumps over the lazy dog. " * 30,  # over 256 tokens: truncated
]


def wordpiece(text, vocab):
    """BERT's uncased basic tokenizer + greedy longest-match WordPiece."""
    text = "".join(" " if unicodedata.category(c) in ("Zs", "Cc") or c in "\t\n\r" else c
                   for c in text if c != "\0" and c != "\ufffd")
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = []
    for word in text.split():
        current = ""
        for c in word:
            if unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                words += [current, c] if current else [c]
                current = ""
            else:
                current += c
        if current:
            words.append(current)
    ids = [vocab["[CLS]"]]
    for word in words:
        start = 0
        pieces = []
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    ids = ids[: MAX_TOKENS - 1] + [vocab["[SEP]"]]
    return ids


def layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def embed(ids, weights, config):
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    heads = config["num_attention_heads"]
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    erf = np.vectorize(math.erf)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda h, name: h @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        split = lambda h: h.reshape(n, heads, -1).transpose(1, 0, 2)
        q = split(lin(x, "attention.self.query"))
        k = split(lin(x, "attention.self.key"))
        v = split(lin(x, "attention.self.value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
        x = layer_norm(x + lin(context, "attention.output.dense"),
                       w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"])
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # exact (erf) GELU, as "gelu" in config
        x = layer_norm(x + lin(h, "output.dense"),
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)  # one sentence, no padding: every position is a real token
    return pooled / np.linalg.norm(pooled)


def main():
    default = os.path.join(os.environ.get("AIOS_MODELS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aios", "models"),
        "all-minilm-l6-v2")
    model_dir = sys.argv[1] if len(sys.argv) > 1 else default
    config = json.load(open(os.path.join(model_dir, "config.json")))
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    vocab = tokenizer.get_vocab(with_added_tokens=True)

    out = []
    for text in SENTENCES:
        encoding = tokenizer.encode(text)
        ids = encoding.ids
        assert ids == wordpiece(text, vocab), f"tokenizers and plain WordPiece differ on {text!r}"
        vector = embed(ids, weights, config)
        out.append({
            "text": text,
            "ids": ids,
            "truncated": bool(encoding.overflowing),
            "first8": [round(float(v), 6) for v in vector[:8]],
            "vector": [round(float(v), 6) for v in vector],
        })
    json.dump({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_tokens": MAX_TOKENS,
        "produced_by": "scripts/reference/embed_reference.py (float64 numpy forward)",
        "sentences": out,
    }, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
