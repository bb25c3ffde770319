"""import-logits: a teacher whose logits were computed elsewhere, joined into a cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtkd_cache.cache.imports import ImportConfig

from .common import app, split_list, stdout, user_errors
from .options import ConfigFile, from_config


@app.command("import-logits")
@user_errors
def import_logits_command(
    cache: Annotated[Path, typer.Argument(help="Cache directory to add the teacher to.")],
    teacher: Annotated[str, from_config(ImportConfig, "teacher")],
    file: Annotated[Path, from_config(ImportConfig, "file")],
    split: Annotated[str | None, from_config(ImportConfig, "split")] = ImportConfig.split,
    label_names: Annotated[str | None, from_config(ImportConfig, "label_names")] = None,
    source: Annotated[str, from_config(ImportConfig, "source")] = ImportConfig.source,
    revision: Annotated[str | None, from_config(ImportConfig, "revision")] = ImportConfig.revision,
    note: Annotated[str, from_config(ImportConfig, "note")] = ImportConfig.note,
    config: ConfigFile = None,
) -> None:
    """Add logits computed elsewhere (.parquet, .csv, .npy) to a cache as a teacher, every row checked first."""
    from mtkd_cache.cache.imports import import_logits

    report = import_logits(ImportConfig(cache=cache, teacher=teacher, file=file, split=split,
                                        label_names=split_list(label_names), source=source, revision=revision,
                                        note=note))
    rows = ", ".join(f"{name} {count:,}" for name, count in report.rows.items())
    stdout.print(f"teacher '{report.teacher}' imported into {cache} (rows: {rows}; file sha256 "
                 f"{report.file_sha256[:12]}): {report.shards_written} shard(s) written, {report.shards_reused} reused")
