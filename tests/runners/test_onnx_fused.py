"""The onnx backend runs onnxruntime's transformer-optimized graph by default, only where it agrees with the
exported file (max |logit difference| <= 1e-4, same argmax on probe texts); otherwise the file as exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtkd_cache.runners.onnx_runner as onnx_runner
from mtkd_cache.runners.onnx_runner import OnnxOptions, OnnxTeacher
from mtkd_cache.serve.export import ExportConfig, export_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["the vote and the law", "a goal in the match of the season", "the chip", "", "the team and the coach " * 40]


@pytest.fixture(scope="module")
def exported(assets, tmp_path_factory):
    return export_model(ExportConfig(model_dir=assets["bert"], out=tmp_path_factory.mktemp("fused") / "model.onnx")).out


def _logits(teacher: OnnxTeacher) -> np.ndarray:
    encoded = teacher.tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    return teacher.logits(dict(encoded))


def test_a_bert_export_runs_fused_with_the_exported_files_logits(exported):
    pytest.importorskip("onnxruntime.transformers.optimizer")
    fused = OnnxTeacher("bert", exported, torch.device("cpu"))
    plain = OnnxTeacher("bert", exported, torch.device("cpu"), OnnxOptions(fuse=False))
    assert fused.attn_implementation.endswith("fused by onnxruntime.transformers.optimizer")
    assert plain.attn_implementation == "onnxruntime"
    fused_ops = {node.op_type for node in onnx_runner.import_optional("onnx").load_from_string(
        onnx_runner.fused_graph(exported)).graph.node}
    assert fused_ops & {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "FastGelu"}
    a, b = _logits(fused), _logits(plain)
    assert np.abs(a - b).max() <= onnx_runner.FUSED_TOLERANCE
    assert (a.argmax(1) == b.argmax(1)).all()


def test_a_fused_graph_that_disagrees_is_not_used(exported, monkeypatch):
    pytest.importorskip("onnxruntime.transformers.optimizer")
    monkeypatch.setattr(onnx_runner, "FUSED_TOLERANCE", -1.0)  # no graph can agree this closely: the check decides
    teacher = OnnxTeacher("bert", exported, torch.device("cpu"))
    assert teacher.attn_implementation == "onnxruntime"


def test_without_the_optimizer_the_file_runs_as_exported(exported, monkeypatch):
    monkeypatch.setattr(onnx_runner, "fused_graph", lambda path: None)  # e.g. the `onnx` package not installed
    teacher = OnnxTeacher("bert", exported, torch.device("cpu"))
    assert teacher.attn_implementation == "onnxruntime"
    assert _logits(teacher).shape == (len(TEXTS), 3)
