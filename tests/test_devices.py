"""devices.py: spelling checked when a config is made, availability when it runs, never a silent CPU fallback."""

from __future__ import annotations

import pytest
import torch

from mtkd_cache import ConfigError
from mtkd_cache.devices import DType, check_device, resolve_device, resolve_dtype


@pytest.mark.parametrize("spelling", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_spellings_pass_without_looking_for_a_gpu(spelling):
    assert check_device(spelling) == spelling


@pytest.mark.parametrize("spelling", ["tpu", "cuda:", "cuda:x", "CPU", "", "gpu0"])
def test_other_spellings_are_refused_naming_the_flag(spelling):
    with pytest.raises(ConfigError, match=f"--device must be one of auto, cpu, cuda \\(or cuda:N\\), not '{spelling}'"):
        check_device(spelling)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_an_error_not_a_fallback():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available to torch"):
        resolve_device("cuda:0")


def test_dtype_accepts_the_member_or_its_string_and_refuses_fp16_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == resolve_dtype(DType.AUTO, cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
        resolve_dtype(DType.FLOAT16, cpu)
    with pytest.raises(ConfigError, match="--dtype must be one of auto, float32, float16, bfloat16, not 'int8'"):
        resolve_dtype("int8", cpu)


def test_choice_names_the_flag_and_every_member():
    assert DType.parse("float32", "--dtype") is DType.FLOAT32
    with pytest.raises(ConfigError, match="^--precision must be one of auto, float32, float16, bfloat16, not 'x'.$"):
        DType.parse("x", "--precision")
