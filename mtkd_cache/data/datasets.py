"""Dataset loading: a hub id, a data file, a directory of split files, or a `save_to_disk` directory.

Everything downstream sees one `TaskData`: the label names in order and, per split, the texts, the
optional text pairs and the labels as class indices (-1 where a row has no label). Problems a user can
fix (missing column, empty split, unknown label, unreadable file) raise `DataError` naming the split,
the column and the rows.

Text policy (recorded in the manifest): texts are kept exactly as loaded; numbers are turned into
their string form; empty strings are kept (a tokenizer gives them [CLS][SEP]); a missing text (null)
or a string that is not valid Unicode is rejected with its row ids. Duplicate texts are kept as
separate rows, each with its own sample id, so the cache stays row-aligned with the source.
"""

from __future__ import annotations

import codecs
import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd_cache.errors import ConfigError, DataError
from mtkd_cache.hashing import fingerprint_rows, row_digests, sha256_bytes

TEXT_POLICY = "keep-as-loaded; numbers stringified; empty kept; null or invalid unicode rejected"
DUPLICATE_POLICY = "keep every row; duplicates get their own sample ids"
_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_MAX_ROWS_NAMED = 10
_CANONICAL_SPLITS = ("train", "validation", "dev", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """Where the data comes from and which columns hold what. Lists are tuples (a list is accepted and
    kept as a tuple); a comma-separated string is the CLI's spelling and is split there, never here."""

    source: str = field(metadata={"help": (
        "Hub id, a data file (.csv/.jsonl/.parquet), a directory of split files (train.csv, test.jsonl, …), "
        "or a save_to_disk directory.")})
    config_name: str | None = field(default=None, metadata={"help": "Config name of a hub dataset."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    text_pair_column: str | None = field(default=None, metadata={"help": (
        "Column holding the second text of sentence-pair tasks (NLI).")})
    label_column: str = field(default="label", metadata={"help": (
        "Column holding the label (ClassLabel ids or strings); a split without it is cached unlabeled.")})
    splits: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Comma-separated splits to cache; default: every split of the dataset.")})
    label_names: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Comma-separated label names in class-id order, when the data's own are missing or unordered.")})

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("--dataset is empty; give a hub id, a data file or a directory.")
        for option, column in (("--text-column", self.text_column), ("--label-column", self.label_column)):
            if not column:
                raise ConfigError(f"{option} is empty; give the name of a column.")
        for option, name in (("--splits", "splits"), ("--label-names", "label_names")):
            values = getattr(self, name)
            if values is None:
                continue
            if isinstance(values, str):
                raise ConfigError(f"{option} must be a list of names, not the string {values!r}.")
            values = tuple(values)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"{option} must name each of its values once, not {', '.join(values) or 'nothing'}.")
            object.__setattr__(self, name, values)


@dataclass
class SplitData:
    """One split: texts, optional pairs and labels (class indices, -1 = unlabeled), row-aligned."""

    name: str
    texts: list[str]
    text_pairs: list[str] | None
    labels: np.ndarray  # int64 [rows]
    label_names: tuple[str, ...] = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.texts)

    @property
    def labeled(self) -> bool:
        return bool((self.labels >= 0).any())

    @functools.cached_property
    def row_digests(self) -> list[bytes]:
        names = [self.label_names[i] if i >= 0 else None for i in self.labels.tolist()]
        return row_digests(self.texts, self.text_pairs, names)

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint_rows(self.row_digests)


@dataclass
class TaskData:
    label_names: tuple[str, ...]
    splits: dict[str, SplitData]
    notes: tuple[str, ...] = ()  # what loading decided on the user's behalf (files it ignored), to show them

    @property
    def fingerprint(self) -> str:
        """Hash of the label names and of every split's name and fingerprint (split order does not matter)."""
        parts = ["labels:" + "\x1f".join(self.label_names)]
        parts += sorted(f"split:{name}:{split.fingerprint}" for name, split in self.splits.items())
        return sha256_bytes("\n".join(parts).encode())


def load_task_data(spec: DatasetSpec) -> TaskData:
    """Load and validate the splits named in `spec`; raise `DataError` on anything unusable."""
    dataset_dict, notes = _load_dataset_dict(spec)
    split_names = list(spec.splits) if spec.splits else list(dataset_dict.keys())
    unknown = [name for name in split_names if name not in dataset_dict]
    if unknown:
        raise DataError(
            f"split {', '.join(map(repr, unknown))} not found in {spec.source}; "
            f"it has {', '.join(map(repr, dataset_dict.keys()))}. Pass --splits with those names."
        )
    columns = {name: _columns_of(dataset_dict[name], name, spec) for name in split_names}
    if all(labels is None for _, _, labels in columns.values()):
        available = sorted({c for name in split_names for c in dataset_dict[name].column_names})
        if not spec.label_names:  # --label-names here would build a cache without one label: say what is wrong
            raise DataError(f"no split has the column '{spec.label_column}' (--label-column); the columns are "
                            f"{', '.join(available)}: pass --label-column with the one that holds the labels.")
        notes = (*notes, f"no split has the column '{spec.label_column}' (--label-column): every split is cached "
                         f"unlabeled (its columns are {', '.join(available)})")
    label_names = _label_names(dataset_dict, columns, spec)
    splits = {}
    for name, (texts, pairs, raw_labels) in columns.items():
        labels = _label_indices(raw_labels, len(texts), label_names, name)
        splits[name] = SplitData(name, texts, pairs, labels, label_names)
    return TaskData(label_names=label_names, splits=splits, notes=notes)


def _load_dataset_dict(spec: DatasetSpec) -> tuple:
    """(DatasetDict, notes): the splits, and what was ignored to find them."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(spec.source).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            return (loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})), ()
        notes: tuple[str, ...] = ()
        if path.is_dir():
            builder, data_files, ignored = _split_files_in(path)
            if ignored:
                notes = (f"{path}: read the {builder} split files ({', '.join(Path(f).name for f in data_files.values())}) "
                         f"and ignored {', '.join(ignored)}, which are in another format",)
        elif path.is_file():
            builder = _builder_for(path)
            data_files = {"train": str(path)}
        elif _looks_like_local_path(spec.source):
            raise DataError(f"dataset path {spec.source} does not exist; check the --dataset path.")
        else:
            try:
                return datasets.load_dataset(spec.source, spec.config_name), ()
            except Exception as error:
                raise DataError(_describe_hub_failure(spec.source, error)) from error
        if builder != "parquet":
            for file in data_files.values():
                _check_utf8(Path(file))
        extra = {"keep_default_na": False} if builder == "csv" else {}
        if builder == "csv" and all(f.endswith(".tsv") for f in data_files.values()):
            extra["sep"] = "\t"
        for file in data_files.values():
            _check_unique_columns(Path(file), builder, extra.get("sep", ","))
        # One load per split file, so splits may have different columns (loaded together, datasets casts
        # every file to the first one's): a transfer split from `mtkd-cache augment` has no label column
        # and carries source_split, source_row and augmentation.
        return datasets.DatasetDict({split: datasets.load_dataset(builder, data_files={split: file}, **extra)[split]
                                     for split, file in data_files.items()}), notes
    except DataError:
        raise
    except Exception as error:  # datasets wraps parser errors in many types; report the root cause
        raise DataError(_describe_load_failure(spec.source, error)) from error


def _split_files_in(directory: Path) -> tuple[str, dict[str, str], list[str]]:
    """(builder, split -> file, ignored file names). Like `datasets.load_dataset` on a directory, the split
    files are found by name: when files of several formats sit together (a labels.json or notes.json beside
    train.csv), the format of the train/validation/dev/test files wins and the other files are ignored;
    every file of that format is a split (a transfer split from `augment` has its own name)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _FILE_BUILDERS)
    if not files:
        raise DataError(
            f"{directory} holds no split files; name them after their split, e.g. train.csv, "
            "validation.jsonl, test.parquet."
        )
    builders = {_builder_for(p) for p in files}
    ignored: list[str] = []
    if len(builders) > 1:
        canonical = {_builder_for(p) for p in files if p.stem in _CANONICAL_SPLITS}
        if len(canonical) != 1:
            raise DataError(f"{directory} mixes file formats ({', '.join(p.name for p in files)}) and its split files "
                            f"({'/'.join(_CANONICAL_SPLITS)}) do not share one; keep one format for the splits.")
        builders = canonical
        ignored = [p.name for p in files if _builder_for(p) not in canonical]
        files = [p for p in files if _builder_for(p) in canonical]
    data_files = {}
    files.sort(key=lambda p: (_CANONICAL_SPLITS.index(p.stem) if p.stem in _CANONICAL_SPLITS else 99, p.stem))
    for file in files:
        if file.stem in data_files:
            raise DataError(f"{directory} has two files for split '{file.stem}'; keep one.")
        data_files[file.stem] = str(file)
    return builders.pop(), data_files, ignored


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"cannot read {path}: it is not valid UTF-8 (byte {offset + error.start}: {error.reason}); "
                    "re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"cannot read {path}: it ends inside a UTF-8 character; re-encode it as UTF-8.") from None


def _check_unique_columns(path: Path, builder: str, separator: str) -> None:
    """Refuse a file that names a column twice: the CSV reader renames the second one (`text` -> `text.1`)
    and the parquet reader fails on an ambiguous name, so which column became the texts would be a guess."""
    if builder == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle, delimiter=separator), [])
    elif builder == "parquet":
        import pyarrow.parquet as pq

        try:
            header = pq.read_schema(path).names
        except Exception:  # not a parquet file: the load below reports it with its cause
            return
    else:
        return  # a JSON object cannot hold a key twice once parsed; the last one wins, as in every JSON reader
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"cannot read {path}: it names column '{name}' twice; rename one of them.")
        seen.add(name)


def _builder_for(path: Path) -> str:
    try:
        return _FILE_BUILDERS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"cannot read {path}: unknown file type '{path.suffix}'; use .csv, .tsv, .json, .jsonl or .parquet."
        ) from None


def _looks_like_local_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in _FILE_BUILDERS or source.count("/") > 1


def _describe_hub_failure(source: str, error: BaseException) -> str:
    """A name that is neither a local path nor a loadable hub dataset: most often a typo of a local directory
    (`--dataset nwes`), so the nearest names here are offered; datasets' own root cause ("not cached in None")
    names neither."""
    import difflib
    import os

    nearby = difflib.get_close_matches(source, [p.name for p in Path.cwd().iterdir()], n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(f'./{name}' for name in nearby)}?" if nearby
            else "check the spelling, or pass a local path (./DIR or a file).")
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    why = ("the Hub is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and it is not in the local datasets cache"
           if offline else f"the Hub did not give it ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
    return f"--dataset {source}: no file or directory of that name here, and as a hub dataset id {why}; {hint}"


def _describe_load_failure(source: str, error: BaseException) -> str:
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    detail = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    if "corresponds to no data" in detail:  # datasets' wording for a split file without rows
        return f"a split of {source} is empty ({detail}); drop it from --splits or add rows."
    return f"cannot load dataset {source}: {detail}"


def _columns_of(dataset, split: str, spec: DatasetSpec) -> tuple[list[str], list[str] | None, list | None]:
    available = list(dataset.column_names)
    repeated = sorted({name for name in available if available.count(name) > 1})
    if repeated:
        raise DataError(f"split '{split}' of {spec.source} has column '{repeated[0]}' twice; rename one of them.")
    if dataset.num_rows == 0:
        raise DataError(f"split '{split}' of {spec.source} is empty; drop it from --splits or add rows.")
    for option, column in (("--text-column", spec.text_column), ("--text-pair-column", spec.text_pair_column)):
        if column is not None and column not in available:
            raise DataError(
                f"split '{split}' has no column '{column}' ({option}); its columns are {', '.join(available)}."
            )
    texts = _texts(dataset[spec.text_column], split, spec.text_column)
    pairs = _texts(dataset[spec.text_pair_column], split, spec.text_pair_column) if spec.text_pair_column else None
    raw_labels = list(dataset[spec.label_column]) if spec.label_column in available else None
    return texts, pairs, raw_labels


def _texts(values: Sequence, split: str, column: str) -> list[str]:
    texts, bad_rows = [], []
    for row, value in enumerate(values):
        if value is None:
            bad_rows.append(row)
            texts.append("")
            continue
        text = value if isinstance(value, str) else str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            bad_rows.append(row)
        texts.append(text)
    if bad_rows:
        raise DataError(
            f"column '{column}' of split '{split}' has missing or invalid-unicode text at rows "
            f"{_name_rows(bad_rows)}; fill or remove those rows."
        )
    return texts


def _label_names(dataset_dict, columns: dict, spec: DatasetSpec) -> tuple[str, ...]:
    if spec.label_names:
        return tuple(spec.label_names)
    for name in columns:
        feature = dataset_dict[name].features.get(spec.label_column)
        if feature is not None and hasattr(feature, "names"):  # datasets.ClassLabel
            return tuple(feature.names)
    values = {v for _, _, labels in columns.values() if labels is not None for v in labels if not _is_missing(v)}
    if not values:
        raise DataError(
            f"no split has labels in column '{spec.label_column}' (--label-column); at least one labeled "
            "split is needed to know the label names, or pass --label-names."
        )
    if all(isinstance(v, str) for v in values):
        return tuple(sorted(values))
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise DataError(f"label column '{spec.label_column}' has negative class ids other than -1 (unlabeled).")
        return tuple(str(i) for i in range(max(values) + 1))
    kinds = sorted({type(v).__name__ for v in values})
    raise DataError(
        f"label column '{spec.label_column}' holds {'/'.join(kinds)} values; labels must be class names "
        "(strings) or class ids (integers)."
    )


def _is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, (int, np.integer)) and value == -1)


def _label_indices(raw: list | None, rows: int, label_names: tuple[str, ...], split: str) -> np.ndarray:
    if raw is None:  # a split without the label column is unlabeled transfer data
        return np.full(rows, -1, dtype=np.int64)
    index_of = {name: i for i, name in enumerate(label_names)}
    labels = np.full(len(raw), -1, dtype=np.int64)
    unknown: dict[str, list[int]] = {}
    for row, value in enumerate(raw):
        if _is_missing(value):
            continue
        if isinstance(value, str):
            position = index_of.get(value)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            position = int(value) if 0 <= value < len(label_names) else None
        else:
            position = None
        if position is None:
            unknown.setdefault(str(value), []).append(row)
        else:
            labels[row] = position
    if unknown:
        shown = "; ".join(f"'{v}' at rows {_name_rows(rows)}" for v, rows in list(unknown.items())[:5])
        raise DataError(
            f"split '{split}' has labels outside the label names ({', '.join(label_names)}): {shown}. "
            "Fix the data or pass --label-names with every label."
        )
    return labels


def _name_rows(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:_MAX_ROWS_NAMED]))
    return shown + (f" and {len(rows) - _MAX_ROWS_NAMED} more" if len(rows) > _MAX_ROWS_NAMED else "")
