"""ECMVAE latent path: the factorised prior/posterior encoders, code combination and injection.

Module and parameter names follow MMVAE-AVS (``mm_vae_model.enc_vs.layer1.weight`` …) so that the
released state dict loads after :func:`avseg.models.ecmvae.convert_mmvae_avs_state_dict`.

Codes (all per frame, ``[N, latent_dim]`` with ``N = B·T``):

* ``vs``  visual-specific s_v: from the image (prior ``enc_vs``) or image + mask (posterior ``enc_vs_y``);
* ``as``  audio-specific s_a: from the audio vector (``enc_as``) or audio + encoded mask (``enc_as_y``);
* ``c``   shared c: from audio + encoded image (``enc_vac``) or audio + encoded image + mask (``enc_vac_y``).

The combinations s_v′ = Linear([s_v; c]) and s_a′ = Linear([s_a; c]) are tiled over the deepest
neck level, concatenated with it and mapped back by a 1×1 conv (``noise_conv``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Gaussian = Tuple[torch.Tensor, torch.Tensor]  # (mu, logvar), each [N, D]

PRIOR, POSTERIOR = "prior", "post"


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """z = μ + ε·exp(½·logvar); ``eps`` defaults to fresh standard normal noise."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + eps * torch.exp(0.5 * logvar)


class StridedConvTower(nn.Module):
    """Five ``conv4×4 stride 2 → BN → LeakyReLU`` stages, ``[N, C_in, H, W] -> [N, C_out·g·g]``.

    Parameters are ``layer{1-5}`` and ``bn{1-5}`` as in MMVAE-AVS. The map after the tower is
    ``H/32 × W/32``; it is average-pooled to ``grid_size × grid_size`` when it differs (the released
    model assumes 224 px, i.e. a 7×7 grid, and has no pooling).
    """

    def __init__(self, in_channels: int, widths: Sequence[int], grid_size: int):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"the tower has 5 stages, got widths {list(widths)}")
        previous = in_channels
        for index, width in enumerate(widths, start=1):
            setattr(self, f"layer{index}", nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1))
            setattr(self, f"bn{index}", nn.BatchNorm2d(width))
            previous = width
        self.grid_size = grid_size
        self.flat_dim = widths[-1] * grid_size * grid_size

    def tower(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(1, 6):
            x = F.leaky_relu(getattr(self, f"bn{index}")(getattr(self, f"layer{index}")(x)), 0.01)
        if x.shape[-2:] != (self.grid_size, self.grid_size):
            x = F.adaptive_avg_pool2d(x, self.grid_size)
        return x.flatten(1)


class ImageLatentEncoder(StridedConvTower):
    """φ_sv (``in_channels=3``) and its posterior (image + mask, ``in_channels=4``) -> (μ, logvar).

    Widths ``base·(1, 2, 4, 8, 8)``; heads ``fc1`` (μ) and ``fc2`` (logvar).
    """

    def __init__(self, in_channels: int, base_channels: int, grid_size: int, latent_dim: int):
        super().__init__(in_channels, [base_channels * m for m in (1, 2, 4, 8, 8)], grid_size)
        self.fc1 = nn.Linear(self.flat_dim, latent_dim)
        self.fc2 = nn.Linear(self.flat_dim, latent_dim)

    def forward(self, images: torch.Tensor) -> Gaussian:
        hidden = self.tower(images)
        return self.fc1(hidden), self.fc2(hidden)


class AudioLatentEncoder(nn.Module):
    """φ_sa: audio vector ``[N, audio_dim]`` -> (μ, logvar) with two linear heads ``fc1``, ``fc2``."""

    def __init__(self, audio_dim: int, latent_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(audio_dim, latent_dim)
        self.fc2 = nn.Linear(audio_dim, latent_dim)

    def forward(self, audio: torch.Tensor) -> Gaussian:
        return self.fc1(audio), self.fc2(audio)


class AudioImageLatentEncoder(StridedConvTower):
    """Audio plus a conv-encoded image-like input -> (μ, logvar).

    Used for φ_c (image, 3 channels), the posterior audio encoder (mask, 1 channel) and the
    posterior shared encoder (image + mask, 4 channels). Widths ``base·(1, 2, 4, 4, 4)``; the
    flattened map goes through ``fc_gt_vector`` to ``audio_dim // 4`` and is concatenated after the
    audio vector; ``fc1``/``fc2`` map ``audio_dim + audio_dim // 4`` to the latent size.
    """

    def __init__(self, in_channels: int, base_channels: int, grid_size: int, audio_dim: int, latent_dim: int):
        super().__init__(in_channels, [base_channels * m for m in (1, 2, 4, 4, 4)], grid_size)
        vector_dim = audio_dim // 4
        self.fc_gt_vector = nn.Linear(self.flat_dim, vector_dim)
        self.fc1 = nn.Linear(audio_dim + vector_dim, latent_dim)
        self.fc2 = nn.Linear(audio_dim + vector_dim, latent_dim)

    def image_vector(self, images: torch.Tensor) -> torch.Tensor:
        """The image half of the input: ``[N, C, H, W] -> [N, audio_dim // 4]`` (per frame, cacheable)."""
        return self.fc_gt_vector(self.tower(images))

    def from_vector(self, audio: torch.Tensor, image_vector: torch.Tensor, mean_only: bool = False):
        """(μ, logvar) from the audio ``[N, audio_dim]`` and :meth:`image_vector`; only μ with ``mean_only``."""
        joint = torch.cat([audio, image_vector], dim=1)
        return self.fc1(joint) if mean_only else (self.fc1(joint), self.fc2(joint))

    def forward(self, audio: torch.Tensor, images: torch.Tensor) -> Gaussian:
        return self.from_vector(audio, self.image_vector(images))


class LatentInjection(nn.Module):
    """Concatenate codes tiled over a feature map and map back: ``[N, C, h, w] -> [N, C, h, w]``.

    ``noise_conv`` is a 1×1 conv (with bias) from ``C + Σ code dims`` to ``C``; codes follow the
    feature channels in the order given.
    """

    def __init__(self, channels: int, code_dim: int):
        super().__init__()
        self.noise_conv = nn.Conv2d(channels + code_dim, channels, kernel_size=1)

    def forward(self, feature: torch.Tensor, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        height, width = feature.shape[-2:]
        tiles = [code[:, :, None, None].expand(-1, -1, height, width) for code in codes]
        return self.noise_conv(torch.cat([feature, *tiles], dim=1))


class FactorisedLatents(nn.Module):
    """All latent modules of ECMVAE (``mm_vae_model`` in MMVAE-AVS).

    Args:
        image_channels: channels of the frames (3).
        audio_dim: size of the per-frame audio vector (128 for VGGish).
        feature_channels: channels of the neck level the codes are injected into (128).
        latent_dim: size of each code (16).
        mi_dim: output size of the Barber–Agakov heads (6).
        base_channels: width of the first strided conv of the latent encoders (16).
        grid_size: side of the map the conv towers flatten (``image_size // 32``).
        shared_only: keep only the shared code c (ablation); s_v, s_a and the MI heads are dropped and
            c itself is injected.
    """

    def __init__(self, image_channels: int = 3, audio_dim: int = 128, feature_channels: int = 128, latent_dim: int = 16,
                 mi_dim: int = 6, base_channels: int = 16, grid_size: int = 7, shared_only: bool = False):
        super().__init__()
        self.shared_only = shared_only
        self.latent_dim = latent_dim
        mask_channels = 1
        self.enc_vac = AudioImageLatentEncoder(image_channels, base_channels, grid_size, audio_dim, latent_dim)
        self.enc_vac_y = AudioImageLatentEncoder(image_channels + mask_channels, base_channels, grid_size, audio_dim,
                                                 latent_dim)
        if not shared_only:
            self.enc_vs = ImageLatentEncoder(image_channels, base_channels, grid_size, latent_dim)
            self.enc_as = AudioLatentEncoder(audio_dim, latent_dim)
            self.enc_vs_y = ImageLatentEncoder(image_channels + mask_channels, base_channels, grid_size, latent_dim)
            self.enc_as_y = AudioImageLatentEncoder(mask_channels, base_channels, grid_size, audio_dim, latent_dim)
            for side in ("prior", "posterior"):
                setattr(self, f"sc1_{side}", nn.Linear(2 * latent_dim, latent_dim))
                setattr(self, f"sc2_{side}", nn.Linear(2 * latent_dim, latent_dim))
            for side in (POSTERIOR, PRIOR):
                setattr(self, f"ba_lower_bound_mu_{side}", nn.Linear(latent_dim, mi_dim))
                setattr(self, f"ba_lower_bound_logvar_{side}", nn.Linear(latent_dim, mi_dim))
                setattr(self, f"ba_lower_bound_sc_a_{side}", nn.Linear(latent_dim, mi_dim))
        injected_dim = latent_dim if shared_only else 2 * latent_dim
        self.noise_model_prior = LatentInjection(feature_channels, injected_dim)
        self.noise_model_post = LatentInjection(feature_channels, injected_dim)

    @property
    def code_names(self) -> Tuple[str, ...]:
        return ("c",) if self.shared_only else ("vs", "as", "c")

    def encode(self, side: str, images: torch.Tensor, audio: torch.Tensor,
               masks: Optional[torch.Tensor] = None) -> Dict[str, Gaussian]:
        """(μ, logvar) per code. Prior: ``images [N,3,H,W]``, ``audio [N,A]``; posterior also ``masks [N,1,H,W]``."""
        if side == PRIOR:
            gaussians = {"c": self.enc_vac(audio, images)}
            if not self.shared_only:
                gaussians["vs"] = self.enc_vs(images)
                gaussians["as"] = self.enc_as(audio)
            return gaussians
        if masks is None:
            raise ValueError("the posterior encoders need masks")
        images_and_masks = torch.cat([images, masks.to(images.dtype)], dim=1)
        gaussians = {"c": self.enc_vac_y(audio, images_and_masks)}
        if not self.shared_only:
            gaussians["vs"] = self.enc_vs_y(images_and_masks)
            gaussians["as"] = self.enc_as_y(audio, masks.to(images.dtype))
        return gaussians

    def combine(self, side: str, codes: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """The codes injected into the deepest level: ``[s_v′, s_a′]`` (or ``[c]`` when shared-only)."""
        if self.shared_only:
            return [codes["c"]]
        name = "prior" if side == PRIOR else "posterior"
        s_v = getattr(self, f"sc1_{name}")(torch.cat([codes["vs"], codes["c"]], dim=1))
        s_a = getattr(self, f"sc2_{name}")(torch.cat([codes["as"], codes["c"]], dim=1))
        return [s_v, s_a]

    def inject(self, side: str, feature: torch.Tensor, combined: Sequence[torch.Tensor]) -> torch.Tensor:
        module = self.noise_model_prior if side == PRIOR else self.noise_model_post
        return module(feature, combined)

    def mi_heads(self, side: str, combined: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Barber–Agakov heads: (μ, logvar) of q(s_a′ | s_v′) and the projected target, each ``[N, mi_dim]``."""
        s_v, s_a = combined
        mu = torch.tanh(getattr(self, f"ba_lower_bound_mu_{side}")(s_v))
        logvar = torch.tanh(getattr(self, f"ba_lower_bound_logvar_{side}")(s_v))
        target = torch.tanh(getattr(self, f"ba_lower_bound_sc_a_{side}")(s_a))
        return mu, logvar, target
