"""Regenerate the README's demo table from a finished `mtkd-cache demo` run (its report.json), so the
numbers in the README are the numbers a run printed, never typed.

    mtkd-cache demo --out demo-out --threads 1
    python benchmarks/readme_demo_table.py demo-out            # rewrites the table between the markers
    python benchmarks/readme_demo_table.py demo-out --print    # only prints it

Cheap: it reads report.json and the cache's manifest, it runs nothing. The table sits in README.md between
`<!-- demo-table:start -->` and `<!-- demo-table:end -->`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def render(report: dict, labels: tuple[str, ...], test_rows: int) -> str:
    """The README table: per-class accuracy on test for every model, then accuracy, macro-F1, size, speed, and
    the students' median per-class difference to each teacher."""
    models = report["models"]
    teachers = [m["name"] for m in models if m["role"] == "teacher"]
    lines = [f"| test split ({test_rows} articles) | " + " | ".join(m["name"] for m in models) + " |",
             "|---" * (len(models) + 1) + "|",
             "| role | " + " | ".join(m["role"] for m in models) + " |"]
    for k, label in enumerate(labels):
        lines.append(f"| {label} | " + " | ".join("–" if m["per_class"][k] is None else f"{m['per_class'][k]:.3f}"
                                                 for m in models) + " |")
    best_student = max((m for m in models if m["role"] == "student"), key=lambda m: m["accuracy"])["name"]
    lines.append("| **accuracy** | " + " | ".join(f"**{m['accuracy']:.3f}**" if m["name"] == best_student
                                                   else f"{m['accuracy']:.3f}" for m in models) + " |")
    lines.append("| macro-F1 | " + " | ".join(f"{m['macro_f1']:.3f}" for m in models) + " |")
    lines.append("| parameters | " + " | ".join(f"{m['parameters'] / 1e6:.1f}M" for m in models) + " |")
    lines.append("| ms / sample | " + " | ".join(f"{m['ms_per_sample']:.2f}" for m in models) + " |")
    diffs = []
    for m in models:
        row = report["median_diff"].get(m["name"]) if m["role"] == "student" else None
        diffs.append("" if row is None else " / ".join("–" if row[t] is None else f"{row[t]:+.3f}".replace("-", "−")
                                                      for t in teachers))
    lines.append(f"| median Δ vs {' / '.join(teachers)} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def replace_block(readme: str, table: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md must hold {START} and {END} once each.")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_out", type=Path, help="The --out directory of a finished `mtkd-cache demo`.")
    parser.add_argument("--print", action="store_true", help="Print the table instead of rewriting README.md.")
    args = parser.parse_args(argv)
    from mtkd_cache import open_cache
    from mtkd_cache.demo.pipeline import LABELS

    report = json.loads((args.demo_out / "report.json").read_text())
    table = render(report, LABELS, open_cache(args.demo_out / "cache").manifest.splits["test"].rows)
    if args.print:
        print(table)
    else:
        README.write_text(replace_block(README.read_text(), table))
        print(f"rewrote the demo table in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
