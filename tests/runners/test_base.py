"""runners/base.py and build's configs: validation when a config is made, enums that take plain strings,
and a manifest that records the same strings as before the enums."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mtkd_cache import BuildConfig, ConfigError, DatasetSpec, RunnerConfig, TeacherSpec, build_cache
from mtkd_cache.cache.shards import LogitsDType
from mtkd_cache.devices import DType
from mtkd_cache.runners.base import Backend, default_batch_tokens
from mtkd_cache.runners.teachers import parse_teachers


def test_plain_strings_become_enum_members_and_still_compare_as_strings():
    config = RunnerConfig(backend="onnx", dtype="float32")
    assert config.backend is Backend.ONNX and config.dtype is DType.FLOAT32
    assert config.backend == "onnx" and f"{config.dtype}" == "float32"
    assert RunnerConfig(backend=Backend.TORCH) == RunnerConfig()


@pytest.mark.parametrize(("options", "message"), [
    ({"backend": "tensorrt"}, "--backend must be one of torch, onnx, causal-lm, openai, not 'tensorrt'."),
    ({"dtype": "int8"}, "--dtype must be one of auto, float32, float16, bfloat16, not 'int8'."),
    ({"device": "tpu"}, "--device must be one of auto, cpu, cuda (or cuda:N), not 'tpu'."),
    ({"device": "cuda:x"}, "--device must be one of"),
    ({"max_length": 1}, "--max-length must be at least 2, not 1."),
    ({"batch_tokens": 0}, "--batch-tokens must be positive, not 0."),
    ({"tensorrt": True}, "--tensorrt applies to --backend onnx only."),
])
def test_runner_config_refuses_bad_values_naming_the_flag(options, message):
    with pytest.raises(ConfigError) as raised:
        RunnerConfig(**options)
    assert str(raised.value).startswith(message)


def test_cuda_n_is_a_valid_spelling_even_where_there_is_no_gpu():
    assert RunnerConfig(device="cuda:1").device == "cuda:1"


def _build_config(**changes) -> BuildConfig:
    base = {"dataset": DatasetSpec("data"), "teachers": (TeacherSpec("a", "x"),), "out": Path("cache")}
    return BuildConfig(**{**base, **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"teachers": ()}, "give at least one --teacher"),
    ({"teachers": (TeacherSpec("a", "x"), TeacherSpec("a", "y"))}, "teacher name(s) a given twice"),
    ({"teachers": (TeacherSpec("a/b", "x"),)}, "may hold only letters"),
    ({"logits_dtype": "bfloat16"}, "--logits-dtype must be one of float16, float32, not 'bfloat16'."),
    ({"shard_rows": 0}, "--shard-rows must be positive"),
])
def test_build_config_refuses_bad_values_naming_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _build_config(**changes)


def test_lists_become_tuples_and_a_comma_string_is_refused():
    config = _build_config(teachers=[TeacherSpec("a", "x")], dataset=DatasetSpec("d", splits=["train", "test"]))
    assert config.teachers == (TeacherSpec("a", "x"),) and config.dataset.splits == ("train", "test")
    assert _build_config(out="c").out == Path("c") and _build_config(logits_dtype="float32").logits_dtype is LogitsDType.FLOAT32
    with pytest.raises(ConfigError, match="--splits must be a list of names, not the string 'train,test'"):
        DatasetSpec("d", splits="train,test")
    with pytest.raises(ConfigError, match="--label-names must name each of its values once"):
        DatasetSpec("d", label_names=("a", "a"))


def test_every_config_field_has_help():
    for config_class in (RunnerConfig, BuildConfig, DatasetSpec):
        missing = [f.name for f in dataclasses.fields(config_class) if not f.metadata.get("help")]
        assert missing in ([], ["dataset", "runner"]), (config_class.__name__, missing)


def test_parse_teachers_attaches_label_maps_and_refuses_one_for_nobody():
    teachers = parse_teachers(["a=./x", "b=./y"], ["b:POS=positive,NEG=negative"])
    assert teachers == (TeacherSpec("a", "./x"), TeacherSpec("b", "./y", (("POS", "positive"), ("NEG", "negative"))))
    with pytest.raises(ConfigError, match="names teacher\\(s\\) ghost but the teachers are a"):
        parse_teachers(["a=./x"], ["ghost:x=y"])


def test_default_batch_tokens_per_backend():
    import torch

    assert default_batch_tokens(Backend.TORCH, torch.device("cpu")) == 4096
    assert default_batch_tokens(Backend.ONNX, torch.device("cpu")) == 2048


def test_the_manifest_records_plain_strings(assets, tmp_path):
    build_cache(_build_config(dataset=DatasetSpec(str(assets["data"]), splits=("test",)), out=tmp_path / "c",
                              teachers=(TeacherSpec("bert", str(assets["bert"])),), logits_dtype=LogitsDType.FLOAT32,
                              runner=RunnerConfig(backend=Backend.TORCH, dtype=DType.FLOAT32)))
    raw = (tmp_path / "c" / "manifest.json").read_text()
    manifest = json.loads(raw)
    assert manifest["logits_dtype"] == "float32" and manifest["teachers"]["bert"]["backend"] == "torch"
    assert manifest["teachers"]["bert"]["dtype"] == "float32" and "Backend" not in raw and "DType" not in raw
