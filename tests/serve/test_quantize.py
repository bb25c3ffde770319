"""`export --quantize int8`: the int8 graph is judged on a labelled split against the fp32 graph; a drop above
--max-drop exits 1 and keeps the file; a model without labelled rows to judge on is refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer
from typer.testing import CliRunner

from helpers.assets import LABELS, make_rows, write_csv
from helpers.cli import assert_user_error
from helpers.reference import build_teacherless_cache
from mtkd_cache import open_cache
from mtkd_cache.distillation.students import build_student
from mtkd_cache.layout import STUDENT_DIR
from mtkd_cache.runners.onnx_runner import open_session
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    cache = build_teacherless_cache(assets, root)
    out = root / "run"
    result = runner.invoke(app, ["distill", str(cache), "--student", "bert:layers=1,hidden=32,heads=2", "--tokenizer",
                                 str(assets["bert"]), "--out", str(out), "--epochs", "1", "--lr", "1e-3",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return {"cache": cache, "out": out}


def _onnx_labels(path, tokenizer, texts):
    session, _ = open_session(path, torch.device("cpu"))
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    feed = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    return session.run(["logits"], feed)[0].argmax(axis=1)


def test_int8_export_is_judged_on_the_runs_eval_split(run, tmp_path):
    out = tmp_path / "int8" / "model.onnx"
    result = runner.invoke(app, ["export", str(run["out"] / STUDENT_DIR), "--out", str(out), "--quantize", "int8",
                                 "--max-drop", "100"], terminal_width=250)
    assert result.exit_code == 0, result.output
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["quantization"] == "int8" and json.loads(props["label_names"]) == list(LABELS)
    assert any(node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul")
               for node in onnx.load(str(out)).graph.node)
    # Recompute the printed accuracy from the file and the cache's test split.
    inputs = open_cache(run["cache"]).inputs("test")
    tokenizer = AutoTokenizer.from_pretrained(out.parent)
    predicted = _onnx_labels(out, tokenizer, list(inputs.texts))
    accuracy = float(np.mean(predicted == inputs.labels))
    assert f"int8 vs fp32 on {len(inputs.labels)} labelled rows" in result.stdout
    assert f"accuracy {accuracy:.4f} vs" in result.stdout
    assert "ms/sample int8" in result.stdout and "MB int8" in result.stdout
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no scratch graph left behind


def test_a_drop_above_max_drop_exits_1_and_keeps_the_file(assets, tmp_path):
    # A static student with one outlier row in its table: int8's per-tensor range is stretched by that row, so
    # every other token vector keeps only a level or two and the int8 graph's answers change.
    model, tokenizer, _ = build_student(f"static:{assets['bert']},dims=8,hidden=16", LABELS, None)
    torch.manual_seed(0)
    with torch.no_grad():
        model.embedding.weight.div_(model.embedding.weight.std())
        for parameter in model.head.parameters():  # a head whose answers differ between texts
            parameter.normal_(0.0, 3.0)
        model.embedding.weight[tokenizer.convert_tokens_to_ids("[MASK]")] = 1000.0
    model_dir = tmp_path / "fragile"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = make_rows(40, seed=9)
    batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.inference_mode():
        fp32_labels = model.eval()(**batch).logits.argmax(dim=1).tolist()
    assert len(set(fp32_labels)) > 1  # so one class for every row is wrong on some
    # Gold labels are the fp32 model's own answers, so every int8 disagreement is an accuracy drop.
    data = tmp_path / "data"
    write_csv(data / "test.csv", [{"text": r["text"], "label": LABELS[k]} for r, k in zip(rows, fp32_labels)])
    out = tmp_path / "export" / "model.onnx"
    # --tolerance: the head's large weights give logits in the hundreds, so fp32 rounding alone passes 1e-4.
    result = runner.invoke(app, ["export", str(model_dir), "--out", str(out), "--quantize", "int8", "--max-drop", "0",
                                 "--eval-data", str(data), "--eval-split", "test", "--tolerance", "0.1"],
                           terminal_width=250)
    assert result.exit_code == 1, result.output
    assert "vs 1.0000" in result.stdout  # the fp32 graph answers every row right
    assert "error: the int8 graph loses" in result.stderr and "kept for inspection" in result.stderr
    assert out.is_file() and {p.key: p.value for p in onnx.load(str(out)).metadata_props}["quantization"] == "int8"
    int8_labels = _onnx_labels(out, AutoTokenizer.from_pretrained(out.parent), [r["text"] for r in rows])
    agreement = float(np.mean(int8_labels == np.array(fp32_labels)))
    assert agreement < 1 and f"labels agree on {agreement:.1%}" in result.stdout
    assert f"accuracy {agreement:.4f} vs 1.0000 (drop +{100 * (1 - agreement):.2f} points" in result.stdout


def test_without_labelled_rows_the_export_is_refused(assets, tmp_path):
    out = tmp_path / "x" / "model.onnx"
    result = runner.invoke(app, ["export", str(assets["bert"]), "--out", str(out), "--quantize", "int8"])
    assert_user_error(result, "is not a run's student/ directory", "--eval-data")
    assert not out.exists()
    result = runner.invoke(app, ["export", str(assets["bert"]), "--out", str(out), "--eval-split", "test"])
    assert_user_error(result, "add --quantize int8")
    result = runner.invoke(app, ["export", str(assets["bert"]), "--out", str(out), "--quantize", "int4"])
    assert_user_error(result, "--quantize must be one of int8")
    result = runner.invoke(app, ["export", str(assets["bert"]), "--out", str(out), "--quantize", "int8",
                                 "--eval-data", str(assets["data"]), "--eval-split", "dev"])
    assert_user_error(result, "--eval-split dev")
    assert not out.exists()
