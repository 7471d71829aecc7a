"""User-facing errors.

Every problem a user can fix (bad params, a missing or corrupt archive, a wrong
checksum) is raised as a :class:`PipelineError`. Stage scripts turn it into one
line on stderr and a non-zero exit instead of a traceback, because the message
itself names the problem and the fix; a traceback would only bury it.
"""


class PipelineError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""


class ConfigError(PipelineError):
    """params.yaml is missing, unreadable or does not validate."""


class DataSourceError(PipelineError):
    """No configured data source exists and verifies."""


class ArchiveError(PipelineError):
    """An archive is corrupt, truncated, unsafe or of an unknown layout."""


class DatasetError(PipelineError):
    """Decoded data fails validation (shapes, labels, per-class counts)."""
