"""A causal-LM build SIGKILLed mid-teacher resumes to a cache bit-identical to an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from helpers.assets import write_dataset
from helpers.causal_lms import SHARED_FIRST_TOKEN, make_causal_lm, write_prompt
from helpers.faults import assert_ids_exact, assert_same_contents, listed_paths, subprocess_env
from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache
from mtkd_cache.runners.prompts import PromptConfig, parse_verbalizers

pytestmark = [pytest.mark.fault, pytest.mark.usefixtures("one_torch_thread")]


def _argv(data, teacher, prompt, out):
    return [sys.executable, "-m", "mtkd_cache", "build", "--dataset", str(data), "--out", str(out), "--shard-rows", "8",
            "--teacher", f"lm={teacher}", "--backend", "causal-lm", "--prompt", str(prompt), "--verbalizers",
            SHARED_FIRST_TOKEN, "--shots", "2", "--max-length", "512"]


def test_sigkill_mid_teacher_then_resume_is_bit_identical(tmp_path):
    data = write_dataset(tmp_path / "data", sizes=(("train", 24), ("validation", 8), ("test", 16)))
    teacher = make_causal_lm(tmp_path / "llama", "llama", seed=7)
    prompt = write_prompt(tmp_path / "prompt.txt")
    reference = tmp_path / "reference"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(data)), teachers=(TeacherSpec("lm", str(teacher)),),
                            out=reference, runner=RunnerConfig(backend="causal-lm", max_length=512), shard_rows=8,
                            prompt=PromptConfig(template=prompt, verbalizers=parse_verbalizers(SHARED_FIRST_TOKEN),
                                                shots=2)))
    out = tmp_path / "killed"
    # Killed at the 6th batch: past the second shard (so the first is committed), before the last one ends.
    env = {**subprocess_env("teacher_batch:6"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(_argv(data, teacher, prompt, out), env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    committed = {p for p in listed_paths(out) if p.startswith("outputs/")}
    assert 1 <= len(committed) < 6, committed  # some shards of the teacher were committed, not all

    resumed = subprocess.run(_argv(data, teacher, prompt, out), env={**subprocess_env(), "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert committed <= listed_paths(out)
    assert_ids_exact(out)
    assert_same_contents(out, reference)
