"""Per-frame feature cache: every frame's backbone and neck run once, then one frame's decoder per output.

A clip's TPAVI output for its frame k is, with the spatial-mean identity of :mod:`avseg.models.tpavi`,

    Z_k = LayerNorm(BN(W_W·M·θ_k + b_W) + V_k),    M = (1/T) Σ_t φ_t ḡ_tᵀ,

where V_k is frame k's neck map, θ_k = conv_θ(V_k), ḡ_t = conv_g(mean_hw V_t) is one C' vector per
frame and φ_t = conv_φ(align(a_t)) one C' vector per audio slot. So:

* **frame terms** (once per displayed frame): the four neck maps and ḡ at every TPAVI stage;
* **window terms** (once per audio window): the audio encoder output and φ at every stage;
* **one output frame**: M (a sum of T outer products, C'×C'), θ_k, BN and LayerNorm for frame k only,
  and the decoder on that frame only.

ECMVAE (prior path, latent means) is the same below the deepest level. At the deepest level the latent
codes are injected before TPAVI, and each clip frame's codes depend on the audio of its slot in that
clip, so there the injection (a 1×1 conv at stride 32), the L2 normalisation and ḡ are recomputed per
clip for its T frames, from cached per-frame parts: the deepest neck map, the image encoder's code
mean (``enc_vs``) and the image vector of the shared encoder (``enc_vac`` tower + ``fc_gt_vector``).
An ECMVAE that samples at test time (``sample_at_test`` or ``num_samples > 1``) is not cached: its noise
is drawn per batch of clips, so :class:`~avseg.inference.segmenter.Segmenter` runs whole clips for it.

A model with ``tpavi_group_size`` G (official AVSS: 5) mixes each frame only with its G-frame group of
the clip, so the sum runs over that group. The decoder returns the model's K logit channels (``num_classes``).
The result equals the clip forward pass up to float rounding (tests/test_feature_cache.py: 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from avseg.models.ecmvae import ECMVAE
from avseg.models.ecmvae_latent import PRIOR
from avseg.models.tpavi import TPAVI, conv_as_linear, pointwise_conv, l2_normalize_channels
from avseg.models.tpavi_model import AVSBenchModel

DEEPEST = 3


@dataclass
class FrameTerms:
    """Cached parts of one frame.

    ``maps``: the four neck maps ``[C, h_i, w_i]`` (``None`` once no output needs this frame decoded);
    ``g_mean``: stage → ḡ ``[C']`` for the stages whose ḡ is per frame; ECMVAE latent path only:
    ``deepest`` ``[C, h, w]`` (kept while the frame is in a pending clip) and ``image_codes``
    (``"vs"`` → ``[D]``, ``"vac"`` → ``[A/4]``).
    """

    maps: Optional[List[torch.Tensor]]
    g_mean: Dict[int, torch.Tensor]
    deepest: Optional[torch.Tensor] = None
    image_codes: Dict[str, torch.Tensor] = field(default_factory=dict)

    def release_maps(self) -> None:
        """Drop the full-resolution maps (the small terms stay for the clips that still include this frame)."""
        self.maps = None


@dataclass
class WindowTerms:
    """Cached parts of one audio window of T examples: ``audio [T, D]`` (encoder output), ``phi``: stage → ``[T, C']``."""

    audio: Optional[torch.Tensor]
    phi: Dict[int, torch.Tensor]


@dataclass
class ClipJob:
    """One output: frame ``slot`` of a clip whose frames are ``frames`` (T) with audio ``window``."""

    frames: Sequence[FrameTerms]
    window: WindowTerms
    slot: int


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot use the cache (``None`` when it can)."""
    if isinstance(model, AVSBenchModel):
        return None
    if isinstance(model, ECMVAE):
        if model.latent_path and (model.sample_at_test or model.num_samples > 1):
            return "this ECMVAE samples its latent codes at test time (noise is drawn per batch of clips)"
        return None
    return f"{type(model).__name__} is not a TPAVI or ECMVAE torch model"


def _prepare_visual(block: TPAVI, maps: torch.Tensor) -> torch.Tensor:
    """The block's visual input ``[N, C, h, w]`` (L2-normalised over channels for the ECMVAE variant)."""
    return l2_normalize_channels(maps, dim=1) if block.normalize_inputs else maps


def _phi(block: TPAVI, audio: torch.Tensor) -> torch.Tensor:
    """φ of audio vectors ``[T, A]`` → ``[T, C']`` (alignment and normalisation as in ``TPAVI.prepare_inputs``)."""
    if block.align_channel is not None:
        audio = block.align_channel(audio)
    if block.normalize_inputs:
        audio = l2_normalize_channels(audio, dim=-1)
    return conv_as_linear(block.phi, audio)


def _g_mean(block: TPAVI, visual: torch.Tensor) -> torch.Tensor:
    """ḡ of prepared maps ``[N, C, h, w]`` → ``[N, C']``."""
    return conv_as_linear(block.g, visual.mean(dim=(2, 3)))


def _mixing(phi: torch.Tensor, g_mean: torch.Tensor) -> torch.Tensor:
    """A clip's TPAVI mixing matrix M = (1/T) Σ_t φ_t ḡ_tᵀ from ``phi``, ``g_mean [T, C']`` → ``[C', C']``."""
    return torch.einsum("tp,tq->pq", phi, g_mean) / phi.shape[0]


def _fuse(block: TPAVI, visual: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """TPAVI output of single frames: prepared ``visual [B, C, h, w]``, their clips' ``mixing [B, C', C']``."""
    projection = torch.einsum("cq,bpq->bcp", block.W_z[0].weight.flatten(1), mixing)
    theta = pointwise_conv(block.theta, visual).flatten(2)
    out = (torch.matmul(projection, theta) + block.W_z[0].bias[:, None]).reshape(visual.shape)
    w_y = block.W_z[1](out.unsqueeze(2)).squeeze(2)
    return block.norm_layer((w_y + visual).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeatureCache:
    """Frame terms, window terms and single-frame decoding for a TPAVI (``tpavi``) or ECMVAE model in eval mode.

    Raises ``ValueError`` for another model (see :func:`unsupported_reason`).
    """

    def __init__(self, model: nn.Module):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"model: {reason}")
        self.model = model
        if isinstance(model, AVSBenchModel):
            self.necks = list(model.neck)
            self.blocks = {stage: model.tpavi[str(stage)] for stage in model.tpavi_stages}
            self.decoder = model.decoder
            self.latent = None
        else:
            self.necks = None
            self.blocks = {stage: model.fusion_modules[i] for i, stage in enumerate(model.tpavi_stages)}
            self.decoder = model.decoder_prior
            self.latent = model.mm_vae_model if model.latent_path else None
        self.audio_encoder = model.audio_encoder if self.blocks or self.latent is not None else None
        self.group_size = getattr(model, "tpavi_group_size", None)

    @property
    def needs_audio(self) -> bool:
        return self.audio_encoder is not None

    # ------------------------------------------------------------------ per frame / per window
    def _neck(self, images: torch.Tensor) -> List[torch.Tensor]:
        features = self.model.backbone(images)
        if self.necks is not None:
            return [neck(f) for neck, f in zip(self.necks, features)]
        return self.model.neck_prior(features)

    def encode_frames(self, images: torch.Tensor) -> List[FrameTerms]:
        """Normalised frames ``[N, 3, S, S]`` → one :class:`FrameTerms` each."""
        maps = self._neck(images)
        g_means = {stage: _g_mean(block, _prepare_visual(block, maps[stage])) for stage, block in self.blocks.items()
                   if not (stage == DEEPEST and self.latent is not None)}
        codes: Dict[str, torch.Tensor] = {}
        if self.latent is not None:
            shared = self.latent.enc_vac
            codes["vac"] = shared.image_vector(images)
            if not self.latent.shared_only:
                codes["vs"] = self.latent.enc_vs(images)[0]
        return [
            FrameTerms(
                maps=[level[index] for level in maps],
                g_mean={stage: g[index] for stage, g in g_means.items()},
                deepest=maps[DEEPEST][index] if self.latent is not None else None,
                image_codes={name: value[index] for name, value in codes.items()},
            )
            for index in range(images.shape[0])
        ]

    def encode_audio(self, log_mel: torch.Tensor) -> Optional[torch.Tensor]:
        """Log-mel examples ``[T, 1, 96, 64]`` → audio vectors ``[T, D]`` (None for a visual-only model)."""
        return self.audio_encoder(log_mel) if self.audio_encoder is not None else None

    def window_terms(self, audio: Optional[torch.Tensor]) -> WindowTerms:
        """One window's audio vectors ``[T, D]`` (:meth:`encode_audio`) → :class:`WindowTerms`."""
        if audio is None:
            return WindowTerms(None, {})
        return WindowTerms(audio, {stage: _phi(block, audio) for stage, block in self.blocks.items()})

    def encode_window(self, log_mel: torch.Tensor) -> WindowTerms:
        """Log-mel examples ``[T, 1, 96, 64]`` of one window → :class:`WindowTerms`."""
        return self.window_terms(self.encode_audio(log_mel))

    # ------------------------------------------------------------------ per output frame
    def _injected(self, frames: Sequence[FrameTerms], audio: torch.Tensor) -> torch.Tensor:
        """ECMVAE deepest maps with the prior codes (latent means) of each clip frame: ``[T, C, h, w]``."""
        latent = self.latent
        shared = latent.enc_vac
        image_vectors = torch.stack([f.image_codes["vac"] for f in frames])
        codes = {"c": shared.from_vector(audio, image_vectors, mean_only=True)}
        if not latent.shared_only:
            codes["vs"] = torch.stack([f.image_codes["vs"] for f in frames])
            codes["as"] = latent.enc_as(audio)[0]
        deepest = torch.stack([f.deepest for f in frames])
        return latent.inject(PRIOR, deepest, latent.combine(PRIOR, codes))

    def _group(self, job: ClipJob) -> ClipJob:
        """The job restricted to the TPAVI group (``tpavi_group_size`` consecutive frames) that holds its slot."""
        length = len(job.frames)
        size = self.group_size or length
        if size >= length:
            return job
        low = job.slot // size * size
        high = min(low + size, length)
        window = job.window
        audio = window.audio[low:high] if window.audio is not None else None
        return ClipJob(job.frames[low:high], WindowTerms(audio, {s: p[low:high] for s, p in window.phi.items()}),
                       job.slot - low)

    def decode(self, jobs: Sequence[ClipJob], output_size: Tuple[int, int]) -> torch.Tensor:
        """Logits ``[B, K, *output_size]`` of each job's frame (K: the model's output channels)."""
        jobs = [self._group(job) for job in jobs]
        levels: List[List[torch.Tensor]] = [[job.frames[job.slot].maps[level] for job in jobs] for level in range(4)]
        maps = [torch.stack(level) for level in levels]
        deep_visual = deep_g = None
        if self.latent is not None:
            injected = [self._injected(job.frames, job.window.audio) for job in jobs]
            maps[DEEPEST] = torch.stack([clip[job.slot] for clip, job in zip(injected, jobs)])
            if DEEPEST in self.blocks:
                block = self.blocks[DEEPEST]
                prepared = [_prepare_visual(block, clip) for clip in injected]
                deep_g = [_g_mean(block, clip) for clip in prepared]
                deep_visual = torch.stack([clip[job.slot] for clip, job in zip(prepared, jobs)])
        for stage, block in self.blocks.items():
            if deep_g is not None and stage == DEEPEST:
                visual, g_means = deep_visual, deep_g
            else:
                visual = _prepare_visual(block, maps[stage])
                g_means = [torch.stack([frame.g_mean[stage] for frame in job.frames]) for job in jobs]
            mixing = torch.stack([_mixing(job.window.phi[stage], g) for job, g in zip(jobs, g_means)])
            maps[stage] = _fuse(block, visual, mixing)
        return self.decoder(maps, output_size=output_size)
