"""Does distillation pay? Per strategy, the test score over seeds and its paired difference to the
no-teacher floor (`--strategy none`: same student, seed, batches and schedule) and to `average`.

Two presets of teachers (both from the demo's BBC News split and its MiniLM encoder, offline):
  demo         the demo's cache (`make demo` writes demo-out/cache: three MiniLM teachers of different depth
               and truncation side).
  specialists  three teachers, each fine-tuned on a class-skewed subset of the demo's train split (all of
               its own classes, 5% of the others), so each is near-perfect on its classes and poor elsewhere:
               the setting the thesis motivates, and where its `expert` rule falls back to M on most rows
               (every specialist "claims" every row). Built once into OUT/specialists/.
The sweep runs every strategy and the floor over the seeds (experts chosen on validation, scored on test),
then prints and writes OUT/<preset>/quality.md (the paired table) and quality.png (score per seed and
strategy). Statistics: see mtkd_cache/report/quality.py.

Run (from the repository root, with the venv active):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python benchmarks/bench_quality.py --preset demo --seeds 0 1 2 3 4
    python benchmarks/bench_quality.py --preset specialists --seeds 0 1 2 --epochs 2
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.data.datasets import DatasetSpec
from mtkd_cache.demo.bbc import prepare as prepare_bbc
from mtkd_cache.demo.pipeline import LABELS, MAX_LENGTH, STUDENT, TEACHER_TRAINING, DemoTeacher, _base_model, encoder_path
from mtkd_cache.distillation.configs import DistillConfig, FinetuneConfig
from mtkd_cache.distillation.runs import finetune
from mtkd_cache.distillation.sweep import SweepConfig, SweepGrid, run_sweep
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.layout import RUN_REPORT, STUDENT_DIR
from mtkd_cache.report.leaderboard import CONFIG
from mtkd_cache.report.plots import legend_outside, new_axes, save_figure, score_limits
from mtkd_cache.report.quality import quality_markdown, quality_table
from mtkd_cache.runners.build import BuildConfig, RunnerConfig, build_cache
from mtkd_cache.runners.teachers import TeacherSpec

STRATEGIES = ("none", "expert", "expert-gold", "correct", "average", "expert-soft", "best")
SPECIALISTS = {"biz-ent": ("business", "entertainment"), "pol-spo": ("politics", "sports"), "tech": ("tech",)}
OTHERS_KEPT = 0.05


def specialists_cache(out: Path) -> Path:
    """Three class-skewed MiniLM teachers fine-tuned on the demo's train split, and their cache."""
    data_dir, cache_dir = out / "data", out / "cache"
    if not (data_dir / "test.csv").exists():
        prepare_bbc(data_dir, seed=0)
    with open(data_dir / "train.csv", newline="") as handle:
        train = list(csv.DictReader(handle))
    teachers = {}
    for position, (name, own) in enumerate(SPECIALISTS.items()):
        subset_dir = out / "subsets" / name
        if not (subset_dir / "test.csv").exists():
            rng = random.Random(position)
            rows = [r for r in train if r["label"] in own or rng.random() < OTHERS_KEPT]
            subset_dir.mkdir(parents=True, exist_ok=True)
            for split in ("validation", "test"):
                write_atomically(subset_dir / f"{split}.csv", (data_dir / f"{split}.csv").read_bytes())
            with open(subset_dir / "train.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(train[0]))
                writer.writeheader()
                writer.writerows(rows)
        base = _base_model(out / "teachers" / f"{name}-base", DemoTeacher(name, 6, "right", position))
        run = out / "teachers" / name
        if not (run / RUN_REPORT).exists():
            finetune(FinetuneConfig(dataset=DatasetSpec(source=str(subset_dir), label_names=LABELS), student=str(base),
                                    out=run, train=TEACHER_TRAINING))
        teachers[name] = run / STUDENT_DIR
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(data_dir), label_names=LABELS),
                            teachers=tuple(TeacherSpec(n, str(d)) for n, d in teachers.items()), out=cache_dir,
                            runner=RunnerConfig(device="cpu", max_length=MAX_LENGTH)), None)
    return cache_dir


def plot_scores(path: Path, frame, metric: str) -> None:
    """Every run's score, one column per strategy (points: seeds), the mean as a bar outline."""
    strategies = frame["strategy"].unique(maintain_order=True).to_list()
    figure, axis = new_axes(max(7, len(strategies) * 1.2 + 2), 4)
    for x, strategy in enumerate(strategies):
        scores = frame.filter(frame["strategy"] == strategy)[metric].to_list()
        axis.bar([x], [sum(scores) / len(scores)], 0.6, fill=False, edgecolor="gray")
        axis.scatter([x] * len(scores), scores, color="C0", zorder=3, label="one seed" if x == 0 else None)
    axis.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
    axis.set_ylim(*score_limits(frame[metric].to_list()))
    axis.set_xlabel("strategy")
    axis.set_ylabel(f"test {metric}")
    axis.set_title(f"{metric} per strategy over seeds (bar: mean)")
    legend_outside(axis)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("demo", "specialists"), default="demo")
    parser.add_argument("--cache", type=Path, help="demo preset: the cache (default demo-out/cache)")
    parser.add_argument("--out", type=Path, default=Path("bench-quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--student", default=STUDENT)
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()

    started = time.perf_counter()
    out = args.out / args.preset
    cache = specialists_cache(out) if args.preset == "specialists" else (args.cache or Path("demo-out/cache"))
    base = DistillConfig(cache=cache, student=args.student, tokenizer=str(encoder_path()), out=out / "sweep",
                         expert_split="validation", eval_split="test",
                         train=TrainConfig(epochs=args.epochs, batch_size=16, learning_rate=1e-3, max_length=MAX_LENGTH))
    grid = SweepGrid(strategies=tuple(args.strategies), alphas=(args.alpha,), temperatures=(args.temperature,),
                     seeds=tuple(args.seeds))
    result = run_sweep(SweepConfig(base=base, grid=grid, metric=args.metric))
    table = quality_table(result.leaderboard, args.metric, CONFIG)
    lines = [f"# Quality: preset {args.preset}, {len(args.seeds)} seeds, {args.epochs} epochs, student {args.student}",
             "", f"load average during the run: {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - started:.0f} s", ""]
    lines += quality_markdown(table, args.metric)
    write_atomically(out / "quality.md", "\n".join(lines) + "\n", durable=False)
    plot_scores(out / "quality.png", result.leaderboard.sort("strategy"), args.metric)
    print("\n".join(lines))
    print(f"\nwrote {out / 'quality.md'} and {out / 'quality.png'}")


if __name__ == "__main__":
    main()
