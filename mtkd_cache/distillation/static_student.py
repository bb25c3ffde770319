"""A static-embedding student: a token table distilled from a sentence encoder by model2vec, then trained end
to end here (table and head) with this project's loss on the cached teacher targets.

`--student static:SOURCE[,dims=256,hidden=256,dropout=0.1]`: model2vec distils SOURCE (a local
save_pretrained directory; nothing is downloaded) into one vector per token, PCA-reduced to `dims`; a
SOURCE that already is a model2vec table (its config.json says model_type "model2vec", e.g. one written
by `save_table`) is loaded as it is, so runs sharing one table distil it once. The student mean-pools the
vectors of a row's tokens and classifies with a one-hidden-layer head.

Saved files: model2vec's own (model.safetensors, config.json, tokenizer.json: `StaticModel.from_pretrained`
loads the trained table) plus the head (static_head.safetensors, static_head.json). The tokenizer is
model2vec's, which adds no special tokens.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtkd_cache.errors import ConfigError

STATIC_CONFIG = "static_head.json"
STATIC_HEAD_WEIGHTS = "static_head.safetensors"
DEFAULT_DIMS = 256
INSTALL_HINT = "install model2vec, skeletoken and scikit-learn (pip install model2vec skeletoken scikit-learn)"


@dataclass(frozen=True)
class StaticConfig:
    vocab_size: int
    dims: int
    num_labels: int
    label_names: tuple[str, ...]
    hidden: int = 256
    dropout: float = 0.1
    source: str = ""  # the encoder the table was distilled from

    def __post_init__(self):
        if len(self.label_names) != self.num_labels:
            raise ConfigError(f"a static student with {self.num_labels} classes needs as many label names, "
                              f"not {len(self.label_names)}.")


class _Output:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class StaticClassifier(nn.Module):
    """Token vectors -> mean over the row's real tokens -> ReLU hidden layer -> logits."""

    def __init__(self, config: StaticConfig, backend_tokenizer=None):
        super().__init__()
        self.config = config
        self.backend_tokenizer = backend_tokenizer  # a tokenizers.Tokenizer, written beside the table on save
        self.embedding = nn.Embedding(config.vocab_size, config.dims)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.dims, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.num_labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> _Output:
        mask = attention_mask.unsqueeze(2).to(self.embedding.weight.dtype)
        pooled = (self.embedding(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return _Output(self.head(pooled))

    def save_pretrained(self, directory: Path) -> None:
        from model2vec import StaticModel
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        vectors = self.embedding.weight.detach().float().cpu().numpy()
        table = StaticModel(vectors=vectors, tokenizer=self.backend_tokenizer, normalize=False,
                            base_model_name=self.config.source)
        table.save_pretrained(directory)
        head = {name: tensor.detach().cpu().contiguous() for name, tensor in self.head.state_dict().items()}
        save_file(head, str(directory / STATIC_HEAD_WEIGHTS))
        (directory / STATIC_CONFIG).write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, directory: Path) -> StaticClassifier:
        from model2vec import StaticModel
        from safetensors.torch import load_file

        raw = json.loads((directory / STATIC_CONFIG).read_text())
        config = StaticConfig(**{**raw, "label_names": tuple(raw["label_names"])})
        table = StaticModel.from_pretrained(directory, normalize=False)
        model = cls(config, table.tokenizer)
        with torch.no_grad():
            model.embedding.weight.copy_(torch.from_numpy(_effective_table(table)))
        model.head.load_state_dict(load_file(str(directory / STATIC_HEAD_WEIGHTS)))
        return model


def _effective_table(table) -> np.ndarray:
    """One float32 row per token id, with model2vec's optional vocabulary quantization undone."""
    vectors = np.asarray(table.embedding, dtype=np.float32)
    if getattr(table, "token_mapping", None) is not None:
        vectors = vectors[np.asarray(table.token_mapping)]
    if getattr(table, "weights", None) is not None:
        vectors = vectors * np.asarray(table.weights, dtype=np.float32)[:, None]
    return vectors


def hf_tokenizer(backend_tokenizer):
    """The model2vec tokenizer as a transformers tokenizer, so batching, caching and saving treat it like any other."""
    from transformers import PreTrainedTokenizerFast

    padding = backend_tokenizer.padding or {}
    pad = padding.get("pad_token") or "[PAD]"
    unk = next((t for t in ("[UNK]", "<unk>") if backend_tokenizer.token_to_id(t) is not None), None)
    return PreTrainedTokenizerFast(tokenizer_object=backend_tokenizer, pad_token=pad, unk_token=unk)


def distil_table(spec: str, directory: Path, dims: int):
    """model2vec's distillation of `directory`, deterministic (its PCA may draw from numpy's global state)."""
    try:
        from model2vec.distill import distill
    except ImportError as error:
        raise ConfigError(f"--student {spec} needs model2vec's distillation: {INSTALL_HINT}.") from error
    from transformers import AutoConfig

    width = getattr(AutoConfig.from_pretrained(directory), "hidden_size", None)
    state = np.random.get_state()
    np.random.seed(0)
    for name in ("model2vec", "skeletoken"):  # e.g. "tokenizer defines a pad_token": expected here
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return distill(model_name=str(directory), pca_dims=min(dims, width) if width else dims, quantize_to="float32")
    except (OSError, ValueError) as error:
        raise ConfigError(f"--student {spec}: model2vec cannot distil {directory} ({str(error).splitlines()[0]}).") from error
    finally:
        np.random.set_state(state)


def is_model2vec_table(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError, AttributeError):
        return False


def save_table(source: Path, dims: int, out: Path) -> Path:
    """Distil `source` once into a model2vec table at `out` (written by model2vec), for `static:OUT` runs."""
    distil_table(f"static:{source},dims={dims}", source, dims).save_pretrained(out)
    return out


def build_static_student(spec: str, source: str, label_names: tuple[str, ...], dims: int | None = None, hidden: int = 256,
                         dropout: float = 0.1):
    """(model, tokenizer) of `--student static:SOURCE[,dims=...]`, the table as model2vec distilled it."""
    from mtkd_cache.distillation.student_init import source_directory

    directory = source_directory(spec, source)
    if is_model2vec_table(directory):
        from model2vec import StaticModel

        table = StaticModel.from_pretrained(directory, normalize=False)
        if dims is not None and dims != table.dim:
            raise ConfigError(f"--student {spec}: {source} is a model2vec table of {table.dim} dimensions; dims "
                              "applies when distilling an encoder, so drop it.")
    else:
        table = distil_table(spec, directory, dims or DEFAULT_DIMS)
    vectors = _effective_table(table)
    config = StaticConfig(vocab_size=vectors.shape[0], dims=vectors.shape[1], num_labels=len(label_names),
                          label_names=tuple(label_names), hidden=hidden, dropout=dropout, source=str(directory))
    model = StaticClassifier(config, table.tokenizer)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(vectors))
    return model, hf_tokenizer(table.tokenizer)
