"""build -> distill (library) on a cache whose teachers are deleted: every strategy, every student kind, and a
report whose numbers are recomputed here from the saved student and the cached predictions, with formulas
written independently of mtkd_cache.report.evaluation."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers.assets import LABELS, make_teacher
from helpers.reference import TEACHERS, build_teacherless_cache, ref_metrics
from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache
from mtkd_cache.distillation.runs import DistillConfig, FinetuneConfig, distill, finetune
from mtkd_cache.distillation.selection import select_teachers
from mtkd_cache.distillation.strategies import STRATEGIES, StrategyConfig
from mtkd_cache.distillation.students import load_saved_student
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.report.evaluation import compute_metrics

ALL_STRATEGIES = ("expert", "average", "random", "best", "camkd", "mtbert", "noisy", "expert-soft", "expert-gold",
                  "correct", "none")
REPORT_KEYS = {"accuracy", "macro_f1", "mcc", "per_class_accuracy", "median_diff", "followed", "fallbacks",
               "confusion_matrix"}
def student_specs(assets, hf_checkpoint: Path) -> dict[str, tuple[str, str | None]]:
    """Student kind -> (--student, --tokenizer)."""
    return {"bert": ("bert:layers=1,hidden=32,heads=2", str(assets["bert"])),
            "bilstm": ("bilstm:embed=16,hidden=16", str(assets["bert"])),
            "hf": (str(hf_checkpoint), None)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    cache = build_teacherless_cache(assets, root)
    hf_checkpoint = make_teacher(root / "hf-student", "bert", seed=7)  # a checkpoint directory used as a student
    return {"root": root, "cache": cache, "students": student_specs(assets, hf_checkpoint), "assets": assets}


def make_config(env, out: Path, student="bert", strategy="expert", epochs=1, seed=0, **train) -> DistillConfig:
    spec, tokenizer = env["students"][student]
    return DistillConfig(cache=env["cache"], student=spec, tokenizer=tokenizer, out=out,
                         strategy=StrategyConfig(strategy),
                         train=TrainConfig(epochs=epochs, learning_rate=train.pop("learning_rate", 1e-3), seed=seed,
                                           device="cpu", **train))


@pytest.fixture(scope="module")
def runs(env):
    """Memoized distill runs shared by the tests of this module: key -> RunResult."""
    done = {}

    def run(key: str, **config):
        if key not in done:
            done[key] = distill(make_config(env, env["root"] / "runs" / key, **config))
        return done[key]

    return run


# The shared runs: every strategy with the bert-spec student; every student kind with `expert`.
def strategy_run(runs, strategy):
    return runs(f"strategy-{strategy}", student="bert", strategy=strategy)


def student_run(runs, kind):
    if kind == "bert":
        return strategy_run(runs, "expert")
    if kind == "hf":  # two epochs, the first a plain fine-tuning warm-up epoch
        return runs("student-hf", student="hf", strategy="expert", epochs=2, warmup_epochs=1)
    return runs(f"student-{kind}", student=kind, strategy="expert")


# ----------------------------------------------------------------------------------- independent metrics


def student_predictions(student_dir: Path, texts: list[str]) -> list[int]:
    """Load the saved student and classify one row at a time (no padding, no package batching)."""
    model, tokenizer = load_saved_student(student_dir)
    model.eval()
    accepted = inspect.signature(model.forward).parameters
    preds = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
            logits = model(**{k: v for k, v in encoded.items() if k in accepted}).logits
            preds.append(int(logits[0].argmax()))
    return preds


def ref_expert_choice(train_preds: np.ndarray, experts: dict, fallback: str) -> tuple[list[str], int]:
    """The thesis rule, row by row: follow the single teacher that predicts a class it is the expert of, else M."""
    chosen, fallbacks = [], 0
    for row in train_preds:
        claimants = [t for n, t in enumerate(TEACHERS) if experts[LABELS[int(row[n])]] == t]
        if len(claimants) == 1:
            chosen.append(claimants[0])
        else:
            chosen.append(fallback)
            fallbacks += 1
    return chosen, fallbacks


def check_run(result, cache_dir: Path, epochs: int, strategy: str) -> dict:
    run_dir, report = result.run_dir, result.report
    for name in ("run.json", "metrics.jsonl", "report.json", "report.md", "per_class_diff.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "per_class_diff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{strategy} →" in (run_dir / "report.md").read_text()
    config = json.loads((run_dir / "run.json").read_text())
    assert config["strategy"] == strategy and config["teachers"] == list(TEACHERS) and config["fingerprint"]

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))  # counted from 1, as on screen
    assert all(math.isfinite(h["train_loss"]) and 0 <= h["selection_score"] <= 1 for h in history)

    saved = json.loads((run_dir / "report.json").read_text())
    assert saved == report.to_json()  # the file is the returned report
    assert REPORT_KEYS <= saved.keys()

    cache = open_cache(cache_dir)
    inputs = cache.inputs("test")
    labels = inputs.labels.tolist()
    preds = student_predictions(run_dir / "student", inputs.texts)
    expected = ref_metrics(labels, preds, len(LABELS))
    assert saved["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert saved["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-12)
    assert saved["mcc"] == pytest.approx(expected["mcc"], abs=1e-9)
    assert saved["confusion_matrix"] == expected["confusion"]

    per_class = saved["per_class_accuracy"]
    assert set(per_class) == {"student", *TEACHERS}
    assert per_class["student"] == dict(zip(LABELS, expected["per_class"]))
    teacher_preds = cache.teacher_outputs("test").preds
    for n, teacher in enumerate(TEACHERS):
        teacher_expected = ref_metrics(labels, teacher_preds[:, n].tolist(), len(LABELS))["per_class"]
        assert per_class[teacher] == dict(zip(LABELS, teacher_expected))
        assert all(v is None or isinstance(v, float) for v in per_class[teacher].values())
        differences = [per_class["student"][c] - per_class[teacher][c] for c in LABELS
                       if per_class["student"][c] is not None and per_class[teacher][c] is not None]
        assert saved["median_diff"][teacher] == pytest.approx(statistics.median(differences), abs=1e-12)

    train_rows = len(cache.inputs("train").labels)
    assert set(saved["mean_weight"]) == set(TEACHERS)
    if strategy in ("average", "camkd", "mtbert", "expert-soft", "correct", "none"):  # mixtures: no "followed"
        assert saved["followed"] is None
        if strategy == "average":
            assert saved["mean_weight"] == pytest.approx({t: 1 / len(TEACHERS) for t in TEACHERS})
        if strategy == "none":
            assert set(saved["mean_weight"].values()) == {0.0} and config["alpha"] == 1.0
        return saved
    assert set(saved["followed"]) == set(TEACHERS) and sum(saved["followed"].values()) == train_rows
    assert saved["mean_weight"] == pytest.approx({t: n / train_rows for t, n in saved["followed"].items()})
    if strategy == "expert":
        chosen, fallbacks = ref_expert_choice(cache.teacher_outputs("train").preds, saved["experts"]["experts"],
                                              saved["experts"]["fallback"])
        assert saved["fallbacks"] == fallbacks
        assert saved["followed"] == {t: chosen.count(t) for t in TEACHERS}
    elif strategy != "expert-gold":
        assert saved["fallbacks"] is None
    if strategy in ("best", "noisy"):
        assert saved["followed"][saved["experts"]["fallback"]] == train_rows
    return saved


# ----------------------------------------------------------------------------------------------- tests


def test_the_strategy_list_is_complete():
    assert set(ALL_STRATEGIES) == set(STRATEGIES)


def test_reference_metrics_agree_with_the_package_on_random_predictions():
    """compute_metrics against the formulas above, on random data with unlabeled rows and absent classes."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        num_labels = int(rng.integers(2, 6))
        size = int(rng.integers(1, 60))
        labels = rng.integers(-1, num_labels, size)
        labels[0] = rng.integers(0, num_labels)  # at least one labeled row
        preds = rng.integers(0, max(1, num_labels - trial % 2), size)  # odd trials never predict the last class
        got = compute_metrics(preds, labels, num_labels)
        expected = ref_metrics(labels.tolist(), preds.tolist(), num_labels)
        assert got.accuracy == pytest.approx(expected["accuracy"], abs=1e-12)
        assert got.macro_f1 == pytest.approx(expected["macro_f1"], abs=1e-12)
        assert got.mcc == pytest.approx(expected["mcc"], abs=1e-9)
        assert got.per_class_accuracy == pytest.approx(expected["per_class"], abs=1e-12)
        assert got.confusion_matrix == expected["confusion"]


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_every_strategy_distils_and_reports_from_the_cache_alone(env, runs, strategy):
    result = strategy_run(runs, strategy)
    check_run(result, env["cache"], epochs=1, strategy=strategy)
    assert result.train.best_epoch == 0 and not result.train.stopped_early
    assert any("leak" in w for w in result.warnings) == (strategy in ("expert", "best", "noisy", "expert-soft",
                                                                      "expert-gold", "correct"))


@pytest.mark.parametrize("kind", ["bert", "bilstm", "hf"])
def test_every_student_kind_distils_and_reports(env, runs, kind):
    result = student_run(runs, kind)
    check_run(result, env["cache"], epochs=2 if kind == "hf" else 1, strategy="expert")
    student_dir = result.run_dir / "student"
    assert (student_dir / ("bilstm.pt" if kind == "bilstm" else "model.safetensors")).is_file()
    assert json.loads((result.run_dir / "run.json").read_text())["student_kind"] == (
        "bilstm" if kind == "bilstm" else "hf")


def test_warmup_epoch_is_plain_finetuning_then_distillation(runs):
    result = student_run(runs, "hf")
    phases = [json.loads(line)["phase"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["finetune", "distill"]
    assert [r.phase for r in result.train.history] == phases


def test_hf_student_loads_in_a_transformers_pipeline_with_the_label_names(env, runs):
    from transformers import pipeline

    result = student_run(runs, "hf")
    classifier = pipeline("text-classification", model=str(result.run_dir / "student"))
    inputs = open_cache(env["cache"]).inputs("test")
    answers = classifier(inputs.texts)
    assert {a["label"] for a in answers} <= set(LABELS)
    accuracy = sum(a["label"] == LABELS[y] for a, y in zip(answers, inputs.labels)) / len(answers)
    assert accuracy == pytest.approx(result.report.accuracy, abs=1e-12)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    student = run_dir / "student"
    if (student / "bilstm.pt").exists():
        return torch.load(student / "bilstm.pt", weights_only=True)
    return load_file(student / "model.safetensors")


def _comparable(report: dict) -> dict:
    keys = ("accuracy", "macro_f1", "mcc", "per_class_accuracy", "median_diff", "confusion_matrix", "followed",
            "fallbacks", "best_epoch")
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in report["history"]]
    return {**{k: report[k] for k in keys}, "history": history}


def _assert_same_weights(first: Path, second: Path) -> None:
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("kind", [
    "hf",
    "bert",
])
def test_same_config_twice_gives_identical_reports_and_bit_identical_students(env, runs, kind):
    first = student_run(runs, kind)
    torch.rand(1000)  # unrelated work between the runs moves the global RNG; a seeded run must not care
    config = dataclasses.replace(make_config(env, env["root"] / "runs" / "unused", student=kind),
                                 out=env["root"] / "runs" / f"again-{kind}")
    if kind == "hf":
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2, warmup_epochs=1))
    second = distill(config)
    assert _comparable(second.report.to_json()) == _comparable(first.report.to_json())
    _assert_same_weights(first.run_dir, second.run_dir)


def test_another_seed_changes_the_random_strategy(env, runs):
    seed0 = runs("random-hf-seed0", student="hf", strategy="random")
    seed1 = runs("random-hf-seed1", student="hf", strategy="random", seed=1)
    a, b = _weights(seed0.run_dir), _weights(seed1.run_dir)
    assert any(not torch.equal(a[name], b[name]) for name in a)
    draws = {seed: select_teachers(env["cache"], "train", StrategyConfig("random"), seed=seed).weights
             for seed in (0, 1)}
    assert not np.array_equal(draws[0], draws[1])
    assert np.array_equal(draws[0], select_teachers(env["cache"], "train", StrategyConfig("random"), seed=0).weights)
    for weights in draws.values():  # one-hot rows
        assert np.array_equal(weights.sum(axis=1), np.ones(len(weights), np.float32))


def test_patience_stops_when_the_selection_score_does_not_improve(env, runs):
    # A learning rate too small to move any float32 weight: every epoch scores exactly the same, and equal is not better.
    result = runs("patience", student="bilstm", strategy="average", epochs=3, learning_rate=1e-12, patience=1)
    scores = [r.selection_score for r in result.train.history]
    assert len(scores) == 2 < 3 and scores[0] == scores[1]
    assert result.train.stopped_early and result.train.best_epoch == 0
    assert len((result.run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert len(result.report.history) == 2


def test_finetuned_student_is_accepted_as_a_teacher_by_build(env, tmp_path):
    assets = env["assets"]
    result = finetune(FinetuneConfig(dataset=DatasetSpec(source=str(assets["data"])),
                                     student="bert:layers=1,hidden=32,heads=2", tokenizer=str(assets["bert"]),
                                     out=tmp_path / "ft", train=TrainConfig(epochs=1, learning_rate=1e-3, device="cpu")))
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert {"accuracy", "macro_f1", "mcc", "per_class_accuracy", "confusion_matrix"} <= report.keys()
    assert len((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) == 1
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"]), splits=("test",)),
                            teachers=(TeacherSpec("ft", str(result.run_dir / "student")),), out=tmp_path / "cache"))
    cache = open_cache(tmp_path / "cache")
    assert cache.teacher_names == ("ft",) and cache.label_names == LABELS
    labels = cache.inputs("test").labels.tolist()
    cached = ref_metrics(labels, cache.teacher_outputs("test").preds[:, 0].tolist(), len(LABELS))
    # The cached predictions of the fine-tuned model are the predictions finetune reported on.
    assert cached["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert cached["confusion"] == report["confusion_matrix"]
