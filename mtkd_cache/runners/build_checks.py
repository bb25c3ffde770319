"""What an existing cache holds against what a build asks: the dataset (fingerprint, labels, splits, logit
dtype, with the first differing row named) and each teacher's identity. Nothing here writes."""

from __future__ import annotations

from pathlib import Path

from mtkd_cache.cache.manifest import DatasetRecord, Manifest, SplitRecord, TeacherRecord, load_manifest
from mtkd_cache.cache.shards import LogitsDType, parse_shard, read_verified_bytes
from mtkd_cache.data.datasets import DUPLICATE_POLICY, TEXT_POLICY, DatasetSpec, TaskData
from mtkd_cache.errors import CacheMismatchError
from mtkd_cache.hashing import row_digests
from mtkd_cache.layout import MANIFEST_NAME


def open_or_start(out: Path, spec: DatasetSpec, shard_rows: int, logits_dtype: LogitsDType, task: TaskData) -> Manifest:
    """A new manifest for `out`, or its committed one once it holds this dataset, these labels and splits and
    this logit dtype (a CacheMismatchError naming the difference otherwise)."""
    if not (out / MANIFEST_NAME).exists():
        return Manifest(
            dataset=DatasetRecord(
                source=spec.source, config_name=spec.config_name, text_column=spec.text_column,
                text_pair_column=spec.text_pair_column, label_column=spec.label_column,
                fingerprint=task.fingerprint, text_policy=TEXT_POLICY, duplicate_policy=DUPLICATE_POLICY),
            label_names=list(task.label_names),
            splits={name: SplitRecord(rows=s.rows, fingerprint=s.fingerprint, labeled=s.labeled)
                    for name, s in task.splits.items()},
            shard_rows=shard_rows,
            logits_dtype=logits_dtype.value,
        )
    manifest = load_manifest(out)
    if list(task.label_names) != manifest.label_names:
        raise CacheMismatchError(
            f"the cache in {out} has label names {manifest.label_names}, the dataset has {list(task.label_names)}; "
            "build into a new --out."
        )
    if set(task.splits) != set(manifest.splits):
        raise CacheMismatchError(
            f"the cache in {out} holds splits {list(manifest.splits)}, this build asks for {list(task.splits)}; "
            "pass the same --splits or build into a new --out."
        )
    if task.fingerprint != manifest.dataset.fingerprint:
        raise CacheMismatchError(_describe_dataset_change(out, manifest, task))
    if logits_dtype.value != manifest.logits_dtype:
        raise CacheMismatchError(
            f"the cache in {out} stores {manifest.logits_dtype} logits, this build asks for {logits_dtype}; "
            "one cache holds one logit dtype: drop --logits-dtype or build into a new --out."
        )
    return manifest


def _describe_dataset_change(out: Path, manifest: Manifest, task: TaskData) -> str:
    changes = []
    for name, split in task.splits.items():
        cached = manifest.splits[name]
        if cached.fingerprint == split.fingerprint:
            continue
        if cached.rows != split.rows:
            changes.append(f"split '{name}' has {split.rows} rows, the cache {cached.rows}")
            continue
        old = _cached_row_digests(out, manifest, name)
        differing = [i for i, (a, b) in enumerate(zip(old, split.row_digests)) if a != b]
        changes.append(f"split '{name}' differs in {len(differing)} of {split.rows} rows (first: sample {differing[0]})"
                       if differing else f"split '{name}' differs")
    return (f"the dataset differs from the one the cache in {out} was built from ({'; '.join(changes)}); "
            "build into a new --out, or use the original data.")


def _cached_row_digests(out: Path, manifest: Manifest, split: str) -> list[bytes]:
    digests = []
    for record in manifest.shards_of(split, None):
        table = parse_shard(read_verified_bytes(out, record))
        labels = [manifest.label_names[i] if i is not None else None for i in table.column("label").to_pylist()]
        pairs = table.column("text_pair").to_pylist() if "text_pair" in table.column_names else None
        digests += row_digests(table.column("text").to_pylist(), pairs, labels)
    return digests


def check_identities(manifest: Manifest, records: dict[str, TeacherRecord]) -> None:
    """Refuse a teacher whose identity differs from the cached teacher of the same name, naming each field."""
    for name, record in records.items():
        cached = manifest.teachers.get(name)
        if cached is None:
            continue
        differences = cached.differences(record)
        if differences:
            listed = "; ".join(f"{f}: cached {old!r}, now {new!r}" for f, old, new in differences)
            raise CacheMismatchError(
                f"teacher '{name}' is not the one the cache was built with ({listed}); give it a new name to add it "
                "as another teacher, or build into a new --out."
            )
