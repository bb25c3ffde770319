"""A drop-in for a training loop the user already has: one cache split as a `torch.utils.data.Dataset`.

Each item is one row of the split: the student's token ids, its gold label (-1 = none), its sample id, and
the chosen strategy's targets for that row — the teachers' logits [N, K] and their weights [N]. The targets
come from the same place `distill` takes them (`PreparedCache.signal`, same seed rule), so a user's loop
distils from exactly what the project's loop would: deterministic strategies are computed once per split,
`random` and `noisy` are re-drawn when `set_epoch(epoch)` is called (a DataLoader's shuffling never
misaligns them: an item carries its own row's targets). `collate` pads a list of items into a batch, and
`cached_distillation_loss` is the project's distillation loss (losses.py) applied to such a batch.

    dataset = CacheDataset("cache/", "train", tokenizer, StrategyConfig("expert"), expert_split="validation")
    loader = DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=dataset.collate)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for batch in loader:
            logits = model(**student_inputs(batch)).logits
            loss = cached_distillation_loss(logits, batch, dataset.combine)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.cache.reader import Cache
from mtkd_cache.distillation.configs import DistillConfig
from mtkd_cache.distillation.experts import parse_teacher_subset
from mtkd_cache.distillation.losses import distillation_loss
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import Combine, Strategy, StrategyConfig, TeacherSignal
from mtkd_cache.errors import ConfigError

# What a batch carries besides the student's inputs; a model's forward never sees these.
TARGET_KEYS = ("labels", "sample_ids", "teacher_logits", "teacher_weights")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
DEFAULT_ALPHA: float = _DEFAULTS["alpha"]
DEFAULT_TEMPERATURE: float = _DEFAULTS["temperature"]


class CacheDataset(torch.utils.data.Dataset):
    """Rows of `split` with the student's inputs and `strategy`'s teacher targets (see the module docstring).

    `cache` is a cache directory, an open `Cache`, or a `PreparedCache` shared with other datasets (the
    validation split's dataset can share the train split's loaded cache). `tokenizer` is the student's;
    its token ids are kept under CACHE/student-inputs/ like `distill`'s, so the next process skips
    tokenizing. `seed` is the run's seed: it decides the draws of `random` and `noisy` per epoch.
    """

    def __init__(self, cache: str | Path | Cache | PreparedCache, split: str, tokenizer,
                 strategy: StrategyConfig | Strategy | str = StrategyConfig(), teachers: str | tuple[str, ...] | None = None,
                 expert_split: str = "test", max_length: int = 128, seed: int = 0):
        self.prepared = cache if isinstance(cache, PreparedCache) else PreparedCache(cache)
        self.strategy = strategy if isinstance(strategy, StrategyConfig) else StrategyConfig(strategy)
        names = self.prepared.cache.split_names
        for option, name in (("split", split), ("expert_split", expert_split)):
            if name not in names:
                raise ConfigError(f"{option} '{name}' is not in the cache; it has {', '.join(names)}.")
        if max_length < 1:
            raise ConfigError(f"max_length must be at least 1, not {max_length}.")
        self.split, self.expert_split, self.seed = split, expert_split, seed
        self.teachers = parse_teacher_subset(teachers, self.prepared.cache.teacher_names)
        self.label_names = self.prepared.cache.label_names
        inputs = self.prepared.inputs(split)
        self.sample_ids, self.labels = inputs.sample_ids, inputs.labels
        self.tokens = self.prepared.tokens(tokenizer, max_length, split)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.epoch = -1
        self.signal: TeacherSignal
        self.set_epoch(0)

    @property
    def combine(self) -> Combine:
        """How the strategy's weights combine in the loss (one value for the whole split)."""
        return self.signal.combine

    def set_epoch(self, epoch: int) -> None:
        """Targets of `epoch`: a new draw for `random`/`noisy`, the same targets for the other strategies."""
        if epoch != self.epoch:
            self.signal = self.prepared.signal(self.strategy, self.teachers, self.split, self.expert_split,
                                               self.seed, epoch)
            self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict[str, torch.Tensor | int]:
        start, end = self.tokens.offsets[row], self.tokens.offsets[row + 1]
        item = {"input_ids": torch.from_numpy(self.tokens.ids[start:end].astype(np.int64)),
                "labels": int(self.labels[row]), "sample_ids": int(self.sample_ids[row]),
                "teacher_logits": self.signal.logits[row].float(), "teacher_weights": self.signal.weights[row].float()}
        if self.tokens.type_ids is not None:
            item["token_type_ids"] = torch.from_numpy(self.tokens.type_ids[start:end].astype(np.int64))
        return item

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """`collate_fn` for a DataLoader over this dataset: `collate(items, pad_id)` with the tokenizer's pad id."""
        return collate(items, self.pad_id)


def collate(items: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Items of a `CacheDataset` -> one batch: inputs right-padded to the longest row (as `distill` pads),
    an attention mask, and the targets stacked ([B], [B], [B, N, K], [B, N])."""
    if not items:
        raise ConfigError("collate got no items; a DataLoader batch holds at least one row.")
    ids = [item["input_ids"] for item in items]
    batch = {"input_ids": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)}
    lengths = torch.tensor([len(row) for row in ids])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]).long()
    if "token_type_ids" in items[0]:
        batch["token_type_ids"] = torch.nn.utils.rnn.pad_sequence([item["token_type_ids"] for item in items],
                                                                  batch_first=True, padding_value=0)
    batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.long)
    batch["sample_ids"] = torch.tensor([item["sample_ids"] for item in items], dtype=torch.long)
    batch["teacher_logits"] = torch.stack([item["teacher_logits"] for item in items])
    batch["teacher_weights"] = torch.stack([item["teacher_weights"] for item in items])
    return batch


def student_inputs(batch: dict[str, torch.Tensor], model=None) -> dict[str, torch.Tensor]:
    """The batch without its targets: what the student's forward takes. Given `model`, only the inputs its
    forward accepts (a DistilBERT student has no token_type_ids; a wrapped DDP model is unwrapped first)."""
    inputs = {key: value for key, value in batch.items() if key not in TARGET_KEYS}
    if model is None:
        return inputs
    import inspect

    forward = getattr(model, "module", model).forward
    parameters = inspect.signature(forward).parameters  # named ones only: **kwargs would swallow a wrong input
    return {k: v for k, v in inputs.items() if k in parameters}


def cached_distillation_loss(student_logits: torch.Tensor, batch: dict[str, torch.Tensor], combine: Combine,
                             alpha: float = DEFAULT_ALPHA, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """The distillation loss of `distill` (losses.py: alpha * CE on labeled rows + (1 - alpha) * T² * KD) on a
    `collate` batch; `combine` is the dataset's `combine`."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be between 0 and 1, not {alpha}.")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, not {temperature}.")
    device = student_logits.device
    return distillation_loss(student_logits, batch["teacher_logits"].to(device), batch["teacher_weights"].to(device),
                             combine, batch["labels"].to(device), alpha, temperature)
