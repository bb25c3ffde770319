"""The dataset card `push` writes beside a cache (CARD_NAME, README.md): the manifest's facts for a person,
and YAML `configs:` so that the cache opens as a dataset.

    datasets.load_dataset("ORG/NAME", "inputs")            sample_id, text(, text_pair), label (ClassLabel)
    datasets.load_dataset("ORG/NAME", "teacher-<name>")    sample_id, logits (K × float16/32), pred

Each config lists, per split, the exact shard files the manifest lists (no glob: an upload's temporary or a
shard of another build is never picked up), and `dataset_info` gives the features, so the label names are
a ClassLabel and the logits keep their stored precision. `datasets` reads the same YAML from a Hub repo and
from a local directory, which is how the tests check it. The card is generated from the manifest alone,
on every push, from the manifest that push committed: a push that merges into a remote lists every
teacher the remote now holds.
"""

from __future__ import annotations

import yaml

from mtkd_cache.cache.manifest import Manifest
from mtkd_cache.layout import PACKAGE_VERSION

INPUTS_CONFIG = "inputs"
TEACHER_CONFIG_PREFIX = "teacher-"


def teacher_config(name: str) -> str:
    """The `load_dataset` config name of a teacher's outputs."""
    return f"{TEACHER_CONFIG_PREFIX}{name}"


def render_card(manifest: Manifest, url: str | None = None) -> str:
    """README.md for the cache described by `manifest` (pushed to `url`, when given: the card says how to
    pull and distil from it)."""
    front = {"pretty_name": f"mtkd-cache teacher logits: {manifest.dataset.source}",
             "tags": ["mtkd-cache", "knowledge-distillation", "teacher-logits", "text-classification"],
             "configs": _configs(manifest), "dataset_info": _dataset_info(manifest)}
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + _body(manifest, url)


def _configs(manifest: Manifest) -> list[dict]:
    configs = [{"config_name": INPUTS_CONFIG, "data_files": _data_files(manifest, None)}]
    configs += [{"config_name": teacher_config(name), "data_files": _data_files(manifest, name)}
                for name in manifest.teachers if _data_files(manifest, name)]
    return configs


def _data_files(manifest: Manifest, teacher: str | None) -> list[dict]:
    """Per split whose shards are all committed, the shard paths in row order."""
    return [{"split": split, "path": [record.path for record in manifest.shards_of(split, teacher)]}
            for split in manifest.splits if manifest.complete(split, teacher)]


def _dataset_info(manifest: Manifest) -> list[dict]:
    labels = {"class_label": {"names": {str(i): name for i, name in enumerate(manifest.label_names)}}}
    text_pair = manifest.dataset.text_pair_column is not None
    inputs = [{"name": "sample_id", "dtype": "int64"}, {"name": "text", "dtype": "string"},
              *([{"name": "text_pair", "dtype": "string"}] if text_pair else []), {"name": "label", "dtype": labels}]
    outputs = [{"name": "sample_id", "dtype": "int64"},
               {"name": "logits", "list": manifest.logits_dtype, "length": len(manifest.label_names)},
               {"name": "pred", "dtype": "int16"}]
    infos = [{"config_name": INPUTS_CONFIG, "features": inputs, "splits": _split_sizes(manifest, None)}]
    infos += [{"config_name": teacher_config(name), "features": outputs, "splits": _split_sizes(manifest, name)}
              for name in manifest.teachers if _data_files(manifest, name)]
    return infos


def _split_sizes(manifest: Manifest, teacher: str | None) -> list[dict]:
    return [{"name": split, "num_examples": record.rows} for split, record in manifest.splits.items()
            if manifest.complete(split, teacher)]


def _body(manifest: Manifest, url: str | None) -> str:
    dataset = manifest.dataset
    teacher_bytes = sum(r.bytes for r in manifest.shards if r.teacher is not None)
    teacher_rows = sum(r.rows for r in manifest.shards if r.teacher is not None)
    lines = [f"# Teacher logits for `{dataset.source}`", "",
             f"An [mtkd-cache](https://pypi.org/project/mtkd-cache/) cache (format {manifest.format_version}, written by "
             f"mtkd-cache {manifest.tool_version}; this card by {PACKAGE_VERSION}): every teacher below was run once "
             "over the dataset, and its logits are stored here, so students can be distilled without loading any "
             "teacher.", "",
             f"- dataset: `{dataset.source}`" + (f" (config `{dataset.config_name}`)" if dataset.config_name else ""),
             f"- dataset fingerprint: `{dataset.fingerprint}`",
             f"- label names ({len(manifest.label_names)}, in class-id order): "
             + ", ".join(f"`{name}`" for name in manifest.label_names),
             f"- logits: {manifest.logits_dtype}, "
             f"{teacher_bytes / teacher_rows if teacher_rows else 0:.1f} bytes per sample per teacher (stored)", "",
             "| split | rows | labeled | teachers complete |", "|---|---|---|---|"]
    for split, record in manifest.splits.items():
        complete = [name for name in manifest.teachers if manifest.complete(split, name)]
        lines.append(f"| {split} | {record.rows:,} | {'yes' if record.labeled else 'no'} | {', '.join(complete) or '-'} |")
    lines += ["", "## Teachers", "", "| teacher | source | revision | backend | dtype | max length | weights sha256 |",
              "|---|---|---|---|---|---|---|"]
    for name, teacher in manifest.teachers.items():
        lines.append(f"| `{name}` | `{teacher.source}` | {teacher.revision or '-'} | {teacher.backend} | {teacher.dtype} "
                     f"| {teacher.max_length} | `{teacher.weights_sha256}` |")
    where = url or "URL"
    first_teacher = next(iter(manifest.teachers), "NAME")
    lines += ["", "## Use it", "", "```bash", f"mtkd-cache pull {where} cache/", "mtkd-cache verify cache/   "
              "# re-hashes every shard against manifest.json", "mtkd-cache distill cache/ --student "
              "bert:layers=4,hidden=256,heads=4 --tokenizer TOKENIZER --out runs/expert --expert-split validation",
              "```", "", "```python", "import datasets", "",
              f'inputs = datasets.load_dataset("{where}", "{INPUTS_CONFIG}")',
              f'logits = datasets.load_dataset("{where}", "{teacher_config(first_teacher)}")  '
              "# rows aligned with inputs by sample_id", "```", "",
              "`manifest.json` is the source of truth (shard hashes, teacher identities); this card is generated from "
              "it on every push.", ""]
    return "\n".join(lines)
