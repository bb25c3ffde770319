"""A student initialised from a teacher (the DistilBERT recipe, Sanh et al., 2019).

`--student from:SOURCE[,layers=0,2,4]` copies SOURCE's embeddings and the chosen encoder layers (default:
every other one, starting at the first) into a shallower model of the same architecture with a fresh
classification head, and keeps SOURCE's tokenizer. Only BERT-family encoders, whose layers are
interchangeable blocks under one `...layer.<i>.` prefix, qualify; anything else is refused by name.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from mtkd_cache.errors import ConfigError
from mtkd_cache.hashing import sha256_files
from mtkd_cache.runners.model_files import weight_files

# model_type -> the config attribute holding its number of encoder layers. MiniLM checkpoints are "bert".
LAYER_COUNT_FIELD = {"bert": "num_hidden_layers", "roberta": "num_hidden_layers", "xlm-roberta": "num_hidden_layers",
                     "electra": "num_hidden_layers", "camembert": "num_hidden_layers", "distilbert": "n_layers"}
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?layer\.)(?P<index>\d+)(?P<rest>\..*)$")


def source_directory(spec: str, source: str) -> Path:
    directory = Path(source).expanduser()
    if not (directory / "config.json").is_file():
        raise ConfigError(f"--student {spec}: {source} is not a save_pretrained directory (no config.json); "
                          "pass a teacher's local directory.")
    if not weight_files(directory):
        raise ConfigError(f"--student {spec}: {source} has no weights (*.safetensors or *.bin).")
    return directory


def source_sha256(directory: Path) -> str:
    """The digest a cache's manifest records for a teacher in this directory (config.json and weights)."""
    return sha256_files(directory, ["config.json", *weight_files(directory)])


def chosen_layers(spec: str, model_type: str, config, layers: tuple[int, ...] | None) -> tuple[int, ...]:
    count = getattr(config, LAYER_COUNT_FIELD[model_type])
    if layers is None:
        return tuple(range(0, count, 2))
    outside = [i for i in layers if not 0 <= i < count]
    if outside:
        raise ConfigError(f"--student {spec}: layer {outside[0]} is out of range; the source has {count} layers "
                          f"(0 to {count - 1}).")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"--student {spec}: layers lists a layer twice; give each source layer once.")
    return layers


def build_from_teacher(spec: str, source: str, layers: tuple[int, ...] | None, label_names: tuple[str, ...]):
    """The model of `--student from:SOURCE[,layers=...]`: SOURCE's embeddings and chosen layers, a new head
    (the caller loads SOURCE's tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    directory = source_directory(spec, source)
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--student {spec}: cannot read {directory}/config.json ({str(error).splitlines()[0]}).") from error
    model_type = getattr(config, "model_type", "")
    if model_type not in LAYER_COUNT_FIELD:
        architecture = (getattr(config, "architectures", None) or [model_type or "unknown"])[0]
        raise ConfigError(f"--student {spec}: {architecture} is not a BERT-family encoder; from: supports "
                          f"{', '.join(sorted(LAYER_COUNT_FIELD))} (MiniLM is bert).")
    kept = chosen_layers(spec, model_type, config, layers)
    student_config = copy.deepcopy(config)
    setattr(student_config, LAYER_COUNT_FIELD[model_type], len(kept))
    student_config.num_labels = len(label_names)
    student_config.id2label = dict(enumerate(label_names))
    student_config.label2id = {name: i for i, name in enumerate(label_names)}
    student = AutoModelForSequenceClassification.from_config(student_config)
    teacher = AutoModel.from_pretrained(directory)
    copy_layers(teacher.state_dict(), student.base_model, kept)
    return student


def copy_layers(source_state: dict, student_base, kept: tuple[int, ...]) -> None:
    """Load into `student_base` every tensor of the source's base model outside its encoder layers and, for
    student layer n, the tensors of source layer kept[n]. A student tensor left without a value is a bug of
    this mapping, not of the user's input, so it raises."""
    position = {source: n for n, source in enumerate(kept)}
    mapped = {}
    for key, tensor in source_state.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            mapped[key] = tensor
        elif int(match["index"]) in position:
            mapped[f"{match['prefix']}{position[int(match['index'])]}{match['rest']}"] = tensor
    missing, _ = student_base.load_state_dict(mapped, strict=False)  # the source's pooler may be unused here
    if missing:
        raise RuntimeError(f"teacher initialisation left {len(missing)} tensors unset, e.g. {missing[0]}")
