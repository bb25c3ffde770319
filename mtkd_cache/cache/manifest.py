"""The manifest: the cache's single commit point (RELIABILITY.md: "the manifest is the commit point").

Readers use only the shards the manifest lists. The manifest is replaced atomically: written to a
temporary file, fsynced, renamed over the old one, and the directory fsynced, so a crash at any instant
leaves the previous or the next version, never a torn one.

Nothing in a manifest is trusted before it is checked: `parse_manifest` (used for local manifests and for
the remote ones `pull` reads) checks the digest, then every field's type and range, every name, and every
cross-reference (a shard's split and teacher exist, its rows lie inside its split), and refuses with one
line naming the field. A hostile or damaged manifest never reaches a reader that would allocate or open
what it says.

Format history (readers upgrade older versions in `_upgrade`):
  1 — first version. Later, within it: a teacher's optional `providers` (the onnx backend's onnxruntime
      execution providers); written only when non-empty, so torch-backend caches stay readable by 0.1.0.
  2 — the manifest carries `digest`: the sha256 of its canonical JSON without that field
      (`json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, UTF-8), checked
      on every parse, so a flipped byte is refused instead of trusted. Shards written since carry their own
      identity in the Parquet key-value metadata (shards.py, key `mtkd_cache.shard`). A format-1 manifest
      is read without a digest check, and its shards without metadata are identified by their sample ids
      alone; a build that resumes a format-1 cache rewrites its manifest as format 2 (the old shards keep
      no metadata and stay valid, new shards carry it). Later, within it: a teacher's optional language-model
      and import fields (`TeacherRecord.OPTIONAL_FIELDS`: prompt, verbalizers, shots, scoring, calibration,
      an endpoint's server model and floored cells, an imported file's sha256), written only where set and
      counted in the identity digest only where set, so caches without them read and resume as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.choices import Choice
from mtkd_cache.errors import CacheFormatError
from mtkd_cache.layout import MANIFEST_NAME, MAX_ROWS, NAME, PACKAGE_VERSION, SHARD_PATH

FORMAT_VERSION = 2
DIGEST_FIELD = "digest"


class LogitsDType(Choice):
    """The precision logits are stored in; the manifest records the value string."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


@dataclass
class ShardRecord:
    """One Parquet file: the inputs of a split (teacher None) or one teacher's outputs on a split."""

    path: str  # relative to the cache directory, forward slashes
    split: str
    teacher: str | None
    row_start: int
    row_end: int
    rows: int
    bytes: int
    sha256: str


@dataclass
class TeacherRecord:
    """Everything that decides a teacher's logits; `IDENTITY_FIELDS` must match to reuse a shard."""

    name: str
    source: str
    backend: str
    revision: str | None
    weights_sha256: str
    tokenizer_sha256: str
    dtype: str
    max_length: int
    model_label_names: list[str]
    label_mapping: list[int]
    device: str = ""
    attn_implementation: str = ""
    truncated_rows: dict[str, int] = field(default_factory=dict)
    # Recorded, not compared (like `device`): the same file resumed on another provider is the same teacher.
    providers: list[str] = field(default_factory=list)
    # A teacher that reads text as a language model (backend causal-lm or openai): its prompt and scoring.
    prompt_template: str = ""
    prompt_sha256: str = ""
    chat_template_sha256: str = ""
    verbalizers: dict[str, str] = field(default_factory=dict)  # dataset label -> the word it is scored on
    shots: dict = field(default_factory=dict)  # split, seed, count, sample_ids; empty when zero-shot
    scoring: str = ""  # first-token | sequence (causal-lm); echo | top-logprobs (openai); imported
    calibration: str = ""
    # Imported logits (backend imported): the file's sha256 and the user's free-form note.
    file_sha256: str = ""
    note: str = ""
    # Recorded, not compared: what an endpoint reported, and how approximate its first-token scores are.
    server_model: str = ""
    system_fingerprint: str = ""
    logprob_floor: float | None = None  # the value given to a label missing from the returned top-k
    floored_cells: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> {row_start: cells}

    IDENTITY_FIELDS = ("backend", "revision", "weights_sha256", "tokenizer_sha256", "dtype", "max_length",
                       "label_mapping")
    # Identity too, but only where set: a teacher without them keeps the identity digest it had before
    # these fields existed, so older caches' shards stay theirs.
    OPTIONAL_IDENTITY_FIELDS = ("prompt_template", "prompt_sha256", "chat_template_sha256", "verbalizers", "shots",
                                "scoring", "calibration", "file_sha256")
    OPTIONAL_FIELDS = (*OPTIONAL_IDENTITY_FIELDS, "note", "server_model", "system_fingerprint", "logprob_floor",
                       "floored_cells")

    def differences(self, other: TeacherRecord) -> list[tuple[str, object, object]]:
        return [(f, getattr(self, f), getattr(other, f)) for f in (*self.IDENTITY_FIELDS, *self.OPTIONAL_IDENTITY_FIELDS)
                if getattr(self, f) != getattr(other, f)]

    def identity(self) -> str:
        """A digest of `IDENTITY_FIELDS` (and the optional ones that are set): what a shard records as its
        teacher. Not the name, so that a teacher renamed by `merge --rename` still owns its shards, while
        another teacher's shard is told apart."""
        values = {name: getattr(self, name) for name in self.IDENTITY_FIELDS}
        values.update({name: getattr(self, name) for name in self.OPTIONAL_IDENTITY_FIELDS if getattr(self, name)})
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()

    def floored_per_split(self) -> dict[str, int]:
        """Cells that got the endpoint's floor value, per split (summed over its shards)."""
        return {split: sum(counts.values()) for split, counts in self.floored_cells.items()}


@dataclass
class SplitRecord:
    rows: int
    fingerprint: str
    labeled: bool


@dataclass
class DatasetRecord:
    source: str
    config_name: str | None
    text_column: str
    text_pair_column: str | None
    label_column: str
    fingerprint: str
    text_policy: str
    duplicate_policy: str


@dataclass
class Manifest:
    dataset: DatasetRecord
    label_names: list[str]
    splits: dict[str, SplitRecord]
    shard_rows: int
    logits_dtype: str
    teachers: dict[str, TeacherRecord] = field(default_factory=dict)
    shards: list[ShardRecord] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    tool_version: str = PACKAGE_VERSION
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def shard(self, split: str, teacher: str | None, row_start: int) -> ShardRecord | None:
        for record in self.shards:
            if record.split == split and record.teacher == teacher and record.row_start == row_start:
                return record
        return None

    def shards_of(self, split: str, teacher: str | None) -> list[ShardRecord]:
        found = [r for r in self.shards if r.split == split and r.teacher == teacher]
        return sorted(found, key=lambda r: r.row_start)

    def put_shard(self, record: ShardRecord) -> None:
        self.shards = [r for r in self.shards
                       if (r.split, r.teacher, r.row_start) != (record.split, record.teacher, record.row_start)]
        self.shards.append(record)

    def complete(self, split: str, teacher: str | None) -> bool:
        """True when the listed shards cover every row of the split exactly once."""
        covered = 0
        for record in self.shards_of(split, teacher):
            if record.row_start != covered:
                return False
            covered = record.row_end
        return covered == self.splits[split].rows

    def to_json(self) -> str:
        # Shallow field dicts instead of dataclasses.asdict: asdict deep-copies every record and dominated
        # the per-shard commit of large caches (25 of 31 ms at 738 shards).
        document = {**_fields(self), "format_version": FORMAT_VERSION, "dataset": _fields(self.dataset),
                    "splits": {name: _fields(split) for name, split in self.splits.items()},
                    "teachers": {name: teacher_fields(teacher) for name, teacher in self.teachers.items()},
                    "shards": [_fields(record) for record in self.shards]}
        document[DIGEST_FIELD] = manifest_digest(document)
        return json.dumps(document, indent=1)

    def save(self, cache_dir: Path) -> None:
        """Commit this manifest, in the current format (a manifest read from an older one is upgraded)."""
        self.updated_at = time.time()
        self.format_version = FORMAT_VERSION
        write_atomically(cache_dir / MANIFEST_NAME, self.to_json(), durable=True, fault="manifest_tmp")


def manifest_digest(document: dict) -> str:
    """The sha256 of a manifest document's canonical JSON, leaving out the digest field itself."""
    content = {key: value for key, value in document.items() if key != DIGEST_FIELD}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()


def _fields(record) -> dict:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def teacher_fields(teacher: TeacherRecord) -> dict:
    # 0.1.0 readers refuse unknown teacher fields; leaving out an empty `providers` keeps torch-backend
    # caches readable by them (only onnx-backend caches need the newer reader).
    # The language-model and import fields are likewise left out where unset.
    fields = _fields(teacher)
    for name in ("providers", *TeacherRecord.OPTIONAL_FIELDS):
        if fields[name] in ("", None, [], {}):
            del fields[name]
    return fields


def load_manifest(cache_dir: Path) -> Manifest:
    path = cache_dir / MANIFEST_NAME
    if not cache_dir.is_dir():
        raise CacheFormatError(f"{cache_dir} is not a directory; pass the directory `mtkd-cache build --out` wrote.")
    if not path.exists():
        raise CacheFormatError(
            f"{cache_dir} has no {MANIFEST_NAME}, so it is not a committed cache; run `mtkd-cache build --out {cache_dir}`."
        )
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A manifest from its bytes (a local file or a remote object named `where` in messages), checked
    field by field; anything damaged, hostile or inconsistent raises a one-line CacheFormatError."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheFormatError(f"{where} is not valid JSON ({error}); restore it or rebuild the cache.") from error
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if not _is_int(version):
        raise CacheFormatError(f"{where} has no format_version; it is not an mtkd-cache manifest.")
    if version > FORMAT_VERSION:
        raise CacheFormatError(
            f"{where} is cache format {version}, newer than this mtkd-cache reads ({FORMAT_VERSION}); "
            "upgrade with `pip install -U mtkd-cache`."
        )
    if version < 1:
        raise CacheFormatError(f"{where} has format_version {version}; no such version exists. Restore it or rebuild.")
    # Fields first, so that a bad value is named exactly; then the digest, which catches every change that
    # leaves the manifest well-formed (a flipped digit of a hash, a row count, a label name).
    try:
        manifest = _from_dict(_upgrade(raw))
        _validate(manifest)
    except InvalidField as error:
        raise CacheFormatError(f"{where} has an invalid {error}; restore it or rebuild the cache.") from error
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CacheFormatError(f"{where} is missing or has a malformed field ({error}); restore it or rebuild.") from error
    if version >= 2:
        _check_digest(raw, where)
    return manifest


def _check_digest(raw: dict, where: str) -> None:
    recorded = raw.get(DIGEST_FIELD)
    if recorded is None:
        raise CacheFormatError(f"{where} is damaged: it has no {DIGEST_FIELD}; pull a good copy or rebuild the cache.")
    actual = manifest_digest(raw)
    if recorded != actual:
        raise CacheFormatError(
            f"{where} is damaged: its content hashes to {actual}, its {DIGEST_FIELD} says {recorded}; "
            "pull a good copy or rebuild the cache."
        )


def _upgrade(raw: dict) -> dict:
    # Each older format version gets a step here that rewrites it into the next one. 1 -> 2 adds only the
    # digest (checked above for 2, absent in 1) and shard metadata (read where present): no field changes.
    return {key: value for key, value in raw.items() if key != DIGEST_FIELD}


class InvalidField(ValueError):
    """A manifest field of the right shape but an impossible value; the message names the field."""

    def __init__(self, name: str, value: object, expected: str):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(f"field {name} = {shown} ({expected})")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(record, types: dict[str, type | tuple[type, ...]]):
    """Refuse a hand-edited or damaged field early, rather than fail later far from the manifest."""
    for name, expected in types.items():
        value = getattr(record, name)
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _as_tuple(expected)):
            raise TypeError(f"{type(record).__name__}.{name} is {value!r}")
    return record


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def checked_shard(record: ShardRecord) -> ShardRecord:
    """`record` when its path is the one its split, teacher and rows give (layout.SHARD_PATH); a path that
    could lead a reader or `pull` outside the cache is refused when the manifest is parsed."""
    _typed(record, _SHARD_TYPES)
    match = SHARD_PATH.match(record.path)
    if (match is None or ".." in record.path.split("/")
            or (match["split"] or match["split2"]) != record.split or match["teacher"] != record.teacher
            or (int(match["start"]), int(match["end"])) != (record.row_start, record.row_end)):
        raise ValueError(f"shard path {record.path!r} does not match its split, teacher and rows")
    return record


_SHARD_TYPES = {"path": str, "split": str, "teacher": (str, type(None)), "row_start": int, "row_end": int,
                "rows": int, "bytes": int, "sha256": str}
_TEACHER_TYPES = {"name": str, "source": str, "backend": str, "revision": (str, type(None)), "weights_sha256": str,
                  "tokenizer_sha256": str, "dtype": str, "max_length": int, "model_label_names": list,
                  "label_mapping": list, "device": str, "attn_implementation": str, "truncated_rows": dict,
                  "providers": list, "prompt_template": str, "prompt_sha256": str, "chat_template_sha256": str,
                  "verbalizers": dict, "shots": dict, "scoring": str, "calibration": str, "file_sha256": str,
                  "note": str, "server_model": str, "system_fingerprint": str,
                  "logprob_floor": (float, int, type(None)), "floored_cells": dict}
_DATASET_TYPES = {"source": str, "config_name": (str, type(None)), "text_column": str,
                  "text_pair_column": (str, type(None)), "label_column": str, "fingerprint": str, "text_policy": str,
                  "duplicate_policy": str}
_UNTOKENIZED_BACKENDS = ("imported", "openai")
_NAME_PATTERN = re.compile(rf"^{NAME}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_LOGITS_DTYPES = tuple(choice.value for choice in LogitsDType)


def _from_dict(raw: dict) -> Manifest:
    return Manifest(
        dataset=_typed(DatasetRecord(**raw["dataset"]), _DATASET_TYPES),
        label_names=list(raw["label_names"]),
        splits={name: _typed(SplitRecord(**value), {"rows": int, "fingerprint": str, "labeled": bool})
                for name, value in raw["splits"].items()},
        shard_rows=raw["shard_rows"],
        logits_dtype=raw["logits_dtype"],
        teachers={name: _typed(TeacherRecord(**value), _TEACHER_TYPES) for name, value in raw["teachers"].items()},
        shards=[checked_shard(ShardRecord(**value)) for value in raw["shards"]],
        format_version=raw["format_version"],  # as read (`info` shows it); `save` writes FORMAT_VERSION
        tool_version=raw["tool_version"],
        created_at=raw["created_at"],
        updated_at=raw["updated_at"],
    )


# --- validation: values and cross-references, after the types are known to be right ----------------------

def _validate(manifest: Manifest) -> None:
    _require(_SHA256_PATTERN.match(manifest.dataset.fingerprint), "dataset.fingerprint", manifest.dataset.fingerprint,
             "64 hex digits")
    _validate_label_names(manifest.label_names)
    _require(_is_int(manifest.shard_rows) and 1 <= manifest.shard_rows <= MAX_ROWS, "shard_rows", manifest.shard_rows,
             f"an integer from 1 to {MAX_ROWS}")
    _require(manifest.logits_dtype in _LOGITS_DTYPES, "logits_dtype", manifest.logits_dtype,
             f"one of {', '.join(_LOGITS_DTYPES)}")
    _require(isinstance(manifest.tool_version, str), "tool_version", manifest.tool_version, "a string")
    for name in ("created_at", "updated_at"):
        value = getattr(manifest, name)
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, "a number")
    _require(len(manifest.splits) > 0, "splits", manifest.splits, "at least one split")
    for name, split in manifest.splits.items():
        _validate_split(name, split)
    for name, teacher in manifest.teachers.items():
        _validate_teacher(name, teacher, manifest)
    _validate_shards(manifest)


def _require(condition: object, name: str, value: object, expected: str) -> None:
    if not condition:
        raise InvalidField(name, value, expected)


def _validate_name(value: object, field_name: str) -> None:
    _require(isinstance(value, str) and _NAME_PATTERN.match(value), field_name, value,
             "letters, digits, '_', '.' and '-' only, starting with a letter or digit")


def _validate_label_names(names: list) -> None:
    _require(len(names) >= 1, "label_names", names, "at least one label")
    for position, name in enumerate(names):
        _require(isinstance(name, str) and name.strip(), f"label_names[{position}]", name, "a non-empty string")
    _require(len(set(names)) == len(names), "label_names", names, "no label twice")


def _validate_split(name: str, split: SplitRecord) -> None:
    _validate_name(name, f"splits key {name!r}")
    _require(1 <= split.rows <= MAX_ROWS, f"splits.{name}.rows", split.rows, f"an integer from 1 to {MAX_ROWS}")
    _require(_SHA256_PATTERN.match(split.fingerprint), f"splits.{name}.fingerprint", split.fingerprint, "64 hex digits")


def _validate_teacher(name: str, teacher: TeacherRecord, manifest: Manifest) -> None:
    where = f"teachers.{name}"
    _validate_name(name, f"teachers key {name!r}")
    _require(teacher.name == name, f"{where}.name", teacher.name, f"the teacher's key, {name!r}")
    # 0 where no length limit applies: an imported teacher, an endpoint that sees whole prompts.
    lowest = 0 if teacher.backend in _UNTOKENIZED_BACKENDS else 1
    _require(lowest <= teacher.max_length <= MAX_ROWS, f"{where}.max_length", teacher.max_length, "a positive integer")
    for position, label in enumerate(teacher.model_label_names):
        _require(isinstance(label, str) and label, f"{where}.model_label_names[{position}]", label, "a non-empty string")
    classes = len(teacher.model_label_names)
    _require(len(teacher.label_mapping) == len(manifest.label_names), f"{where}.label_mapping", teacher.label_mapping,
             f"one entry per label name ({len(manifest.label_names)})")
    for position, index in enumerate(teacher.label_mapping):
        _require(_is_int(index) and 0 <= index < classes, f"{where}.label_mapping[{position}]", index,
                 f"an index into the teacher's {classes} labels")
    for split, rows in teacher.truncated_rows.items():
        _require(split in manifest.splits, f"{where}.truncated_rows", split, "a split of the cache")
        _require(_is_int(rows) and 0 <= rows <= manifest.splits[split].rows, f"{where}.truncated_rows.{split}", rows,
                 "a row count within the split")
    _require(all(isinstance(p, str) for p in teacher.providers), f"{where}.providers", teacher.providers,
             "a list of strings")
    _require(all(isinstance(k, str) and isinstance(v, str) for k, v in teacher.verbalizers.items()),
             f"{where}.verbalizers", teacher.verbalizers, "label names mapped to words")
    for split, counts in teacher.floored_cells.items():
        _require(split in manifest.splits and isinstance(counts, dict)
                 and all(_is_int(n) and n >= 0 for n in counts.values()),
                 f"{where}.floored_cells.{split}", counts, "a split's shard row starts mapped to cell counts")


def _validate_shards(manifest: Manifest) -> None:
    seen: dict[tuple[str, str | None], list[ShardRecord]] = {}
    for position, shard in enumerate(manifest.shards):
        where = f"shards[{position}] ({shard.path})"
        _require(shard.split in manifest.splits, f"{where}.split", shard.split, "a split the manifest lists")
        _require(shard.teacher is None or shard.teacher in manifest.teachers, f"{where}.teacher", shard.teacher,
                 "a teacher the manifest lists")
        rows = manifest.splits[shard.split].rows
        _require(0 <= shard.row_start < shard.row_end <= rows, f"{where}.row_end", shard.row_end,
                 f"a range inside split '{shard.split}' of {rows} rows")
        _require(shard.rows == shard.row_end - shard.row_start, f"{where}.rows", shard.rows, "row_end - row_start")
        _require(shard.rows <= manifest.shard_rows, f"{where}.rows", shard.rows, f"at most shard_rows ({manifest.shard_rows})")
        _require(shard.bytes > 0, f"{where}.bytes", shard.bytes, "a positive size")
        _require(_SHA256_PATTERN.match(shard.sha256), f"{where}.sha256", shard.sha256, "64 hex digits")
        seen.setdefault((shard.split, shard.teacher), []).append(shard)
    for (split, teacher), shards in seen.items():
        _require_disjoint(split, teacher, shards)


def _require_disjoint(split: str, teacher: str | None, shards: list[ShardRecord]) -> None:
    """No row is listed twice, so a complete split's shards hold exactly its rows (their sum is its row count)."""
    ordered = sorted(shards, key=lambda record: record.row_start)
    for before, after in zip(ordered, ordered[1:]):
        _require(after.row_start >= before.row_end, f"shards of {split}/{teacher or 'inputs'}", after.path,
                 f"rows that no other shard holds (overlaps {before.path})")
