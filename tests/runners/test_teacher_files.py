"""A teacher directory whose files are broken is one `error:` line at `build`, exit 2, and no cache: a corrupt
or non-object config.json, a truncated or garbage model.safetensors, a head whose size differs from its
config, and a --max-length beyond the teacher's position embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _truncate(teacher: Path) -> None:
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _garbage(teacher: Path) -> None:
    (teacher / "model.safetensors").write_bytes(bytes(range(256)) * 20)


def _wider_head(teacher: Path) -> None:
    """Two more output rows in the classifier than config.json's labels say."""
    weights = load_file(teacher / "model.safetensors")
    for key in [k for k in weights if k.startswith("classifier.")]:
        weights[key] = torch.cat([weights[key], weights[key][:2]])
    save_file(weights, teacher / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(("damage", "fragments"), [
    (lambda t: (t / "config.json").write_text('{"model_type": '), ["cannot read", "config.json", "save_pretrained"]),
    (lambda t: (t / "config.json").write_text("[1, 2]"), ["holds a JSON list, not an object"]),
    (lambda t: (t / "config.json").write_text(json.dumps({**json.loads((t / "config.json").read_text()),
                                                          "id2label": ["a", "b", "c"]})), ["id2label must map"]),
    (_truncate, ["cannot load", "save_pretrained"]),
    (_garbage, ["cannot load", "save_pretrained"]),
    (_wider_head, ["shapes of its weights differ from its config.json"]),
])
def test_a_broken_teacher_directory_is_one_line_and_no_cache(assets, tmp_path, damage, fragments):
    teacher = shutil.copytree(assets["bert"], tmp_path / "teacher")
    damage(teacher)
    out = tmp_path / "cache"
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={teacher}",
                                 "--out", str(out), "--device", "cpu"])
    assert_user_error(result, "teacher 'bert'", *fragments)
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(("value", "fragments"), [("100000", ["--max-length 100000", "positions teacher 'bert' has"]),
                                                  ("-1", ["--max-length must be at least 2"])])
def test_a_max_length_the_teacher_cannot_take_is_refused_at_build(assets, tmp_path, value, fragments):
    out = tmp_path / "cache"
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={assets['bert']}",
                                 "--out", str(out), "--device", "cpu", "--max-length", value])
    assert_user_error(result, *fragments)
    assert not (out / "manifest.json").exists()


def test_an_encoder_without_a_classification_head_is_named_as_such(assets, tmp_path):
    teacher = shutil.copytree(assets["bert"], tmp_path / "encoder")
    config = json.loads((teacher / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key, None)
    (teacher / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={teacher}",
                                 "--out", str(tmp_path / "cache"), "--device", "cpu"])
    assert_user_error(result, "encoder without a classification head (BertModel)", "mtkd-cache finetune",
                      one_sentence=True)
    assert "--label-map" not in result.output


def test_a_split_missing_a_class_points_to_label_names(assets, tmp_path):
    from helpers.assets import LABELS, make_rows, write_csv

    rows = [row for row in make_rows(30, seed=3) if row["label"] != "tech"]
    write_csv(tmp_path / "data" / "test.csv", rows)
    out = tmp_path / "cache"
    argv = ["build", "--dataset", str(tmp_path / "data"), "--teacher", f"bert={assets['bert']}", "--out", str(out),
            "--device", "cpu"]
    result = runner.invoke(app, argv)
    assert_user_error(result, "are a subset of teacher 'bert''s", f"--label-names {','.join(LABELS)}")
    assert "--label-map" not in result.output
    assert runner.invoke(app, [*argv, "--label-names", ",".join(LABELS)]).exit_code == 0
