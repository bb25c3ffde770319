"""A 12-run sweep vs 12 separate `distill` invocations, on the same cache, student and grid.

What it measures, all in this one run:
  (a) `mtkd-cache sweep` as one process: its wall time (imports included), the in-process sweep time it
      prints, and the sum of its runs' training-loop times (epochs + per-epoch selection scoring, as
      recorded in each report's train_seconds). Bar: sweep <= 1.10 x the sum of its training loops.
  (b) the same 12 grid points as 12 `mtkd-cache distill` processes, one after another. Bar: (a) >= 2x
      faster than (b).
Both start from a cache without saved student tokens (CACHE/student-inputs is cleared before each), so
each pays tokenization once: (b)'s later invocations reuse the tokens its first one saved, as they would
for a user. The grid: strategies expert, average, random, best x seeds 0, 1, 2, the whole teacher pool.

The default cache is the demo's (`make demo` writes demo-out/cache: BBC News, 3 MiniLM teachers); the
student is the demo's (`bert:layers=2,hidden=128,heads=2,intermediate=512` with the MiniLM tokenizer).

Run (from the repository root, with the venv active):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    make demo                                        # once, writes demo-out/
    python benchmarks/bench_sweep.py                 # 1 epoch per run
    python benchmarks/bench_sweep.py --student bilstm          # a student that trains fast on a CPU
    python benchmarks/bench_sweep.py --epochs 3 --sweep-only   # the sweep's overhead on longer runs
    python benchmarks/bench_sweep.py --epochs 2 --cache other-cache --tokenizer some/tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STRATEGIES = ("expert", "average", "random", "best")
SEEDS = (0, 1, 2)
STUDENT = "bert:layers=2,hidden=128,heads=2,intermediate=512"


def common_options(args) -> list[str]:
    return ["--student", args.student, "--tokenizer", args.tokenizer, "--epochs", str(args.epochs), "--batch-size", "16",
            "--lr", "1e-3", "--device", "cpu", "--expert-split", "validation", "--max-length", str(args.max_length)]


def run(command: list[str]) -> float:
    started = time.perf_counter()
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("demo-out/cache"))
    parser.add_argument("--tokenizer", default="demo-out/teachers/head6/student")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--student", default=STUDENT)
    parser.add_argument("--sweep-only", action="store_true", help="skip (b): measure the sweep's overhead alone")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    if not (args.cache / "manifest.json").exists():
        sys.exit(f"{args.cache} is not a cache; run `make demo` first or pass --cache.")
    cli = [sys.executable, "-m", "mtkd_cache"]
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    tokens = args.cache / "student-inputs"
    try:
        shutil.rmtree(tokens, ignore_errors=True)
        separate_wall = 0.0
        for strategy in STRATEGIES if not args.sweep_only else ():
            for seed in SEEDS:
                out = work / "separate" / f"{strategy}-{seed}"
                separate_wall += run([*cli, "distill", str(args.cache), "--out", str(out), "--strategy", strategy,
                                      "--seed", str(seed), *common_options(args)])
        separate_loops = sum(json.loads((d / "report.json").read_text())["train_seconds"]
                             for d in (work / "separate").glob("*"))

        shutil.rmtree(tokens, ignore_errors=True)
        grid = [option for s in STRATEGIES for option in ("--strategy", s)]
        grid += [option for s in SEEDS for option in ("--seed", str(s))]
        sweep_wall = run([*cli, "sweep", str(args.cache), "--out", str(work / "sweep"), *grid, *common_options(args)])
        runs = [json.loads(p.read_text()) for p in (work / "sweep" / "runs").glob("*/sweep_run.json")]
        sweep_loops = sum(r["train_seconds"] for r in runs)
        sweep_runs = sum(r["run_seconds"] for r in runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"cache {args.cache}, student {args.student}, {args.epochs} epoch(s), {len(runs)} runs, {os.cpu_count()} cores")
    print(f"{'':42} {'seconds':>9}")
    print(f"{'(a) sweep process, wall':42} {sweep_wall:9.1f}")
    print(f"{'    sum of its runs (set-up+loop+report)':42} {sweep_runs:9.1f}")
    print(f"{'    sum of its training loops':42} {sweep_loops:9.1f}")
    print(f"sweep wall / its training loops: {sweep_wall / sweep_loops:.3f}   (bar <= 1.10)")
    if not args.sweep_only:
        print(f"{'(b) 12 distill processes, wall':42} {separate_wall:9.1f}")
        print(f"{'    sum of their training loops':42} {separate_loops:9.1f}")
        print(f"12 distills / sweep:             {separate_wall / sweep_wall:.2f}x  (bar >= 2)")


if __name__ == "__main__":
    main()
