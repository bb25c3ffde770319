"""mtkd-cache: multi-teacher knowledge distillation for text classifiers from an offline teacher-logit cache.

The data flows one way: dataset -> teacher runner -> cache -> strategy -> trainer -> report. This package
is the library; the `mtkd-cache` command line is the separate package `mtkd_cache_cli`, and everything it
does is a function here taking a config dataclass (README, "Python API"):

    build_cache(BuildConfig)          run the teachers once, write the cache
    open_cache(path)                  read it: inputs, logits [S, N, K], predictions [S, N]
    expert_table_for(cache, split, teachers)
    select_teachers(cache_dir, split, StrategyConfig)
    distill(DistillConfig) / finetune(FinetuneConfig)
    run_sweep(SweepConfig)            a grid of distill runs from one loaded cache, with its leaderboard
    compare_runs(run_dirs, out)       runs side by side
    export_model(ExportConfig)        ONNX, with a parity check
    CacheDataset / collate / cached_distillation_loss / DistillationTrainer
                                      distil from a cache inside your own loop or transformers.Trainer

The cache-side names and every config load with the package, without torch or transformers; the training
and serving ones on first use, so that `import mtkd_cache` (and `mtkd-cache --help`, `info`, `verify`,
`experts`) does not pay for what it does not touch (tests/cli/test_startup.py).
"""

from importlib import import_module

from mtkd_cache.cache.manifest import FORMAT_VERSION
from mtkd_cache.cache.reader import Cache, SplitInputs, TeacherOutputs, open_cache
from mtkd_cache.cache.verify import VerifyReport, summarize, verify_cache
from mtkd_cache.data.datasets import DatasetSpec, load_task_data
from mtkd_cache.errors import (
    CacheFormatError,
    CacheIntegrityError,
    CacheMismatchError,
    CacheWriteError,
    ConfigError,
    DataError,
    LabelSpaceError,
    LockError,
    MtkdError,
    TeacherError,
)
from mtkd_cache.layout import PACKAGE_VERSION as __version__
from mtkd_cache.progress import ProgressEvents, SilentEvents
from mtkd_cache.runners.base import Backend, RunnerConfig
from mtkd_cache.runners.build import BuildConfig, BuildReport, build_cache
from mtkd_cache.runners.teachers import TeacherSpec

_LAZY = {
    "mtkd_cache.distillation.experts": ("ExpertTable", "compute_expert_table", "expert_table_for"),
    "mtkd_cache.distillation.strategies": ("Strategy", "StrategyConfig", "select"),
    "mtkd_cache.distillation.selection": ("Selection", "select_teachers", "write_selection"),
    "mtkd_cache.distillation.training": ("TrainConfig",),
    "mtkd_cache.distillation.configs": ("DistillConfig", "FinetuneConfig", "TransferStage"),
    "mtkd_cache.distillation.runs": ("RunResult", "distill", "finetune"),
    "mtkd_cache.distillation.sweep": ("SweepConfig", "SweepGrid", "SweepResult", "run_sweep"),
    "mtkd_cache.report.run_report": ("RunReport", "load_run_report"),
    "mtkd_cache.report.comparison": ("Comparison", "compare_runs"),
    "mtkd_cache.report.leaderboard": ("Metric",),
    "mtkd_cache.serve.export": ("ExportConfig", "ExportReport", "export_model"),
    "mtkd_cache.cache.sharing": ("push", "pull", "merge"),
    "mtkd_cache.distillation.torch_data": ("CacheDataset", "collate", "cached_distillation_loss", "student_inputs"),
    "mtkd_cache.distillation.hf_trainer": ("DistillationTrainer",),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtkd_cache' has no attribute {name!r}")


__all__ = [
    "Backend", "BuildConfig", "BuildReport", "Cache", "CacheFormatError", "CacheIntegrityError", "CacheMismatchError",
    "CacheWriteError", "ConfigError", "DataError", "DatasetSpec", "FORMAT_VERSION", "LabelSpaceError", "LockError",
    "MtkdError", "ProgressEvents", "RunnerConfig", "SilentEvents", "SplitInputs", "TeacherError", "TeacherOutputs",
    "TeacherSpec", "VerifyReport", "build_cache", "load_task_data", "open_cache", "summarize", "verify_cache",
    "__version__", *_MODULE_OF,
]
