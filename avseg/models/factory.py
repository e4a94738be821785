"""Model factory: config -> model, avseg checkpoints -> model, and weights from official releases.

* :func:`build_model` dispatches on ``cfg.model.name``: ``tpavi`` (AVSBench baseline),
  ``ecmvae`` (:func:`avseg.models.ecmvae.build_ecmvae`), ``conv_ae``/``fashion_vae``/``faces_vae``
  (:func:`avseg.vae.models.build_vae_model`).
* :func:`load_model` rebuilds the model stored in an avseg checkpoint (config + weights) in eval mode.
* :func:`load_weights` loads an avseg checkpoint, an official AVSBench state dict or an official
  MMVAE-AVS (ECMVAE) state dict into an existing model and reports missing/unexpected keys in groups.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from avseg.errors import CheckpointError, ConfigError
from avseg.weights import LoadReport, load_into, safe_load, strip_prefix

AVS_MODELS = ("tpavi", "ecmvae")
VAE_MODELS = ("conv_ae", "fashion_vae", "faces_vae")
FORMATS = ("avseg", "avsbench", "mmvae-avs")


def build_model(cfg: DictConfig) -> nn.Module:
    """The model named by ``cfg.model.name``, with pretrained parts loaded from the files the config names."""
    name = cfg.model.name
    if name == "tpavi":
        from avseg.models.tpavi_model import build_avsbench_model

        return build_avsbench_model(cfg)
    if name == "ecmvae":
        from avseg.models.ecmvae import build_ecmvae

        return build_ecmvae(cfg)
    if name in VAE_MODELS:
        from avseg.vae.models import build_vae_model

        return build_vae_model(cfg)
    raise ConfigError(f"key 'model.name': unknown model '{name}' (expected one of {AVS_MODELS + VAE_MODELS})")


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

    ``keep_audio_weights=True`` is for official AVSBench/MMVAE-AVS files, which do not contain VGGish:
    the audio encoder is then loaded from ``model.audio.weights``. A VGGish PCA postprocessor needs its
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


def load_model(path: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """The model of an avseg checkpoint (weights + config) in eval mode, on ``device`` (default CPU)."""
    from avseg.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    cfg = payload["config"]
    model = build_model_for_checkpoint(cfg)
    state_dict = payload.get("model")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: the checkpoint has no 'model' state dict")
    load_into(model, state_dict, path)
    model.cfg = cfg
    return model.to(device or "cpu").eval()


# ----------------------------------------------------------------------------- foreign weights
def detect_format(payload) -> str:
    """``avseg`` (checkpoint), ``avsbench`` or ``mmvae-avs`` (official state dicts); ``unknown`` otherwise."""
    from avseg.checkpoint import FORMAT
    from avseg.models.convert import is_avsbench_state_dict

    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return "avseg"
    if not isinstance(payload, dict):
        return "unknown"
    state_dict = strip_prefix({k: v for k, v in payload.items() if torch.is_tensor(v)})
    if is_avsbench_state_dict(state_dict):
        return "avsbench"
    if any(k.startswith("encoder.") for k in state_dict) and any(k.startswith(("decoder_prior.", "mm_vae_model.")) for k in state_dict):
        return "mmvae-avs"
    return "unknown"


def _convert_mmvae(state_dict):
    from avseg.models.ecmvae import convert_mmvae_avs_state_dict

    result = convert_mmvae_avs_state_dict(state_dict)
    if isinstance(result, tuple):
        converted, dropped = result[0], list(result[1]) if len(result) > 1 else []
        return converted, dropped
    return result, []


def load_weights(
    model: nn.Module,
    path: Union[str, os.PathLike],
    expected_format: Optional[str] = None,
    allow_missing: Sequence[str] = (),
) -> LoadReport:
    """Load weights from ``path`` into ``model`` (in place) and return a :class:`LoadReport`.

    ``path`` may hold an avseg checkpoint, an official AVSBench state dict (ResNet or PVT, with or
    without ``module.``) or an official MMVAE-AVS state dict (converted by
    :func:`avseg.models.ecmvae.convert_mmvae_avs_state_dict`). ``expected_format`` (one of
    ``avseg``, ``avsbench``, ``mmvae-avs``) makes a different detected format an error.

    Raises :class:`CheckpointError` when a tensor has the wrong shape or a model key is missing from the
    file, except the audio encoder for official files (they never contain it) and keys starting with
    one of ``allow_missing``.
    """
    from avseg.models.convert import convert_avsbench_state_dict

    payload = safe_load(path)
    source = detect_format(payload)
    if expected_format is not None and expected_format not in FORMATS:
        raise ConfigError(f"unknown weights format '{expected_format}' (expected one of {FORMATS})")
    if source == "unknown":
        raise CheckpointError(
            f"{path}: not an avseg checkpoint, nor an official AVSBench or MMVAE-AVS state dict "
            "(no 'format' entry, no 'resnet.'/'encoder_backbone.' + 'output_conv.' keys, no 'encoder.' + 'decoder_prior.' keys)"
        )
    if expected_format is not None and source != expected_format:
        raise CheckpointError(f"{path}: expected {expected_format} weights, but the file holds {source} weights")
    dropped: List[str] = []
    allowed = tuple(allow_missing)
    if source == "avseg":
        state_dict = payload["model"]
    else:
        raw = strip_prefix({k: v for k, v in payload.items() if torch.is_tensor(v)})
        if source == "avsbench":
            state_dict, dropped, unknown = convert_avsbench_state_dict(raw)
            state_dict.update({k: raw[k] for k in unknown})  # reported as unexpected below
        else:
            state_dict, dropped = _convert_mmvae(raw)
        allowed += ("audio_encoder.",)
    return load_into(model, state_dict, path, source, missing_ok=allowed, allow_unexpected=True, dropped=dropped)
