"""Students: an HF sequence-classification checkpoint, a down-scaled BERT built from a config, or a
BiLSTM classifier over a tokenizer's ids (Tang et al., 2019). All expose `model(input_ids=...,
attention_mask=...).logits` of shape [B, K], so one training loop serves them all.

`--student` forms (an existing path always wins over the keywords):
    DIRECTORY or hub id                  a checkpoint (a sequence-classification head is added if missing)
    config.json                          a randomly initialized model from a transformers config file
    bert[:layers=4,hidden=256,heads=4]   a randomly initialized BERT of that size (intermediate = 4 x hidden)
    bilstm[:embed=128,hidden=256]        a BiLSTM classifier
    from:SOURCE[,layers=0,2,4]           SOURCE's embeddings and chosen layers, a new head (student_init.py)
    static:SOURCE[,dims=256,hidden=256]  a model2vec table distilled from SOURCE and a head (static_student.py)
`config.json`, `bert:` and `bilstm:` need `--tokenizer` (a directory or hub id): their vocabulary comes from
it; `from:` and `static:` keep their source's tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mtkd_cache.errors import ConfigError

BILSTM_WEIGHTS = "bilstm.pt"
BILSTM_CONFIG = "bilstm_config.json"


@dataclass(frozen=True)
class BiLSTMConfig:
    vocab_size: int
    num_labels: int
    pad_id: int = 0
    embed: int = 128
    hidden: int = 256
    layers: int = 1
    dense: int = 256
    dropout: float = 0.1
    # Output names in class order, so `export` and `predict` can answer in labels; older saves lack them.
    label_names: tuple[str, ...] = ()


class _Output:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class BiLSTMClassifier(nn.Module):
    """Embedding -> BiLSTM -> [last forward state; last backward state] -> ReLU dense -> logits (Tang et al.)."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed, padding_idx=config.pad_id)
        self.lstm = nn.LSTM(config.embed, config.hidden, num_layers=config.layers, batch_first=True,
                            bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * config.hidden, config.dense), nn.ReLU(),
                                  nn.Linear(config.dense, config.num_labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> _Output:
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(input_ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        final = torch.cat([hidden[-2], hidden[-1]], dim=1)  # last layer, forward and backward directions
        return _Output(self.head(final))

    def save_pretrained(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / BILSTM_WEIGHTS)
        (directory / BILSTM_CONFIG).write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, directory: Path) -> BiLSTMClassifier:
        model = cls(BiLSTMConfig(**json.loads((directory / BILSTM_CONFIG).read_text())))
        model.load_state_dict(torch.load(directory / BILSTM_WEIGHTS, weights_only=True))
        return model


class IndexList(tuple):
    """The type of a list-valued option, e.g. layers=0,2,4 (the items after the first carry no key)."""


def _options(spec: str, allowed: dict[str, type], items: list[str] | None = None) -> dict:
    kind, _, body = spec.partition(":")
    options, previous = {}, None
    for item in filter(None, body.split(",") if items is None else items):
        key, sep, value = item.partition("=")
        if not sep and allowed.get(previous) is IndexList:  # layers=0,2,4: the list goes on
            key, value = previous, item
        elif not sep or key not in allowed:
            raise ConfigError(f"--student {spec}: unknown option '{item}'; {kind} takes {', '.join(allowed)}.")
        previous = key
        if allowed[key] is IndexList:
            try:
                options[key] = options.get(key, ()) + (int(value),)
            except ValueError:
                raise ConfigError(f"--student {spec}: {key} must be integers, not '{value}'.") from None
            continue
        try:
            options[key] = allowed[key](value)
        except ValueError:
            expected = "an integer" if allowed[key] is int else "a number"
            raise ConfigError(f"--student {spec}: {key} must be {expected}, not '{value}'.") from None
        # layers=0 would build a model without an encoder that still "trains"; a size of 0 cannot be built.
        if allowed[key] is int and options[key] < 1:
            raise ConfigError(f"--student {spec}: {key} must be at least 1, not {options[key]}.")
        if allowed[key] is float and not 0 <= options[key] < 1:
            raise ConfigError(f"--student {spec}: {key} must be in [0, 1), not {options[key]}.")
    return options


FROM_TEACHER, STATIC = "from", "static"
FROM_OPTIONS = {"layers": IndexList}
STATIC_OPTIONS = {"dims": int, "hidden": int, "dropout": float}


def _source_and_options(spec: str, allowed: dict[str, type]) -> tuple[str, dict]:
    """`kind:SOURCE[,key=value...]`: the source directory first, then the options."""
    kind, _, body = spec.partition(":")
    source, *items = body.split(",")
    if not source or "=" in source:
        raise ConfigError(f"--student {spec}: name the source first, e.g. {kind}:path/to/teacher"
                          f"{',layers=0,2' if kind == FROM_TEACHER else ',dims=256'}.")
    return source, _options(spec, allowed, items)


def student_source(spec: str) -> Path | None:
    """The directory a from:/static: student is built from; None for every other form."""
    kind = spec.partition(":")[0]
    if Path(spec).exists() or kind not in (FROM_TEACHER, STATIC):
        return None
    return Path(_source_and_options(spec, FROM_OPTIONS if kind == FROM_TEACHER else STATIC_OPTIONS)[0])


def student_source_record(spec: str) -> dict:
    """What config.json records about the source of a from:/static: student: its path and its sha256 (the
    digest a cache's manifest gives a teacher in that directory); nothing for other students."""
    from mtkd_cache.distillation.student_init import source_directory, source_sha256

    source = student_source(spec)
    if source is None:
        return {}
    return {"student_source": str(source), "student_source_sha256": source_sha256(source_directory(spec, str(source)))}


def student_source_digest(spec: str) -> dict:
    """The part of a run's identity that a from:/static: student's source contributes: its content, so a
    re-run after the source changed is a new run, not a resume of the old one (empty for other students)."""
    return {key: value for key, value in student_source_record(spec).items() if key.endswith("sha256")}


def check_max_length(model, max_length: int) -> None:
    """Refuse --max-length above the student's position limit: longer rows would index past its position
    embeddings (an IndexError deep inside the first forward pass). A BiLSTM has no such limit."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ConfigError(f"--max-length {max_length} exceeds the student's position limit {limit}; "
                          f"pass --max-length {limit} or less.")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # "newly initialized head" notices are expected for students


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load the tokenizer {source}: {str(error).splitlines()[0]}") from error


def build_student(spec: str, label_names: tuple[str, ...], tokenizer_source: str | None):
    """Return (model, tokenizer, kind) for `--student spec`; kind is 'hf', 'bilstm' or 'static'."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    quiet_transformers()
    path = Path(spec)
    kind = spec.partition(":")[0]
    if not path.exists() and kind in (FROM_TEACHER, STATIC):
        return _build_from_source(spec, kind, label_names, tokenizer_source)
    if not path.exists() and kind in ("bert", "bilstm") or path.is_file():
        if not tokenizer_source:
            raise ConfigError(f"--student {spec} is built from scratch and needs --tokenizer (a directory or hub id).")
        tokenizer = load_tokenizer(tokenizer_source)
        if path.is_file():
            config = AutoConfig.from_pretrained(spec, **labels)
        elif kind == "bilstm":
            options = _options(spec, {"embed": int, "hidden": int, "layers": int, "dense": int, "dropout": float})
            config = BiLSTMConfig(vocab_size=len(tokenizer), num_labels=len(label_names),
                                  pad_id=tokenizer.pad_token_id or 0, label_names=tuple(label_names), **options)
            return BiLSTMClassifier(config), tokenizer, "bilstm"
        else:
            options = _options(spec, {"layers": int, "hidden": int, "heads": int, "intermediate": int})
            hidden, heads = options.get("hidden", 256), options.get("heads", 4)
            if hidden % heads:
                raise ConfigError(f"--student {spec}: hidden ({hidden}) must be a multiple of heads ({heads}).")
            config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                                num_hidden_layers=options.get("layers", 4),
                                num_attention_heads=heads,
                                intermediate_size=options.get("intermediate", 4 * hidden),
                                pad_token_id=tokenizer.pad_token_id or 0, **labels)
        return AutoModelForSequenceClassification.from_config(config), tokenizer, "hf"
    if path.is_dir() and (path / BILSTM_CONFIG).exists():
        return BiLSTMClassifier.from_pretrained(path), load_tokenizer(str(path)), "bilstm"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(spec, ignore_mismatched_sizes=True, **labels)
        _reorder_head(model, spec, label_names)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--student {spec}: cannot load it as a checkpoint ({str(error).splitlines()[0]}); "
                          "pass a save_pretrained directory, a hub id, bert:layers=…, bilstm:… or a config .json.") from error
    return model, load_tokenizer(tokenizer_source or spec), "hf"


def _build_from_source(spec: str, kind: str, label_names: tuple[str, ...], tokenizer_source: str | None):
    if tokenizer_source:
        raise ConfigError(f"--student {spec} keeps its source's tokenizer; drop --tokenizer {tokenizer_source}.")
    if kind == FROM_TEACHER:
        from mtkd_cache.distillation.student_init import build_from_teacher

        source, options = _source_and_options(spec, FROM_OPTIONS)
        return build_from_teacher(spec, source, options.get("layers"), label_names), load_tokenizer(source), "hf"
    from mtkd_cache.distillation.static_student import build_static_student

    source, options = _source_and_options(spec, STATIC_OPTIONS)
    return (*build_static_student(spec, source, label_names, **options), "static")


def _reorder_head(model, spec: str, label_names: tuple[str, ...]) -> None:
    """A checkpoint whose head predicts the dataset's labels in another order gets its output rows permuted,
    so it starts from what it knows instead of scrambled classes."""
    from transformers import AutoConfig

    own = AutoConfig.from_pretrained(spec).id2label or {}
    own_names = [str(own[key]) for key in sorted(own, key=int)]
    if own_names == list(label_names) or sorted(own_names) != sorted(label_names):
        return
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == len(label_names)]
    if not heads:
        return
    order = torch.tensor([own_names.index(name) for name in label_names])
    with torch.no_grad():
        heads[-1].weight.copy_(heads[-1].weight[order])
        if heads[-1].bias is not None:
            heads[-1].bias.copy_(heads[-1].bias[order])


def load_saved_student(directory: Path):
    """A student saved by `distill`/`finetune` (or a teacher's save_pretrained directory): (model, tokenizer)."""
    from transformers import AutoModelForSequenceClassification

    from mtkd_cache.distillation.static_student import STATIC_CONFIG, StaticClassifier

    quiet_transformers()
    if (directory / BILSTM_CONFIG).exists():
        return BiLSTMClassifier.from_pretrained(directory), load_tokenizer(str(directory))
    if (directory / STATIC_CONFIG).exists():
        return StaticClassifier.from_pretrained(directory), load_tokenizer(str(directory))
    return AutoModelForSequenceClassification.from_pretrained(directory), load_tokenizer(str(directory))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
