"""mtkd-cache: multi-teacher knowledge distillation for text classifiers from an offline teacher-logit cache.

The data flows one way: dataset -> teacher runner -> cache -> strategy -> trainer -> report.
This package is the library; the `mtkd-cache` command line lives in the separate `cli` package.
"""

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
from mtkd_cache.runners.build import BuildConfig, BuildReport, RunnerConfig, build_cache
from mtkd_cache.runners.teachers import TeacherSpec

__all__ = [
    "BuildConfig", "BuildReport", "Cache", "CacheFormatError", "CacheIntegrityError", "CacheMismatchError", "CacheWriteError",
    "ConfigError", "DataError", "DatasetSpec", "FORMAT_VERSION", "LabelSpaceError", "LockError", "MtkdError",
    "RunnerConfig", "SplitInputs", "TeacherError", "TeacherOutputs", "TeacherSpec", "VerifyReport",
    "build_cache", "load_task_data", "open_cache", "summarize", "verify_cache", "__version__",
]
