"""Student construction: every --student form, and checkpoints whose labels come in another order."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from helpers.assets import LABELS, make_teacher
from mtkd_cache import ConfigError
from mtkd_cache.distillation.students import BiLSTMClassifier, build_student, load_saved_student


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_checkpoint_with_permuted_labels_keeps_what_it_knows(tmp_path):
    own_order = ("tech", "politics", "sports")
    checkpoint = make_teacher(tmp_path / "ckpt", "bert", labels=own_order, seed=3)
    original = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    student, tokenizer, kind = build_student(str(checkpoint), LABELS, None)
    texts = ["the vote and the law", "a goal in the match", "the chip and the data"]
    before, after = _logits(original, tokenizer, texts), _logits(student, tokenizer, texts)
    for position, name in enumerate(LABELS):
        torch.testing.assert_close(after[:, position], before[:, own_order.index(name)])
    assert kind == "hf" and student.config.id2label == dict(enumerate(LABELS))


def test_scratch_students_and_bilstm_round_trip(tmp_path, assets):
    bert, tokenizer, kind = build_student("bert:layers=1,hidden=32,heads=2", LABELS, str(assets["bert"]))
    assert kind == "hf" and bert.config.num_hidden_layers == 1 and bert.config.hidden_size == 32
    lstm, tokenizer, kind = build_student("bilstm:embed=8,hidden=8", LABELS, str(assets["bert"]))
    assert kind == "bilstm" and isinstance(lstm, BiLSTMClassifier)
    lstm.save_pretrained(tmp_path / "lstm")
    tokenizer.save_pretrained(tmp_path / "lstm")
    loaded, _ = load_saved_student(tmp_path / "lstm")
    texts = ["a goal", "the vote was on the law and the policy"]
    torch.testing.assert_close(_logits(loaded, tokenizer, texts), _logits(lstm, tokenizer, texts))


@pytest.mark.parametrize(("spec", "tokenizer", "message"), [
    ("bert:layers=2", None, "needs --tokenizer"),
    ("bert:layerz=2", "bert", "unknown option 'layerz=2'"),
    ("bilstm:hidden=x", "bert", "hidden must be an integer"),
    ("./no/such/model", None, "cannot load it as a checkpoint"),
])
def test_student_spec_errors(assets, spec, tokenizer, message):
    with pytest.raises(ConfigError, match=message):
        build_student(spec, LABELS, str(assets[tokenizer]) if tokenizer else None)
