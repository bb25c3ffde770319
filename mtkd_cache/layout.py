"""Names: what may be called a teacher (or a split), and the package version recorded in what it writes.

A name ends up in file paths under CACHE/ (outputs/<teacher>/<split>/…), so it is restricted to
characters that are safe in a path on every platform and cannot climb out of the cache ("..").
"""

from __future__ import annotations

import re

from mtkd_cache.errors import ConfigError

PACKAGE_VERSION = "0.1.0"
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME_PATTERN = re.compile(rf"^{NAME}$")


def validate_name(name: str, what: str) -> None:
    if not _NAME_PATTERN.match(name):
        raise ConfigError(f"{what} name '{name}' may hold only letters, digits, '_', '.' and '-'.")


# --- CACHE/: the cache directory (owned by the cache stage; DESIGN.md "The cache") ---------------------


# --- RUN/: a distill, finetune or sweep run directory (owned by the distill and report stages) ---------
# Every name below is relative to a run directory (OUT of `distill` / `finetune`, or OUT/runs/<run>/ of a
# sweep run), except the sweep's and `report`'s own files, which sit in their OUT.
RUN_CONFIG = "config.json"  # the resolved run configuration and its fingerprint (not a checkpoint's config.json)
RUN_REPORT = "report.json"
RUN_REPORT_MD = "report.md"
PER_CLASS_PLOT = "per_class_diff.png"
METRICS_LOG = "metrics.jsonl"  # one line per epoch
CHECKPOINT = "checkpoint.pt"  # the last epoch's training state, for resuming
STUDENT_DIR = "student"  # the best epoch's student (save_pretrained)
STAGE1_DIR = "stage1"  # a two-stage run's first stage: its own checkpoint
SWEEP_RUNS_DIR = "runs"  # OUT/runs/<run>/ of a sweep
SWEEP_RUN_DONE = "sweep_run.json"  # a sweep run's leaderboard row, written last: without it the run is unfinished
LEADERBOARD = "leaderboard.parquet"
LEADERBOARD_MD = "leaderboard.md"
ROBUSTNESS = "robustness.parquet"
ROBUSTNESS_PLOT = "robustness.png"
COMPARISON_MD = "comparison.md"  # `report --out`
COMPARISON_PLOT = "comparison.png"
