"""The torch backend's runner: a sequence-classification checkpoint in inference mode on one device."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from mtkd_cache.errors import TeacherError
from mtkd_cache.runners.teachers import ResolvedTeacher


class TorchTeacher:
    """A sequence-classification model in inference mode on one device (a `TeacherRunner`)."""

    def __init__(self, resolved: ResolvedTeacher, device: torch.device, dtype: torch.dtype, max_length: int | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # a load report on stderr would precede our one-line error below
        self.name = resolved.spec.name
        self.device = device
        self.dtype = dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.directory)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise TeacherError(f"teacher '{self.name}': cannot load the tokenizer in {resolved.directory} "
                               f"({_load_problem(error)}); re-save it with save_pretrained.") from error
        self.model = load_teacher_model(self.name, AutoModelForSequenceClassification, resolved.directory, dtype,
                                        device, max_length)
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None) or "eager"
        self.providers: list[str] = []  # onnxruntime's; a torch model has none
        accepted = inspect.signature(self.model.forward).parameters
        self.input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted)
        self.pad_left = self.tokenizer.padding_side == "left"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @torch.inference_mode()
    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits [rows, model_labels] for one padded batch."""
        inputs = {name: torch.from_numpy(batch[name]).to(self.device, non_blocking=True)
                  for name in self.input_names if name in batch}
        output = self.model(**inputs).logits
        return output.float().cpu().numpy()


def _load_problem(error: BaseException) -> str:
    """What was wrong with the files, in one line (transformers' load errors run over many lines, and its
    shape-mismatch error points at a load report that is silenced here)."""
    if "mismatched_sizes" in str(error) or "size mismatch" in str(error):
        return "the shapes of its weights differ from its config.json, e.g. a classification head of another size"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_teacher_model(name: str, auto_class, directory: Path, dtype: torch.dtype, device: torch.device,
                       max_length: int | None):
    """A checkpoint's model through `auto_class`, checked against --max-length, on `device` in eval mode."""
    try:
        model = _load_model(auto_class, directory, dtype)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        # A truncated or garbage weights file (SafetensorError), a head whose size differs from its config
        # (RuntimeError: size mismatch): the teacher's files are at fault, not us.
        raise TeacherError(f"teacher '{name}': cannot load {directory} "
                           f"({_load_problem(error)}); re-save the model with save_pretrained.") from error
    check_position_limit(name, model, max_length)
    return model.to(device).eval()


def check_position_limit(name: str, model, max_length: int | None) -> None:
    """Refuse --max-length above the model's position embeddings: longer rows would index past them."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if max_length is not None and isinstance(limit, int) and max_length > limit:
        raise TeacherError(f"--max-length {max_length} is more than the {limit} positions teacher '{name}' has; "
                           f"pass --max-length {limit} or less.")


def _load_model(auto_class, directory: Path, dtype: torch.dtype):
    try:
        return auto_class.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):
        # Architectures without an SDPA kernel in transformers fall back to their default attention.
        return auto_class.from_pretrained(directory, dtype=dtype)
