"""One training loop for every student: plain fine-tuning epochs and distillation epochs from cached signals.

AdamW with linear warm-up and decay, gradient clipping, AMP on CUDA (bf16, or fp16 with a grad scaler),
length-bucketed dynamic padding, evaluation on the selection split after every epoch, the best student
kept, early stopping, and a checkpoint after every epoch so a killed run resumes where it stopped.
Under a fixed seed on CPU two runs give identical students: batches come from a generator seeded by
(seed, epoch), dropout from torch's global RNG, whose state the checkpoint saves.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtkd_cache._faults import fault_point
from mtkd_cache.atomic import recover_directory, remove_temporaries, replace_directory, write_atomically
from mtkd_cache.data.batching import TokenizedRows, batched_forward, pad_rows
from mtkd_cache.distillation.losses import distillation_loss, supervised_loss
from mtkd_cache.distillation.strategies import TeacherSignal
from mtkd_cache.distillation.train_config import TrainConfig as TrainConfig  # its home before torch-free configs
from mtkd_cache.distributed import DistributedContext
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import CHECKPOINT, STUDENT_DIR
from mtkd_cache.progress import ProgressEvents, SilentEvents

BEST_DIR = STUDENT_DIR  # the name the demo and the serve stage know the best student's directory by
_BUCKET_BATCHES = 50  # rows are sorted by length within windows of this many batches


@dataclass
class SplitTensors:
    """A split prepared for the student: its tokens and gold labels (-1 = unlabeled)."""

    tokens: TokenizedRows
    labels: np.ndarray


@dataclass
class Distillation:
    """What distillation epochs learn from: a signal per epoch (cached, or re-drawn for random/noisy)."""

    signal_for_epoch: Callable[[int], TeacherSignal]
    alpha: float
    temperature: float


@dataclass
class EpochRecord:
    epoch: int
    phase: str  # "finetune" or "distill"
    train_loss: float
    selection_score: float  # macro-F1 on the selection split
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    stopped_early: bool = False
    train_seconds: float = 0.0


def bucketed_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Shuffle `rows`, sort by length inside windows of 50 batches, cut batches, shuffle their order."""
    shuffled = rows[torch.randperm(len(rows), generator=generator).numpy()]
    window = batch_size * _BUCKET_BATCHES
    batches = []
    for start in range(0, len(shuffled), window):
        chunk = shuffled[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def _to_device(batch: dict[str, np.ndarray], device: torch.device, accepted: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items() if k in accepted}


def _accepted_inputs(model) -> tuple[str, ...]:
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in parameters)


def _autocast(device: torch.device):
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def predict_logits(model, tokens: TokenizedRows, pad_id: int, device: torch.device, batch_tokens: int = 8192,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """float32 logits [len(rows), K] for `rows` (default all), in their order (batches run longest first)."""
    model.eval()
    accepted = _accepted_inputs(model)
    rows = np.arange(len(tokens.lengths)) if rows is None else rows

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        with _autocast(device):
            return model(**_to_device(batch, device, accepted)).logits.float().cpu().numpy()

    return batched_forward(forward, tokens, rows, batch_tokens, pad_id)


def train(model, save_model: Callable[[Path], None], train_data: SplitTensors, selection: SplitTensors,
          config: TrainConfig, run_dir: Path, pad_id: int, distillation: Distillation | None,
          score: Callable[[np.ndarray, np.ndarray], float], fingerprint: str,
          events: ProgressEvents = SilentEvents(), context: DistributedContext = DistributedContext(),
          resume: dict | None = None, on_epoch: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Train `model`; the best epoch by `score(pred, labels)` on `selection` is saved to run_dir/student.

    `resume` is the checkpoint state of this very run (`Run.checkpoint` read it once and checked its
    fingerprint); training continues after its epoch. `fingerprint` is saved in every checkpoint. Under
    torchrun (`context.active`) the model is wrapped in DistributedDataParallel and each global batch — the
    very batch a single process would take — is split across ranks; only rank 0 writes the checkpoint and
    the student. `events` gets a task per epoch, an advance per batch and a note with the epoch's scores;
    `on_epoch(result)` runs on the main rank after each epoch's checkpoint (the run's metrics.jsonl).
    """
    device = context.device(config.device)
    torch.manual_seed(config.seed)
    model.to(device)
    trained = _wrap_for_ranks(model, device, context)
    accepted = _accepted_inputs(model)
    labeled_rows = np.flatnonzero(train_data.labels >= 0)
    all_rows = np.arange(len(train_data.labels))
    steps_per_epoch = [math.ceil(len(labeled_rows if e < config.warmup_epochs or distillation is None else all_rows)
                                 / config.batch_size) for e in range(config.epochs)]
    total_steps = sum(steps_per_epoch)
    # fused AdamW: one kernel over all parameters; the default per-tensor path spent ~25% of a CPU step
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True)
    warmup_steps = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup_steps) if step < warmup_steps
        else max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    labels_tensor = torch.from_numpy(train_data.labels)

    result, start_epoch = TrainResult(), 0
    if context.is_main:
        recover_interrupted_writes(run_dir)
    checkpoint_path = run_dir / CHECKPOINT
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        result = TrainResult(**{**resume["result"], "history": [EpochRecord(**r) for r in resume["result"]["history"]]})
        start_epoch = resume["epoch"] + 1

    epochs_since_best = sum(1 for r in result.history if r.epoch > result.best_epoch)
    for epoch in range(start_epoch, config.epochs):
        if result.stopped_early:
            break
        epoch_started = time.perf_counter()
        distilling = distillation is not None and epoch >= config.warmup_epochs
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        signal = distillation.signal_for_epoch(epoch) if distilling else None
        rows = all_rows if distilling else labeled_rows
        batches = bucketed_batches(train_data.tokens.lengths, rows, config.batch_size, generator)
        events.task(f"epoch {epoch + 1}/{config.epochs} ({'distill' if distilling else 'finetune'})", len(rows))
        model.train()
        total_loss = 0.0
        for step, batch_rows in enumerate(batches, start=1):
            local_rows, share = _rank_share(batch_rows, context)
            inputs = _to_device(pad_rows(train_data.tokens, local_rows, pad_id), device, accepted)
            index = torch.from_numpy(local_rows)
            labels = labels_tensor[index].to(device)
            with _autocast(device):
                logits = trained(**inputs).logits
            if distilling:
                loss = distillation_loss(logits, signal.logits[index].to(device), signal.weights[index].to(device),
                                         signal.combine, labels, distillation.alpha, distillation.temperature)
            else:
                loss = supervised_loss(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * share).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            # Checked before the optimizer step, so the weights (and every checkpoint) stay finite. With a grad
            # scaler an overflowing gradient is expected now and then: the scaler skips that step itself. One
            # device-to-host copy for both numbers: the step already waited for the loss.
            loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
            if not math.isfinite(loss_value) or (not scaler.is_enabled() and not math.isfinite(norm_value)):
                what = f"the loss became {loss_value}" if not math.isfinite(loss_value) else "the gradients became non-finite"
                raise diverged(what, epoch, step, run_dir)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += loss_value * len(local_rows) * (share > 0)
            events.advance(len(batch_rows))
        total_loss = sum(context.all_gather(total_loss))
        preds = _predict_split(model, selection.tokens, pad_id, device, context).argmax(axis=1)
        epoch_score = score(preds, selection.labels)
        result.history.append(EpochRecord(epoch, "distill" if distilling else "finetune", total_loss / max(1, len(rows)),
                                          epoch_score, time.perf_counter() - epoch_started))
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise diverged("the weights became non-finite", epoch, len(batches), run_dir)  # finite loss, overflowed weights
        improved = epoch_score > result.best_score
        if improved:
            result.best_score, result.best_epoch, epochs_since_best = epoch_score, epoch, 0
            if context.is_main:
                replace_directory(run_dir / STUDENT_DIR, save_model)
        else:
            epochs_since_best += 1
            result.stopped_early = config.patience is not None and epochs_since_best >= config.patience
        record = result.history[-1]
        events.note(f"epoch {epoch + 1}/{config.epochs}: train loss {record.train_loss:.4f}, selection macro-F1 "
                    f"{epoch_score:.4f}" + (" (best so far, saved)" if improved else "")
                    + (" — stopping early (--patience)" if result.stopped_early else ""))
        result.train_seconds += time.perf_counter() - epoch_started
        if context.is_main:
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch, result, fingerprint)
            if on_epoch is not None:
                on_epoch(result)
        context.barrier()  # a rank killed now resumes with the others from this epoch's checkpoint
        fault_point("epoch_checkpointed")
    return result


def diverged(what: str, epoch: int, step: int, run_dir: Path) -> ConfigError:
    """The error that stops a run whose loss (or weights) became NaN or infinite: nothing of that step was
    applied or saved, so the run directory keeps the last finite checkpoint; a re-run with other options has
    another fingerprint and is refused there instead of resuming it."""
    kept = (f"{run_dir} keeps the checkpoint of epoch {epoch}; a run with changed options needs a new --out"
            if (run_dir / CHECKPOINT).exists() else "no checkpoint was written yet")
    return ConfigError(f"training diverged: {what} at epoch {epoch + 1}, step {step} (lower --lr, "
                       f"raise --temperature or check the cache with `mtkd-cache verify`); {kept}.")


def _wrap_for_ranks(model, device: torch.device, context: DistributedContext):
    if not context.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _rank_share(batch_rows: np.ndarray, context: DistributedContext) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch, and the factor that makes DDP's gradient average equal the
    gradient of the whole batch's mean loss. A rank left without rows runs one row with factor 0, so
    every rank still joins the gradient all-reduce."""
    if not context.active:
        return batch_rows, 1.0
    local = batch_rows[context.rank::context.world_size]
    if len(local) == 0:
        return batch_rows[:1], 0.0
    return local, len(local) * context.world_size / len(batch_rows)


def _predict_split(model, tokens: TokenizedRows, pad_id: int, device: torch.device,
                   context: DistributedContext) -> np.ndarray:
    """Logits of every row of a split; under torchrun each rank scores a stride of the rows and they are gathered."""
    if not context.active:
        return predict_logits(model, tokens, pad_id, device)
    rows = np.arange(context.rank, len(tokens.lengths), context.world_size)
    parts = context.all_gather((rows, predict_logits(model, tokens, pad_id, device, rows=rows)))
    num_labels = max(part[1].shape[1] for part in parts)
    out = np.empty((len(tokens.lengths), num_labels), dtype=np.float32)
    for part_rows, logits in parts:
        if len(part_rows):
            out[part_rows] = logits
    return out


def recover_interrupted_writes(run_dir: Path) -> None:
    """Undo what a kill in the middle of a write left in `run_dir`.

    A kill between `replace_directory`'s two renames leaves no student/ but the previous best student moved
    aside: it is put back. Every other temporary (a half-filled student, a half-written checkpoint) is
    removed: the checkpoint it would have replaced is still the last complete one."""
    recover_directory(run_dir / STUDENT_DIR)
    remove_temporaries(run_dir, recursive=False)


def _save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, result: TrainResult, fingerprint: str) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "epoch": epoch, "fingerprint": fingerprint,
                "result": {**asdict(result), "history": [asdict(r) for r in result.history]}}, buffer)
    write_atomically(path, buffer.getvalue(), fault="checkpoint")
