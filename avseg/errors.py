"""User-facing exceptions. Their messages name the file or key at fault and what was expected.

Command-line tools catch :class:`AvsegError`, print the message and exit with status 2
(no traceback unless ``--debug``).
"""


class AvsegError(Exception):
    """Base class for errors caused by user input (files, configs, checkpoints)."""


class ConfigError(AvsegError):
    """A config file or override is invalid: unknown key, wrong type, missing file."""


class DatasetError(AvsegError):
    """A dataset file is missing, unreadable or not in the expected layout."""


class CheckpointError(AvsegError):
    """A checkpoint is missing, unreadable or belongs to another model."""


class MediaError(AvsegError):
    """A video or audio input cannot be used (missing, unreadable, no stream, too short)."""
