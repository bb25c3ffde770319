"""The README's demo table is what benchmarks/readme_demo_table.py renders: the numbers parsed back from the
README and rendered again give the same block, and the script rewrites only the block between its markers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_demo_table", ROOT / "benchmarks" / "readme_demo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _number(cell: str) -> float | None:
    cell = cell.strip().strip("*").replace("−", "-")
    return None if cell in ("–", "") else float(cell.rstrip("M"))


def _report_from_readme(block: str) -> tuple[dict, tuple[str, ...], int]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if not line.startswith("|---")]
    header, roles, *rest = rows
    names = header[1:]
    test_rows = int(re.search(r"\((\d+) articles\)", header[0]).group(1))
    by_label = {row[0]: row[1:] for row in rest}
    labels = tuple(name for name in by_label if name not in ("**accuracy**", "macro-F1", "parameters", "ms / sample")
                   and not name.startswith("median"))
    teachers = [n for n, role in zip(names, roles[1:]) if role == "teacher"]
    median = next(row for key, row in by_label.items() if key.startswith("median"))
    models, diffs = [], {}
    for i, (name, role) in enumerate(zip(names, roles[1:])):
        models.append({"name": name, "role": role, "per_class": [_number(by_label[label][i]) for label in labels],
                       "accuracy": _number(by_label["**accuracy**"][i]), "macro_f1": _number(by_label["macro-F1"][i]),
                       "parameters": _number(by_label["parameters"][i]) * 1e6,
                       "ms_per_sample": _number(by_label["ms / sample"][i])})
        if role == "student":
            diffs[name] = dict(zip(teachers, (_number(v) for v in median[i].split(" / "))))
    return {"models": models, "median_diff": diffs}, labels, test_rows


def test_the_readme_table_is_the_scripts_rendering():
    script = _script()
    readme = (ROOT / "README.md").read_text()
    block = readme.split(script.START)[1].split(script.END)[0].strip()
    report, labels, test_rows = _report_from_readme(block)
    assert labels == ("business", "entertainment", "politics", "sports", "tech") and len(report["models"]) == 8
    assert script.render(report, labels, test_rows) == block
    assert script.replace_block(readme, block) == readme


def test_the_script_rewrites_only_its_block(tmp_path):
    script = _script()
    report = {"models": [{"name": "t", "role": "teacher", "per_class": [1.0, None], "accuracy": 0.5, "macro_f1": 0.4,
                          "parameters": 2e6, "ms_per_sample": 3.0},
                         {"name": "s", "role": "student", "per_class": [0.5, 0.25], "accuracy": 0.375,
                          "macro_f1": 0.3, "parameters": 1e6, "ms_per_sample": 0.5}],
              "median_diff": {"s": {"t": -0.5}}}
    table = script.render(report, ("a", "b"), 8)
    assert table.splitlines()[3] == "| a | 1.000 | 0.500 |" and "| **accuracy** | 0.500 | **0.375** |" in table
    assert table.splitlines()[-1] == "| median Δ vs t |  | −0.500 |"
    text = f"intro\n{script.START}\nold\n{script.END}\noutro\n"
    assert script.replace_block(text, table) == f"intro\n{script.START}\n{table}\n{script.END}\noutro\n"
    json.dumps(report)  # the shape report.json has
