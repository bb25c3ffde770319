"""A training run's options: torch-free, so a config (and `mtkd-cache --help`) can be built without
loading the trainer (training.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtkd_cache.distillation.checks import require_finite
from mtkd_cache.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=3, metadata={"help": "Training epochs, warm-up epochs included."})
    batch_size: int = field(default=8, metadata={"help": "Rows per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of optimizer steps with a linearly rising "
                                                               "learning rate."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_length: int = field(default=128, metadata={"help": "Student tokens per text."})
    seed: int = field(default=0, metadata={"help": "Seed: on CPU a run is reproducible bit for bit."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    patience: int | None = field(default=None, metadata={"help": "Stop after this many epochs without a better "
                                                                 "selection score."})
    warmup_epochs: int = field(default=0, metadata={"help": "Plain fine-tuning epochs before distillation "
                                                            "(counted in --epochs)."})

    def __post_init__(self) -> None:
        for flag, value in (("--lr", self.learning_rate), ("--weight-decay", self.weight_decay),
                            ("--warmup-ratio", self.warmup_ratio), ("--max-grad-norm", self.max_grad_norm)):
            require_finite(flag, value)
        checks = [(self.epochs >= 1, "--epochs must be at least 1"), (self.batch_size >= 1, "--batch-size must be positive"),
                  (self.max_length >= 1, f"--max-length must be at least 1, not {self.max_length}"),
                  (self.weight_decay >= 0, "--weight-decay must not be negative"),
                  (self.max_grad_norm > 0, "--max-grad-norm must be positive"),
                  (self.learning_rate > 0, "--lr must be positive"), (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
                  (0 <= self.warmup_epochs <= self.epochs, "--warmup-epochs must be between 0 and --epochs"),
                  (self.patience is None or self.patience >= 1, "--patience must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
