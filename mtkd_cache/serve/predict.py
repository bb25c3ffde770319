"""`predict`: what several models say about a few texts, side by side.

A model is a save_pretrained directory (a teacher or an HF student), a BiLSTM student directory, or an
.onnx file with its tokenizer beside it. Everything runs on the CPU: this is for a person comparing
models on a handful of texts; throughput is `build`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.errors import ConfigError
from mtkd_cache.runners.teachers import ONNX_SUFFIX
from mtkd_cache.serve.export import load_model_dir, model_input_names


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


@dataclass
class Classifier:
    name: str  # how tables and JSON call it: the shortest path suffix that tells the models apart
    path: Path
    runtime: str  # "torch" or "onnxruntime"
    label_names: tuple[str, ...]
    tokenizer: object
    input_names: tuple[str, ...]
    logits: Callable[[dict[str, np.ndarray]], np.ndarray]  # padded int64 batch -> float32 [rows, labels]


def load_classifiers(paths: Sequence[Path], label_names: tuple[str, ...] | None = None) -> list[Classifier]:
    if not paths:
        raise ConfigError("name at least one model: a save_pretrained directory, a run's student/ or an .onnx file.")
    return [_load(path, name, label_names) for path, name in zip(paths, display_names(paths))]


def _load(path: Path, name: str, label_names: tuple[str, ...] | None) -> Classifier:
    if path.name.endswith(ONNX_SUFFIX):
        from mtkd_cache.runners.model_files import onnx_label_names, read_onnx_info
        from mtkd_cache.runners.onnx_runner import OnnxTeacher

        info = read_onnx_info(path)
        labels = label_names or onnx_label_names(info)
        runner = OnnxTeacher(name, path, torch.device("cpu"))
        return Classifier(name, path, "onnxruntime", labels, runner.tokenizer, runner.input_names, runner.logits)
    model, tokenizer, kind, labels = load_model_dir(path, label_names)
    inputs = model_input_names(model, tokenizer, kind)

    @torch.inference_mode()
    def logits(batch: dict[str, np.ndarray]) -> np.ndarray:
        return model(**{n: torch.from_numpy(batch[n]) for n in inputs}).logits.float().numpy()

    return Classifier(name, path, "torch", labels, tokenizer, inputs, logits)


def class_probabilities(classifier: Classifier, texts: Sequence[str], max_length: int = 128,
                        batch_size: int = 32) -> np.ndarray:
    """Softmax probabilities [texts, labels] in the classifier's label order."""
    parts = []
    for start in range(0, len(texts), batch_size):
        encoded = classifier.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                       max_length=max_length, return_tensors="np")
        batch = {n: encoded[n].astype(np.int64) if n in encoded else np.zeros_like(encoded["input_ids"], np.int64)
                 for n in classifier.input_names}
        logits = classifier.logits(batch).astype(np.float64)
        if logits.shape[1] != len(classifier.label_names):
            raise ConfigError(f"{classifier.path} predicts {logits.shape[1]} classes but has "
                              f"{len(classifier.label_names)} label names ({', '.join(classifier.label_names)}).")
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        parts.append(probabilities / probabilities.sum(axis=1, keepdims=True))
    return np.concatenate(parts) if parts else np.zeros((0, len(classifier.label_names)))


def predict(classifier: Classifier, texts: Sequence[str], max_length: int = 128,
            batch_size: int = 32) -> list[Prediction]:
    """The most probable label and its softmax probability, per text."""
    probabilities = class_probabilities(classifier, texts, max_length, batch_size)
    return [Prediction(classifier.label_names[k], float(row[k])) for row, k in
            zip(probabilities, probabilities.argmax(axis=1))]


@dataclass(frozen=True)
class PredictConfig:
    max_length: int = field(default=128, metadata={"help": "Tokens per text before truncation."})
    label_names: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Comma-separated label names, for a BiLSTM saved without them."})
    ensemble: bool = field(default=False, metadata={"help": "Add a majority-vote and a mean-probability ensemble of "
                                                            "the models."})


@dataclass
class SideBySide:
    """What every model (and the ensembles, when asked for) predicts for each text."""

    texts: list[str]
    classifiers: list[Classifier]
    predictions: dict[str, list[Prediction]]  # model or ensemble name -> one prediction per text

    @property
    def ensembles(self) -> list[str]:
        return [name for name in self.predictions if name not in {c.name for c in self.classifiers}]

    def to_json(self) -> dict:
        rows = [{"text": t, "predictions": {name: {"label": p[i].label, "probability": round(p[i].probability, 6)}
                                            for name, p in self.predictions.items()}} for i, t in enumerate(self.texts)]
        return {"models": {c.name: {"path": str(c.path), "runtime": c.runtime} for c in self.classifiers}, "texts": rows}


def predict_side_by_side(paths: Sequence[Path], texts: Sequence[str], config: PredictConfig = PredictConfig()) -> SideBySide:
    if not texts:
        raise ConfigError("give texts to classify with --text \"...\" (repeatable) or --file with one text per line.")
    classifiers = load_classifiers(paths, config.label_names)
    probabilities = [class_probabilities(c, texts, config.max_length) for c in classifiers]
    predictions = {c.name: [Prediction(c.label_names[k], float(row[k])) for row, k in zip(p, p.argmax(axis=1))]
                   for c, p in zip(classifiers, probabilities)}
    if config.ensemble:
        predictions |= ensemble_predictions(classifiers, probabilities)
    return SideBySide(list(texts), classifiers, predictions)


def ensemble_predictions(classifiers: Sequence[Classifier], probabilities: Sequence[np.ndarray]) -> dict[str, list[Prediction]]:
    """The majority vote (probability = share of models voting for the label) and the mean-probability
    ensemble of models that share one label order; see ensemble.py for the tie rule."""
    from mtkd_cache.serve.ensemble import majority_vote, mean_probability_vote

    labels = classifiers[0].label_names
    different = [c.name for c in classifiers if c.label_names != labels]
    if len(classifiers) < 2 or different:
        raise ConfigError("--ensemble needs at least two models with the same label names in the same order"
                          + (f"; {', '.join(different)} differ from {classifiers[0].name}." if different else "."))
    stacked = np.stack(probabilities)  # [models, texts, labels]
    votes = (stacked.argmax(axis=2)[:, :, None] == np.arange(len(labels))).mean(axis=0)  # [texts, labels]
    mean = stacked.mean(axis=0)
    return {"ensemble: vote": [Prediction(labels[k], float(votes[i, k])) for i, k in enumerate(majority_vote(stacked))],
            "ensemble: mean": [Prediction(labels[k], float(mean[i, k])) for i, k in enumerate(mean_probability_vote(stacked))]}


def display_names(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing part of each path that no other path shares (runs/a/student, runs/b/student)."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    # A file's name alone ("model.onnx") says little; its directory names the model.
    depth = [min(2, len(p)) if str(p[-1]).endswith(ONNX_SUFFIX) else 1 for p in parts]
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            return names
        for i in clashing:
            depth[i] += 1
