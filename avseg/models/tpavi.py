"""TPAVI: the temporal pixel-wise audio-visual interaction block of AVSBench (and its ECMVAE variant).

Official maths (AVSBench ``TPAVIModule``, mode ``dot``, 3-D), per clip with visual map
V ``[C, T, H, W]`` and audio vectors a_t:

1. Ã_t = align(a_t) (Linear 128 → C), tiled over H×W;
2. θ = conv_θ(V), φ = conv_φ(Ã), g = conv_g(V), 1×1×1 convs C → C' = C/2, flattened to N = T·H·W;
3. F = θᵀφ / N (N×N, no softmax);  Y = F·gᵀ;
4. Z = LayerNorm_C(BN3d(conv_W(Y)) + V), with the BN affine initialised to 0.

The official code materialises the N×N matrix F (246M entries per clip at stride 4, 224 px). Because
φ is constant over (h, w) within frame t, row i of Y is

    Y_i = (1/N) Σ_j (θ_i·φ_{t(j)}) g_j = (1/T) Σ_t (θ_i·φ_t) ḡ_t = θ_i · M,   M = (1/T) Σ_t φ_t ḡ_tᵀ,

with ḡ_t the spatial mean of g over frame t (= conv_g of the spatial mean of V_t). M is C'×C' per
clip, so time and memory are O(N); the result is the same up to floating-point rounding.

AVSS variant (``audio_bias=False``): the alignment Linear has no bias.

ECMVAE variant (``normalize_inputs=True, audio_channels=None``): V and the audio are L2-normalised
over channels (``x / sqrt(Σx² + 1e-6)``) before the block, there is no alignment layer (the audio must
already have C channels), and the residual adds the normalised V.

Parameter names follow the official state dicts: ``align_channel``, ``g``, ``theta``, ``phi``,
``W_z.0`` (Conv3d), ``W_z.1`` (BatchNorm3d), ``norm_layer``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def l2_normalize_channels(x: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(Σ_dim x² + eps)``, the MMVAE-AVS ``torch_L2normalize``."""
    return x * torch.rsqrt(x.pow(2).sum(dim=dim, keepdim=True) + eps)


def pointwise_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1×1 Conv3d applied frame by frame: ``[N, C_in, H, W] -> [N, C_out, H, W]``."""
    return F.conv2d(x, conv.weight.flatten(2).unsqueeze(-1), conv.bias)


def conv_as_linear(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1×1 Conv3d applied to vectors: ``[..., C_in] -> [..., C_out]``."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class TPAVI(nn.Module):
    """Audio-visual non-local block with O(T·H·W) memory.

    Args:
        channels: C, channels of the visual map (256 in AVSBench, 128 in ECMVAE).
        audio_channels: channels of the input audio vectors (128 for VGGish); ``None`` means no
            ``align_channel`` layer and audio that already has ``channels`` channels (ECMVAE).
        inter_channels: C' (default C // 2).
        normalize_inputs: L2-normalise visual and audio features over channels first (ECMVAE).
        audio_bias: ``align_channel`` has a bias (AVSBench S4/MS3) or not (AVSS: a zeroed, padded audio
            row then aligns to exactly zero).
    """

    def __init__(
        self,
        channels: int,
        audio_channels: Optional[int] = 128,
        inter_channels: Optional[int] = None,
        normalize_inputs: bool = False,
        audio_bias: bool = True,
    ):
        super().__init__()
        self.channels = channels
        self.inter_channels = inter_channels or max(channels // 2, 1)
        self.normalize_inputs = normalize_inputs
        self.align_channel = nn.Linear(audio_channels, channels, bias=audio_bias) if audio_channels is not None else None
        self.g = nn.Conv3d(channels, self.inter_channels, kernel_size=1)
        self.theta = nn.Conv3d(channels, self.inter_channels, kernel_size=1)
        self.phi = nn.Conv3d(channels, self.inter_channels, kernel_size=1)
        self.W_z = nn.Sequential(nn.Conv3d(self.inter_channels, channels, kernel_size=1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.W_z[1].weight)
        nn.init.zeros_(self.W_z[1].bias)
        self.norm_layer = nn.LayerNorm(channels)

    def prepare_inputs(self, visual: torch.Tensor, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Alignment / normalisation: ``visual [B, T, C, H, W]``, ``audio [B, T, A]`` -> same, audio with C channels."""
        if self.align_channel is not None:
            audio = self.align_channel(audio)
        elif audio.shape[-1] != self.channels:
            raise ValueError(f"TPAVI without align_channel needs {self.channels}-d audio, got {audio.shape[-1]}")
        if self.normalize_inputs:
            visual = l2_normalize_channels(visual, dim=2)
            audio = l2_normalize_channels(audio, dim=-1)
        return visual, audio

    def project(self, frames: torch.Tensor, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """conv_W(Y) with the spatial-mean identity: ``frames [B·T, C, H, W]``, ``audio [B, T, C]`` -> ``[B·T, C, H, W]``.

        Y = θ·M row by row, so conv_W(Y) = (W_W·Mᵀ)·θ + b_W: one C×C' matrix per clip applied to θ.
        """
        batch = audio.shape[0]
        theta = pointwise_conv(self.theta, frames)
        phi = conv_as_linear(self.phi, audio)
        g_mean = rearrange(conv_as_linear(self.g, frames.mean(dim=(2, 3))), "(b t) q -> b t q", b=batch)
        mixing = torch.einsum("btp,btq->bpq", phi, g_mean) / num_frames
        projection = torch.einsum("cq,bpq->bcp", self.W_z[0].weight.flatten(1), mixing)
        theta = rearrange(theta, "(b t) p h w -> b t p (h w)", b=batch)
        out = torch.matmul(projection.unsqueeze(1), theta) + self.W_z[0].bias[:, None]
        return rearrange(out, "b t c (h w) -> (b t) c h w", h=frames.shape[-2])

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``visual [B, T, C, H, W]``, ``audio [B, T, A]`` -> (Z ``[B, T, C, H, W]``, audio ``[B, T, C]``).

        The returned audio is what the AV-map loss compares with: Ã (AVSBench) or the normalised input
        audio (ECMVAE; the official code returns it transposed, ``[B, C, T]``).
        """
        batch, num_frames = visual.shape[:2]
        if audio.shape[:2] != (batch, num_frames):
            raise ValueError(f"audio {tuple(audio.shape)} does not match the {batch}×{num_frames} clips of the visual map")
        visual, audio = self.prepare_inputs(visual, audio)
        frames = visual.flatten(0, 1)
        w_y = self.W_z[1](self.project(frames, audio, num_frames).unsqueeze(2)).squeeze(2)
        z = (w_y + frames).permute(0, 2, 3, 1)
        z = self.norm_layer(z).permute(0, 3, 1, 2)
        return rearrange(z, "(b t) c h w -> b t c h w", b=batch), audio
