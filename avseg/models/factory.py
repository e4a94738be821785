"""Model factory: config -> model, avseg checkpoints -> model, and weights from official releases.

Every step asks the registry (:mod:`avseg.models.registry`); no model name is written here.

* :func:`build_model` builds the model of ``cfg.model.name`` through its record's ``from_config``.
* :func:`load_model` rebuilds the model stored in an avseg checkpoint (config + weights) in eval mode.
* :func:`load_weights` loads an avseg checkpoint or an official state dict (any format a record
  converts) into an existing model and reports missing/unexpected keys in groups.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from avseg.errors import CheckpointError
from avseg.models import registry
from avseg.weights import LoadReport, load_into, safe_load, strip_prefix


def build_model(cfg: DictConfig) -> nn.Module:
    """The model named by ``cfg.model.name``, with pretrained parts loaded from the files the config names.

    The model carries ``cfg`` (``model.cfg``), so :func:`registry.record_of` finds its record.
    """
    model = registry.get(cfg.model.name).from_config(cfg)
    model.cfg = cfg
    return model


def without_pretrained_files(cfg: DictConfig, keep_audio_weights: bool = False) -> DictConfig:
    """A copy of ``cfg`` whose ``model.backbone.weights`` (and ``model.audio.weights``) are null.

    Used when the weights come from a checkpoint: the files named at training time need not exist.
    """
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cfg, False)
    keys = ("model.backbone.weights",) if keep_audio_weights else ("model.backbone.weights", "model.audio.weights")
    for key in keys:
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, None)
    return cfg


def build_model_for_checkpoint(cfg: DictConfig, keep_audio_weights: bool = False) -> nn.Module:
    """Build the architecture of ``cfg`` without reading the pretrained backbone file (weights follow).

    ``keep_audio_weights=True`` is for official release files, which do not contain the audio encoder
    (VGGish): it is then loaded from ``model.audio.weights``. A VGGish PCA postprocessor needs its
    parameters file (``model.audio.pca_weights``) to be rebuilt.
    """
    from avseg.audio.vggish import MissingWeightsWarning

    cfg = without_pretrained_files(cfg, keep_audio_weights)
    pca = OmegaConf.select(cfg, "model.audio.pca_weights")
    if pca and not os.path.isfile(pca):
        raise CheckpointError(
            f"the checkpoint's model uses the VGGish PCA postprocessor; its parameters file is needed to rebuild it: {pca}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingWeightsWarning)
        return build_model(cfg)


def load_model(
    path: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None, cfg: Optional[DictConfig] = None
) -> nn.Module:
    """The model of an avseg checkpoint (weights + config) in eval mode, on ``device`` (default CPU).

    ``cfg`` (the checkpoint's config with a user's overrides, e.g. ``model.ecmvae.num_samples=8``) builds
    the model instead of the stored config; its weights must still fit.
    """
    from avseg.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    cfg = cfg if cfg is not None else payload["config"]
    model = build_model_for_checkpoint(cfg)
    state_dict = payload.get("model")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: the checkpoint has no 'model' state dict")
    load_into(model, state_dict, path)
    model.cfg = cfg
    return model.to(device or "cpu").eval()


# ----------------------------------------------------------------------------- foreign weights
def _tensors(payload) -> dict:
    return strip_prefix({k: v for k, v in payload.items() if torch.is_tensor(v)})


def detect_format(payload) -> str:
    """``avseg`` (checkpoint), the official format a record recognises, or ``unknown``."""
    from avseg.checkpoint import FORMAT

    if not isinstance(payload, dict):
        return "unknown"
    if payload.get("format") == FORMAT:
        return registry.AVSEG_FORMAT
    return registry.detect(_tensors(payload)) or "unknown"


def load_weights(
    model: nn.Module,
    path: Union[str, os.PathLike],
    expected_format: Optional[str] = None,
    allow_missing: Sequence[str] = (),
) -> LoadReport:
    """Load weights from ``path`` into ``model`` (in place) and return a :class:`LoadReport`.

    ``path`` may hold an avseg checkpoint or an official state dict (with or without ``module.``) of a
    format some record converts (:func:`registry.formats`); the record that owns the format converts it,
    and a model built from a config must be that record's model. ``expected_format`` makes a different
    detected format an error.

    Raises :class:`CheckpointError` when a tensor has the wrong shape or a model key is missing from the
    file, except keys the format never contains (its ``missing_ok``) and keys starting with one of
    ``allow_missing``.
    """
    if expected_format is not None and expected_format != registry.AVSEG_FORMAT:
        registry.format_owner(expected_format)  # an unknown format name is a ConfigError
    payload = safe_load(path)
    source = detect_format(payload)
    if source == "unknown":
        raise CheckpointError(
            f"{path}: not an avseg checkpoint, nor an official state dict of a known layout "
            f"(no 'format' entry; none of: {registry.describe_formats()})"
        )
    if expected_format is not None and source != expected_format:
        raise CheckpointError(f"{path}: expected {expected_format} weights, but the file holds {source} weights")
    if source == registry.AVSEG_FORMAT:
        return load_into(model, payload["model"], path, source, missing_ok=allow_missing, allow_unexpected=True)
    owner = registry.format_owner(source)
    if getattr(model, "cfg", None) is not None and registry.record_of(model).name != owner.name:
        raise CheckpointError(
            f"{path}: holds {source} weights, which are for model '{owner.name}', not '{model.cfg.model.name}' (model.name)"
        )
    weight_format = owner.formats[source]
    raw = _tensors(payload)
    result = weight_format.convert(raw)
    state_dict = {**result.state_dict, **{k: raw[k] for k in result.unknown}}  # unknown keys: reported as unexpected
    missing_ok = tuple(allow_missing) + weight_format.missing_ok
    return load_into(model, state_dict, path, source, missing_ok=missing_ok, allow_unexpected=True, dropped=result.dropped)
