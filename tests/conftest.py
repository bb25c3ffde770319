"""Fixtures: a small 3-class text dataset on disk and tiny random-init teachers, never downloaded."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    from transformers import (BertConfig, BertForSequenceClassification, BertTokenizer, DistilBertConfig,
                              DistilBertForSequenceClassification)

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


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Shared read-only assets: a dataset directory and three teachers."""
    root = tmp_path_factory.mktemp("assets")
    return {
        "data": write_dataset(root / "data"),
        # Two architectures; `distil` lists its labels in another order than the dataset.
        "bert": make_teacher(root / "bert", "bert", seed=1),
        "distil": make_teacher(root / "distil", "distilbert", labels=("tech", "politics", "sports"), seed=2),
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a small shared machine: one intra-op thread is several times faster than two
    oversubscribed ones, and matches the OMP_NUM_THREADS=1 subprocesses some tests compare against."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_user_error(result, *fragments: str, one_sentence: bool = False) -> None:
    """A CLI user error: exit 2, no traceback, stderr opening with `error:` and holding every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    message = " ".join(result.stderr.split())
    if one_sentence:
        assert message.count(". ") == 0, message
    for fragment in fragments:
        assert fragment in message, message
