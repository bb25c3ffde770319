"""One error hierarchy for everything a user can cause.

The CLI catches `MtkdError` alone, prints its message as one line and exits with code 2. Every other
exception is a bug in this package and keeps its traceback.
"""


class MtkdError(Exception):
    """Base of every error a user can cause and fix; the message says what to do."""


class ConfigError(MtkdError):
    """An option or argument is invalid (bad flag value, device not available, unknown split)."""


class DataError(MtkdError):
    """The dataset cannot be used as given (missing column, empty split, unknown label, bad file)."""


class TeacherError(MtkdError):
    """A teacher cannot be loaded or produced unusable output (non-finite logits)."""


class LabelSpaceError(TeacherError):
    """A teacher's label set differs from the dataset's and no explicit mapping was given."""


class CacheFormatError(MtkdError):
    """The manifest is missing, unreadable, or from a format version this package cannot read."""


class CacheIntegrityError(MtkdError):
    """A shard's bytes do not match its recorded checksum or size, or the shard is missing."""


class CacheMismatchError(MtkdError):
    """The cache was built from different data, teachers or settings than the ones given now."""


class CacheWriteError(MtkdError):
    """The cache directory cannot be written (disk full, read-only, permissions); committed state is kept."""


class LockError(MtkdError):
    """Another process holds the cache directory's lock."""
