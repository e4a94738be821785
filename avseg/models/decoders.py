"""RefineNet/DPT-style top-down decoders of AVSBench and ECMVAE (one implementation, two styles).

Both decoders take four maps of C channels at strides 4/8/16/32, walk from the deepest one up with
``FeatureFusionBlock``s (out = up×2(RCU2(x_prev + RCU1(skip)))) and end in a small head that returns
logits at the input resolution. The styles differ as released:

============  ==========================================  ===========================================
              ``avsbench`` (``Pred_endecoder``)            ``ecmvae`` (``simple_decoder_no_modulelist``)
============  ==========================================  ===========================================
RCU           relu(x) + conv(relu(conv(relu(x))))          x + CBR(CBR(x)), CBR = conv (no bias)-BN-ReLU
upsampling    bilinear, align_corners=True                 nearest ×2
head          conv3×3 C→128, bilinear ×2, conv3×3 →32,     conv3×3 C→C/2, nearest ×2, conv3×3 →C/4,
              ReLU, conv1×1 →1                             ReLU, conv1×1 →1
block names   ``path{1-4}`` (path4 deepest)                ``fusion_block_{1-4}`` (fusion_block_1 deepest)
head name     ``output_conv.{0,2,4}``                      ``head_up_2.output_conv.{0,2,4}``
============  ==========================================  ===========================================

The AVSBench RCU starts with ``nn.ReLU(inplace=True)``, so its residual branch adds ReLU(x), not x:
that is reproduced here (without the in-place write). The official in-place ReLU also rectifies the
fused maps that the AV-map loss later reads; :class:`avseg.models.tpavi_model.AVSBenchModel` applies the
same ReLU before that loss. The deepest block of both official decoders owns a ``resConfUnit1`` that
is never called; it is not created here (converters drop its weights), so no parameter goes unused.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

DECODER_STYLES = ("avsbench", "ecmvae")


class Resize(nn.Module):
    """Interpolation ×2 (or to ``size``); in the head it sits at index 1 and holds no weights."""

    def __init__(self, mode: str, align_corners: Optional[bool] = None):
        super().__init__()
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        size = tuple(size) if size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)


class ConvBNReLU(nn.Module):
    """conv3×3 (no bias) → BatchNorm → ReLU; keys ``conv``, ``norm`` as in MMVAE-AVS ``BasicConv2d``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResidualConvUnit(nn.Module):
    """Residual 3×3 conv unit, ``[N, C, H, W] -> [N, C, H, W]``.

    ``batch_norm=False`` (AVSBench): relu(x) + conv2(relu(conv1(relu(x)))), convs with bias, keys
    ``conv1``/``conv2``. ``batch_norm=True`` (ECMVAE): x + CBR2(CBR1(x)), keys ``ConvBNReLU1``/``ConvBNReLU2``.
    """

    def __init__(self, channels: int, batch_norm: bool):
        super().__init__()
        self.batch_norm = batch_norm
        if batch_norm:
            self.ConvBNReLU1 = ConvBNReLU(channels, channels)
            self.ConvBNReLU2 = ConvBNReLU(channels, channels)
        else:
            self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_norm:
            return x + self.ConvBNReLU2(self.ConvBNReLU1(x))
        rectified = F.relu(x)
        return rectified + self.conv2(F.relu(self.conv1(rectified)))


class FeatureFusionBlock(nn.Module):
    """out = resize(RCU2(x + RCU1(skip))) (or RCU2(x) for the deepest block), ``[N, C, h, w] -> [N, C, *size]``."""

    def __init__(self, channels: int, batch_norm: bool, upsample: str, with_skip: bool = True):
        super().__init__()
        self.upsample = Resize(upsample, align_corners=True if upsample == "bilinear" else None)
        if with_skip:
            self.resConfUnit1 = ResidualConvUnit(channels, batch_norm)
        self.resConfUnit2 = ResidualConvUnit(channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return self.upsample(x, size)


class HeadConvs(nn.Sequential):
    """conv3×3 → resize → conv3×3 → ReLU → conv1×1 to ``num_classes`` logit channels; weights at indices 0, 2, 4.

    AVSBench's head interpolates bilinearly with align_corners=False (unlike its fusion blocks).
    """

    def __init__(self, in_channels: int, mid_channels: int, low_channels: int, upsample: str, num_classes: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1),
            Resize(upsample, align_corners=False if upsample == "bilinear" else None),
            nn.Conv2d(mid_channels, low_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(low_channels, num_classes, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        x = self[1](self[0](x), size)
        return self[4](self[3](self[2](x)))


class SegmentationHead(nn.Module):
    """Holds ``output_conv`` (ECMVAE's ``SimpleHead``)."""

    def __init__(self, output_conv: HeadConvs):
        super().__init__()
        self.output_conv = output_conv


class RefineDecoder(nn.Module):
    """Four fusion blocks and a head: maps ``[N, C, H/4..H/32, W/4..W/32]`` (shallow first) -> logits ``[N, K, H, W]``.

    Args:
        channels: C of every input map (256 for AVSBench, 128 for ECMVAE).
        style: ``avsbench`` or ``ecmvae`` (see the module docstring).
        head_channels: the head's two hidden widths; default (C/2, 32) for AVSBench (128, 32 at C = 256)
            and (C/2, C/4) for ECMVAE.
        num_classes: K, logit channels (1: binary mask, 71: AVSS classes).
    """

    def __init__(self, channels: int, style: str = "avsbench", head_channels: Optional[Tuple[int, int]] = None,
                 num_classes: int = 1):
        super().__init__()
        if style not in DECODER_STYLES:
            raise ValueError(f"unknown decoder style '{style}' (expected one of {DECODER_STYLES})")
        self.style = style
        ecmvae = style == "ecmvae"
        upsample = "nearest" if ecmvae else "bilinear"
        self.block_names: List[str] = [f"fusion_block_{4 - level}" if ecmvae else f"path{level + 1}" for level in range(4)]
        for level, name in enumerate(self.block_names):
            self.add_module(name, FeatureFusionBlock(channels, batch_norm=ecmvae, upsample=upsample, with_skip=level < 3))
        if head_channels is None:
            head_channels = (channels // 2, channels // 4) if ecmvae else (channels // 2, 32)
        head = HeadConvs(channels, head_channels[0], head_channels[1], upsample, num_classes)
        if ecmvae:
            self.head_up_2 = SegmentationHead(head)
        else:
            self.output_conv = head

    @property
    def head(self) -> HeadConvs:
        return self.head_up_2.output_conv if self.style == "ecmvae" else self.output_conv

    def forward(self, maps: Sequence[torch.Tensor], output_size: Optional[Sequence[int]] = None,
                frame_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``maps``: four ``[N, C, h_i, w_i]`` tensors, stride 4 first. Returns logits ``[N, K, *output_size]``.

        Each block upsamples to the next (shallower) map's size, the last one ×2, the head to
        ``output_size`` (default ×2 again); at input sizes divisible by 32 every step is an exact ×2.
        ``frame_scale`` ``[N, 1, 1, 1]`` (the AVSS frame-validity flag) multiplies every block's output and
        the logits, as the official AVSS model does, so padded frames give exactly zero logits.
        """
        if len(maps) != 4:
            raise ValueError(f"RefineDecoder needs 4 maps, got {len(maps)}")
        x = None
        for level in (3, 2, 1, 0):
            block = getattr(self, self.block_names[level])
            size = maps[level - 1].shape[-2:] if level > 0 else None
            x = block(maps[level], size=size) if x is None else block(x, maps[level], size=size)
            x = x if frame_scale is None else x * frame_scale
        logits = self.head(x, output_size)
        return logits if frame_scale is None else logits * frame_scale
