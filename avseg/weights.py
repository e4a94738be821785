"""The one weights path: safe reading, prefix stripping, and matching a state dict into a model.

* :func:`load_weights_only` is the only ``torch.load`` in avseg; :func:`safe_load` wraps it for files (``weights_only=True``, on CPU); anything that is
  not a weights-only torch file is a :class:`CheckpointError` naming the file and what it is.
* :func:`read_state_dict` gives a plain ``{name: tensor}`` dict from a ``.pth``/``.pt``/``.safetensors``
  file, unwrapping ``{"state_dict": ...}``-style containers and ``module.`` prefixes.
* :func:`compare_state` and :func:`load_into` match a state dict to a model by name and shape and return a
  :class:`LoadReport` (missing / unexpected / shape-mismatched keys grouped by submodule).

Official layouts are converted by the model records (:mod:`avseg.models.registry`) before
:func:`load_into`; the avseg checkpoint format itself is :mod:`avseg.checkpoint`.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn

from avseg.errors import CheckpointError

PathLike = Union[str, os.PathLike]
_WRAPPER_KEYS = ("state_dict", "model", "module")


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_weights_only(source: Union[PathLike, BinaryIO], allowed_globals: Sequence[Any] = ()) -> Any:
    """The one ``torch.load`` of avseg: ``weights_only=True``, on CPU, from a path or a binary file object.

    Errors are torch's own; :func:`safe_load` turns them into messages that name the file.
    """
    with torch.serialization.safe_globals(list(allowed_globals)):
        return torch.load(source, map_location="cpu", weights_only=True)


def safe_load(path: PathLike, what: str = "checkpoint", allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; ``allowed_globals`` extends the weights-only allowlist.

    Raises :class:`CheckpointError` naming ``path`` for a missing file, a folder, a text file, a file
    holding arbitrary Python objects (refused, never unpickled) and a corrupt or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a {what} file")
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return load_weights_only(path, allowed_globals)
    except Exception as exc:  # torch raises many types for unsafe, corrupt or foreign files
        message = str(exc)
    found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", message)
    if found:
        raise CheckpointError(
            f"{path}: holds a Python object ({found.group(1)}) besides tensors and plain containers; refused for "
            f"safety: avseg reads only weights-only {what} files and never unpickles arbitrary objects"
        ) from None
    if _looks_like_text(path):
        raise CheckpointError(f"{path}: cannot be read as a {what}: it is a text file, not a file written by torch.save") from None
    raise CheckpointError(
        f"{path}: cannot be read as a {what}: not a file written by torch.save, or truncated/corrupt"
    ) from None


def strip_prefix(
    state_dict: Mapping[str, torch.Tensor], prefixes: Union[str, Sequence[str]] = ("module.",)
) -> Dict[str, torch.Tensor]:
    """Drop each ``DataParallel``/DDP-style prefix of ``prefixes``, in order, that every key has."""
    for prefix in (prefixes,) if isinstance(prefixes, str) else prefixes:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def read_state_dict(path: PathLike, what: str = "weights file") -> Dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` dict from a ``.pth``/``.pt``/``.safetensors`` file, safely.

    Containers such as ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped and a ``module.``
    prefix is removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        try:
            payload = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own types for corrupt files
            raise CheckpointError(f"{path}: cannot be read as a safetensors {what} ({type(exc).__name__})") from None
    else:
        payload = safe_load(path, what)
    while isinstance(payload, dict) and not any(torch.is_tensor(v) for v in payload.values()):
        inner = next((payload[k] for k in _WRAPPER_KEYS if isinstance(payload.get(k), dict)), None)
        if inner is None:
            break
        payload = inner
    if not isinstance(payload, dict) or not any(torch.is_tensor(v) for v in payload.values()):
        raise CheckpointError(f"{path}: holds no state dict (expected a mapping of parameter names to tensors)")
    return strip_prefix({k: v for k, v in payload.items() if torch.is_tensor(v)})


def group_keys(keys: Sequence[str], depth: int = 2) -> str:
    """``a.b.c.weight, a.b.d.bias, x.y.z`` -> ``a.b.* (2), x.y.z (1)``: keys grouped by submodule."""
    groups: "OrderedDict[str, List[str]]" = OrderedDict()
    for key in keys:
        parts = key.split(".")
        groups.setdefault(".".join(parts[:depth]) + (".*" if len(parts) > depth else ""), []).append(key)
    return ", ".join(f"{head if len(members) > 1 else members[0]} ({len(members)})" for head, members in groups.items())


@dataclass
class LoadReport:
    """How a state dict fitted a model: loaded, missing, unexpected and shape-mismatched keys.

    ``dropped_unused`` are release keys a converter dropped on purpose (unused by the release's own
    forward); ``kept_from_model`` are model keys such files never contain (kept as built).
    """

    path: str = ""
    source_format: str = "avseg"
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dropped_unused: List[str] = field(default_factory=list)
    kept_from_model: List[str] = field(default_factory=list)

    def describe(self, max_examples: int = 5) -> str:
        """A few readable lines, keys grouped by their first two dotted components."""
        head = f"{self.path}: {self.source_format} weights, " if self.path else ""
        lines = [f"{head}loaded {len(self.loaded)} tensors"]
        for title, keys in (
            ("missing from the checkpoint", self.missing),
            ("unexpected (not in the model)", self.unexpected),
            ("dropped (present in the release, unused by its own forward pass)", self.dropped_unused),
            ("kept from the model as built (not part of such files)", self.kept_from_model),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)}): {group_keys(keys)}")
        for key, file_shape, model_shape in self.shape_mismatched[:max_examples]:
            lines.append(f"shape mismatch: {key}: checkpoint {list(file_shape)} vs model {list(model_shape)}")
        if len(self.shape_mismatched) > max_examples:
            lines.append(f"  ... and {len(self.shape_mismatched) - max_examples} more shape mismatches")
        return "\n".join(lines)


def compare_state(
    own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], missing_ok: Sequence[str] = ()
) -> Tuple[LoadReport, Dict[str, torch.Tensor]]:
    """How ``state_dict`` fits the state dict ``own`` by name and shape, and the tensors that fit.

    Keys of ``own`` starting with one of ``missing_ok`` and absent from ``state_dict`` go to
    ``kept_from_model`` instead of ``missing``. Nothing is loaded.
    """
    state_dict = strip_prefix(state_dict)
    report = LoadReport()
    matched = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            matched[key] = value
            report.loaded.append(key)
    absent = [key for key in own if key not in state_dict]
    prefixes = tuple(missing_ok)
    report.kept_from_model = [key for key in absent if prefixes and key.startswith(prefixes)]
    report.missing = [key for key in absent if not (prefixes and key.startswith(prefixes))]
    return report, matched


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: PathLike = "",
    source: str = "avseg",
    strict: bool = True,
    missing_ok: Sequence[str] = (),
    allow_unexpected: bool = False,
    dropped: Sequence[str] = (),
) -> LoadReport:
    """Copy the tensors of ``state_dict`` that fit ``model`` (in place) and return the :class:`LoadReport`.

    ``strict``: a missing key (outside ``missing_ok``), an unexpected key (unless ``allow_unexpected``)
    or a shape mismatch is a :class:`CheckpointError` showing the report, and nothing is loaded.
    Non-strict loads copy what fits and leave the verdict to the caller.
    """
    report, matched = compare_state(model.state_dict(), state_dict, missing_ok)
    report.path, report.source_format, report.dropped_unused = str(path), source, list(dropped)
    if strict and (report.missing or report.shape_mismatched or (report.unexpected and not allow_unexpected)):
        where = f"{path}: " if path else ""
        problems = [f"{len(keys)} tensors {what}" for keys, what in (
            (report.missing, "missing"),
            (report.shape_mismatched, "with the wrong shape"),
            ([] if allow_unexpected else report.unexpected, "unexpected"),
        ) if keys]
        raise CheckpointError(f"{where}the weights do not fit the model ({', '.join(problems)}):\n{report.describe()}")
    model.load_state_dict(matched, strict=False)
    return report
