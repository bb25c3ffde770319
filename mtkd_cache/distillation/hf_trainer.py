"""`DistillationTrainer`: a `transformers.Trainer` whose loss is the distillation loss on cached targets.

An HF user who trains a classifier with `Trainer` changes three lines to distil from a cache:

    train = CacheDataset("cache/", "train", tokenizer, "expert", expert_split="validation")
    trainer = DistillationTrainer(model=model, args=args, train_dataset=train, alpha=0.5, temperature=2.0)
    trainer.train()

Everything else is the Trainer's own (accelerate, DDP under torchrun, gradient accumulation, mixed
precision, checkpoints, logging): only `compute_loss` differs, and the dataset's collate is the default
collator. `random` and `noisy` targets are re-drawn at the start of each epoch (a callback calls the
dataset's `set_epoch`). Needs `accelerate`, as every `Trainer` does (`pip install mtkd-cache[trainer]`).
"""

from __future__ import annotations

import math

from transformers import Trainer, TrainerCallback

from mtkd_cache.distillation.torch_data import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    TARGET_KEYS,
    CacheDataset,
    cached_distillation_loss,
    student_inputs,
)
from mtkd_cache.errors import ConfigError


class RedrawTargetsEachEpoch(TrainerCallback):
    """Calls `set_epoch` on the cache datasets at each epoch's start (idempotent: accelerate may call it too)."""

    def __init__(self, *datasets: CacheDataset):
        self.datasets = datasets

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = math.floor((state.epoch or 0.0) + 1e-6)  # a whole number at an epoch's start, even after resuming
        for dataset in self.datasets:
            dataset.set_epoch(epoch)


class DistillationTrainer(Trainer):
    """`Trainer` with `compute_loss` = `cached_distillation_loss` on a `CacheDataset`'s batches.

    `alpha` weighs the cross-entropy term and `temperature` is the KD temperature, as in `distill`. An
    `eval_dataset` that is a `CacheDataset` of another split gets the same loss (the eval loss); any other
    Trainer argument is passed through unchanged."""

    def __init__(self, *args, alpha: float = DEFAULT_ALPHA, temperature: float = DEFAULT_TEMPERATURE, **kwargs):
        train_dataset = kwargs.get("train_dataset")
        if not isinstance(train_dataset, CacheDataset):
            raise ConfigError("DistillationTrainer needs train_dataset=CacheDataset(cache, split, tokenizer, strategy); "
                              f"got {type(train_dataset).__name__}.")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"alpha must be between 0 and 1, not {alpha}.")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, not {temperature}.")
        kwargs.setdefault("data_collator", train_dataset.collate)
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature = alpha, temperature
        # The loss is a mean over the batch's rows, so Trainer must divide it by the accumulation steps itself
        # (a model whose forward takes **kwargs would otherwise be assumed to sum over items).
        self.model_accepts_loss_kwargs = False
        datasets = [train_dataset] + [d for d in _as_list(kwargs.get("eval_dataset")) if isinstance(d, CacheDataset)]
        self.add_callback(RedrawTargetsEachEpoch(*datasets))

    def _set_signature_columns_if_needed(self) -> None:
        # Trainer drops every item key the model's forward does not name before collating (remove_unused_columns,
        # on by default); the targets are not forward's inputs but must reach compute_loss.
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *(k for k in TARGET_KEYS if k not in self._signature_columns)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        missing = [key for key in ("teacher_logits", "teacher_weights", "labels") if key not in inputs]
        if missing:
            raise ConfigError(f"the batch lacks {', '.join(missing)}: DistillationTrainer's batches come from "
                              "CacheDataset with its collate (leave data_collator unset).")
        outputs = model(**student_inputs(inputs, self.accelerator.unwrap_model(model)))
        loss = cached_distillation_loss(outputs.logits, inputs, self.train_dataset.combine, self.alpha, self.temperature)
        return (loss, outputs) if return_outputs else loss


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value.values()) if isinstance(value, dict) else [value]
