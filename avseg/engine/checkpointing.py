"""Training state on top of :mod:`avseg.checkpoint`: RNG states, resume, non-strict initialisation, safe writes.

A training checkpoint (``last.pth``, ``best.pth``) is an ordinary avseg checkpoint (weights + config,
loadable by ``avseg.models.load_model``) with the extra entries ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (finished epochs), ``step`` (optimiser steps so far), ``best_metric``,
``best_epoch``, ``history`` (the rows of ``train_log.csv``), ``world_size`` and ``rng`` (one entry per
rank: Python, numpy, torch CPU and CUDA generator states).

:func:`write_checkpoint` turns a failed write (disk full, permissions, I/O error) into a
:class:`CheckpointError` naming the file and the reason; the file it was to replace stays as it was.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from avseg.checkpoint import read_checkpoint, save_checkpoint
from avseg.errors import CheckpointError
from avseg.weights import LoadReport, load_into


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """The state of every random generator of this process, in a form ``torch.load(weights_only=True)`` reads.

    ``cuda`` holds the generator state of ``device`` (this rank's GPU) when it is a CUDA device.
    """
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
    }


def restore_rng_state(state: Mapping[str, Any], device: Optional[torch.device] = None) -> None:
    """Inverse of :func:`capture_rng_state`; the CUDA state goes to ``device`` when both exist."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- non-strict loading
def init_from_checkpoint(model: nn.Module, path: str) -> LoadReport:
    """Initialise ``model`` non-strictly from the avseg checkpoint at ``path`` (``train.init_from``)."""
    payload = read_checkpoint(path)
    report = load_into(model, payload["model"], path, strict=False)
    if not report.loaded:
        raise CheckpointError(
            f"train.init_from: no tensor of {path} (model '{payload.get('model_name')}') matches the model "
            f"being trained by name and shape:\n{report.describe()}"
        )
    return report


def read_resume_checkpoint(path: str, model_name: str) -> Dict[str, Any]:
    """The payload of the ``last.pth`` at ``path``, checked to hold training state of ``model_name``."""
    payload = read_checkpoint(path)
    check_resume_compatible(payload, model_name, path)
    return payload


def check_resume_compatible(payload: Mapping[str, Any], model_name: str, path: str) -> None:
    """A resume checkpoint must hold training state for the same model family."""
    missing = [key for key in ("optimizer", "epoch", "step", "rng") if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: has no training state ({', '.join(missing)} missing); it can initialise a run "
            "(train.init_from=...) but not resume one"
        )
    if payload.get("model_name") != model_name:
        raise CheckpointError(
            f"{path}: is a checkpoint of model '{payload.get('model_name')}', but the config trains '{model_name}'"
        )


# ----------------------------------------------------------------------------- writing
def _tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor inside nested dicts, lists and tuples (about a checkpoint's file size)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _write_failure_reason(exc: Exception, folder: Path, needed: int) -> str:
    """The OS reason of a failed ``torch.save``: ``strerror`` of an OSError; for the RuntimeError of torch's
    own file writer (``enforce fail at inline_container.cc``, which carries no errno), the free space."""
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    free = shutil.disk_usage(folder).free
    if free < needed:
        return f"no space left on device ({_mib(free)} free, the checkpoint needs about {_mib(needed)})"
    return f"torch could not write the file ({str(exc).strip().splitlines()[0]}; {_mib(free)} free)"


def write_checkpoint(path: Union[str, os.PathLike], state_dict: Dict[str, torch.Tensor], cfg: Any, **extra: Any) -> None:
    """:func:`avseg.checkpoint.save_checkpoint`, with a failed write as a one-line :class:`CheckpointError`.

    The write goes through a temporary file and a rename, so the previous file at ``path`` is intact.
    """
    try:
        save_checkpoint(path, state_dict, cfg, **extra)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "inline_container" not in str(exc) and "PytorchStreamWriter" not in str(exc):
            raise
        folder = Path(path).parent
        reason = _write_failure_reason(exc, folder, _tensor_bytes(state_dict) + _tensor_bytes(extra))
        previous = "the previous file is intact" if Path(path).exists() else "no previous file"
        raise CheckpointError(f"cannot write checkpoint {path}: {reason} ({previous})") from exc
