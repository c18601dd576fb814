"""Errors the tool reports as one actionable line (the CLI maps them to exit codes)."""


class DiffVQAError(Exception):
    """Base class: a known failure whose message already says what to do. CLI exit code 1."""

    exit_code = 1


class UserInputError(DiffVQAError, ValueError):
    """Bad arguments, labels or paths given by the user. CLI exit code 2, nothing written."""

    exit_code = 2


class DatasetError(UserInputError):
    """A dataset root or label file that cannot be used as given."""


class DecodeError(DiffVQAError):
    """A video that no available decoder can read (reported per video, the run goes on)."""


class CacheError(DiffVQAError):
    """A cache directory that is missing, damaged, or made with other settings."""
