"""The CLI: happy path through CliRunner and `python -m`, and every user error as one line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from helpers.assets import make_teacher, write_csv
from helpers.cli import assert_user_error
from mtkd_cache_cli.app import app

runner = CliRunner()


def test_build_info_verify_happy_path(assets, tmp_path):
    out = tmp_path / "cache"
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={assets['bert']}",
                                 "--out", str(out), "--splits", "train,test"])
    assert result.exit_code == 0, result.output
    assert "shard(s) written" in result.stderr
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert [s["name"] for s in info["splits"]] == ["train", "test"]
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "mtkd_cache", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "build" in result.stdout and "verify" in result.stdout


def test_build_help_documents_the_options(monkeypatch):
    # typer renders help through rich at $COLUMNS (CliRunner's terminal_width does not reach it): a narrow
    # terminal shortens option names, so the help is rendered at a fixed width here.
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", 200)
    result = runner.invoke(app, ["build", "--help"])
    for option in ("--dataset", "--teacher", "--out", "--text-pair-column", "--label-map", "--device", "--dtype",
                   "--max-length", "--batch-tokens", "--logits-dtype"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--dataset", "/no/such/dir"], ["does not exist"]),
        (["--text-column", "body"], ["no column 'body'", "--text-column"]),
        (["--splits", "train,dev"], ["split 'dev' not found"]),
        (["--device", "cuda"], ["CUDA is not available"]),
        (["--device", "tpu"], ["--device must be one of"]),
        (["--dtype", "int8"], ["--dtype must be one of"]),
        (["--logits-dtype", "bfloat16"], ["--logits-dtype must be one of"]),
        (["--backend", "tensorrt"], ["--backend must be one of"]),
        (["--max-length", "1"], ["--max-length must be at least 2"]),
        (["--label-map", "bert"], ["--label-map 'bert' must look like"]),
        (["--label-map", "ghost:a=b"], ["names teacher(s) ghost"]),
        (["--teacher", "bert"], ["must look like NAME=SOURCE"]),
        (["--teacher", "b@d=./x"], ["may hold only letters"]),
    ],
)
def test_build_user_errors(assets, tmp_path, extra, fragments):
    base = {"--dataset": str(assets["data"]), "--out": str(tmp_path / "cache")}
    args = ["build"]
    for flag, value in base.items():
        if flag not in extra:
            args += [flag, value]
    if "--teacher" not in extra:
        args += ["--teacher", f"bert={assets['bert']}"]
    result = runner.invoke(app, args + extra)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_teacher_problems(assets, tmp_path):
    not_a_model = tmp_path / "empty_teacher"
    not_a_model.mkdir()
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"t={not_a_model}",
                                 "--out", str(tmp_path / "c1")])
    assert_user_error(result, "has no config.json")
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"t={tmp_path / 'missing'}",
                                 "--out", str(tmp_path / "c2")])
    assert_user_error(result, "is not a directory")
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", "t=some-org/missing-model",
                                 "--out", str(tmp_path / "c3")])
    assert_user_error(result, "cannot get some-org/missing-model from the hub")
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"a={assets['bert']}",
                                 "--teacher", f"a={assets['distil']}", "--out", str(tmp_path / "c4")])
    assert_user_error(result, "given twice")


def test_label_set_mismatch_names_both_sets_and_label_map_fixes_it(assets, tmp_path):
    teacher = make_teacher(tmp_path / "t", "bert", labels=("POL", "SPO", "TEC"))
    args = ["build", "--dataset", str(assets["data"]), "--teacher", f"t={teacher}", "--out", str(tmp_path / "c")]
    assert_user_error(runner.invoke(app, args), "['POL', 'SPO', 'TEC']", "['politics', 'sports', 'tech']", "--label-map")
    mapped = runner.invoke(app, args + ["--label-map", "t:POL=politics,SPO=sports,TEC=tech"])
    assert mapped.exit_code == 0, mapped.output


def test_out_must_not_be_a_foreign_directory(assets, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={assets['bert']}",
                                 "--out", str(tmp_path / "home")])
    assert_user_error(result, "is not empty and holds no cache")
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"


def test_info_and_verify_on_a_directory_that_is_not_a_cache(tmp_path):
    for command in ("info", "verify"):
        assert_user_error(runner.invoke(app, [command, str(tmp_path)]), "has no manifest.json")
        assert_user_error(runner.invoke(app, [command, str(tmp_path / "nope")]), "is not a directory")


def test_generic_label_names_are_taken_in_dataset_order(tmp_path, assets):
    teacher = make_teacher(tmp_path / "generic", "bert", labels=("LABEL_0", "LABEL_1", "LABEL_2"))
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"g={teacher}",
                                 "--out", str(tmp_path / "c"), "--splits", "test"])
    assert result.exit_code == 0, result.output


def test_int_labels_with_label_names(tmp_path, assets):
    write_csv(tmp_path / "d" / "train.csv", [{"text": "a goal", "label": 1}, {"text": "a vote", "label": 0}])
    result = runner.invoke(app, ["build", "--dataset", str(tmp_path / "d"), "--teacher", f"bert={assets['bert']}",
                                 "--out", str(tmp_path / "c"), "--label-names", "politics,sports,tech"])
    assert result.exit_code == 0, result.output


# --- every cache-side command takes --config FILE; defaults and help come from the config dataclasses ----------

CACHE_COMMANDS = ("build", "info", "verify", "demo", "push", "pull", "merge", "augment")


@pytest.mark.parametrize("command", CACHE_COMMANDS)
def test_every_cache_command_takes_a_config_file(command, monkeypatch):
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", 200)
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--config" in result.stdout, result.output


def test_build_reads_toml_and_yaml_config_files_and_flags_override_them(assets, tmp_path):
    toml = tmp_path / "build.toml"
    toml.write_text(f'dataset = "{assets["data"]}"\nteacher = ["bert={assets["bert"]}"]\n'
                    f'out = "{tmp_path / "from-toml"}"\nsplits = "test"\nmax-length = 16\nshard_rows = 3\n')
    result = runner.invoke(app, ["build", "--config", str(toml)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "from-toml" / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["test"] and manifest["shard_rows"] == 3
    assert manifest["teachers"]["bert"]["max_length"] == 16

    yaml = tmp_path / "build.yaml"
    yaml.write_text(f"dataset: {assets['data']}\nteacher: ['bert={assets['bert']}']\nout: {tmp_path / 'ignored'}\n"
                    "splits: test\nmax_length: 16\nlogits-dtype: float32\n")
    result = runner.invoke(app, ["build", "--config", str(yaml), "--out", str(tmp_path / "from-yaml"),
                                 "--max-length", "24"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "from-yaml" / "manifest.json").read_text())
    assert manifest["logits_dtype"] == "float32" and manifest["teachers"]["bert"]["max_length"] == 24
    assert not (tmp_path / "ignored").exists()


def test_a_config_file_key_the_command_does_not_take_is_refused(assets, tmp_path):
    config = tmp_path / "verify.toml"
    config.write_text("max-length = 64\n")
    result = runner.invoke(app, ["verify", str(tmp_path), "--config", str(config)])
    assert_user_error(result, "sets max_length, which `verify` does not take")
    assert len(result.stderr.strip().splitlines()) == 1  # one line, like every user error, at any width
    broken = tmp_path / "build.toml"
    broken.write_text("max-length = \n")
    result = runner.invoke(app, ["build", "--config", str(broken)])
    assert_user_error(result, "cannot be parsed")


def _config_backed_options(command):
    import inspect
    import typing

    function = inspect.unwrap(command)
    hints = typing.get_type_hints(function, include_extras=True)
    for name, parameter in inspect.signature(function).parameters.items():
        for info in getattr(hints[name], "__metadata__", ()):
            if getattr(info, "config_field", None):
                yield name, parameter.default, info


def test_cache_command_defaults_and_help_are_the_config_fields():
    import dataclasses

    from mtkd_cache_cli.app import build
    from mtkd_cache_cli.augment_commands import augment

    checked = 0
    for command in (build, augment):
        for name, default, info in _config_backed_options(command):
            config_class, field_name = info.config_field
            field = {f.name: f for f in dataclasses.fields(config_class)}[field_name]
            if field.default is not dataclasses.MISSING and not isinstance(field.default, tuple):
                assert default == field.default, f"{command.__name__} --{name}: {default!r} != {field.default!r}"
            assert info.help, f"{command.__name__} --{name} has no help"
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--device", "tpu", "--device must be one of auto, cpu, cuda (or cuda:N), not 'tpu'."),
    ("--dtype", "int8", "--dtype must be one of auto, float32, float16, bfloat16, not 'int8'."),
    ("--backend", "tensorrt", "--backend must be one of torch, onnx, causal-lm, openai, not 'tensorrt'."),
    ("--logits-dtype", "bfloat16", "--logits-dtype must be one of float16, float32, not 'bfloat16'."),
])
def test_a_closed_set_option_names_every_choice_in_one_line(assets, tmp_path, flag, value, message):
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={assets['bert']}",
                                 "--out", str(tmp_path / "cache"), flag, value])
    assert_user_error(result, message)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_one_progress_adapter_draws_rows_and_bytes():
    import io

    from rich.console import Console

    from mtkd_cache_cli.progress import ProgressEvents

    console = Console(file=io.StringIO(), width=160, force_terminal=True)  # at a terminal: bars
    with ProgressEvents(console) as events:
        events.task("bert · train", 40)
        events.advance(40)
        events.task("push → s3://bucket/cache", 3_000_000, unit="bytes")
        events.advance(1_500_000)
        events.note("kept 2 shard(s)")
    drawn = console.file.getvalue()
    assert "bert · train" in drawn and "40/40" in drawn
    assert "push → s3://bucket/cache" in drawn and "1.5/3.0 MB" in drawn and "kept 2 shard(s)" in drawn
