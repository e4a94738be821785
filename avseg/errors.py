"""User-facing exceptions. Their messages name the file or key at fault and what was expected.

Command-line tools catch :class:`AvsegError`, print the message and exit with status 2
(no traceback unless ``--debug``).

Errors raised in a DataLoader worker come back through torch's ``ExceptionWrapper.reraise``, which
builds ``ErrorType("Caught ErrorType in DataLoader worker process N.\\nOriginal Traceback ...")``.
:class:`AvsegError` recognises that text and keeps only the original one-line message as its
``str()``; the worker's traceback is attached as a note (shown by ``--debug``). A CLI therefore
prints the same line whether the error happened in the main process or in a worker.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

_WORKER_REPORT = re.compile(r"\ACaught (?P<type>\w+) (?P<where>[^\n]*)\.\nOriginal Traceback \(most recent call last\):\n")


def split_worker_report(text: str, error_type: type) -> Optional[Tuple[str, str]]:
    """``(original message, where)`` of torch's re-raised worker report for ``error_type``; None otherwise.

    The report ends with the formatted exception line ``module.Type: message`` (after any chained
    causes), so the message is what follows the last such line.
    """
    header = _WORKER_REPORT.match(text)
    if header is None or header.group("type") != error_type.__name__:
        return None
    marker = f"\n{error_type.__module__}.{error_type.__qualname__}: "
    start = text.rfind(marker)
    if start < header.end() - 1:
        return None
    return text[start + len(marker) :].rstrip("\n"), header.group("where")


class AvsegError(Exception):
    """Base class for errors caused by user input (files, configs, checkpoints)."""

    def __init__(self, *args):
        report = split_worker_report(args[0], type(self)) if len(args) == 1 and isinstance(args[0], str) else None
        if report is None:
            super().__init__(*args)
            return
        message, where = report
        super().__init__(message)
        if hasattr(self, "add_note"):  # Python >= 3.11
            self.add_note(f"raised {where}; {args[0]}")


class ConfigError(AvsegError):
    """A config file or override is invalid: unknown key, wrong type, missing file."""


class DatasetError(AvsegError):
    """A dataset file is missing, unreadable or not in the expected layout."""


class CheckpointError(AvsegError):
    """A checkpoint is missing, unreadable or belongs to another model."""


class MediaError(AvsegError):
    """A video or audio input cannot be used (missing, unreadable, no stream, too short)."""
