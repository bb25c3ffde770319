"""The torch backend's runner: a sequence-classification checkpoint in inference mode on one device."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.errors import TeacherError
from mtkd_cache.runners.teachers import ResolvedTeacher


class TorchTeacher:
    """A sequence-classification model in inference mode on one device (a `TeacherRunner`)."""

    def __init__(self, resolved: ResolvedTeacher, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = resolved.spec.name
        self.device = device
        self.dtype = dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.directory)
            self.model = _load_model(AutoModelForSequenceClassification, resolved.directory, dtype)
        except (OSError, ValueError, KeyError) as error:
            raise TeacherError(f"teacher '{self.name}': cannot load {resolved.directory}: {error}") from error
        self.model.to(device).eval()
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


def _load_model(auto_class, directory: Path, dtype: torch.dtype):
    try:
        return auto_class.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):
        # Architectures without an SDPA kernel in transformers fall back to their default attention.
        return auto_class.from_pretrained(directory, dtype=dtype)
