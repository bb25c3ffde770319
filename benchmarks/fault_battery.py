"""A randomized fault battery: kill every long command at a random moment, flip random bytes in a cache.

Not part of the test suite (it takes minutes and its moments are random); the suite's fault tests hit
fixed, dangerous instants instead. This one asks the question a user asks: whatever moment the machine
dies, does a re-run give exactly what an uninterrupted run gives, and is every damaged byte caught?

  kill     `build`, `distill`, `sweep`, `push`, `pull` as real `python -m mtkd_cache` processes, SIGKILLed after a
           uniformly random fraction of the command's uninterrupted wall time. After each kill the state on
           disk must be readable (a committed cache verifies; a destination holds its previous manifest or
           the complete new one), and the re-run must equal the uninterrupted reference: cached logits and
           sample ids bit for bit, the run report's scores and the student's weights, the sweep's leaderboard,
           the pushed and pulled caches' listed shards.
  flip     one random byte of a complete cache is changed — in the manifest (a quarter of the trials) or in a
           random shard (its header, data pages or footer); `verify` (or parsing the manifest) must name it.

Prints tried / held per class. Tiny random-init teachers (tests/helpers/assets.py), CPU, one thread:

    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python benchmarks/fault_battery.py                       # 6 kills per command, 200 flips
    python benchmarks/fault_battery.py --kills 2 --flips 50 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.assets import make_teacher, write_dataset  # noqa: E402  (the test suite's tiny assets)
from mtkd_cache import MtkdError, open_cache, verify_cache  # noqa: E402
from mtkd_cache.layout import MANIFEST_NAME  # noqa: E402

STUDENT = ["--student", "bilstm:embed=16,hidden=16", "--epochs", "3", "--lr", "1e-2", "--device", "cpu"]


def environment() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtkd_cache", *args]


def run(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def run_and_kill(argv: list[str], after: float) -> bool:
    """Start `argv`, SIGKILL it after `after` seconds; True when it was still running (a real kill)."""
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


# --- what "the same result" means for each command -------------------------------------------------------

def cache_contents(directory: Path) -> dict:
    cache = open_cache(directory)
    contents = {}
    for split in cache.split_names:
        inputs = cache.inputs(split)
        outputs = cache.teacher_outputs(split)
        contents[split] = (inputs.sample_ids.tolist(), list(inputs.texts), outputs.teachers,
                           outputs.logits.view(np.uint16 if outputs.logits.dtype == np.float16 else np.uint32).tobytes(),
                           outputs.preds.tobytes())
    return contents


def run_contents(directory: Path) -> dict:
    report = json.loads((directory / "report.json").read_text())
    scores = {key: report[key] for key in ("accuracy", "macro_f1", "mcc", "confusion_matrix", "best_epoch")}
    return {"scores": scores, "losses": [h["train_loss"] for h in report["history"]],
            "weights": _tensor_bytes(directory / "student" / "bilstm.pt")}


def _tensor_bytes(path: Path) -> bytes:
    import torch

    state = torch.load(path, weights_only=True)
    return b"".join(state[name].numpy().tobytes() for name in sorted(state))


def sweep_contents(directory: Path) -> list:
    board = (directory / "leaderboard.md").read_text().splitlines()
    return [line.split("|")[1:5] for line in board if line.startswith("|")]  # run, accuracy, macro-F1, MCC


def committed_state_is_readable(directory: Path) -> bool:
    """After a kill: no manifest yet, or a manifest whose every listed shard verifies."""
    if not (directory / MANIFEST_NAME).exists():
        return True
    try:
        return verify_cache(directory).ok
    except MtkdError:
        return False


# --- the battery -------------------------------------------------------------------------------------------

def kill_campaign(name: str, rng: random.Random, trials: int, reference_seconds: float, setup, argv, check,
                  results: Counter) -> None:
    for _ in range(trials):
        target = setup()
        killed = run_and_kill(argv(target), rng.uniform(0.05, 1.0) * reference_seconds)
        readable = check_readable(name, target)
        run(argv(target))
        results[(name, "tried")] += 1
        results[(name, "killed mid-run")] += killed
        results[(name, "held")] += readable and check(target)


def check_readable(name: str, target: Path) -> bool:
    if name in ("build", "pull"):
        return committed_state_is_readable(target)
    return True  # a run directory's files are checked by the re-run's equality


def flip_campaign(reference: Path, rng: random.Random, flips: int, work: Path, results: Counter) -> None:
    shards = sorted(p.relative_to(reference) for p in reference.rglob("*.parquet"))
    for trial in range(flips):
        cache = work / f"flip-{trial}"
        shutil.copytree(reference, cache)
        # A quarter of the flips hit the manifest: one file, but the one every reader trusts first.
        victim = cache / (MANIFEST_NAME if rng.random() < 0.25 else rng.choice(shards))
        data = bytearray(victim.read_bytes())
        position = rng.randrange(len(data))
        data[position] = (data[position] + rng.randrange(1, 256)) % 256
        victim.write_bytes(bytes(data))
        kind = "flip manifest" if victim.name == MANIFEST_NAME else "flip shard"
        results[(kind, "tried")] += 1
        try:
            report = verify_cache(cache)
            named = victim.relative_to(cache).as_posix()
            detected = not report.ok and any(named in problem for problem in report.problems)
        except MtkdError:  # the manifest itself is refused when parsed
            detected = True
        results[(kind, "held")] += detected
        shutil.rmtree(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="Kill trials per command.")
    parser.add_argument("--flips", type=int, default=200, help="Random single-byte flips.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="mtkd-fault-battery-"))
    results: Counter = Counter()
    started = time.perf_counter()
    try:
        data = write_dataset(work / "data", sizes=(("train", 96), ("validation", 32), ("test", 48)))
        teachers = [make_teacher(work / "bert", "bert", seed=1),
                    make_teacher(work / "distil", "distilbert", labels=("tech", "politics", "sports"), seed=2)]
        teacher_args = ["--teacher", f"bert={teachers[0]}", "--teacher", f"distil={teachers[1]}"]

        def build_argv(out: Path) -> list[str]:
            return command("build", "--dataset", str(data), *teacher_args, "--out", str(out), "--shard-rows", "16",
                           "--device", "cpu")

        reference = work / "reference-cache"
        build_seconds = run(build_argv(reference))
        expected_cache = cache_contents(reference)

        def distill_argv(out: Path) -> list[str]:
            return command("distill", str(reference), *STUDENT, "--tokenizer", str(teachers[0]), "--strategy",
                           "random", "--expert-split", "validation", "--out", str(out))

        distill_seconds = run(distill_argv(work / "reference-run"))
        expected_run = run_contents(work / "reference-run")

        def sweep_argv(out: Path) -> list[str]:
            return command("sweep", str(reference), *STUDENT, "--tokenizer", str(teachers[0]), "--strategy", "expert",
                           "--strategy", "average", "--seed", "0", "--seed", "1", "--expert-split", "validation",
                           "--out", str(out))

        sweep_seconds = run(sweep_argv(work / "reference-sweep"))
        expected_sweep = sweep_contents(work / "reference-sweep")
        push_seconds = run(command("push", str(reference), str(work / "reference-remote")))
        pull_seconds = run(command("pull", str(work / "reference-remote"), str(work / "reference-pulled")))

        counter = iter(range(10**6))

        def fresh(prefix: str):
            return lambda: work / f"{prefix}-{next(counter)}"

        kill_campaign("build", rng, args.kills, build_seconds, fresh("build"), build_argv,
                      lambda out: verify_cache(out).ok and cache_contents(out) == expected_cache, results)
        kill_campaign("distill", rng, args.kills, distill_seconds, fresh("run"), distill_argv,
                      lambda out: run_contents(out) == expected_run, results)
        kill_campaign("sweep", rng, args.kills, sweep_seconds, fresh("sweep"), sweep_argv,
                      lambda out: sweep_contents(out) == expected_sweep, results)

        def pushed(remote: Path) -> bool:
            pulled = remote.with_name(remote.name + "-check")
            run(command("pull", str(remote), str(pulled)))
            return verify_cache(pulled).ok and cache_contents(pulled) == expected_cache

        kill_campaign("push", rng, args.kills, push_seconds, fresh("remote"),
                      lambda remote: command("push", str(reference), str(remote)), pushed, results)
        kill_campaign("pull", rng, args.kills, pull_seconds, fresh("pulled"),
                      lambda out: command("pull", str(work / "reference-remote"), str(out)),
                      lambda out: verify_cache(out).ok and cache_contents(out) == expected_cache, results)
        flip_campaign(reference, rng, args.flips, work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"fault battery, seed {args.seed}, {time.perf_counter() - started:.0f} s, load average {load:.1f}")
    print(f"{'class':<16} {'tried':>6} {'killed mid-run':>15} {'held':>6}")
    for name in ("build", "distill", "sweep", "push", "pull", "flip shard", "flip manifest"):
        killed = results[(name, "killed mid-run")] if (name, "killed mid-run") in results else "-"
        print(f"{name:<16} {results[(name, 'tried')]:>6} {killed!s:>15} {results[(name, 'held')]:>6}")


if __name__ == "__main__":
    main()
