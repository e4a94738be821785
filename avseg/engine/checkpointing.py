"""Training state on top of :mod:`avseg.checkpoint`: RNG states, resume, and non-strict initialisation.

A training checkpoint (``last.pth``, ``best.pth``) is an ordinary avseg checkpoint (weights + config,
loadable by ``avseg.models.load_model``) with the extra entries ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (finished epochs), ``step`` (optimiser steps so far), ``best_metric``,
``best_epoch``, ``history`` (the rows of ``train_log.csv``), ``world_size`` and ``rng`` (one entry per
rank: Python, numpy, torch CPU and CUDA generator states).
"""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from avseg.checkpoint import read_checkpoint
from avseg.errors import CheckpointError


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
@dataclass
class KeyReport:
    """What a non-strict load did: keys loaded, missing from the checkpoint, unexpected, or skipped for shape."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)

    @staticmethod
    def _grouped(keys: List[str], depth: int = 2) -> str:
        groups: "OrderedDict[str, int]" = OrderedDict()
        for key in keys:
            parts = key.split(".")
            prefix = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
            groups[prefix] = groups.get(prefix, 0) + 1
        return ", ".join(f"{prefix} ({count})" for prefix, count in groups.items())

    def format(self, max_examples: int = 5) -> str:
        """A few human-readable lines, keys grouped by their first two dotted components."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing from the checkpoint ({len(self.missing)}): {self._grouped(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (not in the model) ({len(self.unexpected)}): {self._grouped(self.unexpected)}")
        if self.shape_mismatched:
            keys = [key for key, _, _ in self.shape_mismatched]
            lines.append(f"shape mismatch ({len(keys)}): {self._grouped(keys)}")
            for key, ckpt_shape, model_shape in self.shape_mismatched[:max_examples]:
                lines.append(f"  {key}: checkpoint {list(ckpt_shape)} vs model {list(model_shape)}")
            if len(keys) > max_examples:
                lines.append(f"  ... and {len(keys) - max_examples} more")
        return "\n".join(lines)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """Drop a ``DataParallel``/DDP ``module.`` prefix when every key has it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def compare_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Tuple[KeyReport, Dict[str, torch.Tensor]]:
    """How ``state_dict`` fits ``model`` by name and shape, and the tensors that fit (nothing is loaded)."""
    state_dict = strip_prefix(state_dict)
    own = model.state_dict()
    report = KeyReport()
    matched = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            matched[key] = value
            report.loaded.append(key)
    report.missing = [key for key in own if key not in state_dict]
    return report, matched


def load_state_non_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> KeyReport:
    """Copy every tensor whose name and shape match into ``model``; report the rest."""
    report, matched = compare_state(model, state_dict)
    model.load_state_dict(matched, strict=False)
    return report


def load_state_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Load every tensor or fail with a :class:`CheckpointError` that shows the key report."""
    report, _ = compare_state(model, state_dict)
    if report.missing or report.unexpected or report.shape_mismatched:
        raise CheckpointError(f"{path}: the weights do not fit the model built from the config:\n{report.format()}")
    model.load_state_dict(strip_prefix(state_dict))


def init_from_checkpoint(model: nn.Module, path: str) -> KeyReport:
    """Initialise ``model`` non-strictly from the avseg checkpoint at ``path`` (``train.init_from``)."""
    payload = read_checkpoint(path)
    report = load_state_non_strict(model, payload["model"])
    if not report.loaded:
        raise CheckpointError(
            f"train.init_from: no tensor of {path} (model '{payload.get('model_name')}') matches the model "
            f"being trained by name and shape:\n{report.format()}"
        )
    return report


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
