"""A small 3-class text dataset on disk and tiny random-init teachers (BERT, DistilBERT), never downloaded."""

from __future__ import annotations

import csv
import random
from pathlib import Path

LABELS = ("politics", "sports", "tech")
_TOPIC_WORDS = {
    "politics": "vote election party minister law parliament policy senate".split(),
    "sports": "match goal team player league coach score season".split(),
    "tech": "software chip phone data cloud model code robot".split(),
}
_COMMON = "the a of and to in is was on for with at by it this that".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_COMMON, *(w for ws in _TOPIC_WORDS.values() for w in ws)]


def make_rows(count: int, seed: int, max_words: int = 40) -> list[dict]:
    """Rows with a realistic spread of lengths (1 to max_words words) and string labels."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(LABELS)
        words = [rng.choice(_TOPIC_WORDS[label] if rng.random() < 0.4 else _COMMON)
                 for _ in range(rng.randint(1, max_words))]
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dataset(directory: Path, sizes=(("train", 60), ("validation", 20), ("test", 30)), seed: int = 0) -> Path:
    for offset, (split, count) in enumerate(sizes):
        write_csv(directory / f"{split}.csv", make_rows(count, seed + offset))
    return directory


def make_teacher(directory: Path, arch: str = "bert", labels=LABELS, seed: int = 0, lowercase: bool = True,
                 num_layers: int = 2) -> Path:
    """A tiny random-init sequence classifier with its tokenizer, saved with save_pretrained."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizer,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=num_layers,
                            num_attention_heads=2, intermediate_size=48, max_position_embeddings=256,
                            num_labels=len(labels), id2label=id2label, label2id=label2id)
        model = BertForSequenceClassification(config)
    elif arch == "distilbert":
        config = DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=num_layers, n_heads=2, hidden_dim=48,
                                  max_position_embeddings=256, num_labels=len(labels), id2label=id2label,
                                  label2id=label2id)
        model = DistilBertForSequenceClassification(config)
    else:
        raise ValueError(arch)
    # Random init gives near-zero logits; scale the head so predictions differ between classes and teachers.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    model.save_pretrained(directory)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=lowercase)
    if arch == "distilbert":
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(directory)
    return directory
