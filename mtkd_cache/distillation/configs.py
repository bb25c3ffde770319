"""What a `distill` or `finetune` run is asked to do: frozen configs that check themselves when built.

Each default and help text is written once, here (`field(default=…, metadata={"help": …})`); the CLI's
options and a Python caller share them. A check that needs the cache or the dataset (does the split
exist? is it labeled?) happens when the run opens them; everything else fails at construction, with the
message naming the CLI flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.cache.store import is_url
from mtkd_cache.data.datasets import DatasetSpec
from mtkd_cache.distillation.checks import require_finite
from mtkd_cache.distillation.strategy_config import Strategy, StrategyConfig
from mtkd_cache.distillation.train_config import TrainConfig
from mtkd_cache.errors import ConfigError

SELECTION_SPLIT_HELP = "Split that picks the best epoch; default validation when cached, else the eval split."


def teacher_tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """A teacher subset as a tuple; a comma-separated string (as a Python caller may write it) is split."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    return tuple(name.strip() for name in names if name.strip()) or None


@dataclass(frozen=True)
class TransferStage:
    """TMKD's first stage: distil on a transfer split (typically unlabeled: KD term only) before the task split.
    The student leaves stage 1 with its last epoch's weights and starts stage 2 from them."""

    split: str = field(metadata={"help": "Two-stage schedule (TMKD): distil on this split first (e.g. an unlabeled "
                                         "transfer split: KD term only)."})
    epochs: int = field(default=1, metadata={"help": "Epochs of stage 1."})
    strategy: Strategy | None = field(default=None, metadata={"help": "Strategy of stage 1; default --strategy."})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError("--stage1-epochs must be at least 1.")
        if self.strategy is not None:
            object.__setattr__(self, "strategy", Strategy.parse(self.strategy, "--stage1-strategy"))


@dataclass(frozen=True)
class DistillConfig:
    cache: Path | str = field(metadata={"help": "Cache directory, or the URL a cache was pushed to (s3://…, hf://…: "
                                                "what the run reads is fetched once into the local store). The only "
                                                "input: no teacher is loaded."})
    student: str = field(metadata={"help": "A checkpoint directory or hub id, bert[:layers=4,hidden=256,heads=4], "
                                           "bilstm[:embed=128,hidden=256], a config .json, from:TEACHER_DIR[,layers=0,2,4] "
                                           "(teacher-initialised) or static:ENCODER_DIR[,dims=256] (model2vec)."})
    out: Path = field(metadata={"help": "Run directory (resumed if it holds the same run)."})
    strategy: StrategyConfig = StrategyConfig()
    alpha: float = field(default=0.5, metadata={"help": "Weight of the cross-entropy term; 1 - alpha weighs the KD term."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the KD term (scaled by T²)."})
    teachers: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Comma-separated teacher subset; default every teacher in the cache."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer for students built from scratch."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split the report evaluates on."})
    selection_split: str | None = field(default=None, metadata={"help": SELECTION_SPLIT_HELP})
    # The source thesis chose experts on test; validation avoids the leak.
    expert_split: str = field(default="test", metadata={"help": "Split the expert table comes from (the thesis used "
                                                                "test; validation avoids a leak)."})
    train: TrainConfig = TrainConfig()
    stage1: TransferStage | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cache, Path) and not is_url(self.cache):
            object.__setattr__(self, "cache", Path(self.cache))  # a path given as a string
        require_finite("--alpha", self.alpha)
        require_finite("--temperature", self.temperature)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha must be between 0 and 1, not {self.alpha}.")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be positive, not {self.temperature}.")
        object.__setattr__(self, "teachers", teacher_tuple(self.teachers))
        if self.strategy.name is Strategy.NONE:
            object.__setattr__(self, "alpha", 1.0)  # the floor has no KD term: cross-entropy alone, at full weight


@dataclass(frozen=True)
class FinetuneConfig:
    dataset: DatasetSpec
    student: str = field(metadata={"help": "Model to fine-tune: a checkpoint directory or hub id, or a student spec."})
    out: Path = field(metadata={"help": "Run directory; the fine-tuned model lands in OUT/student."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer for models built from scratch."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split to report on."})
    selection_split: str | None = field(default=None, metadata={"help": SELECTION_SPLIT_HELP})
    train: TrainConfig = TrainConfig()
