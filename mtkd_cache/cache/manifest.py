"""The manifest: the cache's single commit point (RELIABILITY.md: "the manifest is the commit point").

Readers use only the shards the manifest lists. The manifest is replaced atomically: written to a
temporary file, fsynced, renamed over the old one, and the directory fsynced, so a crash at any instant
leaves the previous or the next version, never a torn one.

Format history (readers upgrade older versions in `_upgrade`):
  1 — first version. Later, within it: a teacher's optional `providers` (the onnx backend's onnxruntime
      execution providers); written only when non-empty, so torch-backend caches stay readable by 0.1.0.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.errors import CacheFormatError
from mtkd_cache.layout import MANIFEST_NAME, PACKAGE_VERSION, SHARD_PATH

FORMAT_VERSION = 1


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

    IDENTITY_FIELDS = ("backend", "revision", "weights_sha256", "tokenizer_sha256", "dtype", "max_length",
                       "label_mapping")

    def differences(self, other: TeacherRecord) -> list[tuple[str, object, object]]:
        return [(f, getattr(self, f), getattr(other, f)) for f in self.IDENTITY_FIELDS
                if getattr(self, f) != getattr(other, f)]


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
        document = {**_fields(self), "dataset": _fields(self.dataset),
                    "splits": {name: _fields(split) for name, split in self.splits.items()},
                    "teachers": {name: teacher_fields(teacher) for name, teacher in self.teachers.items()},
                    "shards": [_fields(record) for record in self.shards]}
        return json.dumps(document, indent=1)

    def save(self, cache_dir: Path) -> None:
        self.updated_at = time.time()
        write_atomically(cache_dir / MANIFEST_NAME, self.to_json(), durable=True, fault="manifest_tmp")


def _fields(record) -> dict:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def teacher_fields(teacher: TeacherRecord) -> dict:
    # 0.1.0 readers refuse unknown teacher fields; leaving out an empty `providers` keeps torch-backend
    # caches readable by them (only onnx-backend caches need the newer reader).
    fields = _fields(teacher)
    if not fields["providers"]:
        del fields["providers"]
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
    """A manifest from its bytes (a local file or a remote object named `where` in messages)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheFormatError(f"{where} is not valid JSON ({error}); restore it or rebuild the cache.") from error
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if not isinstance(version, int):
        raise CacheFormatError(f"{where} has no format_version; it is not an mtkd-cache manifest.")
    if version > FORMAT_VERSION:
        raise CacheFormatError(
            f"{where} is cache format {version}, newer than this mtkd-cache reads ({FORMAT_VERSION}); "
            "upgrade with `pip install -U mtkd-cache`."
        )
    if version < 1:
        raise CacheFormatError(f"{where} has format_version {version}; no such version exists. Restore it or rebuild.")
    try:
        return _from_dict(_upgrade(raw))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CacheFormatError(f"{where} is missing or has a malformed field ({error}); restore it or rebuild.") from error


def _upgrade(raw: dict) -> dict:
    # Each older format version gets a step here that rewrites it into the next one.
    return raw


def _typed(record, types: dict[str, type | tuple[type, ...]]):
    """Refuse a hand-edited or damaged field early, rather than fail later far from the manifest."""
    for name, expected in types.items():
        if not isinstance(getattr(record, name), expected):
            raise TypeError(f"{type(record).__name__}.{name} is {getattr(record, name)!r}")
    return record


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


def _from_dict(raw: dict) -> Manifest:
    return Manifest(
        dataset=DatasetRecord(**raw["dataset"]),
        label_names=list(raw["label_names"]),
        splits={name: _typed(SplitRecord(**value), {"rows": int, "fingerprint": str, "labeled": bool})
                for name, value in raw["splits"].items()},
        shard_rows=int(raw["shard_rows"]),
        logits_dtype=raw["logits_dtype"],
        teachers={name: TeacherRecord(**value) for name, value in raw["teachers"].items()},
        shards=[checked_shard(ShardRecord(**value)) for value in raw["shards"]],
        format_version=FORMAT_VERSION,
        tool_version=raw["tool_version"],
        created_at=raw["created_at"],
        updated_at=raw["updated_at"],
    )
