"""Every CUDA path of mtkd-cache in one command, timed, with one summary table (issue #17, README "GPU check").

On a CUDA machine (the default mode) it runs, in this order, in one temporary directory:
  build    a BERT-base-sized teacher (random init: speed does not depend on the weights; vocabulary 30,522,
           12 layers, 768 wide) over synthetic texts of 20-200 words (max length 128), in float32 (the
           reference), bfloat16 and float16; each cache's logits are compared with the float32 cache's
           (max |difference|, argmax agreement). rows/s and tokens/s are of the teacher stage (tokenization,
           forward passes and Parquet writes, as build_cache reports it); MFU = tokens/s x forward FLOPs per
           token (2 x non-embedding parameters + 4 x layers x mean length x hidden, from the config) / the
           H200's dense bf16 peak (790 TFLOP/s as measured there; fp32 rows are held to the same peak).
  onnx     the teacher exported to ONNX (`export_model`) and built with --backend onnx on onnxruntime's CUDA
           provider, when onnxruntime has it; otherwise one plain line says it does not and which it has.
  distill  the demo's 4.4M-parameter student (bert:layers=2,hidden=128,heads=2,intermediate=512) from the
           bf16 cache: AMP bfloat16; AMP float16 with the grad scaler (torch told the card has no bf16, the
           path a V100/T4 takes); then a resume: a 2-epoch run killed after epoch 1's checkpoint (the fault
           injector, RELIABILITY.md) and run again, which must resume at epoch 2. steps/s of the loop.
  sweep    12 runs (4 strategies x 3 seeds, 1 epoch) from one load of the cache, one at a time (wall vs the
           sum of the runs' training loops) and `--parallel 4` (2 with --smoke): throughput vs one at a time.
  torchrun `torch.distributed.run --nproc-per-node 1` of `build` and `distill` (rendezvous, rank 0 alone),
           plus an explicit process group on the device's backend (NCCL on CUDA, gloo on CPU) with one
           all-reduce: with one process mtkd-cache itself starts no group, so this is the NCCL check.
Memory: torch.cuda.max_memory_allocated per step (reset before each); on CPU the process's peak RSS.

`--smoke` runs every one of those paths on the CPU in seconds with a 2-layer, 64-wide teacher and a few
hundred rows (float16 is skipped: CPU has no float16 kernels; AMP is off on CPU), so CI keeps this script
working (tests/test_gpu_check_smoke.py). It needs polars and datasets (README, "GPU check": how to bring
them to a machine without a package index).

    python benchmarks/gpu_check.py            # CUDA machine, ~5 minutes on an H200
    python benchmarks/gpu_check.py --smoke    # CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from the source tree, installed or not

H200_PEAK_FLOPS = 790e12  # dense bf16, as measured on the H200 (issue #17)
STUDENT = "bert:layers=2,hidden=128,heads=2,intermediate=512"  # the demo's 4.4M-parameter student
LABELS = ("business", "entertainment", "politics", "sport", "tech")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclasses.dataclass
class Scale:
    rows: int  # training rows; validation and test get a tenth each
    vocab: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    words: tuple[int, int]  # words per text
    shard_rows: int
    batch_size: int


GPU = Scale(rows=60_000, vocab=30_522, layers=12, hidden=768, heads=12, intermediate=3072, words=(20, 200),
            shard_rows=8192, batch_size=64)
SMOKE = Scale(rows=240, vocab=400, layers=2, hidden=64, heads=2, intermediate=128, words=(3, 40), shard_rows=64,
              batch_size=16)


@dataclasses.dataclass
class Row:
    step: str
    seconds: float
    rows_s: float | None = None
    tokens_s: float | None = None
    mfu: float | None = None
    steps_s: float | None = None
    max_diff: float | None = None
    memory_gb: float | None = None
    note: str = ""


def write_assets(root: Path, scale: Scale) -> tuple[Path, Path]:
    """A CSV dataset of seeded synthetic texts and a random-init BERT teacher with a fast WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    rng = random.Random(0)
    words = [f"w{i}" for i in range(scale.vocab - len(SPECIALS))]
    data = root / "data"
    data.mkdir(parents=True)
    for split, count in (("train", scale.rows), ("validation", scale.rows // 10), ("test", scale.rows // 10)):
        with open(data / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for _ in range(count):
                label = rng.randrange(len(LABELS))
                # Topic words make the labels learnable, so a distilled student is checked for sense too.
                text = " ".join(words[(label * 37 + rng.randrange(60)) if rng.random() < 0.3 else rng.randrange(len(words))]
                                for _ in range(rng.randint(*scale.words)))
                writer.writerow([text, LABELS[label]])
    teacher = root / "teacher"
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(SPECIALS + words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=scale.vocab, hidden_size=scale.hidden, num_hidden_layers=scale.layers,
                        num_attention_heads=scale.heads, intermediate_size=scale.intermediate,
                        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                        label2id={name: i for i, name in enumerate(LABELS)})
    BertForSequenceClassification(config).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    return data, teacher


def forward_flops_per_token(teacher: Path, mean_length: float) -> float:
    """Dense matmul FLOPs of one token's forward pass: 2 per non-embedding weight, plus attention's
    QK^T and AV (4 x layers x length x hidden)."""
    config = json.loads((teacher / "config.json").read_text())
    hidden, layers, inner = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    weights_per_layer = 4 * hidden * hidden + 2 * hidden * inner
    return 2 * layers * weights_per_layer + 4 * layers * mean_length * hidden


class Device:
    """What differs between the GPU and the CPU smoke run: the device name, memory peaks, synchronisation."""

    def __init__(self, smoke: bool):
        import torch

        self.torch = torch
        self.cuda = not smoke
        if self.cuda and not torch.cuda.is_available():
            sys.exit(f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda}); "
                     "run with --smoke on a CPU machine.")
        self.name = "cuda" if self.cuda else "cpu"
        self.label = torch.cuda.get_device_name(0) if self.cuda else f"CPU ({os.cpu_count()} cores)"

    @contextlib.contextmanager
    def measured(self, row: Row):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        yield
        if self.cuda:
            self.torch.cuda.synchronize()
            row.memory_gb = self.torch.cuda.max_memory_allocated() / 1e9
        else:
            row.memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # peak RSS so far
        row.seconds = time.perf_counter() - started


def run_build(device: Device, data: Path, teacher: Path, out: Path, dtype: str, scale: Scale, backend: str = "torch",
              source: Path | None = None) -> tuple[Row, object]:
    from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache

    row = Row(f"build {backend} {dtype}", 0.0)
    config = BuildConfig(dataset=DatasetSpec(source=str(data)), out=out, shard_rows=scale.shard_rows,
                         teachers=(TeacherSpec(name="bert", source=str(source or teacher)),),
                         runner=RunnerConfig(backend=backend, device=device.name, dtype=dtype, max_length=128))
    with device.measured(row):
        report = build_cache(config)
    row.seconds = report.stage_seconds.get("teacher bert", row.seconds)  # the teacher stage alone
    return row, report


def fill_throughput(row: Row, rows: int, tokens: int, flops_per_token: float, device: Device) -> None:
    row.rows_s, row.tokens_s = rows / row.seconds, tokens / row.seconds
    if device.cuda:
        row.mfu = row.tokens_s * flops_per_token / H200_PEAK_FLOPS


def compare(reference, other) -> tuple[float, float]:
    """max |logits - reference logits| over every split, and the share of rows whose argmax agrees."""
    diffs, agree, total = [], 0, 0
    for split in reference.split_names:
        a = reference.teacher_outputs(split).logits.astype(np.float32)
        b = other.teacher_outputs(split).logits.astype(np.float32)
        diffs.append(float(np.abs(a - b).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0] * a.shape[1]
    return max(diffs), agree / total


def distill_config(cache: Path, teacher: Path, out: Path, scale: Scale, device: Device, epochs: int = 1, seed: int = 0,
                   strategy: str = "expert"):
    from mtkd_cache import DistillConfig, StrategyConfig, TrainConfig

    return DistillConfig(cache=cache, student=STUDENT, tokenizer=str(teacher), out=out, expert_split="validation",
                         strategy=StrategyConfig(strategy),
                         train=TrainConfig(epochs=epochs, batch_size=scale.batch_size, learning_rate=1e-3,
                                           max_length=128, device=device.name, seed=seed))


def run_distill(device: Device, config, rows: int, label: str, no_bf16: bool = False) -> tuple[Row, object]:
    from mtkd_cache import distill

    row = Row(label, 0.0)
    patch = mock.patch("torch.cuda.is_bf16_supported", return_value=False) if no_bf16 else contextlib.nullcontext()
    with patch, device.measured(row):
        result = distill(config)
    loop = result.report.train_seconds
    steps = math.ceil(rows / config.train.batch_size) * config.train.epochs
    row.steps_s, row.rows_s = steps / loop, rows * config.train.epochs / loop
    row.note = f"loop {loop:.1f} s, accuracy {result.report.accuracy:.3f}"
    return row, result


def run_resume(device: Device, config, rows: int) -> Row:
    """A 2-epoch distill stopped by the fault injector right after epoch 1's checkpoint (RELIABILITY.md), then
    the same call again, which must resume at epoch 2 rather than start over."""
    from mtkd_cache import distill
    from mtkd_cache._faults import InjectedFault

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2))
    row = Row("distill resume", 0.0)
    with device.measured(row):
        with mock.patch.dict(os.environ, {"MTKD_CACHE_FAULT": "epoch_checkpointed:1:raise"}):
            try:
                distill(config)
                sys.exit("the distill meant to stop after epoch 1 ran to the end")
            except InjectedFault:
                pass
        result = distill(config)
    epochs = [entry.epoch for entry in result.train.history]
    if epochs != [0, 1] or result.report.train_seconds <= 0:
        sys.exit(f"the resumed run's history has epochs {epochs}, not [0, 1]")
    steps = math.ceil(rows / config.train.batch_size)
    row.steps_s = steps / result.train.history[1].seconds
    row.note = f"stopped after epoch 1's checkpoint, resumed at epoch 2 (history {epochs})"
    return row


def run_sweep(device: Device, cache: Path, teacher: Path, out: Path, scale: Scale, parallel: int,
              one_at_a_time: float | None = None) -> Row:
    """The 12-run grid (4 strategies x 3 seeds, 1 epoch); with `parallel` > 1 its runs N at a time."""
    from mtkd_cache import SweepConfig, SweepGrid
    from mtkd_cache import run_sweep as sweep

    base = distill_config(cache, teacher, out, scale, device)
    config = SweepConfig(base=base, grid=SweepGrid(strategies=("expert", "average", "random", "best"), seeds=(0, 1, 2)),
                         parallel=parallel)
    row = Row(f"sweep 12 runs, {parallel} at once", 0.0)
    with device.measured(row):
        result = sweep(config)
    loops = sum(r.train_seconds for r in result.trained)
    if len(result.trained) != 12:
        sys.exit(f"the sweep trained {len(result.trained)} runs, not 12")
    row.rows_s = 12 * scale.rows / row.seconds
    row.note = f"wall / sum of loops {row.seconds / loops:.2f}x ({loops:.1f} s of loops)"
    if one_at_a_time is not None:
        row.note += f"; {one_at_a_time / row.seconds:.2f}x the throughput of one at a time"
        row.memory_gb = None  # the workers' GPU memory is their own; this process held none of it
    return row


def run_torchrun(device: Device, data: Path, teacher: Path, cache: Path, work: Path, scale: Scale) -> list[Row]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                "-m", "mtkd_cache"]
    commands = {
        "torchrun build": ["build", "--dataset", str(data), "--teacher", f"bert={teacher}", "--out", str(work / "tr-cache"),
                           "--device", device.name, "--max-length", "128", "--shard-rows", str(scale.shard_rows)],
        "torchrun distill": ["distill", str(cache), "--student", STUDENT, "--tokenizer", str(teacher), "--out",
                             str(work / "tr-run"), "--epochs", "1", "--batch-size", str(scale.batch_size), "--lr", "1e-3",
                             "--max-length", "128", "--device", device.name, "--expert-split", "validation"],
    }
    rows = []
    for step, arguments in commands.items():
        started = time.perf_counter()
        done = subprocess.run([*launcher, *arguments], env=environment, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{step} failed:\n{done.stderr[-3000:]}")
        rows.append(Row(step, time.perf_counter() - started, note="whole command, 1 rank (no process group)"))
    probe = ("import os, torch, torch.distributed as dist; "
             f"backend = {'nccl' if device.cuda else 'gloo'!r}; dist.init_process_group(backend); "
             f"x = torch.ones(1, device={'cuda:0' if device.cuda else 'cpu'!r}); dist.all_reduce(x); "
             "print(dist.get_backend(), float(x)); dist.destroy_process_group()")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "--no-python", sys.executable, "-c", probe],
                          env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the process-group check failed:\n{done.stderr[-3000:]}")
    rows.append(Row("process group", 0.0, note=f"{done.stdout.strip()} (backend, all-reduce of 1 over 1 rank)"))
    return rows


def print_table(rows: list[Row], device: Device, scale: Scale, started: float) -> None:
    def cell(value, spec):
        width = int(spec.split(".")[0])
        return f"{'-':>{width}}" if value is None else format(value, spec)

    print(f"\nmtkd-cache GPU check on {device.label}; teacher {scale.layers} layers x {scale.hidden}, "
          f"{scale.rows:,} train rows, max length 128; load average {os.getloadavg()[0]:.2f}; "
          f"total {time.perf_counter() - started:.0f} s")
    header = f"| {'step':<22} | {'s':>7} | {'rows/s':>9} | {'tokens/s':>10} | {'MFU':>6} | {'steps/s':>7} | " \
             f"{'max Δ vs fp32':>15} | {'mem GB':>6} | note"
    print(header)
    print("|" + "|".join("-" * len(part) for part in header.split("|")[1:]))
    for r in rows:
        print(f"| {r.step:<22} | {r.seconds:7.1f} | {cell(r.rows_s, '9.0f')} | {cell(r.tokens_s, '10.0f')} | "
              f"{'-' if r.mfu is None else f'{100 * r.mfu:.1f}%':>6} | "
              f"{cell(r.steps_s, '7.1f')} | {cell(r.max_diff, '15.2e')} | {cell(r.memory_gb, '6.2f')} | {r.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every path on the CPU with a tiny teacher, in seconds")
    parser.add_argument("--rows", type=int, help="training rows (default 60,000 on a GPU, 240 with --smoke)")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = parser.parse_args()
    scale = dataclasses.replace(SMOKE if args.smoke else GPU, **({"rows": args.rows} if args.rows else {}))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.keep or Path(tempfile.mkdtemp(prefix="mtkd-gpu-check-"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")  # before `datasets` loads: nothing under ~/.cache
    started = time.perf_counter()
    try:
        run_all(work, scale, Device(args.smoke), started)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run_all(work: Path, scale: Scale, device: Device, started: float) -> None:
    import onnxruntime
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mtkd_cache import open_cache

    hf_logging.set_verbosity_error()
    data, teacher = write_assets(work, scale)
    rows: list[Row] = []
    all_rows = scale.rows + 2 * (scale.rows // 10)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    texts = [line.split(",", 1)[0] for split in ("train", "validation", "test")
             for line in (data / f"{split}.csv").read_text().splitlines()[1:]]
    lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]])
    tokens, flops = int(lengths.sum()), forward_flops_per_token(teacher, float(lengths.mean()))

    caches = {}
    for dtype in ("float32", "bfloat16", "float16") if device.cuda else ("float32", "bfloat16"):
        row, _ = run_build(device, data, teacher, work / f"cache-{dtype}", dtype, scale)
        fill_throughput(row, all_rows, tokens, flops, device)
        caches[dtype] = open_cache(work / f"cache-{dtype}")
        if dtype != "float32":
            row.max_diff, agree = compare(caches["float32"], caches[dtype])
            row.note = f"argmax agrees on {agree:.2%}"
        rows.append(row)
    if not device.cuda:
        rows.append(Row("build torch float16", 0.0, note="skipped: CPU has no float16 kernels"))

    providers = onnxruntime.get_available_providers()
    wanted = "CUDAExecutionProvider" if device.cuda else "CPUExecutionProvider"
    if wanted in providers:
        from mtkd_cache import ExportConfig, export_model

        export = export_model(ExportConfig(model_dir=teacher, out=work / "teacher-onnx" / "model.onnx"))
        if not export.ok:
            sys.exit(f"ONNX export parity failed: max |torch - onnxruntime| {export.max_abs_diff:.2e}")
        row, _ = run_build(device, data, teacher, work / "cache-onnx", "auto", scale, backend="onnx", source=export.out)
        fill_throughput(row, all_rows, tokens, flops, device)
        row.max_diff, agree = compare(caches["float32"], open_cache(work / "cache-onnx"))
        row.note = f"{wanted}; argmax agrees on {agree:.2%}"
        rows.append(row)
    else:
        message = (f"onnxruntime {onnxruntime.__version__} has no {wanted} (it has {', '.join(providers)}): "
                   "the ONNX CUDA build was not run; install onnxruntime-gpu for it")
        print(message)
        rows.append(Row(f"build onnx {device.name}", 0.0, note="skipped: " + message))

    student_cache = work / ("cache-bfloat16" if device.cuda else "cache-float32")
    train_rows = scale.rows
    row, _ = run_distill(device, distill_config(student_cache, teacher, work / "run-bf16", scale, device), train_rows,
                         "distill amp bf16" if device.cuda else "distill (cpu, no amp)")
    rows.append(row)
    if device.cuda:
        row, _ = run_distill(device, distill_config(student_cache, teacher, work / "run-fp16", scale, device), train_rows,
                             "distill amp fp16+scaler", no_bf16=True)
        rows.append(row)
    rows.append(run_resume(device, distill_config(student_cache, teacher, work / "run-resume", scale, device),
                           train_rows))
    serial = run_sweep(device, student_cache, teacher, work / "sweep", scale, parallel=1)
    rows.append(serial)
    rows.append(run_sweep(device, student_cache, teacher, work / "sweep-parallel", scale, parallel=4 if device.cuda else 2,
                          one_at_a_time=serial.seconds))
    rows.extend(run_torchrun(device, data, teacher, student_cache, work, scale))
    print_table(rows, device, scale, started)


if __name__ == "__main__":
    sys.exit(main())
