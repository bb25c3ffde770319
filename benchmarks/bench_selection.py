"""Teacher selection speed: the vectorized `mtkd_cache.distillation.strategies.select` vs a per-sample Python loop.

What it measures: milliseconds to turn one batch of cached teacher outputs into per-sample teacher
weights (a `TeacherSignal`), B=256 samples, N=6 teachers, K=8 classes, for each of the 8 strategies:
  vectorized  `select(StrategyConfig(name), logits, preds, labels, table, generator)` from the package
  loop        the same formulas written here as a naive implementation: one Python iteration per sample,
              scalar arithmetic per teacher (`math`), torch only where the rule draws random numbers
              (`random`: one randint per sample; `noisy`: one randn [N, K] per sample). Two flavours of the
              one function: `lists` turns the inputs into Python lists once per call (inside the timing), the
              fastest naive loop; `tensors` runs the identical code on the tensors themselves, so every
              `preds[b][n]`, `logits[b][n][k]` is a 0-d tensor op: what a naive torch port does.
  vec 1 thr   the vectorized call again under torch.set_num_threads(1), to show what intra-op threading
              costs on tiny tensors when the other cores are busy (the default is every core).
Inputs are seeded random: logits ~ N(0, 2^2), preds = argmax of the logits, labels uniform with 10% set to
-1 (unlabeled, to exercise that branch); the expert table comes from `compute_expert_table` on a separate
random "expert split" (2,000 rows) and `mtkd_cache.distillation.session.expert_tensors`, as `distill` builds it.
The loop's weights are checked against the vectorized ones (deterministic strategies: max |difference|;
`random`/`noisy` draw differently, so only shapes and the one-hot/`best` weights are checked).
Timing: time.perf_counter around each call, median over the repetitions (200 vectorized, 20 `lists`, 5
`tensors` by default), all strategies measured in the same process: every ratio in the table comes from this one run.
Goals (from the issue): vectorized >= 100x faster than the loop and <= 0.3 ms per batch.

Run (from the repository root, with the venv active):
    python benchmarks/bench_selection.py            # 200 / 20 / 5 repetitions
    python benchmarks/bench_selection.py --quick    # 50 / 5 / 2 repetitions
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

from mtkd_cache.distillation.experts import compute_expert_table
from mtkd_cache.distillation.session import expert_tensors
from mtkd_cache.distillation.strategies import STOCHASTIC, STRATEGIES, Combine, StrategyConfig, TeacherSignal, select

B, N, K, SEED = 256, 6, 8, 0


def make_inputs(rows: int, generator: torch.Generator):
    logits = torch.randn(rows, N, K, generator=generator) * 2
    labels = torch.randint(K, (rows,), generator=generator)
    labels[torch.rand(rows, generator=generator) < 0.1] = -1
    return logits, logits.argmax(dim=2), labels


def _ce_row(row, label) -> list:
    """CE of every teacher of one sample against its gold label, one scalar at a time."""
    out = []
    for values in row:
        top = max(values)
        out.append(top + math.log(sum(math.exp(v - top) for v in values)) - values[label])
    return out


def naive_select(name: str, logits, preds, labels, table, generator, config: StrategyConfig,
                 as_lists: bool) -> TeacherSignal:
    """The per-sample loop over strategies.py's formulas; `as_lists` False runs it on 0-d tensors."""
    experts, fallback, accuracy = table.experts, table.fallback, table.per_class_accuracy
    rows_logits, rows_preds, rows_labels = logits, preds, labels
    if as_lists:
        experts, accuracy = experts.tolist(), accuracy.tolist()
        rows_logits, rows_preds, rows_labels = logits.tolist(), preds.tolist(), labels.tolist()
    num = len(rows_preds[0])
    weights, combine, noisy_rows = [], Combine.LOGITS, []
    for b in range(len(rows_preds)):
        p, y = rows_preds[b], rows_labels[b]
        w = [0.0] * num
        if name == "expert":
            claims = [n for n in range(num) if experts[p[n]] == n]
            w[claims[0] if len(claims) == 1 else fallback] = 1.0
        elif name == "average":
            w = [1.0 / num] * num
        elif name == "random":
            w[int(torch.randint(num, (1,), generator=generator))] = 1.0
        elif name in ("best", "noisy"):
            w[fallback] = 1.0
            if name == "noisy":
                noise = torch.randn((num, K), generator=generator) * config.noise_std
                noisy_rows.append(logits[b] + noise)
        elif name in ("camkd", "mtbert"):
            combine = Combine.LOSSES
            if y < 0:
                w = [1.0 / num] * num
            elif name == "mtbert":
                w = [1.0 / (1.0 + ce) for ce in _ce_row(rows_logits[b], y)]
            elif num == 1:
                w = [1.0]
            else:
                ce = _ce_row(rows_logits[b], y)
                top = max(ce)
                exps = [math.exp(c - top) for c in ce]
                w = [(1.0 - e / sum(exps)) / (num - 1) for e in exps]
        elif name == "expert-soft":
            combine = Combine.LOSSES
            trust = [accuracy[n][p[n]] ** config.gamma for n in range(num)]
            total = sum(trust)
            w = [t / total for t in trust] if total > 0 else [1.0 / num] * num
        else:
            raise ValueError(name)
        weights.append([float(x) for x in w])
    out_logits = torch.stack(noisy_rows) if noisy_rows else logits
    return TeacherSignal(torch.tensor(weights), combine, out_logits)


def time_ms(function, repetitions: int) -> float:
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 vectorized / 5 lists / 2 tensors repetitions")
    parser.add_argument("--reps", type=int, default=200, help="vectorized repetitions (default 200)")
    parser.add_argument("--loop-reps", type=int, default=20, help="`lists` loop repetitions (default 20)")
    parser.add_argument("--tensor-reps", type=int, default=5, help="`tensors` loop repetitions (default 5)")
    args = parser.parse_args()
    reps, loop_reps, tensor_reps = (50, 5, 2) if args.quick else (args.reps, args.loop_reps, args.tensor_reps)

    generator = torch.Generator().manual_seed(SEED)
    logits, preds, labels = make_inputs(B, generator)
    _, expert_preds, expert_labels = make_inputs(2000, generator)
    teachers, label_names = tuple(f"t{n}" for n in range(N)), tuple(f"c{k}" for k in range(K))
    table = expert_tensors(compute_expert_table(expert_preds.numpy(), expert_labels.numpy(), teachers,
                                                label_names, "expert-split"))
    threads = torch.get_num_threads()
    print(f"B={B} N={N} K={K}; experts per class {table.experts.tolist()}, fallback M = t{table.fallback}; "
          f"torch {torch.__version__}, {threads} threads on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"repetitions: {reps} vectorized (each thread setting), {loop_reps} loop/lists, {tensor_reps} loop/tensors; "
          f"median ms per batch of {B}; speed-up = loop ms / vectorized ms ({threads} threads)\n")
    header = (f"{'strategy':<12}{'vec ms':>8}{'vec 1 thr':>10}{'loop lists':>11}{'loop tensors':>13}"
              f"{'x lists':>9}{'x tensors':>10}{'<=0.3ms':>8}  check (vectorized vs loop weights)")
    print(header)
    print("-" * len(header))
    speedups = []
    for name in STRATEGIES:
        config = StrategyConfig(name=name)
        gens = [torch.Generator().manual_seed(1) for _ in range(3)]
        vectorized = lambda: select(config, logits, preds, labels, table, gens[0])  # noqa: E731
        lists = lambda: naive_select(name, logits, preds, labels, table, gens[1], config, True)  # noqa: E731
        tensors = lambda: naive_select(name, logits, preds, labels, table, gens[2], config, False)  # noqa: E731
        for _ in range(3):  # warm-up: first-call dispatch and allocator setup
            fast, slow = vectorized(), lists()
        slow_t = tensors()
        assert fast.weights.shape == slow.weights.shape == (B, N) and fast.logits.shape == slow.logits.shape
        assert fast.combine is slow.combine, name
        if name == "random":
            check = "n/a (own draws); one-hot ok" if bool((slow.weights.sum(1) == 1).all()) else "MISMATCH"
        else:
            difference = max((fast.weights - s.weights).abs().max().item() for s in (slow, slow_t))
            check = f"max|dw| {difference:.1e}" + (" (noise drawn differently)" if name == "noisy" else "")
            check += " MISMATCH" if difference > 1e-5 else ""
        fast_ms = time_ms(vectorized, reps)
        torch.set_num_threads(1)
        single_ms = time_ms(vectorized, reps)
        torch.set_num_threads(threads)
        lists_ms, tensors_ms = time_ms(lists, loop_reps), time_ms(tensors, tensor_reps)
        speedups.append((lists_ms / fast_ms, tensors_ms / fast_ms, lists_ms / single_ms, tensors_ms / single_ms))
        print(f"{name:<12}{fast_ms:8.3f}{single_ms:10.3f}{lists_ms:11.2f}{tensors_ms:13.1f}{lists_ms / fast_ms:8.0f}x"
              f"{tensors_ms / fast_ms:9.0f}x{'yes' if fast_ms <= 0.3 else 'NO':>8}  {check}")
    print("-" * len(header))
    for i, kind in enumerate(("lists", "tensors", "lists, vectorized 1 thread", "tensors, vectorized 1 thread")):
        values = [s[i] for s in speedups]
        print(f"speed-up vs loop/{kind}: min {min(values):.0f}x, geometric mean "
              f"{math.exp(np.mean(np.log(values))):.0f}x, >= 100x for {sum(v >= 100 for v in values)}/{len(values)}")
    print(f"stochastic strategies ({', '.join(sorted(STOCHASTIC))}) are re-drawn per epoch, the rest once per split; "
          f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
