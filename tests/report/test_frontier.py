"""`report --frontier`: every teacher, distilled student and no-teacher floor with its size and CPU speed;
the fields are recomputed here from the saved students, the cache and a fresh export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache
from mtkd_cache.distillation.students import count_parameters, load_saved_student
from mtkd_cache.layout import FRONTIER_JSON, FRONTIER_MD, FRONTIER_PLOT, STUDENT_DIR
from mtkd_cache.serve.export import ExportConfig, export_model
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
COMMON = ["--epochs", "1", "--lr", "1e-2", "--device", "cpu"]


@pytest.fixture(scope="module")
def frontier(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("frontier")
    cache = root / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])), out=cache,
                            teachers=(TeacherSpec("bert", str(assets["bert"])), TeacherSpec("distil", str(assets["distil"])))))
    runs = {"from-bert": ["distill", str(cache), "--student", f"from:{assets['bert']},layers=1"],
            "static": ["distill", str(cache), "--student", f"static:{assets['bert']},dims=8,hidden=16"],
            "floor": ["finetune", "--dataset", str(assets["data"]), "--model", f"from:{assets['bert']},layers=1"]}
    for name, args in runs.items():
        result = runner.invoke(app, [*args, "--out", str(root / name), *COMMON])
        assert result.exit_code == 0, result.output
    out = root / "report"
    result = runner.invoke(app, ["report", *(str(root / n) for n in runs), "--frontier", "--out", str(out)],
                           terminal_width=250)
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads((out / FRONTIER_JSON).read_text())}
    return {"root": root, "cache": cache, "out": out, "rows": rows, "stdout": result.stdout}


def test_every_model_has_its_role_and_fields(frontier):
    rows = frontier["rows"]
    assert {name: row["role"] for name, row in rows.items()} == {
        "bert": "teacher", "distil": "teacher", "from-bert": "student", "static": "student", "floor": "floor"}
    assert rows["static"]["kind"] == "static" and rows["from-bert"]["kind"] == "hf"
    for row in rows.values():
        for field in ("torch_ms_b1", "torch_ms_b32", "onnx_ms_b1", "onnx_ms_b32"):
            assert row[field] > 0, (row["model"], field)
        assert row["samples_per_s"] == pytest.approx(1000 / row["onnx_ms_b32"])
    assert (frontier["out"] / FRONTIER_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "load average" in (frontier["out"] / FRONTIER_MD).read_text() and "load average" in frontier["stdout"]


def test_fields_recomputed_from_the_saved_students_and_the_cache(frontier, tmp_path):
    rows, root = frontier["rows"], frontier["root"]
    cache = open_cache(frontier["cache"])
    inputs, outputs = cache.inputs("test"), cache.teacher_outputs("test")
    for position, teacher in enumerate(outputs.teachers):
        assert rows[teacher]["accuracy"] == pytest.approx(float(np.mean(outputs.preds[:, position] == inputs.labels)))
    for name in ("from-bert", "static", "floor"):
        student_dir = root / name / STUDENT_DIR
        model, tokenizer = load_saved_student(student_dir)
        assert rows[name]["parameters"] == count_parameters(model)
        exported = export_model(ExportConfig(model_dir=student_dir, out=tmp_path / name / "model.onnx"))
        assert rows[name]["file_mb"] == pytest.approx(exported.bytes / 1e6, rel=0.01)
        batch = tokenizer(list(inputs.texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        feed = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        predicted = model.eval()(**feed).logits.argmax(dim=1).numpy()
        # students are built with the cache's label order, so class k is label k
        assert rows[name]["accuracy"] == pytest.approx(float(np.mean(predicted == inputs.labels)))


def test_frontier_needs_an_out_directory(frontier):
    result = runner.invoke(app, ["report", str(frontier["root"] / "static"), "--frontier"])
    assert_user_error(result, "give --out DIRECTORY")
