"""The AVSBench TPAVI baseline (Zhou et al., ECCV 2022, ``Pred_endecoder``), for any clip length and batch size.

Pipeline for a batch of clips, frames ``[B, T, 3, H, W]`` and log-mel ``[B, T, 1, 96, 64]``:

1. visual backbone (ResNet / PVTv2, fine-tuned) -> four maps at strides 4/8/16/32;
2. neck: per level, four 3×3 convs with dilations 3, 6, 12, 18 (padding = dilation, bias, weights
   N(0, 0.01)) summed -> ``neck_channels`` (256) channels, no BN or ReLU;
3. audio encoder (frozen VGGish by default) -> one 128-d vector per frame;
4. TPAVI at the configured stages (``tpavi_stages``, 0 = stride 4), with the clip as the temporal axis;
5. the AVSBench RefineNet-style decoder and head -> logits ``[B, T, 1, H, W]``.

Training (``masks`` given) adds the loss terms:

* ``loss_seg``: BCE (``seg_loss: bce``, AVSBench) or the structure loss (``structure``) on the
  annotated frames (``mask_valid``; S4 training: the first frame, MS3: all);
* ``loss_avm``: the AV-map KL regulariser (:func:`avseg.losses.avm_loss`, not normalised) over the
  TPAVI stages, weighted by ``avm_weight`` (0.5 for MS3 as released, off for S4). As in the official
  code, it reads the fused maps after the decoder's in-place ReLU, i.e. ReLU(Z_i);
* ``loss`` = loss_seg + avm_weight · loss_avm.

``fusion=False`` is the visual-only ablation: no audio encoder call, no TPAVI, no AV-map loss.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from avseg.losses import avm_loss, segmentation_loss
from avseg.losses.segmentation import SEGMENTATION_LOSSES
from avseg.models.decoders import RefineDecoder
from avseg.models.convert import convert_avsbench_state_dict, is_avsbench_state_dict
from avseg.models.registry import ArgumentError, ModelRecord, WeightFormat, config_keys, register
from avseg.models.tpavi import TPAVI

NECK_DILATIONS = (3, 6, 12, 18)


class DilatedConvSum(nn.Module):
    """Sum of parallel dilated 3×3 convs (AVSBench ``Classifier_Module``): ``[N, C_in, h, w] -> [N, C_out, h, w]``."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = NECK_DILATIONS):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=d, dilation=d) for d in dilations
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


def check_fusion_settings(tpavi_stages: Sequence[int], fusion: bool, seg_loss: str, avm_weight: float) -> List[int]:
    """Validate the fusion/loss settings (cheaply, before anything is built); returns the sorted stages.

    Raises :class:`~avseg.models.registry.ArgumentError` naming the bad argument.
    """
    stages = sorted(set(int(s) for s in tpavi_stages)) if fusion else []
    if any(s not in range(4) for s in stages):
        raise ArgumentError("tpavi_stages", f"stages must be in 0..3, got {list(tpavi_stages)}")
    if fusion and not stages:
        raise ArgumentError("tpavi_stages", "fusion is on but no stage is listed (use fusion=False)")
    if seg_loss not in SEGMENTATION_LOSSES:
        raise ArgumentError("seg_loss", f"unknown loss '{seg_loss}' (expected one of {sorted(SEGMENTATION_LOSSES)})")
    if avm_weight and not fusion:
        raise ArgumentError("avm_weight", "the AV-map loss needs fusion (fusion=True)")
    return stages


class AVSBenchModel(nn.Module):
    """Backbone, dilated neck, TPAVI, RefineNet decoder; see the module docstring.

    Args:
        backbone: a :class:`~avseg.models.backbones.VisualBackbone` (any module with ``channels`` and
            ``forward(images) -> 4 maps``).
        audio_encoder: ``[N, 1, 96, 64] -> [N, out_dim]`` (``out_dim`` attribute, 128 for VGGish).
        neck_channels: channels after the neck (256).
        tpavi_stages: levels (0..3, 0 = stride 4) that get a TPAVI block.
        fusion: False for the visual-only ablation.
        seg_loss: ``bce`` or ``structure``.
        avm_weight: weight of the AV-map loss (0 disables it).
    """

    batch_keys = ("frames", "log_mel", "masks", "mask_valid")

    def __init__(
        self,
        backbone: nn.Module,
        audio_encoder: Optional[nn.Module],
        neck_channels: int = 256,
        tpavi_stages: Sequence[int] = (0, 1, 2, 3),
        fusion: bool = True,
        seg_loss: str = "bce",
        avm_weight: float = 0.0,
    ):
        super().__init__()
        stages = check_fusion_settings(tpavi_stages, fusion, seg_loss, avm_weight)
        if fusion and audio_encoder is None:
            raise ArgumentError("audio_encoder", "the AVSBench model with fusion needs an audio encoder")
        self.fusion = fusion
        self.tpavi_stages = stages
        self.seg_loss = seg_loss
        self.avm_weight = float(avm_weight)
        self.backbone = backbone
        self.audio_encoder = audio_encoder if fusion else None
        self.neck = nn.ModuleList(DilatedConvSum(c, neck_channels) for c in backbone.channels)
        audio_dim = getattr(audio_encoder, "out_dim", 128)
        self.tpavi = nn.ModuleDict({str(s): TPAVI(neck_channels, audio_channels=audio_dim) for s in stages})
        self.decoder = RefineDecoder(neck_channels, style="avsbench")

    def encode_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``[B, T, 1, 96, 64] -> [B, T, D]``."""
        batch = log_mel.shape[0]
        return rearrange(self.audio_encoder(log_mel.flatten(0, 1)), "(b t) d -> b t d", b=batch)

    def forward(
        self,
        frames: torch.Tensor,
        log_mel: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
        mask_valid: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """frames ``[B, T, 3, H, W]``, log_mel ``[B, T, 1, 96, 64]``, masks ``[B, T, 1, H, W]``, mask_valid ``[B, T]``.

        Returns ``{"logits": [B, T, 1, H, W]}`` and, with masks, ``loss_seg`` (``loss_avm``) and ``loss``.
        """
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        batch, num_frames = frames.shape[:2]
        maps: List[torch.Tensor] = [neck(f) for neck, f in zip(self.neck, self.backbone(frames.flatten(0, 1)))]
        fused_audio: Dict[int, torch.Tensor] = {}
        if self.fusion:
            if log_mel is None or log_mel.shape[:2] != (batch, num_frames):
                got = None if log_mel is None else tuple(log_mel.shape)
                raise ValueError(f"log_mel must be [B, T, 1, 96, 64] matching frames {tuple(frames.shape[:2])}, got {got}")
            audio = self.encode_audio(log_mel)
            for stage in self.tpavi_stages:
                visual = rearrange(maps[stage], "(b t) c h w -> b t c h w", b=batch)
                fused, fused_audio[stage] = self.tpavi[str(stage)](visual, audio)
                maps[stage] = fused.flatten(0, 1)
        logits = self.decoder(maps, output_size=frames.shape[-2:])
        logits = rearrange(logits, "(b t) 1 h w -> b t 1 h w", b=batch)
        outputs = {"logits": logits}
        if masks is None:
            return outputs
        outputs["loss_seg"] = segmentation_loss(self.seg_loss, logits, masks, mask_valid)
        total = outputs["loss_seg"]
        if self.avm_weight:
            stages = self.tpavi_stages
            outputs["loss_avm"] = avm_loss(
                logits, [fused_audio[s] for s in stages], [F.relu(maps[s]) for s in stages], normalize=False
            )
            total = total + self.avm_weight * outputs["loss_avm"]
        outputs["loss"] = total
        return outputs


#: Constructor argument -> the config key it comes from (for error messages).
_CONFIG_KEYS = {name: f"model.{name}" for name in ("tpavi_stages", "seg_loss", "avm_weight", "neck_channels")}


def build_avsbench_model(cfg) -> AVSBenchModel:
    """The ``tpavi`` model from a full config (``cfg.model``: backbone, audio, fusion, tpavi_stages, ...)."""
    from avseg.audio.vggish import build_audio_encoder
    from avseg.models.backbones import build_backbone

    model_cfg = cfg.model
    with config_keys(_CONFIG_KEYS):
        check_fusion_settings(model_cfg.tpavi_stages, model_cfg.fusion, model_cfg.seg_loss, model_cfg.avm_weight)
        backbone = build_backbone(model_cfg.backbone)
        audio_encoder = build_audio_encoder(model_cfg.audio) if model_cfg.fusion else None
        return AVSBenchModel(
            backbone,
            audio_encoder,
            neck_channels=model_cfg.neck_channels,
            tpavi_stages=model_cfg.tpavi_stages,
            fusion=model_cfg.fusion,
            seg_loss=model_cfg.seg_loss,
            avm_weight=model_cfg.avm_weight,
        )


register(ModelRecord(
    "tpavi", build_avsbench_model, AVSBenchModel.batch_keys, "avs",
    formats={"avsbench": WeightFormat(
        is_avsbench_state_dict, convert_avsbench_state_dict, missing_ok=("audio_encoder.",),
        description="official AVSBench Pred_endecoder state dict: resnet.*/encoder_backbone.* with output_conv.*/path1.*",
    )},
    tiny_overrides=("model.backbone.name=resnet18", "model.audio.name=small", "model.audio.freeze=false",
                    "model.neck_channels=16", "data.image_size=64"),
    description="AVSBench TPAVI baseline (Zhou et al., ECCV 2022)",
))
