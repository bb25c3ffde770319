"""Transfer data: the augment command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtkd_cache import ConfigError, DatasetSpec
from mtkd_cache.data.augment import (
    DEFAULT_MLM_P,
    DEFAULT_OPS,
    OPERATIONS,
    AugmentConfig,
    augment_to_file,
    default_ops,
    parse_ops,
    read_vocabulary,
)

from .common import app, split_list, stdout, user_errors
from .options import ConfigFile, Threads, from_config
from .progress import ProgressEvents

_DEFAULT_OPS = ",".join(f"{name}={p:g}" for name, p in DEFAULT_OPS)


@app.command()
@user_errors
def augment(
    out: Annotated[Path, typer.Option(help="Split file to write (.csv, .tsv, .json, .jsonl, .parquet), e.g. DATA_DIR/transfer.csv next to the other split files, in their format.")],
    dataset: Annotated[str | None, typer.Argument(help="Dataset as in `build --dataset`: hub id, data file, directory of split files, or save_to_disk directory.", show_default=False)] = None,
    dataset_option: Annotated[str | None, typer.Option("--dataset", help="The dataset, as an option (same as the argument).", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="Split to augment.")] = "train",
    ops: Annotated[str | None, from_config(AugmentConfig, "ops", help=f"OPERATION=P,… one augmented row per operation and copy; operations: {', '.join(OPERATIONS)}. Default {_DEFAULT_OPS}, plus mlm={DEFAULT_MLM_P:g} with --mlm.", show_default=False)] = None,
    copies: Annotated[int, from_config(AugmentConfig, "copies")] = AugmentConfig.copies,
    seed: Annotated[int, from_config(AugmentConfig, "seed")] = AugmentConfig.seed,
    mlm: Annotated[Path | None, from_config(AugmentConfig, "mlm", show_default=False)] = AugmentConfig.mlm,
    placeholder: Annotated[str, from_config(AugmentConfig, "placeholder")] = AugmentConfig.placeholder,
    vocabulary: Annotated[Path | None, from_config(AugmentConfig, "vocabulary", help="Text file, one word per line, that replace draws from; default: the split's own words.", show_default=False)] = None,
    top_k: Annotated[int, from_config(AugmentConfig, "top_k")] = AugmentConfig.top_k,
    max_length: Annotated[int, from_config(AugmentConfig, "max_length")] = AugmentConfig.max_length,
    batch_size: Annotated[int, from_config(AugmentConfig, "batch_size")] = AugmentConfig.batch_size,
    device: Annotated[str, from_config(AugmentConfig, "device")] = AugmentConfig.device,
    text_column: Annotated[str, from_config(DatasetSpec, "text_column", help="Column holding the text (the output's text column has this name too).")] = DatasetSpec.text_column,
    text_pair_column: Annotated[str | None, from_config(DatasetSpec, "text_pair_column", help="Column holding the second text of sentence-pair tasks; both texts are augmented.", show_default=False)] = DatasetSpec.text_pair_column,
    label_column: Annotated[str, from_config(DatasetSpec, "label_column", help="Column holding the label; the output has none (the teachers label it at build).")] = DatasetSpec.label_column,
    label_names: Annotated[str | None, from_config(DatasetSpec, "label_names", help="Comma-separated label names, as for build, when the data's own are missing.", show_default=False)] = None,
    dataset_config: Annotated[str | None, from_config(DatasetSpec, "config_name", show_default=False)] = DatasetSpec.config_name,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Write an unlabeled transfer split of augmented copies of a split's texts; `build` reads it like any split."""
    if (dataset is None) == (dataset_option is None):
        raise ConfigError("give the dataset once: as the DATASET argument or as --dataset.")
    source = dataset or dataset_option
    augment_config = AugmentConfig(
        ops=parse_ops(ops) if ops is not None else default_ops(with_mlm=mlm is not None), copies=copies, seed=seed,
        placeholder=placeholder, vocabulary=read_vocabulary(vocabulary) if vocabulary is not None else None,
        mlm=mlm, top_k=top_k, max_length=max_length, batch_size=batch_size, device=device)
    spec = DatasetSpec(source=source, config_name=dataset_config, text_column=text_column,
                       text_pair_column=text_pair_column, label_column=label_column, label_names=split_list(label_names))
    with ProgressEvents() as events:
        report = augment_to_file(augment_config, spec, split, out, overwrite, events)
    counts = ", ".join(f"{name} {count:,}" for name, count in report.per_operation.items())
    stdout.print(f"wrote {report.rows:,} rows from {report.source_rows:,} '{split}' rows to {out} ({counts}) in "
                 f"{report.seconds:.1f} s; {report.unchanged:,} equal their source (kept).",
                 highlight=False, soft_wrap=True)
    if report.beside_source:
        stdout.print(f"`mtkd-cache build --dataset {source}` caches split '{out.stem}' unlabeled; the teachers label it.",
                     highlight=False, soft_wrap=True)
