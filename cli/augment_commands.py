"""Transfer data: the augment command."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from mtkd_cache import ConfigError, DatasetSpec
from mtkd_cache.data.augment import (
    DEFAULT_MLM_P,
    DEFAULT_OPS,
    OPERATIONS,
    AugmentConfig,
    augment_split,
    check_output,
    load_masked_lm,
    load_source,
    parse_ops,
    write_split,
)

from .common import app, split_list, stdout, user_errors
from .progress import ProgressEvents

_DEFAULT_OPS = ",".join(f"{name}={p:g}" for name, p in DEFAULT_OPS)


@app.command()
@user_errors
def augment(
    out: Annotated[Path, typer.Option(help="Split file to write (.csv, .tsv, .json, .jsonl, .parquet), e.g. DATA_DIR/transfer.csv next to the other split files, in their format.")],
    dataset: Annotated[str | None, typer.Argument(help="Dataset as in `build --dataset`: hub id, data file, directory of split files, or save_to_disk directory.", show_default=False)] = None,
    dataset_option: Annotated[str | None, typer.Option("--dataset", help="The dataset, as an option (same as the argument).", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="Split to augment.")] = "train",
    ops: Annotated[str | None, typer.Option(help=f"OPERATION=P,… one augmented row per operation and copy; operations: {', '.join(OPERATIONS)}. Default {_DEFAULT_OPS}, plus mlm={DEFAULT_MLM_P:g} with --mlm.", show_default=False)] = None,
    copies: Annotated[int, typer.Option(help="Augmented rows per source row and operation.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed; the same seed and inputs give the same file.")] = 0,
    mlm: Annotated[Path | None, typer.Option(help="Local masked-LM checkpoint (save_pretrained directory) for the mlm operation.", show_default=False)] = None,
    placeholder: Annotated[str, typer.Option(help="Token the mask operation writes in place of a word.")] = "[MASK]",
    vocabulary: Annotated[Path | None, typer.Option(help="Text file, one word per line, that replace draws from; default: the split's own words.", show_default=False)] = None,
    top_k: Annotated[int, typer.Option(help="mlm: sample each filled word among this many predictions.")] = 15,
    max_length: Annotated[int, typer.Option(help="mlm: tokens read per text; masks past it keep their word.")] = 128,
    batch_size: Annotated[int, typer.Option(help="mlm: texts per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="mlm: auto, cpu or cuda[:N]. The same file again on CPU; GPU kernels may differ in the last bit.")] = "auto",
    text_column: Annotated[str, typer.Option(help="Column holding the text (the output's text column has this name too).")] = "text",
    text_pair_column: Annotated[str | None, typer.Option(help="Column holding the second text of sentence-pair tasks; both texts are augmented.", show_default=False)] = None,
    label_column: Annotated[str, typer.Option(help="Column holding the label; the output has none (the teachers label it at build).")] = "label",
    label_names: Annotated[str | None, typer.Option(help="Comma-separated label names, as for build, when the data's own are missing.", show_default=False)] = None,
    dataset_config: Annotated[str | None, typer.Option(help="Config name of a hub dataset.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
) -> None:
    """Write an unlabeled transfer split of augmented copies of a split's texts; `build` reads it like any split."""
    if (dataset is None) == (dataset_option is None):
        raise ConfigError("give the dataset once: as the DATASET argument or as --dataset.")
    source = dataset or dataset_option
    words = None
    if vocabulary is not None:
        if not vocabulary.is_file():
            raise ConfigError(f"--vocabulary {vocabulary} is not a file; give a text file with one word per line.")
        words = tuple(dict.fromkeys(w for line in vocabulary.read_text(encoding="utf-8").splitlines() for w in line.split()))
    operations = parse_ops(ops) if ops is not None else DEFAULT_OPS + ((("mlm", DEFAULT_MLM_P),) if mlm else ())
    config = AugmentConfig(ops=operations, copies=copies, seed=seed, placeholder=placeholder, vocabulary=words,
                           mlm=mlm, top_k=top_k, max_length=max_length, batch_size=batch_size, device=device)
    check_output(out, overwrite)
    masked_lm = load_masked_lm(config)
    spec = DatasetSpec(source=source, config_name=dataset_config, text_column=text_column,
                       text_pair_column=text_pair_column, label_column=label_column, label_names=split_list(label_names))
    started = time.perf_counter()
    texts, pairs = load_source(spec, split)
    with ProgressEvents() as events:
        rows = augment_split(texts, pairs, config, events, masked_lm)
    write_split(out, rows, split, text_column, text_pair_column)
    unchanged = sum(rows.texts[i] == texts[row] and (pairs is None or rows.text_pairs[i] == pairs[row])
                    for i, row in enumerate(rows.source_rows))
    counts = ", ".join(f"{name} {count:,}" for name, count in Counter(rows.augmentations).items())
    stdout.print(f"wrote {len(rows):,} rows from {len(texts):,} '{split}' rows to {out} ({counts}) in "
                 f"{time.perf_counter() - started:.1f} s; {unchanged:,} equal their source (kept).",
                 highlight=False, soft_wrap=True)
    if Path(source).is_dir() and Path(source).resolve() == out.parent.resolve():
        stdout.print(f"`mtkd-cache build --dataset {source}` caches split '{out.stem}' unlabeled; the teachers label it.",
                     highlight=False, soft_wrap=True)
