"""ONNX: export (teachers and students) -> the onnx build backend and predict, against the torch backend.

Tolerance: onnxruntime's CPU kernels sum in another order than torch's, so float32 logits of these tiny
models differ by ~1e-7; 1e-4 absolute (the export parity check's default) leaves room for other CPUs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers.assets import LABELS, make_teacher
from helpers.cli import assert_user_error
from mtkd_cache import (
    BuildConfig,
    CacheMismatchError,
    DatasetSpec,
    RunnerConfig,
    TeacherError,
    TeacherSpec,
    build_cache,
    open_cache,
)
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.distillation.students import BILSTM_CONFIG, build_student
from mtkd_cache.hashing import sha256_files
from mtkd_cache.layout import MANIFEST_NAME
from mtkd_cache.runners.onnx_runner import open_session
from mtkd_cache.serve.export import ExportConfig, export_model
from mtkd_cache.serve.predict import display_names, load_classifiers, predict
from mtkd_cache_cli.app import app

TOLERANCE = 1e-4
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["the vote and the law", "a goal in the match of the season", "the chip", "",
         "the team and the coach " * 40]


def _export(source, out, **options):
    report = export_model(ExportConfig(model_dir=source, out=out, **options))
    assert report.ok and report.max_abs_diff < TOLERANCE, report
    return report


@pytest.fixture(scope="module")
def exported(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {name: _export(assets[name], root / name / "model.onnx").out for name in ("bert", "distil")}


def _build(assets, out, sources, backend="torch", **runner_options):
    return build_cache(BuildConfig(
        dataset=DatasetSpec(source=str(assets["data"])),
        teachers=tuple(TeacherSpec(name, str(source)) for name, source in sources.items()),
        out=out, shard_rows=16, logits_dtype="float32",
        runner=RunnerConfig(backend=backend, **runner_options),
    ))


@pytest.fixture(scope="module")
def caches(assets, exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    _build(assets, root / "torch", {name: assets[name] for name in exported})
    _build(assets, root / "onnx", exported, backend="onnx")
    return root / "torch", root / "onnx"


# ------------------------------------------------------------------------------------ export -> build


def test_onnx_backend_logits_match_the_torch_backend(caches):
    torch_cache, onnx_cache = open_cache(caches[0]), open_cache(caches[1])
    assert onnx_cache.teacher_names == torch_cache.teacher_names == ("bert", "distil")
    for split in ("train", "validation", "test"):
        expected, got = torch_cache.teacher_outputs(split), onnx_cache.teacher_outputs(split)
        np.testing.assert_allclose(got.logits, expected.logits, rtol=0, atol=TOLERANCE)
        assert np.array_equal(got.preds, expected.preds)


def test_manifest_records_the_onnx_teacher_identity_and_providers(caches, exported):
    manifest = load_manifest(caches[1])
    bert = manifest.teachers["bert"]
    assert (bert.backend, bert.dtype, bert.device, bert.providers) == ("onnx", "float32", "cpu", ["CPUExecutionProvider"])
    assert bert.weights_sha256 != load_manifest(caches[0]).teachers["bert"].weights_sha256
    assert bert.model_label_names == list(LABELS)
    assert manifest.teachers["distil"].label_mapping == [1, 2, 0]  # its own label order, mapped by name
    info = json.loads(runner.invoke(app, ["info", str(caches[1]), "--json"]).stdout)
    assert info["teachers"][0]["providers"] == ["CPUExecutionProvider"]


def test_torch_caches_keep_the_old_manifest_shape_and_old_manifests_load(caches):
    raw = json.loads((caches[0] / MANIFEST_NAME).read_text())
    assert "providers" not in raw["teachers"]["bert"]  # readable by the first release's reader
    assert load_manifest(caches[0]).teachers["bert"].providers == []


def test_resume_reuses_shards_on_any_provider_and_refuses_a_changed_file(assets, exported, caches, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(caches[1], out)
    manifest = load_manifest(out)  # as if built on a GPU machine (a hand edit would fail the manifest's digest)
    manifest.teachers["bert"].providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    manifest.save(out)
    again = _build(assets, out, exported, backend="onnx")
    assert again.shards_written == 0 and again.shards_reused > 0  # providers are recorded, not compared

    changed = _export(make_teacher(tmp_path / "other", "bert", seed=9), tmp_path / "bert2" / "model.onnx").out
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        _build(assets, out, {"bert": changed}, backend="onnx")


def test_onnx_identity_is_the_file_hash(exported, caches):
    from mtkd_cache.runners.teachers import resolve_teacher

    resolved = resolve_teacher(TeacherSpec("bert", str(exported["bert"])), LABELS)
    assert resolved.model_file == exported["bert"].resolve() and resolved.file_dtype == "float32"
    assert resolved.weights_sha256 == load_manifest(caches[1]).teachers["bert"].weights_sha256
    assert resolved.weights_sha256 == sha256_files(exported["bert"].parent, ["model.onnx"])
    moved = exported["bert"].parent / "copy.onnx"
    shutil.copy(exported["bert"], moved)
    try:
        assert resolve_teacher(TeacherSpec("b", str(moved)), LABELS).weights_sha256 != resolved.weights_sha256
    finally:
        moved.unlink()


# ------------------------------------------------------------------------------------ CUDA asked for


def test_cuda_without_the_provider_is_a_one_line_error(assets, exported, tmp_path):
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={exported['bert']}",
                                 "--backend", "onnx", "--device", "cuda", "--out", str(tmp_path / "c")])
    assert_user_error(result, "--device cuda", "CUDA provider", "onnxruntime-gpu", one_sentence=True)
    assert not (tmp_path / "c").exists()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_session_that_silently_fell_back_to_cpu_is_refused(exported):
    # The CPU wheel accepts a CUDA provider request and quietly runs on the CPU: exactly what must not pass.
    with pytest.raises(TeacherError, match="did not start its CUDAExecutionProvider"):
        open_session(exported["bert"], torch.device("cuda"))


# ------------------------------------------------------------------------------------ students


@pytest.mark.parametrize("spec", ["bert:layers=1,hidden=32,heads=2", "bilstm:embed=8,hidden=8,layers=2,dense=8"])
def test_exported_students_predict_like_the_saved_torch_student(assets, tmp_path, spec):
    torch.manual_seed(0)
    model, tokenizer, kind = build_student(spec, LABELS, str(assets["bert"]))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)  # random init is near-uniform; make the classes differ
    model.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    report = _export(tmp_path / "student", tmp_path / "served" / "model.onnx")
    assert report.kind == kind and report.label_names == LABELS

    saved, onnx = load_classifiers([tmp_path / "student", report.out])
    assert (saved.runtime, onnx.runtime) == ("torch", "onnxruntime")
    encoded = saved.tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    batch = {n: encoded[n].astype(np.int64) for n in saved.input_names}
    np.testing.assert_allclose(onnx.logits(batch), saved.logits(batch), rtol=0, atol=TOLERANCE)
    for a, b in zip(predict(saved, TEXTS, 64), predict(onnx, TEXTS, 64)):
        assert a.label == b.label and abs(a.probability - b.probability) < TOLERANCE


def test_bilstm_saved_without_label_names_needs_them(assets, tmp_path):
    model, tokenizer, _ = build_student("bilstm:embed=8,hidden=8", LABELS, str(assets["bert"]))
    model.save_pretrained(tmp_path / "old")
    tokenizer.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / BILSTM_CONFIG).read_text())
    del config["label_names"]  # as saved before the config carried them
    (tmp_path / "old" / BILSTM_CONFIG).write_text(json.dumps(config))
    out = tmp_path / "o" / "model.onnx"
    assert_user_error(runner.invoke(app, ["export", str(tmp_path / "old"), "--out", str(out)]), "--label-names", one_sentence=True)
    result = runner.invoke(app, ["export", str(tmp_path / "old"), "--out", str(out), "--label-names", "a,b,c"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "labels: a, b, c" in result.stdout


# ------------------------------------------------------------------------------------ predict


def test_predict_table_and_json(assets, exported, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the chip and the data\n\n a vote \n")
    result = runner.invoke(app, ["predict", str(assets["bert"]), str(exported["bert"]), "--text", "a goal",
                                 "--file", str(texts), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [row["text"] for row in document["texts"]] == ["a goal", "the chip and the data", "a vote"]
    names = list(document["models"])
    assert [document["models"][n]["runtime"] for n in names] == ["torch", "onnxruntime"]
    for row in document["texts"]:
        torch_says, onnx_says = (row["predictions"][n] for n in names)
        assert torch_says["label"] == onnx_says["label"] in LABELS
        assert abs(torch_says["probability"] - onnx_says["probability"]) < TOLERANCE
    table = runner.invoke(app, ["predict", str(assets["bert"]), str(exported["bert"]), "--text", "a goal"],
                          terminal_width=200)
    assert table.exit_code == 0 and "onnxruntime" in table.stdout and "agree" in table.stdout


def test_display_names_tell_models_apart(tmp_path):
    from pathlib import Path

    assert display_names([Path("runs/a/student"), Path("runs/b/student"), Path("t/bert")]) == \
        ["a/student", "b/student", "bert"]
    assert display_names([Path("onnx/bert/model.onnx"), Path("bert")]) == ["bert/model.onnx", "bert"]


# ------------------------------------------------------------------------------------ user errors


def _onnx_dir_with(tmp_path, exported, tokenizer=True, strip_labels=False):
    import onnx

    directory = tmp_path / "m"
    directory.mkdir()
    if tokenizer:
        for path in exported["bert"].parent.iterdir():
            if path.name != "model.onnx":
                shutil.copy(path, directory / path.name)
    model = onnx.load(str(exported["bert"]))
    if strip_labels:
        del model.metadata_props[:]
    onnx.save(model, str(directory / "model.onnx"))
    return directory / "model.onnx"


def _predict_error(path):
    return runner.invoke(app, ["predict", str(path), "--text", "a goal"])


def _build_error(assets, path, tmp_path, backend="onnx"):
    return runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={path}",
                               "--backend", backend, "--out", str(tmp_path / "c")])


@pytest.mark.parametrize("damage", ["no-tokenizer", "no-labels", "corrupt", "truncated", "missing"])
def test_bad_onnx_files_are_one_line_errors(assets, exported, tmp_path, damage):
    if damage == "no-tokenizer":
        path, fragments = _onnx_dir_with(tmp_path, exported, tokenizer=False), ["no tokenizer files beside"]
    elif damage == "no-labels":
        path, fragments = _onnx_dir_with(tmp_path, exported, strip_labels=True), ["names no labels", "config.json"]
    elif damage == "missing":
        path, fragments = tmp_path / "nothing.onnx", ["does not exist", "mtkd-cache export"]
    else:
        path = _onnx_dir_with(tmp_path, exported)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x08\xff\xff" + bytes(range(256)) * 4)
        fragments = ["ONNX"]
    assert_user_error(_predict_error(path), *fragments, one_sentence=True)
    assert_user_error(_build_error(assets, path, tmp_path), *fragments, one_sentence=True)
    assert not (tmp_path / "c").exists()


def test_label_names_from_a_config_json_beside_the_file(assets, exported, tmp_path):
    path = _onnx_dir_with(tmp_path, exported, strip_labels=True)
    shutil.copy(assets["bert"] / "config.json", path.parent / "config.json")  # how optimum lays out its exports
    result = runner.invoke(app, ["predict", str(path), "--text", "a goal", "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("source", "fragments"), [
    ("missing", ["does not exist"]),
    ("empty", ["holds no model", "config.json"]),
])
def test_export_of_something_that_is_no_model(tmp_path, source, fragments):
    directory = tmp_path / source
    if source == "empty":
        directory.mkdir()
        (directory / "notes.txt").write_text("hello")
    assert_user_error(runner.invoke(app, ["export", str(directory), "--out", str(tmp_path / "m.onnx")]), *fragments, one_sentence=True)
    assert_user_error(runner.invoke(app, ["predict", str(directory), "--text", "a"]), *fragments, one_sentence=True)


def test_backend_and_source_must_agree(assets, exported, tmp_path):
    assert_user_error(_build_error(assets, assets["bert"], tmp_path, backend="onnx"), "runs .onnx files",
                      "mtkd-cache export", one_sentence=True)
    assert_user_error(_build_error(assets, exported["bert"], tmp_path, backend="torch"), "--backend onnx", one_sentence=True)
    result = runner.invoke(app, ["build", "--dataset", str(assets["data"]), "--teacher", f"bert={exported['bert']}",
                                 "--backend", "onnx", "--dtype", "bfloat16", "--out", str(tmp_path / "c")])
    assert_user_error(result, "exported in float32", one_sentence=True)


def test_predict_needs_texts(assets):
    assert_user_error(runner.invoke(app, ["predict", str(assets["bert"])]), "--text", one_sentence=True)


def test_predict_options_from_a_config_file(assets, tmp_path):
    shutil.copytree(assets["bert"], tmp_path / "copy")  # an ensemble needs two models of one label order
    (tmp_path / "predict.yaml").write_text("text: [a goal, a vote]\nensemble: true\nmax_length: 16\n")
    result = runner.invoke(app, ["predict", str(assets["bert"]), str(tmp_path / "copy"), "--config",
                                 str(tmp_path / "predict.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [row["text"] for row in document["texts"]] == ["a goal", "a vote"]
    assert {"ensemble: vote", "ensemble: mean"} <= set(document["texts"][0]["predictions"])
    (tmp_path / "bad.toml").write_text("opset = 17\n")  # an export option
    refused = runner.invoke(app, ["predict", str(assets["bert"]), "--config", str(tmp_path / "bad.toml")])
    assert refused.exit_code == 2 and "opset" in refused.output


@pytest.mark.slow
def test_the_dynamo_exporter_gives_the_same_logits(assets, tmp_path):
    report = _export(assets["distil"], tmp_path / "d" / "model.onnx", dynamo=True)  # ~10 s: torch.export is slow
    assert report.input_names == ("input_ids", "attention_mask") and report.label_names == ("tech", "politics", "sports")


def test_the_io_binding_path_gives_the_plain_run_logits(exported):
    from mtkd_cache.runners.onnx_runner import OnnxTeacher

    teacher = OnnxTeacher("bert", exported["bert"], torch.device("cpu"))
    encoded = teacher.tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    batch = {n: encoded[n].astype(np.int64) for n in ("input_ids", "attention_mask")}  # token_type_ids filled in
    plain = teacher.logits(batch)
    teacher.io_binding = ("cpu", 0)  # what CUDA uses, bound to the CPU: the same calls, testable without a GPU
    np.testing.assert_array_equal(teacher.logits(batch), plain)
    assert plain.dtype == np.float32 and plain.shape == (len(TEXTS), 3)


# ------------------------------------------------------------------------------------ the runner seam


def test_both_backends_are_teacher_runners_with_the_same_logits_for_one_padded_batch(assets, exported):
    """runners/base.py's seam, through make_runner only: one padded batch in, float32 [rows, labels] out."""
    from mtkd_cache.data.batching import pad_rows, tokenize_rows
    from mtkd_cache.runners.base import TeacherRunner, make_runner, resolve_runtime
    from mtkd_cache.runners.teachers import resolve_teacher

    members = [name for name in TeacherRunner.__annotations__] + ["logits"]
    outputs = {}
    for backend, source in (("torch", assets["bert"]), ("onnx", exported["bert"])):
        config = RunnerConfig(backend=backend, device="cpu", dtype="float32", max_length=32)
        device, dtype = resolve_runtime(config)
        teacher = resolve_teacher(TeacherSpec("bert", str(source)), LABELS)
        runner_ = make_runner(teacher, config, device, dtype, batch_tokens=256)
        assert [m for m in members if not hasattr(runner_, m)] == [], backend
        tokens = tokenize_rows(runner_.tokenizer, TEXTS, None, config.max_length)
        outputs[backend] = runner_.logits(pad_rows(tokens, np.arange(len(TEXTS)), runner_.pad_id, runner_.pad_left))
    assert outputs["torch"].shape == outputs["onnx"].shape == (len(TEXTS), len(LABELS))
    assert outputs["torch"].dtype == outputs["onnx"].dtype == np.float32
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], atol=TOLERANCE, rtol=0)


def test_export_refuses_to_overwrite_what_is_not_its_own(assets, exported, tmp_path):
    foreign = tmp_path / "notes" / "model.onnx"
    foreign.parent.mkdir()
    foreign.write_text("someone's notes")
    result = runner.invoke(app, ["export", str(assets["bert"]), "--out", str(foreign)])
    assert_user_error(result, "is not an ONNX export of mtkd-cache", one_sentence=True)
    assert foreign.read_text() == "someone's notes"
    # Beside another model, the export's tokenizer files would replace that model's.
    other = shutil.copytree(assets["distil"], tmp_path / "distil")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    result = runner.invoke(app, ["export", str(assets["bert"]), "--out", str(other / "model.onnx")])
    assert_user_error(result, "holds another model", one_sentence=True)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    # An earlier export of ours is replaced, and a model may be exported into its own directory.
    again = shutil.copytree(exported["bert"].parent, tmp_path / "again")
    assert runner.invoke(app, ["export", str(assets["bert"]), "--out", str(again / "model.onnx")]).exit_code == 0
    own = shutil.copytree(assets["bert"], tmp_path / "own")
    assert runner.invoke(app, ["export", str(own), "--out", str(own / "model.onnx")]).exit_code == 0
