"""Which student gives the best accuracy for its speed? The issue-15 goals, measured on the demo's data.

For each student kind of the demo — `bert` (2 layers, 128 wide, from scratch), `from-head6` (head6's layers
0 and 3) and `static` (model2vec table from head3) — the demo's `expert` run and its no-teacher floor are
repeated over seeds (same configs as the demo; seed 0 is the demo's own run, reused). Then, on the test
split: mean ± std accuracy per kind and role, the CPU frontier of the best teacher and the seed-0 students
(torch and onnxruntime, batch 1 and 32), and an int8 export of each seed-0 student against its fp32 graph.
Every ratio is against the best teacher measured in the same process, beside the load average.

Run (from the repository root, with the venv active; `mtkd-cache demo --out demo-out` first):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python benchmarks/bench_students.py --demo demo-out --seeds 0 1 2
    python benchmarks/bench_students.py --demo demo-out --per-class 100 --seeds 0   # after demo --per-class 100
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mtkd_cache import DatasetSpec
from mtkd_cache.demo import pipeline as demo
from mtkd_cache.distillation.runs import DistillConfig, FinetuneConfig, distill, finetune
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.layout import STUDENT_DIR
from mtkd_cache.report.frontier import FrontierPoint, Role, frontier_markdown, write_frontier
from mtkd_cache.serve.export import ExportConfig, export_model
from mtkd_cache.serve.speed import run_points, teacher_points


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def kinds(out: Path, suffix: str = "") -> dict[str, tuple[str, object, str | None]]:
    """kind -> (--student, training config, --tokenizer), exactly as the demo runs them."""
    head6 = out / "teachers" / f"head6{suffix}" / STUDENT_DIR
    return {"bert": (demo.STUDENT, demo.STUDENT_TRAINING, str(demo.encoder_path())),
            "from-head6": (f"from:{head6},layers={demo.TEACHER_INIT_LAYERS}", demo.TEACHER_INIT_TRAINING, None),
            "static": (f"static:{out / f'static-table{suffix}'}", demo.STATIC_TRAINING, None)}


def demo_run_dirs(out: Path, kind: str, suffix: str = "") -> tuple[Path, Path]:
    runs = out / f"runs{suffix}"
    if kind == "bert":
        return runs / demo.FAMILY_STRATEGY, runs / "no-teacher"
    return runs / f"{kind}-{demo.FAMILY_STRATEGY}", runs / f"{kind}-no-teacher"


def seed_runs(out: Path, work: Path, seeds: list[int], suffix: str) -> dict[tuple[str, str], list[tuple[Path, float]]]:
    """(kind, "student"|"floor") -> [(run dir, test accuracy)] over the seeds."""
    dataset = DatasetSpec(source=str(out / f"data{suffix}"), label_names=demo.LABELS)
    found: dict[tuple[str, str], list[tuple[Path, float]]] = {}
    for kind, (spec, training, tokenizer) in kinds(out, suffix).items():
        for seed in seeds:
            started = time.perf_counter()
            student_dir, floor_dir = demo_run_dirs(out, kind, suffix) if seed == 0 else (
                work / f"{kind}-{demo.FAMILY_STRATEGY}-s{seed}", work / f"{kind}-no-teacher-s{seed}")
            train = dataclasses.replace(training, seed=seed, device="cpu")
            distilled = distill(DistillConfig(cache=out / f"cache{suffix}", student=spec, tokenizer=tokenizer, out=student_dir,
                                              strategy=StrategyConfig(demo.FAMILY_STRATEGY), alpha=0.5,
                                              temperature=2.0, expert_split="validation", train=train)).report
            floor = finetune(FinetuneConfig(dataset=dataset, student=spec, tokenizer=tokenizer, out=floor_dir,
                                            train=train)).report
            found.setdefault((kind, "student"), []).append((student_dir, distilled.accuracy))
            found.setdefault((kind, "floor"), []).append((floor_dir, floor.accuracy))
            print(f"  {kind} seed {seed}: expert {distilled.accuracy:.4f}, no teacher {floor.accuracy:.4f} "
                  f"({time.perf_counter() - started:.0f} s, {load()})", flush=True)
    return found


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def int8_rows(points: list[FrontierPoint], runs: dict[str, Path]) -> list[str]:
    lines = ["| student | fp32 acc | int8 acc | drop (points) | agree | ORT fp32 ms b32 | int8 ms b32 | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for point in points:
        with tempfile.TemporaryDirectory() as scratch:
            report = export_model(ExportConfig(model_dir=runs[point.name] / STUDENT_DIR, out=Path(scratch) / "m.onnx",
                                               quantize="int8", max_drop=100.0))
        q = report.quantization
        lines.append(f"| {point.name} | {q.fp32_accuracy:.4f} | {q.int8_accuracy:.4f} | {q.drop:+.2f} | "
                     f"{q.agreement:.1%} | {q.fp32_ms[32]:.3f} | {q.int8_ms[32]:.3f} | "
                     f"{q.fp32_ms[32] / q.int8_ms[32]:.2f}x |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-students"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=None, help="The demo was run with this --per-class.")
    args = parser.parse_args()
    suffix = "" if args.per_class is None else f"-{args.per_class}"
    print(f"start: {load()}", flush=True)
    runs = seed_runs(args.demo, args.work, args.seeds, suffix)
    print(f"\n## Accuracy on test over seeds {args.seeds} (mean ± std, points)\n")
    print("| kind | distilled (expert) | no-teacher floor | Δ mean | beats the floor by more than the spread? |")
    print("|---|---|---|---|---|")
    for kind in kinds(args.demo, suffix):
        student = [a for _, a in runs[(kind, "student")]]
        floor = [a for _, a in runs[(kind, "floor")]]
        delta = 100 * (statistics.mean(student) - statistics.mean(floor))
        spread = 100 * max(statistics.stdev(student), statistics.stdev(floor)) if len(student) > 1 else float("nan")
        print(f"| {kind} | {mean_std(student)} | {mean_std(floor)} | {delta:+.2f} | "
              f"{'yes' if delta > spread else 'no'} (spread {spread:.2f}) |")
    print(f"\n## CPU frontier (seed 0; {load()})\n")
    seed0 = {f"{kind} {role}": runs[(kind, role)][0][0] for kind in kinds(args.demo, suffix)
             for role in ("student", "floor")}
    points = teacher_points([seed0["bert student"]], demo.MAX_LENGTH)
    students = run_points(list(seed0.values()), demo.MAX_LENGTH)
    points += students
    for line in frontier_markdown(points):
        print(line)
    write_frontier(args.work, points, f"Measured with {load()}.")
    print(f"\n## int8 ONNX vs fp32 ONNX (seed-0 distilled students; {load()})\n")
    by_name = {p.name: Path(seed0_dir) for p, seed0_dir in zip(students, seed0.values())}
    for line in int8_rows([p for p in students if p.role is Role.STUDENT], by_name):
        print(line)
    print(f"\nend: {load()}; frontier files in {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
