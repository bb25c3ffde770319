"""layout.py: the one place that names files under CACHE/; its shard paths and the parser's regex agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mtkd_cache
from mtkd_cache import ConfigError
from mtkd_cache.layout import SHARD_PATH, inputs_path, outputs_path, receipt_path, validate_name


def test_shard_paths_sort_in_row_order_and_match_the_manifest_regex():
    paths = [inputs_path("train", a, b) for a, b in ((0, 8192), (8192, 16384), (16384, 20000))]
    assert paths == sorted(paths) and paths[0] == "inputs/train/rows-0000000000-0000008192.parquet"
    match = SHARD_PATH.match(outputs_path("bert", "test", 5, 9))
    assert (match["teacher"], match["split2"], int(match["start"]), int(match["end"])) == ("bert", "test", 5, 9)
    assert SHARD_PATH.match(inputs_path("train", 0, 1))["split"] == "train"


@pytest.mark.parametrize("path", ["outputs/../x/train/rows-0000000000-0000000001.parquet",
                                  "/inputs/train/rows-0000000000-0000000001.parquet",
                                  "inputs/train/rows-0-1.parquet", "inputs/train/sub/rows-0000000000-0000000001.parquet"])
def test_paths_the_writer_never_makes_do_not_match(path):
    assert SHARD_PATH.match(path) is None


def test_a_receipt_is_one_flat_file_per_shard():
    assert receipt_path(outputs_path("bert", "train", 0, 4)) == \
        ".receipts/outputs--bert--train--rows-0000000000-0000000004.json"


@pytest.mark.parametrize("name", ["..", "a/b", "", "-x", "sp ace"])
def test_names_that_could_leave_the_cache_are_refused(name):
    with pytest.raises(ConfigError, match="may hold only letters"):
        validate_name(name, "teacher")


def test_no_module_but_layout_spells_a_cache_file_name():
    """Cache names are imported from layout.py; a module writing the literal would drift from the others."""
    literal = re.compile(r"""["'](manifest\.json|\.lock|\.receipts|student-inputs)["']|["'](inputs|outputs|experts)/""")
    package = Path(mtkd_cache.__file__).parent
    mine = [p for p in package.rglob("*.py") if p.name != "layout.py"
            and p.relative_to(package).parts[0] not in ("distill", "serve", "report")]
    offenders = [f"{p.relative_to(package)}:{n}" for p in mine for n, line in enumerate(p.read_text().splitlines(), 1)
                 if literal.search(line)]
    assert offenders == []
