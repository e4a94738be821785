"""The AVSBench TPAVI baseline (Zhou et al., ECCV 2022, ``Pred_endecoder``), for any clip length and batch size.

Pipeline for a batch of clips, frames ``[B, T, 3, H, W]`` and log-mel ``[B, T, 1, 96, 64]``:

1. visual backbone (ResNet / PVTv2, fine-tuned) -> four maps at strides 4/8/16/32;
2. neck: per level, four 3×3 convs with dilations 3, 6, 12, 18 (padding = dilation, bias, weights
   N(0, 0.01)) summed -> ``neck_channels`` (256) channels, no BN or ReLU;
3. audio encoder (frozen VGGish by default) -> one 128-d vector per frame;
4. TPAVI at the configured stages (``tpavi_stages``, 0 = stride 4), with the clip as the temporal axis;
5. the AVSBench RefineNet-style decoder and head -> logits ``[B, T, K, H, W]`` (K = ``num_classes``: 1 for
   the binary S4/MS3 masks, 71 for AVSS).

AVSS (AVSBench-semantic, official ``avss/model``): ``frame_valid [B, T]`` marks the real frames of clips
padded to 10. As in the official model, the neck maps, the audio vectors, every TPAVI output, every
decoder block output and the logits are multiplied by the flag (padded frames give exactly zero
logits); ``tpavi_group_size=5`` runs TPAVI over independent consecutive 5-frame groups (a 10-frame clip
is two groups, N = 5·H·W); ``audio_align_bias=False`` removes the bias of TPAVI's audio alignment, so a
zeroed audio row aligns to zero. Padded frames still pass through the backbone and enter the training
BatchNorm statistics, exactly as officially.

Training with binary ``masks`` adds the loss terms:

* ``loss_seg``: BCE (``seg_loss: bce``, AVSBench) or the structure loss (``structure``) on the
  annotated frames (``mask_valid``; S4 training: the first frame, MS3: all);
* ``loss_avm``: the AV-map KL regulariser (:func:`avseg.losses.avm_loss`, not normalised) over the
  TPAVI stages, weighted by ``avm_weight`` (0.5 for MS3 as released, off for S4). As in the official
  code, it reads the fused maps after the decoder's in-place ReLU, i.e. ReLU(Z_i);
* ``loss`` = loss_seg + avm_weight · loss_avm.

Training with AVSS ``labels`` ``[B, T, H, W]`` (``num_classes`` > 1): ``loss_seg`` is the masked per-frame
cross-entropy and ``loss_avm`` the AVSS AV-map term (:mod:`avseg.losses.semantic`) on ReLU(Z_i), both
over the ``mask_valid`` frames.

``fusion=False`` is the visual-only ablation: no audio encoder call, no TPAVI, no AV-map loss.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from avseg.losses import avm_loss, segmentation_loss
from avseg.losses.segmentation import SEGMENTATION_LOSSES
from avseg.losses.semantic import semantic_avm_loss, semantic_ce_loss
from avseg.models.decoders import RefineDecoder
from avseg.models.convert import convert_avsbench_state_dict, is_avsbench_state_dict
from avseg.models.registry import ArgumentError, ModelRecord, WeightFormat, config_keys, register
from avseg.models.tpavi import TPAVI

NECK_DILATIONS = (3, 6, 12, 18)
BINARY_BATCH_KEYS = ("frames", "log_mel", "masks", "mask_valid")
SEMANTIC_BATCH_KEYS = ("frames", "log_mel", "labels", "frame_valid", "mask_valid")


def batch_keys_for(num_classes: int) -> Tuple[str, ...]:
    """The batch entries an AVS model's forward takes: binary masks (1 class) or AVSS labels and flags."""
    return BINARY_BATCH_KEYS if num_classes == 1 else SEMANTIC_BATCH_KEYS


def check_classes(num_classes: int) -> None:
    """``num_classes``: 1 (binary masks, sigmoid logits) or more (class labels, softmax logits)."""
    if num_classes < 1:
        raise ArgumentError("num_classes", f"must be at least 1, got {num_classes}")


def frame_scale(frame_valid: Optional[torch.Tensor], frames: torch.Tensor) -> Optional[torch.Tensor]:
    """``frame_valid [B, T]`` -> the official multiplier ``[B·T, 1, 1, 1]`` in ``frames``' dtype and device (None stays None)."""
    if frame_valid is None:
        return None
    if tuple(frame_valid.shape) != tuple(frames.shape[:2]):
        raise ValueError(f"frame_valid must be [B, T] = {tuple(frames.shape[:2])}, got {tuple(frame_valid.shape)}")
    return frame_valid.reshape(-1, 1, 1, 1).to(frames)


def check_supervision(num_classes: int, masks: Optional[torch.Tensor], labels: Optional[torch.Tensor]) -> None:
    """Binary models train on ``masks``, semantic ones on ``labels``; anything else is a clear error."""
    if masks is not None and labels is not None:
        raise ValueError("give either masks (binary) or labels (AVSS classes), not both")
    if labels is not None and num_classes == 1:
        raise ValueError("labels (class maps) need a semantic model (num_classes > 1); this model is binary (use masks)")
    if masks is not None and num_classes > 1:
        raise ValueError(f"this model predicts {num_classes} classes: train it on labels [B, T, H, W], not binary "
                         "masks (the batch keys of a semantic model come from avseg.models.registry.record_for(cfg))")


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


def check_fusion_settings(tpavi_stages: Sequence[int], fusion: bool, seg_loss: str, avm_weight: float,
                          num_classes: int = 1, tpavi_group_size: Optional[int] = None) -> List[int]:
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
    check_classes(num_classes)
    if tpavi_group_size is not None and tpavi_group_size < 1:
        raise ArgumentError("tpavi_group_size", f"must be at least 1 (or None: the whole clip), got {tpavi_group_size}")
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
        seg_loss: ``bce`` or ``structure`` (binary models; AVSS models use the masked cross-entropy).
        avm_weight: weight of the AV-map loss (0 disables it).
        num_classes: logit channels K (1: binary mask; 71: AVSS).
        tpavi_group_size: TPAVI attends within consecutive groups of this many frames (5 in official
            AVSS); None: the whole clip.
        audio_align_bias: TPAVI's audio alignment Linear has a bias (S4/MS3) or not (AVSS).

    ``batch_keys`` (class attribute: the binary ones; per instance: :func:`batch_keys_for`).
    """

    batch_keys = BINARY_BATCH_KEYS

    def __init__(
        self,
        backbone: nn.Module,
        audio_encoder: Optional[nn.Module],
        neck_channels: int = 256,
        tpavi_stages: Sequence[int] = (0, 1, 2, 3),
        fusion: bool = True,
        seg_loss: str = "bce",
        avm_weight: float = 0.0,
        num_classes: int = 1,
        tpavi_group_size: Optional[int] = None,
        audio_align_bias: bool = True,
    ):
        super().__init__()
        stages = check_fusion_settings(tpavi_stages, fusion, seg_loss, avm_weight, num_classes, tpavi_group_size)
        if fusion and audio_encoder is None:
            raise ArgumentError("audio_encoder", "the AVSBench model with fusion needs an audio encoder")
        self.fusion = fusion
        self.tpavi_stages = stages
        self.seg_loss = seg_loss
        self.avm_weight = float(avm_weight)
        self.num_classes = num_classes
        self.tpavi_group_size = tpavi_group_size
        self.batch_keys = batch_keys_for(num_classes)
        self.backbone = backbone
        self.audio_encoder = audio_encoder if fusion else None
        self.neck = nn.ModuleList(DilatedConvSum(c, neck_channels) for c in backbone.channels)
        audio_dim = getattr(audio_encoder, "out_dim", 128)
        self.tpavi = nn.ModuleDict(
            {str(s): TPAVI(neck_channels, audio_channels=audio_dim, audio_bias=audio_align_bias) for s in stages})
        self.decoder = RefineDecoder(neck_channels, style="avsbench", num_classes=num_classes)

    def encode_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``[B, T, 1, 96, 64] -> [B, T, D]``."""
        batch = log_mel.shape[0]
        return rearrange(self.audio_encoder(log_mel.flatten(0, 1)), "(b t) d -> b t d", b=batch)

    def fuse_stage(self, stage: int, visual: torch.Tensor, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """TPAVI at ``stage`` over groups of ``tpavi_group_size`` frames (the whole clip when None).

        ``visual [B, T, C, h, w]``, ``audio [B, T, D]`` -> (``[B, T, C, h, w]``, aligned audio ``[B, T, C]``).
        Groups are consecutive frames of one clip (the official ``reshape(-1, 5, ...)``); attention never
        crosses a group boundary. A clip whose length is not a multiple of the group size (a short video
        in the demo) ends with a shorter group; the official 10-frame clips split exactly.
        """
        batch, num_frames = visual.shape[:2]
        group = min(self.tpavi_group_size or num_frames, num_frames)
        block = self.tpavi[str(stage)]
        whole = num_frames - num_frames % group  # frames in full groups: one call, as the official reshape
        fused, fused_audio = block(visual[:, :whole].reshape(-1, group, *visual.shape[2:]),
                                   audio[:, :whole].reshape(-1, group, audio.shape[-1]))
        fused, fused_audio = fused.reshape(batch, whole, *visual.shape[2:]), fused_audio.reshape(batch, whole, -1)
        if whole < num_frames:
            rest, rest_audio = block(visual[:, whole:], audio[:, whole:])
            fused, fused_audio = torch.cat([fused, rest], dim=1), torch.cat([fused_audio, rest_audio], dim=1)
        return fused, fused_audio

    def forward(
        self,
        frames: torch.Tensor,
        log_mel: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
        mask_valid: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        frame_valid: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """frames ``[B, T, 3, H, W]``, log_mel ``[B, T, 1, 96, 64]``, masks ``[B, T, 1, H, W]`` (binary) or
        labels ``[B, T, H, W]`` int64 (AVSS), mask_valid ``[B, T]`` (annotated), frame_valid ``[B, T]`` (real frames).

        Returns ``{"logits": [B, T, K, H, W]}`` and, with masks or labels, ``loss_seg`` (``loss_avm``) and ``loss``.
        """
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        check_supervision(self.num_classes, masks, labels)
        batch, num_frames = frames.shape[:2]
        scale = frame_scale(frame_valid, frames)
        maps: List[torch.Tensor] = [neck(f) for neck, f in zip(self.neck, self.backbone(frames.flatten(0, 1)))]
        if scale is not None:
            maps = [m * scale for m in maps]
        fused_audio: Dict[int, torch.Tensor] = {}
        if self.fusion:
            if log_mel is None or log_mel.shape[:2] != (batch, num_frames):
                got = None if log_mel is None else tuple(log_mel.shape)
                raise ValueError(f"log_mel must be [B, T, 1, 96, 64] matching frames {tuple(frames.shape[:2])}, got {got}")
            audio = self.encode_audio(log_mel)
            if scale is not None:
                audio = audio * scale.view(batch, num_frames, 1)
            for stage in self.tpavi_stages:
                visual = rearrange(maps[stage], "(b t) c h w -> b t c h w", b=batch)
                fused, fused_audio[stage] = self.fuse_stage(stage, visual, audio)
                maps[stage] = fused.flatten(0, 1) if scale is None else fused.flatten(0, 1) * scale
        logits = self.decoder(maps, output_size=frames.shape[-2:], frame_scale=scale)
        logits = rearrange(logits, "(b t) k h w -> b t k h w", b=batch)
        outputs = {"logits": logits}
        if masks is None and labels is None:
            return outputs
        stages = self.tpavi_stages
        if labels is not None:
            outputs["loss_seg"] = semantic_ce_loss(logits, labels, mask_valid)
        else:
            outputs["loss_seg"] = segmentation_loss(self.seg_loss, logits, masks, mask_valid)
        total = outputs["loss_seg"]
        if self.avm_weight:
            audio_list, visual_list = [fused_audio[s] for s in stages], [F.relu(maps[s]) for s in stages]
            if labels is not None:
                outputs["loss_avm"] = semantic_avm_loss(logits, audio_list, visual_list, mask_valid, normalize=False)
            else:
                outputs["loss_avm"] = avm_loss(logits, audio_list, visual_list, normalize=False)
            total = total + self.avm_weight * outputs["loss_avm"]
        outputs["loss"] = total
        return outputs


#: Constructor argument -> the config key it comes from (for error messages).
_CONFIG_KEYS = {name: f"model.{name}" for name in ("tpavi_stages", "seg_loss", "avm_weight", "neck_channels",
                                                    "num_classes", "tpavi_group_size", "audio_align_bias")}


def build_avsbench_model(cfg) -> AVSBenchModel:
    """The ``tpavi`` model from a full config (``cfg.model``: backbone, audio, fusion, tpavi_stages, ...)."""
    from avseg.audio.vggish import build_audio_encoder
    from avseg.models.backbones import build_backbone

    model_cfg = cfg.model
    with config_keys(_CONFIG_KEYS):
        check_fusion_settings(model_cfg.tpavi_stages, model_cfg.fusion, model_cfg.seg_loss, model_cfg.avm_weight,
                              model_cfg.num_classes, model_cfg.tpavi_group_size)
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
            num_classes=model_cfg.num_classes,
            tpavi_group_size=model_cfg.tpavi_group_size,
            audio_align_bias=model_cfg.audio_align_bias,
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
    semantic_batch_keys=SEMANTIC_BATCH_KEYS,
))
