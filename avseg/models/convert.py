"""Official AVSBench ``Pred_endecoder`` state dicts -> avseg ``AVSBenchModel`` names.

The official checkpoints (``<S4|MS3>_best.pth`` = ``model.module.state_dict()``) use these names
(avsbench_ecmvae.md §3.1); on the right, ours:

=========================================  =============================================
``resnet.{conv1,bn1,layer1,layer2}.*``     ``backbone.body.{conv1,bn1,layer1,layer2}.*``
``resnet.layer3_1.*`` / ``layer4_1.*``     ``backbone.body.layer3.*`` / ``layer4.*``
``resnet.layer3_2.*`` / ``layer4_2.*``     dropped: a second branch the official forward never uses
``encoder_backbone.*`` (PVTv2 release)     ``backbone.body.*`` (timm names, ``stages_i``)
``conv{1-4}.conv2d_list.{0-3}.*``          ``neck.{0-3}.convs.{0-3}.*``
``tpavi_b{1-4}.*``                         ``tpavi.{0-3}.*`` (same inner names)
``path{1-4}.*``                            ``decoder.path{1-4}.*``
``path4.resConfUnit1.*``                   dropped: never called by the official forward
``output_conv.{0,2,4}.*``                  ``decoder.output_conv.{0,2,4}.*``
=========================================  =============================================

The official checkpoints do not contain VGGish (it is a separate, frozen module there): the audio
encoder keeps the weights it was built with (``model.audio.weights`` or ``--vggish``).
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping

import torch

from avseg.models.backbones import feature_key
from avseg.models.registry import ConversionResult

#: Official keys that exist in the checkpoints but are unused by the official forward pass.
UNUSED_OFFICIAL_PREFIXES = ("resnet.layer3_2.", "resnet.layer4_2.", "path4.resConfUnit1.")

_RULES = (
    (r"^resnet\.layer3_1\.", "backbone.body.layer3."),
    (r"^resnet\.layer4_1\.", "backbone.body.layer4."),
    (r"^resnet\.", "backbone.body."),
    (r"^conv([1-4])\.conv2d_list\.", lambda m: f"neck.{int(m.group(1)) - 1}.convs."),
    (r"^tpavi_b([1-4])\.", lambda m: f"tpavi.{int(m.group(1)) - 1}."),
    (r"^(path[1-4]\.|output_conv\.)", r"decoder.\1"),
)


def is_avsbench_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for an official AVSBench state dict (with or without ``module.``, already stripped here)."""
    keys = list(state_dict)
    has_backbone = any(k.startswith(("resnet.layer1.", "encoder_backbone.")) for k in keys)
    has_head = any(k.startswith(("output_conv.", "path1.")) for k in keys)
    return has_backbone and has_head


def _pvt_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    from timm.models import pvt_v2

    inner = {k[len("encoder_backbone."):]: v for k, v in state_dict.items()}
    return {f"backbone.body.{feature_key(k)}": v for k, v in pvt_v2.checkpoint_filter_fn(inner, None).items()}


def convert_avsbench_state_dict(state_dict: Dict[str, torch.Tensor]) -> ConversionResult:
    """Rename an official AVSBench state dict to avseg names.

    The result holds the renamed tensors, the official keys dropped because the official model never
    uses them, and the keys no rule knows (left out).
    """
    converted: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    unknown: List[str] = []
    pvt = {k: v for k, v in state_dict.items() if k.startswith("encoder_backbone.")}
    if pvt:
        converted.update(_pvt_keys(pvt))
    for key, value in state_dict.items():
        if key in pvt:
            continue
        if key.startswith(UNUSED_OFFICIAL_PREFIXES):
            dropped.append(key)
            continue
        for pattern, replacement in _RULES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                converted[new_key] = value
                break
        else:
            unknown.append(key)
    return ConversionResult(converted, dropped, unknown)
