"""`build` and `distill` in one process vs under `torchrun --nproc-per-node 2`, same machine, same work.

  build:   one MiniLM-L6 teacher (all-MiniLM-L6-v2 body, 5-label head) over BBC text pieces, max length 128,
           into a fresh cache; rows/s = rows / wall time of the command (imports and set-up included,
           as a user waits for them). 1 process with all cores vs 2 ranks with cores / 2 threads each.
  distill: the demo's cache and student (`make demo` first), 1 epoch, batch 16, max length 64;
           seconds of the training loop as the report records it.
Both are checked for equal results: the build's logits bit for bit, distill's accuracy within 0.03.

On a CPU the ranks share the same cores, so 2 ranks can at best match one process using them all;
the script measures that overhead (process group, duplicated tokenization, gradient all-reduce). On
GPUs each rank brings its own device and the expected scaling is near-linear for build (no
communication but one barrier) and for distill while the per-step compute dwarfs the gradient
all-reduce (student parameters x 4 bytes per step over NVLink/PCIe).

Run (from the repository root, with the venv active):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python benchmarks/bench_torchrun.py                 # 1,000 texts
    python benchmarks/bench_torchrun.py --rows 400 --skip-distill
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

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_build import prepare_assets  # noqa: E402  (the build benchmark's data and teacher)

from mtkd_cache import open_cache  # noqa: E402


def timed(command: list[str], threads: int) -> float:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                       OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-torchrun-"))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path("demo-out/cache"))
    parser.add_argument("--tokenizer", default="demo-out/teachers/head6/student")
    parser.add_argument("--skip-distill", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    single = [sys.executable, "-m", "mtkd_cache"]
    ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mtkd_cache"]
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")

    prepare_assets(work, args.rows)
    data, teacher = work / "data", work / "teacher"
    build = ["build", "--dataset", str(data), "--teacher", f"minilm={teacher}", "--max-length", "128",
             "--device", "cpu", "--shard-rows", "128"]
    one = timed([*single, *build, "--out", str(work / "one")], cores)
    two = timed([*ranks, *build, "--out", str(work / "two")], max(1, cores // 2))
    same = np.array_equal(open_cache(work / "one").teacher_outputs("train").logits.view(np.uint16),
                          open_cache(work / "two").teacher_outputs("train").logits.view(np.uint16))
    print(f"{cores} cores; build of {args.rows} rows (one MiniLM-L6 teacher)")
    print(f"  1 process  : {args.rows / one:7.1f} rows/s ({one:.1f} s)")
    print(f"  2 ranks    : {args.rows / two:7.1f} rows/s ({two:.1f} s)  ratio {one / two:.2f}x  logits identical: {same}")

    if args.skip_distill or not (args.cache / "manifest.json").exists():
        return
    distill = ["distill", str(args.cache), "--student", "bert:layers=2,hidden=128,heads=2,intermediate=512",
               "--tokenizer", args.tokenizer, "--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu",
               "--max-length", "64", "--expert-split", "validation"]
    timed([*single, *distill, "--out", str(work / "d1")], cores)
    timed([*ranks, *distill, "--out", str(work / "d2")], max(1, cores // 2))
    reports = [json.loads((work / d / "report.json").read_text()) for d in ("d1", "d2")]
    print(f"distill, 1 epoch of {open_cache(args.cache).manifest.splits['train'].rows} rows (training loop)")
    for name, report in zip(("1 process", "2 ranks"), reports):
        print(f"  {name:11}: {report['train_seconds']:6.1f} s  accuracy {report['accuracy']:.4f}")
    print(f"  ratio {reports[0]['train_seconds'] / reports[1]['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()
