"""Visual backbones through timm ``features_only``: four maps at strides 4/8/16/32.

=============  ===========================  ==========================================
name           channels                     pretrained file accepted (``weights``)
=============  ===========================  ==========================================
resnet18       64, 128, 256, 512            torchvision or timm ResNet-18 state dict
resnet50       256, 512, 1024, 2048         torchvision (``resnet50-19c8e357.pth``) or timm
pvt_v2_b0      32, 64, 160, 256             original PVTv2 release or timm layout
pvt_v2_b5      64, 128, 320, 512            original PVTv2 release (``pvt_v2_b5.pth``) or timm
=============  ===========================  ==========================================

Weights come only from a local file: it is read by :func:`avseg.weights.read_state_dict` (weights only, or
safetensors), unwrapped (``state_dict``/``model`` entries, ``module.`` prefixes), remapped by timm's
filter for the model (original PVTv2 names -> timm names), checked key by key against the network and
handed to timm (``pretrained=True`` with the checked state dict as the pretrained source), so timm never
looks for a hub. A missing file, a file for another network or a shape mismatch raises
:class:`~avseg.errors.CheckpointError`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from avseg.errors import CheckpointError
from avseg.models.registry import ArgumentError, config_keys
from avseg.weights import compare_state, read_state_dict

BACKBONES: Dict[str, dict] = {
    "resnet18": dict(out_indices=(1, 2, 3, 4), drop_path_rate=0.0),
    "resnet50": dict(out_indices=(1, 2, 3, 4), drop_path_rate=0.0),
    "pvt_v2_b0": dict(out_indices=(0, 1, 2, 3), drop_path_rate=0.0),
    # AVSBench and MMVAE-AVS build pvt_v2_b5 with drop_path_rate=0.1.
    "pvt_v2_b5": dict(out_indices=(0, 1, 2, 3), drop_path_rate=0.1),
}

_CLASSIFIER_PREFIXES = ("fc.", "head.")


def feature_key(full_key: str) -> str:
    """timm full-model key -> ``features_only`` key (``stages.0.x`` -> ``stages_0.x`` for PVTv2)."""
    return re.sub(r"^stages\.(\d+)\.", r"stages_\1.", full_key)


def pretrained_state_dict(name: str, path: os.PathLike) -> Dict[str, torch.Tensor]:
    """Read and check ImageNet weights for backbone ``name``; returns a state dict in timm full-model names."""
    import timm
    from timm.models import pvt_v2

    state_dict = read_state_dict(path)
    if name.startswith("pvt_v2"):
        state_dict = pvt_v2.checkpoint_filter_fn(state_dict, None)
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, num_classes=0).state_dict()
    counters = "num_batches_tracked"  # BatchNorm step counters: present in some files, never needed
    weights = {k: v for k, v in state_dict.items() if not k.startswith(_CLASSIFIER_PREFIXES) and not k.endswith(counters)}
    report, _ = compare_state({k: v for k, v in reference.items() if not k.endswith(counters)}, weights)
    if report.missing or report.unexpected or report.shape_mismatched:
        raise CheckpointError(f"{path}: not a {name} checkpoint\n{report.describe()}")
    return {k: v for k, v in state_dict.items() if k in reference}


class VisualBackbone(nn.Module):
    """timm ``features_only`` network: images ``[N, 3, H, W]`` -> 4 maps ``[N, C_i, H/s_i, W/s_i]``, s = 4, 8, 16, 32.

    Attributes:
        channels: the four C_i. strides: (4, 8, 16, 32).
    """

    def __init__(self, name: str, weights: Optional[str] = None, drop_path_rate: Optional[float] = None):
        super().__init__()
        import timm

        if name not in BACKBONES:
            raise ArgumentError("name", f"unknown backbone '{name}' (expected one of {sorted(BACKBONES)})")
        spec = BACKBONES[name]
        kwargs = dict(features_only=True, out_indices=spec["out_indices"])
        rate = spec["drop_path_rate"] if drop_path_rate is None else drop_path_rate
        if rate:
            kwargs["drop_path_rate"] = rate
        if weights:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=pretrained_state_dict(name, weights)))
        self.name = name
        self.body = timm.create_model(name, **kwargs)
        self.channels: Tuple[int, ...] = tuple(self.body.feature_info.channels())
        self.strides: Tuple[int, ...] = tuple(self.body.feature_info.reduction())

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        return list(self.body(images))


def build_backbone(cfg_backbone) -> VisualBackbone:
    """From ``cfg.model.backbone`` (``name``, ``weights``, ``drop_path_rate``)."""
    with config_keys({"name": "model.backbone.name"}):
        return VisualBackbone(cfg_backbone.name, cfg_backbone.weights, cfg_backbone.get("drop_path_rate"))
