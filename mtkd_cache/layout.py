"""Names on disk: every file and folder name under a cache directory, what may be called a teacher (or a
split), and the package version recorded in what it writes.

One owner per name: a module that reads or writes CACHE/<something> takes the name from here, so the
layout of a cache can be read in one place (DESIGN.md "The cache") and never drifts between the writer,
the reader, `verify` and `push`/`pull`.

A teacher or split name ends up in file paths under CACHE/ (outputs/<teacher>/<split>/…), so it is
restricted to characters that are safe in a path on every platform and cannot climb out of the cache ("..").
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
#   manifest.json                                         the commit point: readers use only what it lists
#   README.md                                             a pushed cache's dataset card (push writes it, nothing reads it)
#   .lock                                                 held by the one process writing the cache
#   .receipts/<shard>.json                                finished shards of ranks > 0, adopted by rank 0
#   inputs/<split>/rows-<start>-<end>.parquet             a split's texts and labels
#   outputs/<teacher>/<split>/rows-<start>-<end>.parquet  one teacher's logits and predictions on a split
#   experts/                                              expert tables derived from the cache (distill stage)
#   student-inputs/                                       student tokenizations kept for the next run (distill)

MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"  # the dataset card `push` writes beside a pushed cache (cache/card.py); never read back
LOCK_NAME = ".lock"
RECEIPTS_DIR = ".receipts"
INPUTS_DIR = "inputs"
OUTPUTS_DIR = "outputs"
SHARD_FOLDERS = (INPUTS_DIR, OUTPUTS_DIR)
EXPERTS_DIR = "experts"
STUDENT_INPUTS_DIR = "student-inputs"
DECODED_DIR = "decoded"  # derived: teacher shards' logits as raw arrays (cache/sidecar.py), keyed by shard sha256


def decoded_path(shard_sha256: str) -> str:
    """The decoded sidecar of the teacher shard whose sha256 is `shard_sha256` (64 hex digits)."""
    if len(shard_sha256) != 64 or any(c not in "0123456789abcdef" for c in shard_sha256):
        raise ValueError(f"not a sha256 hex digest: {shard_sha256!r}")
    return f"{DECODED_DIR}/{shard_sha256}.logits"


# Row numbers are zero-padded to 10 digits so that shard names sort in row order; no split can have more
# rows than that (the manifest parser refuses larger row counts before anything is allocated for them).
_ROWS = "rows-{start:010d}-{end:010d}.parquet"
MAX_ROWS = 10**10 - 1


def inputs_path(split: str, row_start: int, row_end: int) -> str:
    """The inputs shard of rows [row_start, row_end) of `split`, relative to the cache, forward slashes."""
    return f"{INPUTS_DIR}/{split}/" + _ROWS.format(start=row_start, end=row_end)


def outputs_path(teacher: str, split: str, row_start: int, row_end: int) -> str:
    """`teacher`'s outputs shard of rows [row_start, row_end) of `split`, relative to the cache."""
    return f"{OUTPUTS_DIR}/{teacher}/{split}/" + _ROWS.format(start=row_start, end=row_end)


# Exactly the paths the two functions above make. A shard path in a manifest is derived from its record;
# anything else (a "..", an absolute path) could make a reader or `pull` touch files outside the cache,
# so the manifest parser refuses a path this does not match.
SHARD_PATH = re.compile(rf"^({INPUTS_DIR}/(?P<split>{NAME})|{OUTPUTS_DIR}/(?P<teacher>{NAME})/(?P<split2>{NAME}))"
                        r"/rows-(?P<start>\d{10})-(?P<end>\d{10})\.parquet$")


def receipt_path(shard_path: str) -> str:
    """Where a rank > 0 reports the shard at `shard_path`: one flat file per shard under RECEIPTS_DIR."""
    return f"{RECEIPTS_DIR}/" + shard_path.replace("/", "--").removesuffix(".parquet") + ".json"


# --- RUN/: a distill, finetune or sweep run directory (owned by the distill and report stages) ---------
# Every name below is relative to a run directory (OUT of `distill` / `finetune`, or OUT/runs/<run>/ of a
# sweep run), except the sweep's and `report`'s own files, which sit in their OUT.
# The resolved run configuration and its fingerprint. Not "config.json": that name makes a run directory look
# like a transformers checkpoint (`pipeline(model=RUN)` failed with "Should have a model_type key").
RUN_CONFIG = "run.json"
LEGACY_RUN_CONFIG = "config.json"  # what runs written before 0.2 call it: still read, replaced on resume
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
FRONTIER_MD = "frontier.md"  # `report --frontier --out`: size, speed and accuracy of every model
FRONTIER_JSON = "frontier.json"
FRONTIER_PLOT = "frontier.png"
