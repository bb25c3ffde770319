"""Model commands: export (ONNX for serving and the onnx backend) and predict (models side by side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtkd_cache.serve.export import ExportConfig
from mtkd_cache.serve.predict import PredictConfig

from .common import app, split_list, stdout, user_errors
from .options import ConfigFile, Threads, field_help, from_config
from .progress import stderr


@app.command()
@user_errors
def export(
    model_dir: Annotated[Path, typer.Argument(help=field_help(ExportConfig, "model_dir"))],
    out: Annotated[Path, from_config(ExportConfig, "out")],
    max_length: Annotated[int, from_config(ExportConfig, "max_length")] = ExportConfig.max_length,
    opset: Annotated[int, from_config(ExportConfig, "opset")] = ExportConfig.opset,
    label_names: Annotated[str | None, from_config(ExportConfig, "label_names")] = None,
    dynamo: Annotated[bool, from_config(ExportConfig, "dynamo")] = ExportConfig.dynamo,
    tolerance: Annotated[float, from_config(ExportConfig, "tolerance")] = ExportConfig.tolerance,
    quantize: Annotated[str | None, from_config(ExportConfig, "quantize")] = None,
    max_drop: Annotated[float, from_config(ExportConfig, "max_drop")] = ExportConfig.max_drop,
    eval_data: Annotated[Path | None, from_config(ExportConfig, "eval_data")] = None,
    eval_split: Annotated[str | None, from_config(ExportConfig, "eval_split")] = None,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Export a teacher or student to ONNX with dynamic axes and label names; check it against torch (exit 1 on failure).

    With --quantize int8 the file is int8 and the check adds its accuracy against the fp32 graph's."""
    from mtkd_cache.serve.export import export_model

    report = export_model(ExportConfig(model_dir=model_dir, out=out, max_length=max_length, opset=opset,
                                       dynamo=dynamo, label_names=split_list(label_names), tolerance=tolerance,
                                       quantize=quantize, max_drop=max_drop, eval_data=eval_data,
                                       eval_split=eval_split))
    stdout.print(f"wrote {report.out} ({report.bytes / 1e6:.1f} MB, {report.kind}, inputs "
                 f"{', '.join(report.input_names)}, each batch × sequence) and its tokenizer in {report.seconds:.1f} s")
    stdout.print(f"labels: {', '.join(report.label_names)}")
    verdict = "[green]OK[/green]" if report.parity_ok else "[red]FAILED[/red]"
    graph = "the fp32 graph's " if report.quantization else ""
    stdout.print(f"{graph}parity vs torch on {report.parity_rows} sample rows: max |logit difference| "
                 f"{report.max_abs_diff:.2e} (tolerance {report.tolerance:.0e}) {verdict}")
    if report.quantization is not None:
        _print_quantization(report.quantization)
    if report.quantization is not None and report.parity_ok and not report.quantization.ok:
        stderr.print(f"[bold red]error:[/bold red] the int8 graph loses {report.quantization.drop:.2f} accuracy points "
                     f"(more than --max-drop {report.quantization.max_drop:g}); {report.out} is kept for inspection.",
                     soft_wrap=True)
        raise typer.Exit(code=1)
    if not report.parity_ok:
        stderr.print(f"[bold red]error:[/bold red] onnxruntime's logits differ from torch's by {report.max_abs_diff:.2e}; "
                     f"{report.out} is kept for inspection (try --dynamo or another --opset).", soft_wrap=True)
        raise typer.Exit(code=1)


def _print_quantization(check) -> None:
    verdict = "[green]OK[/green]" if check.ok else "[red]FAILED[/red]"
    stdout.print(f"int8 vs fp32 on {check.rows} labelled rows of {check.source}: accuracy {check.int8_accuracy:.4f} vs "
                 f"{check.fp32_accuracy:.4f} (drop {check.drop:+.2f} points, --max-drop {check.max_drop:g}), labels "
                 f"agree on {check.agreement:.1%} {verdict}", soft_wrap=True)
    stdout.print(f"size: {check.int8_bytes / 1e6:.2f} MB int8 vs {check.fp32_bytes / 1e6:.2f} MB fp32 "
                 f"({check.fp32_bytes / max(1, check.int8_bytes):.1f}x smaller)")
    for batch in sorted(check.int8_ms):
        stdout.print(f"CPU latency at batch {batch}: {check.int8_ms[batch]:.2f} ms/sample int8 vs "
                     f"{check.fp32_ms[batch]:.2f} fp32 ({check.fp32_ms[batch] / max(1e-9, check.int8_ms[batch]):.2f}x)")


@app.command()
@user_errors
def predict(
    models: Annotated[list[Path], typer.Argument(help="Models to compare: save_pretrained directories, RUN/student directories, .onnx files.")],
    text: Annotated[list[str] | None, typer.Option(help="A text to classify; repeat for several.")] = None,
    file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="A file of texts, one per line (blank lines skipped).")] = None,
    max_length: Annotated[int, from_config(PredictConfig, "max_length")] = PredictConfig.max_length,
    label_names: Annotated[str | None, from_config(PredictConfig, "label_names")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    ensemble: Annotated[bool, from_config(PredictConfig, "ensemble")] = PredictConfig.ensemble,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Each model's label and probability for each text, side by side (CPU)."""
    texts = list(text or [])
    if file is not None:
        texts += [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    from mtkd_cache.serve.predict import predict_side_by_side

    result = predict_side_by_side(models, texts, PredictConfig(max_length, split_list(label_names), ensemble))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    many = len(result.classifiers) > 1
    table = Table("text", *[f"{c.name}\n({c.runtime})" for c in result.classifiers], *(["agree"] if many else []),
                  *result.ensembles)
    for i, t in enumerate(result.texts):
        labels = {result.predictions[c.name][i].label for c in result.classifiers}
        cells = [f"{p[i].label} {p[i].probability:.2f}" for p in result.predictions.values()]
        agree = ["yes" if len(labels) == 1 else "[yellow]no[/yellow]"] if many else []
        table.add_row(t if len(t) <= 60 else t[:57] + "…", *cells[:len(result.classifiers)], *agree,
                      *cells[len(result.classifiers):])
    stdout.print(table)
