"""mtkd-cache: multi-teacher knowledge distillation for text classifiers from an offline teacher-logit cache.

The data flows one way: dataset -> teacher runner -> cache -> strategy -> trainer -> report.
This package is the library; the `mtkd-cache` command line lives in the separate `cli` package.
"""

from .build import BuildConfig, BuildReport, RunnerConfig, build_cache
from .datasets import DatasetSpec, load_task_data
from .errors import (CacheFormatError, CacheIntegrityError, CacheMismatchError, CacheWriteError, ConfigError, DataError,
                     LabelSpaceError, LockError, MtkdError, TeacherError)
from .manifest import FORMAT_VERSION, TOOL_VERSION as __version__
from .reader import Cache, SplitInputs, TeacherOutputs, open_cache
from .teachers import TeacherSpec
from .verify import VerifyReport, summarize, verify_cache

__all__ = [
    "BuildConfig", "BuildReport", "Cache", "CacheFormatError", "CacheIntegrityError", "CacheMismatchError", "CacheWriteError",
    "ConfigError", "DataError", "DatasetSpec", "FORMAT_VERSION", "LabelSpaceError", "LockError", "MtkdError",
    "RunnerConfig", "SplitInputs", "TeacherError", "TeacherOutputs", "TeacherSpec", "VerifyReport",
    "build_cache", "load_task_data", "open_cache", "summarize", "verify_cache", "__version__",
]
