"""`benchmarks/gpu_check.py --smoke`: every path the GPU check runs (builds in two dtypes against the float32
reference, the ONNX backend, distill, a stopped-and-resumed distill, a 12-run sweep, torchrun build and
distill, a process group) on the CPU with a tiny teacher, so the script cannot rot between GPU runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~2 minutes on a quiet 2-core machine, 9 at load 12: many processes each import torch
def test_gpu_check_smoke_runs_every_path_and_prints_the_table(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--keep",
                           str(tmp_path / "work")], capture_output=True, text=True, env=environment, timeout=1400)
    assert done.returncode == 0, done.stderr[-3000:]
    table = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    for step in ("build torch float32", "build torch bfloat16", "build onnx auto", "distill (cpu, no amp)",
                 "distill resume", "sweep 12 runs, 1 at once", "sweep 12 runs, 2 at once", "torchrun build",
                 "torchrun distill", "process group"):
        assert step in table, f"{step} missing from:\n{done.stdout}"
    assert "argmax agrees on" in table["build torch bfloat16"]
    assert "history [0, 1]" in table["distill resume"]
    assert "gloo 1.0" in table["process group"]
    assert "wall / sum of loops" in table["sweep 12 runs, 1 at once"]
    assert "the throughput of one at a time" in table["sweep 12 runs, 2 at once"]
