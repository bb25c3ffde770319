"""Sharing commands: push, pull, merge (info URL lives with info)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtkd_cache.cache.sharing import TransferReport, parse_renames
from mtkd_cache.cache.sharing import merge as merge_caches
from mtkd_cache.cache.sharing import pull as pull_cache
from mtkd_cache.cache.sharing import push as push_cache

from .common import app, split_list, stdout, user_errors
from .options import ConfigFile
from .progress import ProgressEvents


def _transfer(run) -> TransferReport:
    with ProgressEvents() as events:
        return run(events)


def _print(report: TransferReport, verb: str) -> None:
    rate = report.bytes_moved / report.seconds / 1e6 if report.seconds else 0.0
    stdout.print(f"{verb} {report.shards_moved} shard(s), {report.bytes_moved:,} bytes ({rate:.1f} MB/s); "
                 f"{report.shards_present} already there; {report.bytes_total:,} bytes in all")


@app.command()
@user_errors
def push(
    cache: Annotated[Path, typer.Argument(help="Local cache directory.")],
    url: Annotated[str, typer.Argument(help="Destination: a path or fsspec URL (s3://bucket/prefix, hf://datasets/org/repo, gs://…).")],
    config: ConfigFile = None,
) -> None:
    """Send the shards the destination lacks (by sha256), verified on arrival; the manifest goes last.

    Pushes to one directory or S3 remote at the same time all end up listed; other backends: one at a time."""
    _print(_transfer(lambda events: push_cache(cache, url, events)), "pushed")


@app.command()
@user_errors
def pull(
    url: Annotated[str, typer.Argument(help="Source: a path or fsspec URL a cache was pushed to.")],
    cache: Annotated[Path, typer.Argument(help="Local cache directory to create or complete.")],
    teachers: Annotated[str | None, typer.Option(help="Comma-separated teachers to fetch; default all.")] = None,
    config: ConfigFile = None,
) -> None:
    """Fetch the shards the local cache lacks (inputs and the chosen teachers), verifying every one."""
    _print(_transfer(lambda events: pull_cache(url, cache, split_list(teachers), events)), "pulled")


@app.command()
@user_errors
def merge(
    caches: Annotated[list[Path], typer.Argument(help="Caches of the same dataset (e.g. one teacher each).")],
    out: Annotated[Path, typer.Option(help="New cache directory to write.")],
    rename: Annotated[list[str] | None, typer.Option(help="N:OLD=NEW renames teacher OLD of the N-th cache (1-based) to NEW.")] = None,
    config: ConfigFile = None,
) -> None:
    """Join caches built separately on the same dataset fingerprint and labels into one."""
    report = merge_caches(caches, out, parse_renames(rename or [], len(caches)))
    stdout.print(f"merged {len(caches)} caches into {out}: {report.shards} shards, teachers "
                 + ", ".join(f"{name} (from {source})" for name, source in report.teachers.items()))
