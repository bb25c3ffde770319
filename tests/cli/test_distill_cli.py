"""The commands after the cache: distill (killed and resumed), finetune, select, experts, report, and their user
errors, on a cache whose teachers were deleted after the build."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers.assets import LABELS, make_teacher
from helpers.reference import TEACHERS, build_teacherless_cache, ref_metrics
from mtkd_cache import open_cache
from mtkd_cache.distillation.experts import expert_table_path
from mtkd_cache_cli.app import app

runner = CliRunner()
BERT_STUDENT = "bert:layers=1,hidden=32,heads=2"
BILSTM_STUDENT = "bilstm:embed=16,hidden=16"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("MTKD_CACHE_FAULT", None)
    return env


def distill_args(cache: Path, out: Path, student: str, *extra: str, tokenizer: str | None = None) -> list[str]:
    args = ["distill", str(cache), "--student", student, "--out", str(out), "--lr", "1e-3", "--device", "cpu"]
    if tokenizer:
        args += ["--tokenizer", tokenizer]
    return args + list(extra)


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-cli")
    cache = build_teacherless_cache(assets, root)
    hf_student = make_teacher(root / "hf-student", "bert", seed=7)
    tokenizer = str(assets["bert"])
    results = {}
    for name, student, strategy in (("run-expert", BILSTM_STUDENT, "expert"), ("run-average", BERT_STUDENT, "average")):
        results[name] = runner.invoke(app, distill_args(cache, root / name, student, "--strategy", strategy,
                                                        "--epochs", "1", tokenizer=tokenizer))
        assert results[name].exit_code == 0, results[name].output
    return {"root": root, "cache": cache, "hf": hf_student, "tokenizer": tokenizer, "assets": assets,
            "results": results}


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def _assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- distill


def test_distill_prints_the_scores_and_writes_the_run(env):
    for name, strategy in (("run-expert", "expert"), ("run-average", "average")):
        run_dir, result = env["root"] / name, env["results"][name]
        report = _report(run_dir)
        assert f"accuracy {report['accuracy']:.4f}" in " ".join(result.stdout.split())
        assert report["config"]["strategy"] == strategy
        for file in ("run.json", "metrics.jsonl", "report.md", "per_class_diff.png", "student/tokenizer_config.json"):
            assert (run_dir / file).is_file(), file
        assert len(_history(run_dir)) == 1
    # Experts chosen on test and a report on test: the leak is a warning, not an error.
    assert "warning:" in env["results"]["run-expert"].stderr and "leak" in env["results"]["run-expert"].stderr
    assert "warning:" not in env["results"]["run-average"].stderr


def test_resume_after_sigkill_equals_an_uninterrupted_run(env, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"

    def args(out: Path, lr: str = "1e-3") -> list[str]:
        # Batch size 1: 60 optimizer steps an epoch, so the kill lands inside the second epoch.
        return ["distill", str(env["cache"]), "--student", str(env["hf"]), "--out", str(out), "--strategy", "average",
                "--epochs", "3", "--batch-size", "1", "--lr", lr, "--device", "cpu"]

    with open(tmp_path / "stderr.txt", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "mtkd_cache", *args(killed)], env=subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=log)
        checkpoint = killed / "checkpoint.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] < 2 and not (killed / "report.json").exists()
    checkpoint_bytes = checkpoint.read_bytes()

    # Another configuration in that run directory is refused, and the checkpoint is left alone.
    _assert_user_error(runner.invoke(app, args(killed, lr="2e-3")), "another configuration")
    assert checkpoint.read_bytes() == checkpoint_bytes

    resumed = runner.invoke(app, args(killed))
    assert resumed.exit_code == 0, resumed.output
    uninterrupted = runner.invoke(app, args(straight))
    assert uninterrupted.exit_code == 0, uninterrupted.output

    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2
    a, b = load_file(killed / "student" / "model.safetensors"), load_file(straight / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _history(killed) == _history(straight) and len(_history(killed)) == 3
    for key in ("accuracy", "macro_f1", "mcc", "per_class_accuracy", "confusion_matrix", "median_diff", "best_epoch"):
        assert _report(killed)[key] == _report(straight)[key], key
    assert not [p.name for p in killed.rglob(".tmp-*")]
    assert not [p.name for p in killed.iterdir() if p.name.endswith((".partial", ".previous"))]


def test_a_refused_run_leaves_the_run_directory_untouched(env, tmp_path):
    run_dir = shutil.copytree(env["root"] / "run-expert", tmp_path / "run")
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = runner.invoke(app, distill_args(env["cache"], run_dir, BILSTM_STUDENT, "--strategy", "average",
                                             "--epochs", "1", tokenizer=env["tokenizer"]))
    _assert_user_error(result, "another configuration")
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert [name for name in before if before[name] != after[name]] == []


# ---------------------------------------------------------------------------------------------- finetune


def test_finetune_cli_writes_a_student_that_build_accepts_as_a_teacher(env, tmp_path):
    data, run = env["assets"]["data"], tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "--dataset", str(data), "--model", BERT_STUDENT, "--tokenizer",
                                 env["tokenizer"], "--out", str(run), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert (run / "student" / "model.safetensors").is_file() and len(_history(run)) == 1
    report = _report(run)
    built = runner.invoke(app, ["build", "--dataset", str(data), "--teacher", f"ft={run / 'student'}",
                                "--out", str(tmp_path / "cache"), "--splits", "test"])
    assert built.exit_code == 0, built.output
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "cache"), "--json"]).stdout)
    assert [t["name"] for t in info["teachers"]] == ["ft"] and info["label_names"] == list(LABELS)
    cache = open_cache(tmp_path / "cache")
    cached = ref_metrics(cache.inputs("test").labels.tolist(), cache.teacher_outputs("test").preds[:, 0].tolist(),
                         len(LABELS))
    assert cached["confusion"] == report["confusion_matrix"]


# ------------------------------------------------------------------------------------------------ select


def _followed_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for teacher in TEACHERS:
        match = re.search(rf"[│|]\s*{teacher}\s*[│|]\s*([\d,]+)\s*[│|]", stdout)
        assert match, stdout
        counts[teacher] = int(match.group(1).replace(",", ""))
    return counts


@pytest.mark.parametrize("strategy", ["expert", "camkd"])
def test_select_writes_weights_and_prints_who_taught(env, tmp_path, strategy):
    out = tmp_path / "selection.parquet"
    result = runner.invoke(app, ["select", str(env["cache"]), "--strategy", strategy, "--out", str(out)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = len(open_cache(env["cache"]).inputs("train").labels)
    table = pq.read_table(out)
    assert table.column_names == ["sample_id", "weights"]
    assert table.schema.field("sample_id").type == pa.int64()
    assert table.schema.field("weights").type == pa.list_(pa.float32(), len(TEACHERS))
    assert json.loads(table.schema.metadata[b"teachers"]) == list(TEACHERS)
    assert table.column("sample_id").to_pylist() == list(range(rows))
    weights = np.array(table.column("weights").to_pylist(), dtype=np.float32)
    assert weights.shape == (rows, len(TEACHERS))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)

    mean_weights = {t: float(m.group(1)) for t in TEACHERS
                    for m in [re.search(rf"[│|]\s*{t}\s*[│|].*?([\d.]+)\s*[│|]\s*$", result.stdout, re.M)]}
    assert mean_weights == pytest.approx(dict(zip(TEACHERS, weights.mean(axis=0))), abs=5e-4)
    if strategy == "camkd":  # a mixture: the argmax of its weights is not who taught, so no row count is shown
        assert "followed" not in result.stdout
    else:
        followed = _followed_counts(result.stdout)
        assert sum(followed.values()) == rows
        assert followed == {t: int((weights.argmax(axis=1) == n).sum()) for n, t in enumerate(TEACHERS)}
    fell_back = re.search(r"fell back to M on ([\d,]+) of ([\d,]+) rows", result.stdout)
    if strategy == "expert":
        assert fell_back and int(fell_back.group(2)) == rows
        assert set(np.unique(weights)) <= {0.0, 1.0}
        # Same split, teachers and expert split as the distill run in the fixture.
        assert int(fell_back.group(1)) == _report(env["root"] / "run-expert")["fallbacks"]
        assert followed == _report(env["root"] / "run-expert")["followed"]
    else:
        assert fell_back is None


# ----------------------------------------------------------------------------------------------- experts


def test_experts_json_teacher_subsets_and_the_stored_table(env):
    cache_dir = env["cache"]
    cache = open_cache(cache_dir)
    result = runner.invoke(app, ["experts", str(cache_dir), "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert {"per_class_accuracy", "overall_accuracy", "experts", "fallback"} <= table.keys()
    assert set(table["per_class_accuracy"]) == set(TEACHERS) and set(table["experts"]) == set(LABELS)
    labels = cache.inputs("test").labels.tolist()
    preds = cache.teacher_outputs("test").preds
    for n, teacher in enumerate(TEACHERS):
        expected = ref_metrics(labels, preds[:, n].tolist(), len(LABELS))
        assert table["per_class_accuracy"][teacher] == dict(zip(LABELS, expected["per_class"]))
        assert table["overall_accuracy"][teacher] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert table["fallback"] == max(TEACHERS, key=lambda t: (table["overall_accuracy"][t], -TEACHERS.index(t)))
    stored = expert_table_path(cache_dir, "test", TEACHERS)
    assert stored.parent == cache_dir / "experts" and stored.is_file()
    assert json.loads(stored.read_text())["experts"] == table["experts"]

    subset = runner.invoke(app, ["experts", str(cache_dir), "--json", "--teachers", "distil", "--split", "validation"])
    assert subset.exit_code == 0, subset.output
    only = json.loads(subset.stdout)
    assert list(only["per_class_accuracy"]) == ["distil"] and list(only["overall_accuracy"]) == ["distil"]
    assert set(only["experts"].values()) == {"distil"} and only["fallback"] == "distil"
    assert (cache_dir / "experts" / "validation--distil.json").is_file()

    shown = runner.invoke(app, ["experts", str(cache_dir)], terminal_width=200)
    assert shown.exit_code == 0 and "politics" in shown.stdout and f"M = {table['fallback']}" in shown.stdout


# ------------------------------------------------------------------------------------------------ report


def test_report_compares_runs(env, tmp_path):
    runs = [env["root"] / "run-expert", env["root"] / "run-average"]
    result = runner.invoke(app, ["report", *map(str, runs), "--out", str(tmp_path / "cmp")], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    assert lines[0].startswith("| run | strategy | accuracy") and lines[1].startswith("|---")
    rows = [line.split("|")[1:-1] for line in lines[2:] if line.strip()]
    assert [[cell.strip() for cell in row[:3]] for row in rows] == [
        [run.name, _report(run)["config"]["strategy"], f"{_report(run)['accuracy']:.4f}"] for run in runs]
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--strategy", "oracle"], ["--strategy must be one of", "oracle"]),
    (["--alpha", "1.5"], ["--alpha must be between 0 and 1"]),
    (["--temperature", "0"], ["--temperature must be positive"]),
    (["--teachers", "bert,ghost"], ["--teachers bert,ghost"]),
    (["--eval-split", "dev"], ["--eval-split dev"]),
    (["--epochs", "0"], ["--epochs must be at least 1"]),
    (["--epochs", "1", "--warmup-epochs", "2"], ["--warmup-epochs must be between 0 and --epochs"]),
])
def test_distill_user_errors(env, tmp_path, extra, fragments):
    args = distill_args(env["cache"], tmp_path / "run", BILSTM_STUDENT, *extra, tokenizer=env["tokenizer"])
    _assert_user_error(runner.invoke(app, args), *fragments)
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.parametrize(("student", "tokenizer", "fragments"), [
    ("bert:layers=1", None, ["needs --tokenizer"]),
    ("bert:layerz=2", "teacher", ["unknown option 'layerz=2'"]),
    ("bilstm:embed=many", "teacher", ["embed must be an integer"]),
])
def test_distill_student_errors(env, tmp_path, student, tokenizer, fragments):
    args = distill_args(env["cache"], tmp_path / "run", student, tokenizer=env["tokenizer"] if tokenizer else None)
    _assert_user_error(runner.invoke(app, args), *fragments)


def test_distill_on_a_directory_that_is_not_a_cache(env, tmp_path):
    (tmp_path / "notacache").mkdir()
    args = distill_args(tmp_path / "notacache", tmp_path / "run", BILSTM_STUDENT, tokenizer=env["tokenizer"])
    _assert_user_error(runner.invoke(app, args), "not a committed cache")


def test_report_on_a_directory_without_report_json(env, tmp_path):
    _assert_user_error(runner.invoke(app, ["report", str(env["root"] / "run-expert"), str(tmp_path)]),
                       "has no report.json")


def test_select_and_experts_user_errors(env, tmp_path):
    _assert_user_error(runner.invoke(app, ["select", str(env["cache"]), "--strategy", "oracle", "--out",
                                           str(tmp_path / "s.parquet")]), "--strategy must be one of")
    _assert_user_error(runner.invoke(app, ["select", str(env["cache"]), "--strategy", "expert", "--split", "dev",
                                           "--out", str(tmp_path / "s.parquet")]), "--split dev")
    _assert_user_error(runner.invoke(app, ["experts", str(env["cache"]), "--teachers", "ghost"]), "--teachers ghost")
    _assert_user_error(runner.invoke(app, ["experts", str(env["cache"]), "--split", "dev"]), "split 'dev'")
    assert not (tmp_path / "s.parquet").exists()


# ------------------------------------------------------------------------------------------ --config FILE


def _run_config(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "run.json").read_text()).items() if k not in ("out", "fingerprint")}


def test_distill_options_from_a_toml_or_yaml_file_with_flags_overriding(env, tmp_path):
    (tmp_path / "run.toml").write_text(f'student = "{BILSTM_STUDENT}"\ntokenizer = "{env["tokenizer"]}"\n'
                                       'strategy = "average"\nepochs = 1\nlr = 1e-3\ndevice = "cpu"\n'
                                       'expert-split = "validation"\nteachers = "bert,distil"\n')
    (tmp_path / "run.yaml").write_text(f'student: "{BILSTM_STUDENT}"\ntokenizer: {env["tokenizer"]}\n'
                                       'strategy: average\nepochs: 1\nlr: 0.001\ndevice: cpu\n'
                                       'expert_split: validation\nteachers: bert,distil\n')
    results = {name: runner.invoke(app, ["distill", str(env["cache"]), "--out", str(tmp_path / name), "--config",
                                         str(tmp_path / f"run.{name}")]) for name in ("toml", "yaml")}
    for result in results.values():
        assert result.exit_code == 0, result.output
    from_toml = _run_config(tmp_path / "toml")
    assert from_toml == _run_config(tmp_path / "yaml")
    assert (from_toml["strategy"], from_toml["train"]["epochs"], from_toml["train"]["learning_rate"],
            from_toml["expert_split"], from_toml["teachers"]) == ("average", 1, 1e-3, "validation", ["bert", "distil"])

    overridden = runner.invoke(app, ["distill", str(env["cache"]), "--out", str(tmp_path / "flag"), "--config",
                                     str(tmp_path / "run.toml"), "--strategy", "best", "--seed", "3"])
    assert overridden.exit_code == 0, overridden.output
    chosen = _run_config(tmp_path / "flag")
    assert (chosen["strategy"], chosen["train"]["seed"], chosen["train"]["epochs"]) == ("best", 3, 1)


def test_a_config_file_key_the_command_does_not_take_is_refused(env, tmp_path):
    (tmp_path / "bad.toml").write_text('alfa = 0.5\nepochs = 1\n')
    result = runner.invoke(app, distill_args(env["cache"], tmp_path / "run", BILSTM_STUDENT, "--config",
                                             str(tmp_path / "bad.toml"), tokenizer=env["tokenizer"]))
    assert result.exit_code == 2 and "alfa" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_experts_select_and_report_read_a_config_file(env, tmp_path):
    (tmp_path / "experts.yaml").write_text("split: validation\nteachers: distil\nas_json: true\n")
    shown = runner.invoke(app, ["experts", str(env["cache"]), "--config", str(tmp_path / "experts.yaml")])
    assert shown.exit_code == 0, shown.output
    table = json.loads(shown.stdout)
    assert table["split"] == "validation" and list(table["overall_accuracy"]) == ["distil"]

    (tmp_path / "select.toml").write_text(f'strategy = "best"\nout = "{tmp_path / "s.parquet"}"\n')
    selected = runner.invoke(app, ["select", str(env["cache"]), "--config", str(tmp_path / "select.toml")])
    assert selected.exit_code == 0, selected.output
    assert pq.read_table(tmp_path / "s.parquet").schema.metadata[b"strategy"] == b"best"

    (tmp_path / "report.toml").write_text(f'out = "{tmp_path / "cmp"}"\n')
    compared = runner.invoke(app, ["report", str(env["root"] / "run-expert"), "--config", str(tmp_path / "report.toml")])
    assert compared.exit_code == 0, compared.output
    assert (tmp_path / "cmp" / "comparison.md").read_text().startswith("| run | strategy |")


@pytest.mark.parametrize("command", ["distill", "sweep"])
def test_the_help_of_an_option_is_its_config_fields(command):
    from mtkd_cache.distillation.configs import DistillConfig
    from mtkd_cache.distillation.training import TrainConfig
    from mtkd_cache_cli.options import field_help

    shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.replace("│", " ").split())
    for config_class, name in ((DistillConfig, "selection_split"), (DistillConfig, "expert_split"),
                               (TrainConfig, "warmup_epochs")):
        assert field_help(config_class, name) in text, name


def test_experts_show_credible_intervals_the_confidence_rule_and_temperatures(env):
    cache_dir = env["cache"]
    shown = runner.invoke(app, ["experts", str(cache_dir), "--split", "validation", "--expert-confidence", "0.99",
                                "--calibrate"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "95% credible interval" in shown.stdout and re.search(r"\d\.\d{3} \[\d\.\d\d, \d\.\d\d\]", shown.stdout)
    assert "posterior probability ≥ 0.99" in shown.stdout and "temperature" in shown.stdout
    raw = json.loads(runner.invoke(app, ["experts", str(cache_dir), "--split", "validation", "--json",
                                         "--expert-confidence", "0.99"]).stdout)
    plain = json.loads(runner.invoke(app, ["experts", str(cache_dir), "--split", "validation", "--json"]).stdout)
    assert raw["confidence"] == 0.99 and "confidence" not in plain
    for teacher, classes in raw["credible_intervals_95"].items():
        for label, interval in classes.items():
            accuracy = raw["per_class_accuracy"][teacher][label]
            assert interval is None if accuracy is None else interval[0] <= accuracy <= interval[1]
    # a class's expert is either the plain table's or M
    assert all(raw["experts"][c] in (plain["experts"][c], plain["fallback"]) for c in plain["experts"])
