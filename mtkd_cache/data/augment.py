"""Transfer data: augmented copies of a split's texts, written as an unlabeled split the teachers label at build.

Invariant: the output depends only on the source texts and the `AugmentConfig`. Each source row draws from
its own generator seeded by (seed, row), so a row's copies depend on other rows only through the default
`replace` vocabulary (the split's words), never on batching; on CPU the same inputs give the same file.

Words are whitespace-separated tokens (`str.split` semantics); the whitespace between kept words is kept,
so a text nothing was drawn for comes back byte for byte. Every augmented row comes from one operation:

- `mask`: each word becomes the placeholder with probability p (the word count is kept).
- `replace`: each word becomes a different random word of the vocabulary (default: the split's distinct
  words) with probability p — word-level noise as in the MetaDistil-improvement deck.
- `delete`: each word is dropped with probability p; when every word would go, one random word stays.
- `swap`: Binomial(words, p) swaps of two random positions (the words, as a multiset, are kept).
- `mlm`: each word the masked LM reads as one token is masked with probability p; the masks of a text are
  filled in one forward pass, each with a sample from the top-k predictions (softmax renormalized over
  them), never the original token, a special token, a `##` continuation or a `[bracketed]` token
  (TinyBERT, Jiao et al. 2020, without its GloVe fallback: multi-token words stay as they are).

Text pairs: both sides get the same operation, each side its own draws. Duplicates are kept: a copy equal
to its source or to another copy is written anyway, so the output has rows × ops × copies rows in a fixed
order (row, then op in the order given, then copy) and p = 0 reproduces the source exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mtkd_cache.atomic import write_atomically
from mtkd_cache.data.datasets import DatasetSpec, load_task_data
from mtkd_cache.devices import check_device
from mtkd_cache.errors import ConfigError
from mtkd_cache.progress import ProgressEvents, SilentEvents

OPERATIONS = ("mask", "replace", "delete", "swap", "mlm")
DEFAULT_OPS = (("mask", 0.1), ("replace", 0.1), ("delete", 0.1), ("swap", 0.1))
DEFAULT_MLM_P = 0.15  # BERT's masking rate
FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class AugmentConfig:
    """How `augment` makes each row's copies; lists are tuples (lists are accepted and kept as tuples)."""

    ops: tuple[tuple[str, float], ...] = field(default=DEFAULT_OPS, metadata={"help": (
        "(operation, probability p) pairs, one augmented row per operation and copy; operations: "
        + ", ".join(OPERATIONS) + ".")})
    copies: int = field(default=1, metadata={"help": "Augmented rows per source row and operation."})
    seed: int = field(default=0, metadata={"help": "Seed; the same seed and inputs give the same file."})
    placeholder: str = field(default="[MASK]", metadata={"help": "Token the mask operation writes in place of a word."})
    vocabulary: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Words that replace draws from; default: the split's own words.")})
    mlm: Path | None = field(default=None, metadata={"help": (
        "Local masked-LM checkpoint (save_pretrained directory) for the mlm operation.")})
    top_k: int = field(default=15, metadata={"help": (  # TinyBERT's K
        "mlm: sample each filled word among this many predictions.")})
    max_length: int = field(default=128, metadata={"help": "mlm: tokens read per text; masks past it keep their word."})
    batch_size: int = field(default=16, metadata={"help": "mlm: texts per forward pass."})
    device: str = field(default="auto", metadata={"help": (
        "mlm: auto, cpu or cuda[:N]. The same file again on CPU; GPU kernels may differ in the last bit.")})

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple((name, p) for name, p in self.ops))
        if self.vocabulary is not None:
            object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if self.mlm is not None:
            object.__setattr__(self, "mlm", Path(self.mlm))
        check_device(self.device)
        names = [name for name, _ in self.ops]
        if not names:
            raise ConfigError("--ops names no operation; give e.g. mask=0.1,delete=0.1.")
        for name, p in self.ops:
            if name not in OPERATIONS:
                raise ConfigError(f"--ops: unknown operation '{name}'; use {', '.join(OPERATIONS)}.")
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"--ops: {name}={p} is not a probability; p must be between 0 and 1.")
            if names.count(name) > 1:
                raise ConfigError(f"--ops names '{name}' twice; give each operation once.")
        if ("mlm" in names) != (self.mlm is not None):
            raise ConfigError("--ops mlm=P needs --mlm DIR (a masked-LM checkpoint), and --mlm needs mlm=P in --ops.")
        for option, value, low in (("--copies", self.copies, 1), ("--seed", self.seed, 0), ("--top-k", self.top_k, 1),
                                   ("--max-length", self.max_length, 3), ("--batch-size", self.batch_size, 1)):
            if value < low:
                raise ConfigError(f"{option} must be at least {low}, not {value}.")
        if not self.placeholder or any(c.isspace() for c in self.placeholder):
            raise ConfigError(f"--placeholder must be one word without spaces, not {self.placeholder!r}.")
        if self.vocabulary is not None and not self.vocabulary:
            raise ConfigError("the --vocabulary file holds no words; give one word per line.")


def default_ops(with_mlm: bool = False) -> tuple[tuple[str, float], ...]:
    """The operations when none are named: the word-level ones, plus mlm when a masked LM is given."""
    return DEFAULT_OPS + ((("mlm", DEFAULT_MLM_P),) if with_mlm else ())


def read_vocabulary(path: Path) -> tuple[str, ...]:
    """The distinct words of a text file (whitespace-separated, first occurrence first), for `replace`."""
    if not path.is_file():
        raise ConfigError(f"--vocabulary {path} is not a file; give a text file with one word per line.")
    return tuple(dict.fromkeys(w for line in path.read_text(encoding="utf-8").splitlines() for w in line.split()))


def parse_ops(text: str) -> tuple[tuple[str, float], ...]:
    """'mask=0.1,delete=0.2' -> (("mask", 0.1), ("delete", 0.2)); checked by `AugmentConfig`."""
    ops = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            ops.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--ops: '{item}' is not OPERATION=P; write e.g. mask=0.1,swap=0.05.")
    return tuple(ops)


class FillRequest(NamedTuple):
    """Words of one text side for the masked LM to fill."""

    slot: int  # position of the augmented row in the output
    side: int  # 0: text, 1: text pair
    parts: list[str]  # re.split(r"(\S+)", text): separators at even places, words at odd places
    chosen: list[int]  # indices of the words to fill
    seed: tuple[int, ...]  # of the generator that samples the fillers


@dataclass
class AugmentedRows:
    """Augmented texts, row-aligned: `source_rows[i]` is the sample id of the source row of `texts[i]`."""

    texts: list[str]
    text_pairs: list[str] | None
    source_rows: list[int]
    augmentations: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_masked_lm(config: AugmentConfig) -> MaskedLM | None:
    """The checkpoint `mlm` fills from (None without --mlm); load it first to fail before any work."""
    return MaskedLM(config) if config.mlm is not None else None


def augment_split(texts: list[str], text_pairs: list[str] | None, config: AugmentConfig,
                  events: ProgressEvents = SilentEvents(), masked_lm: MaskedLM | None = None) -> AugmentedRows:
    """Every source row × op × copy, in that order; see the module docstring for each operation."""
    vocabulary = list(config.vocabulary or sorted({w for t in texts + (text_pairs or []) for w in t.split()}))
    index = {word: i for i, word in enumerate(vocabulary)}
    model = masked_lm or load_masked_lm(config)
    sides = [texts] if text_pairs is None else [texts, text_pairs]
    out = [[] for _ in sides]
    sources, names, requests = [], [], []
    for row in range(len(texts)):
        rng = np.random.default_rng([config.seed, row, 0, 0, 0])
        for name, p in config.ops:
            for copy in range(config.copies):
                for side, column in enumerate(sides):
                    parts = re.split(r"(\S+)", column[row])
                    if name == "mlm":
                        words = parts[1::2]
                        chosen = (rng.random(len(words)) < p) & np.array([model.single_token(w) for w in words], bool)
                        if chosen.any():
                            requests.append(FillRequest(len(out[side]), side, parts, np.flatnonzero(chosen).tolist(),
                                                        (config.seed, row, 1, copy, side)))
                        out[side].append(column[row])
                    else:
                        out[side].append(_apply(name, p, parts, rng, vocabulary, index, config.placeholder))
                sources.append(row)
                names.append(name)
    if requests:
        events.task("mlm fill", len(requests))
        for request, text in zip(requests, model.fill(requests, events)):
            out[request.side][request.slot] = text
    return AugmentedRows(out[0], out[1] if text_pairs is not None else None, sources, names)


def _apply(name: str, p: float, parts: list[str], rng: np.random.Generator, vocabulary: list[str],
           index: dict[str, int], placeholder: str) -> str:
    """One word-level operation on `parts` = re.split(r"(\\S+)", text): separators at even, words at odd places."""
    words, n = parts[1::2], len(parts) // 2
    if name == "swap":
        words = list(words)
        for _ in range(rng.binomial(n, p) if n >= 2 else 0):
            i, j = rng.choice(n, 2, replace=False)
            words[i], words[j] = words[j], words[i]
        return _join(parts, words)
    hits = rng.random(n) < p
    if name == "delete":
        if n and hits.all():
            hits[rng.integers(n)] = False
        kept = np.flatnonzero(~hits).tolist()
        return parts[0] + "".join(words[i] + (parts[2 * i + 2] if k < len(kept) - 1 else parts[-1])
                                  for k, i in enumerate(kept))
    if name == "mask":
        return _join(parts, [placeholder if hit else word for word, hit in zip(words, hits)])
    new = list(words)
    for i in np.flatnonzero(hits).tolist():  # replace: a vocabulary word other than the one there
        own = index.get(words[i])
        if own is None:
            new[i] = vocabulary[rng.integers(len(vocabulary))]
        elif len(vocabulary) > 1:
            j = int(rng.integers(len(vocabulary) - 1))
            new[i] = vocabulary[j + (j >= own)]
    return _join(parts, new)


def _join(parts: list[str], words: list[str]) -> str:
    joined = list(parts)
    joined[1::2] = words
    return "".join(joined)


class MaskedLM:
    """A local masked LM that fills chosen words of texts (TinyBERT-style augmentation)."""

    def __init__(self, config: AugmentConfig):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from mtkd_cache.devices import resolve_device

        self.config, path = config, Path(config.mlm)
        self.device = resolve_device(config.device)
        if not (path / "config.json").is_file():
            raise ConfigError(f"--mlm {path} is not a save_pretrained checkpoint directory (no config.json there).")
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # the load report of a model without an MLM head is our error below
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model, info = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, KeyError) as error:
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"cannot load a masked language model from --mlm {path}: {detail}") from error
        if info["missing_keys"]:
            shown = ", ".join(sorted(info["missing_keys"])[:3])
            raise ConfigError(f"--mlm {path} has no masked-language-model head (missing {shown}, …); pass a "
                              "checkpoint saved from a *ForMaskedLM model, e.g. bert-base-uncased.")
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"the tokenizer in --mlm {path} has no mask token; it cannot fill masks.")
        self.model = model.to(self.device).eval()
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.words = [self.tokenizer.convert_tokens_to_string([t]).strip() for t in tokens]
        self.special = set(self.tokenizer.all_special_ids)
        allowed = [i not in self.special and not token.startswith("##") and not re.fullmatch(r"\[.+\]", token)
                   and bool(word) and not any(c.isspace() for c in word)
                   for i, (token, word) in enumerate(zip(tokens, self.words))][:model.config.vocab_size]
        allowed += [False] * (model.config.vocab_size - len(allowed))
        if sum(allowed) < 2:
            raise ConfigError(f"the tokenizer in --mlm {path} has fewer than 2 whole-word tokens to fill masks with.")
        self.allowed = torch.tensor(allowed, device=self.device)
        self._ids: dict[str, int | None] = {}

    def single_token(self, word: str) -> bool:
        return self._id(word) is not None

    def _id(self, word: str) -> int | None:
        if word not in self._ids:
            pieces = self.tokenizer.tokenize(word)
            own = self.tokenizer.convert_tokens_to_ids(pieces[0]) if len(pieces) == 1 else None
            self._ids[word] = own if own is not None and own not in self.special else None
        return self._ids[word]

    def fill(self, requests: list[FillRequest], events: ProgressEvents) -> list[str]:
        """The requests' texts with their chosen words replaced by sampled predictions."""
        import torch

        tokenizer, mask, filled = self.tokenizer, self.tokenizer.mask_token, [""] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].parts))  # similar lengths pad less
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start:start + self.config.batch_size]
            chosen = {i: set(requests[i].chosen) for i in batch}
            words = {i: requests[i].parts[1::2] for i in batch}
            masked = [[mask if k in chosen[i] else w for k, w in enumerate(words[i])] for i in batch]
            encoded = tokenizer(masked, is_split_into_words=True, truncation=True, max_length=self.config.max_length,
                                padding=True, return_tensors="pt")
            ids = encoded["input_ids"].tolist()
            where = []  # (batch position, token position, request, word index) of every mask that survived truncation
            for b, i in enumerate(batch):
                where += [(b, t, i, w) for t, w in enumerate(encoded.word_ids(b))
                          if w in chosen[i] and ids[b][t] == tokenizer.mask_token_id]
            if where:
                inputs = {k: v.to(self.device) for k, v in encoded.items() if k in tokenizer.model_input_names}
                with torch.inference_mode():
                    logits = self.model(**inputs).logits[[w[0] for w in where], [w[1] for w in where]].float()
                    logits[:, ~self.allowed] = float("-inf")
                    own = torch.tensor([self._id(words[i][w]) for _, _, i, w in where], device=logits.device)
                    logits[torch.arange(len(where)), own] = float("-inf")
                    top = logits.topk(min(self.config.top_k, int(self.allowed.sum()) - 1), dim=-1)  # own id excluded
                    probs = top.values.softmax(-1).double().cpu().numpy()
                rngs = {i: np.random.default_rng(requests[i].seed) for i in batch}
                for (_, _, i, w), p, candidates in zip(where, probs, top.indices.cpu().tolist()):
                    words[i][w] = self.words[candidates[rngs[i].choice(len(p), p=p / p.sum())]]
            for i in batch:
                filled[i] = _join(requests[i].parts, words[i])
            events.advance(len(batch))
        return filled


def load_source(spec: DatasetSpec, split: str) -> tuple[list[str], list[str] | None]:
    """The texts (and text pairs) of one split, validated as `build` validates them."""
    data = load_task_data(dataclasses.replace(spec, splits=(split,))).splits[split]
    return data.texts, data.text_pairs


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output `build` could not read next to its directory's other split files."""
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {path}: unknown file type '{path.suffix}'; use {', '.join(FORMATS)}.")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name, e.g. {path / ('transfer' + path.suffix)}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out {path} exists; pass --overwrite to replace it, or choose another name.")
    others = sorted({p.suffix.lower() for p in path.parent.glob("*")
                     if p.is_file() and p.suffix.lower() in FORMATS and p.name != path.name})
    if others and others != [path.suffix.lower()]:
        raise ConfigError(f"--out {path}: its directory holds {'/'.join(others)} split files and `build` reads one "
                          f"format per directory; write {path.stem}{others[0]} instead.")


def write_split(path: Path, rows: AugmentedRows, source_split: str, text_column: str = "text",
                text_pair_column: str | None = None) -> None:
    """Write the rows as a split file (format by extension) with no label column, atomically (temp + rename)."""
    columns = {text_column: rows.texts}
    if rows.text_pairs is not None:
        columns[text_pair_column or "text_pair"] = rows.text_pairs
    columns |= {"source_split": [source_split] * len(rows), "source_row": rows.source_rows,
                "augmentation": rows.augmentations}
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), buffer)
        data = buffer.getvalue().to_pybytes()
    else:
        text = io.StringIO(newline="")
        records = (dict(zip(columns, values)) for values in zip(*columns.values()))
        if suffix in (".csv", ".tsv"):
            writer = csv.DictWriter(text, fieldnames=list(columns), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(records)
        else:  # .json and .jsonl: JSON lines, which datasets' json builder reads for both
            text.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        data = text.getvalue().encode("utf-8")
    write_atomically(path, data)


@dataclass(frozen=True)
class AugmentReport:
    """What `augment_to_file` wrote."""

    out: Path
    split: str
    source_rows: int  # rows of the source split
    rows: int  # rows written
    per_operation: dict[str, int]  # rows written per operation, in the order of `ops`
    unchanged: int  # rows equal to their source row (kept: the file has rows × ops × copies rows)
    seconds: float
    beside_source: bool  # `out` sits in the dataset's directory of split files: `build` caches it as a split


def augment_to_file(config: AugmentConfig, dataset: DatasetSpec, split: str, out: Path, overwrite: bool = False,
                    events: ProgressEvents = SilentEvents()) -> AugmentReport:
    """Augment `split` of `dataset` and write the rows to `out` (format by extension) as an unlabeled split.

    Everything that can be refused (the output path, the masked LM) is checked before the split is read."""
    check_output(out, overwrite)
    masked_lm = load_masked_lm(config)
    started = time.perf_counter()
    texts, pairs = load_source(dataset, split)
    rows = augment_split(texts, pairs, config, events, masked_lm)
    write_split(out, rows, split, dataset.text_column, dataset.text_pair_column)
    unchanged = sum(rows.texts[i] == texts[row] and (pairs is None or rows.text_pairs[i] == pairs[row])
                    for i, row in enumerate(rows.source_rows))
    source = Path(dataset.source)
    return AugmentReport(out=out, split=split, source_rows=len(texts), rows=len(rows),
                         per_operation=dict(Counter(rows.augmentations)), unchanged=unchanged,
                         seconds=time.perf_counter() - started,
                         beside_source=source.is_dir() and source.resolve() == out.parent.resolve())
