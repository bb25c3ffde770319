"""Model commands: export (ONNX for serving and the onnx backend) and predict (models side by side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtkd_cache import ConfigError
from mtkd_cache.serve.export import ExportConfig, export_model
from mtkd_cache.serve.predict import Prediction, class_probabilities, ensemble_predictions, load_classifiers

from .common import app, split_list, stdout, user_errors
from .progress import stderr


@app.command()
@user_errors
def export(
    model_dir: Annotated[Path, typer.Argument(help="A teacher's save_pretrained directory or a distilled student (RUN/student, BiLSTM included).")],
    out: Annotated[Path, typer.Option(help="The .onnx file to write; the tokenizer is saved beside it, so give each model its own directory.")],
    max_length: Annotated[int, typer.Option(help="Truncation of the parity-check texts (the graph takes any length).")] = 128,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    label_names: Annotated[str | None, typer.Option(help="Comma-separated label names in class order, for a BiLSTM saved without them.")] = None,
    dynamo: Annotated[bool, typer.Option(help="Use torch's dynamo exporter (needs onnxscript) instead of the TorchScript one.")] = False,
    tolerance: Annotated[float, typer.Option(help="Largest |torch - onnxruntime| logit difference the parity check accepts.")] = 1e-4,
) -> None:
    """Export a teacher or student to ONNX with dynamic axes and label names; check it against torch (exit 1 on failure)."""
    report = export_model(ExportConfig(model_dir=model_dir, out=out, max_length=max_length, opset=opset,
                                       dynamo=dynamo, label_names=split_list(label_names), tolerance=tolerance))
    stdout.print(f"wrote {report.out} ({report.bytes / 1e6:.1f} MB, {report.kind}, inputs "
                 f"{', '.join(report.input_names)}, each batch × sequence) and its tokenizer in {report.seconds:.1f} s")
    stdout.print(f"labels: {', '.join(report.label_names)}")
    verdict = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    stdout.print(f"parity vs torch on {report.parity_rows} sample rows: max |logit difference| "
                 f"{report.max_abs_diff:.2e} (tolerance {report.tolerance:.0e}) {verdict}")
    if not report.ok:
        stderr.print(f"[bold red]error:[/bold red] onnxruntime's logits differ from torch's by {report.max_abs_diff:.2e}; "
                     f"{report.out} is kept for inspection (try --dynamo or another --opset).", soft_wrap=True)
        raise typer.Exit(code=1)


@app.command()
@user_errors
def predict(
    models: Annotated[list[Path], typer.Argument(help="Models to compare: save_pretrained directories, RUN/student directories, .onnx files.")],
    text: Annotated[list[str] | None, typer.Option(help="A text to classify; repeat for several.")] = None,
    file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="A file of texts, one per line (blank lines skipped).")] = None,
    max_length: Annotated[int, typer.Option(help="Tokens per text before truncation.")] = 128,
    label_names: Annotated[str | None, typer.Option(help="Comma-separated label names, for a BiLSTM saved without them.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    ensemble: Annotated[bool, typer.Option(help="Add a majority-vote and a mean-probability ensemble of the models.")] = False,
) -> None:
    """Each model's label and probability for each text, side by side (CPU)."""
    texts = list(text or [])
    if file is not None:
        texts += [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("give texts to classify with --text \"...\" (repeatable) or --file with one text per line.")
    classifiers = load_classifiers(models, split_list(label_names))
    probabilities = [class_probabilities(c, texts, max_length) for c in classifiers]
    results = {c.name: [Prediction(c.label_names[k], float(row[k])) for row, k in zip(p, p.argmax(axis=1))]
               for c, p in zip(classifiers, probabilities)}
    if ensemble:
        results |= ensemble_predictions(classifiers, probabilities)
    if as_json:
        rows = [{"text": t, "predictions": {name: {"label": r[i].label, "probability": round(r[i].probability, 6)}
                                            for name, r in results.items()}} for i, t in enumerate(texts)]
        print(json.dumps({"models": {c.name: {"path": str(c.path), "runtime": c.runtime} for c in classifiers},
                          "texts": rows}, indent=2))
        return
    many = len(classifiers) > 1
    extra = [name for name in results if name not in {c.name for c in classifiers}]  # the ensembles
    table = Table("text", *[f"{c.name}\n({c.runtime})" for c in classifiers], *(["agree"] if many else []), *extra)
    for i, t in enumerate(texts):
        labels = {results[c.name][i].label for c in classifiers}
        cells = [f"{r[i].label} {r[i].probability:.2f}" for r in results.values()]
        agree = ["yes" if len(labels) == 1 else "[yellow]no[/yellow]"] if many else []
        table.add_row(t if len(t) <= 60 else t[:57] + "…", *cells[:len(classifiers)], *agree, *cells[len(classifiers):])
    stdout.print(table)
