"""ECMVAE (Mao et al., ICCV 2023): a factorised multimodal VAE for audio-visual segmentation.

Pipeline for clips, frames ``[B, T, 3, H, W]`` and log-mel ``[B, T, 1, 96, 64]`` (``N = B·T`` frames):

1. visual backbone -> four maps (strides 4..32); audio encoder (frozen VGGish) -> ``[N, 128]``;
2. two necks, ``neck_prior`` and ``neck_post``: per level conv1×1-BN, conv3×3-BN, conv3×3-BN to 128 ch;
3. latent codes per frame (16-d): visual-specific s_v, audio-specific s_a and shared c, from prior
   encoders (image / audio) and posterior encoders that also see the mask
   (:mod:`avseg.models.ecmvae_latent`); s_v′ = Linear([s_v; c]), s_a′ = Linear([s_a; c]) are tiled
   over the deepest neck level and mixed in by a 1×1 conv (``noise_conv``);
4. ECMVAE TPAVI (L2-normalised inputs, no alignment layer) at the four levels, shared by both paths;
5. ``decoder_prior`` / ``decoder_post``: RCU blocks with nearest ×2 upsampling -> logits ``[N, 1, H, W]``.

Training (``masks`` given) runs the prior path on every frame and the posterior path on the
annotated frames only (``mask_valid``; S4 training: the first frame of each clip, MS3: all), each
clip's annotated frames forming the temporal context of the posterior TPAVI. Terms:

* ``seg_prior``, ``seg_post``: structure loss of each path on the annotated frames;
* ``kl``: KL(q‖p) of s_v and s_a plus the shared-code divergence (``shared_divergence``), annotated frames;
* ``diff``: DSN difference loss (s_v, c) + (s_a, c), prior codes (all frames) + posterior codes;
* ``mi``: Barber–Agakov log-likelihood of s_a′ given s_v′ (prior + posterior), to be maximised;
* ``avm`` (``avm_weight > 0``, MS3): AV-map KL loss on the prior path, normalised features;
* ``loss`` = seg_prior + w_post·seg_post + w_kl·kl + w_diff·diff − w_mi·mi (+ w_avm·avm).

AVSS (``num_classes`` > 1, ``labels [B, T, H, W]``, ``frame_valid``; our design, docs/ecmvae.md "AVSS"):
only the real frames (``frame_valid``) are computed, each clip's real frames forming its TPAVI context,
and padded frames get exactly zero logits; ``seg_prior``/``seg_post`` are the masked per-frame
cross-entropy, the posterior encoders see the foreground map ``labels ≠ 0``, ``avm`` is the AVSS AV-map
term over the annotated frames (normalised features); several samples average softmax probabilities.

Inference uses the prior path only: latent means by default, samples with ``sample_at_test``, and
``num_samples > 1`` averages the probabilities of that many samples (``uncertainty`` = their
per-pixel standard deviation). See ``docs/ecmvae.md`` for which parts follow the released code.

Parameter names follow MMVAE-AVS (``neck_prior.conv_list.0.reduce.0.conv.weight``,
``fusion_modules.0.theta.weight``, ``mm_vae_model.enc_vs.layer1.weight`` …); the backbone lives under
``backbone.body`` (timm), see :func:`convert_mmvae_avs_state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from einops import rearrange

from avseg.errors import ConfigError
from avseg.losses.avm import avm_loss
from avseg.losses.latent import (
    KL_FORMS,
    MI_FORMS,
    SHARED_DIVERGENCES,
    ba_log_likelihood,
    difference_loss,
    gaussian_kl,
    shared_code_divergence,
)
from avseg.losses.reduction import batch_mean
from avseg.losses.segmentation import SEGMENTATION_LOSSES, segmentation_loss
from avseg.losses.semantic import semantic_avm_loss, semantic_ce_loss
from avseg.models.backbones import feature_key
from avseg.models.decoders import RefineDecoder
from avseg.models.ecmvae_latent import POSTERIOR, PRIOR, FactorisedLatents, Gaussian, reparameterise
from avseg.models.registry import ArgumentError, ConversionResult, ModelRecord, WeightFormat, config_keys, register
from avseg.models.tpavi import TPAVI
from avseg.models.tpavi_model import BINARY_BATCH_KEYS, SEMANTIC_BATCH_KEYS, batch_keys_for, check_classes, check_supervision
from avseg.weights import strip_prefix

LATENT_NOISE_KEYS = ("vs", "as", "c")


def _check_choice(argument: str, value: str, choices) -> None:
    if value not in choices:
        raise ArgumentError(argument, f"unknown value '{value}' (expected one of {sorted(choices)})")


@dataclass(frozen=True)
class ECMVAELoss:
    """How ECMVAE's training loss is composed (see the module docstring for the terms).

    loss = seg_prior + posterior_seg_weight·seg_post + kl_weight·kl + diff_weight·diff − mi_weight·mi
    (+ avm_weight·avm). ``seg_loss``: ``structure`` (released) or ``bce``; ``shared_divergence``:
    ``js_released`` | ``js_mc`` | ``kl`` (:mod:`avseg.losses.latent`), ``js_samples`` Monte-Carlo draws
    for ``js_mc``; ``kl_form``: ``analytic`` or ``released`` (the released KL reads exp(logvar) as the
    std); ``mi_form``: ``released`` (data term only) or ``gaussian`` (full log-density).
    """

    seg_loss: str = "structure"
    posterior_seg_weight: float = 1.0
    kl_weight: float = 0.01
    diff_weight: float = 0.001
    mi_weight: float = 0.001
    avm_weight: float = 0.0
    shared_divergence: str = "js_released"
    js_samples: int = 8
    kl_form: str = "analytic"
    mi_form: str = "released"

    def __post_init__(self):
        _check_choice("seg_loss", self.seg_loss, SEGMENTATION_LOSSES)
        _check_choice("shared_divergence", self.shared_divergence, SHARED_DIVERGENCES)
        _check_choice("kl_form", self.kl_form, KL_FORMS)
        _check_choice("mi_form", self.mi_form, MI_FORMS)
        if self.js_samples < 1:
            raise ArgumentError("js_samples", f"must be at least 1, got {self.js_samples}")


class ConvBN(nn.Module):
    """Bias-free conv followed by BatchNorm (MMVAE-AVS ``BasicConv2d`` without activation): keys ``conv``, ``norm``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class DimReduce(nn.Module):
    """conv1×1-BN, conv3×3-BN, conv3×3-BN, no activation: ``[N, C_in, h, w] -> [N, C_out, h, w]``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.reduce = nn.Sequential(
            ConvBN(in_channels, out_channels, 1), ConvBN(out_channels, out_channels, 3), ConvBN(out_channels, out_channels, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(x)


class ReductionNeck(nn.Module):
    """One :class:`DimReduce` per backbone level (``conv_list.{i}``): four maps -> four ``out_channels`` maps."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.conv_list = nn.ModuleList(DimReduce(c, out_channels) for c in in_channels)

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [reduce(x) for reduce, x in zip(self.conv_list, maps)]


class ECMVAE(nn.Module):
    """The ECMVAE model; see the module docstring.

    Args:
        backbone: module with ``channels`` (4 ints) and ``forward(images) -> 4 maps`` (strides 4..32).
        audio_encoder: ``[N, 1, 96, 64] -> [N, out_dim]``; ``out_dim`` must equal ``neck_channels``
            when TPAVI is used (the ECMVAE TPAVI has no alignment layer).
        neck_channels: channels of the necks, TPAVI and decoders (128).
        latent_dim, mi_dim, encoder_channels: code size (16), Barber–Agakov head size (6), width of
            the first conv of the latent encoders (16).
        image_size: training image side; the latent conv towers flatten an ``image_size // 32`` grid.
        tpavi_stages: levels (0 = stride 4) with a TPAVI block; ``fusion=False`` removes them all.
        latent_path: False for the deterministic ablation (backbone, neck, TPAVI, decoder; no latents,
            no posterior path).
        shared_only: keep only the shared code c (ablation); no diff or MI term.
        loss: the loss composition (:class:`ECMVAELoss`); ``model.loss`` may be replaced after building.
        sample_at_test, num_samples: inference behaviour (attributes, may be changed after building).
        num_classes: logit channels K (1: binary masks, ``loss.seg_loss``; 71: AVSS, cross-entropy).
        tpavi_group_size: TPAVI attends within consecutive groups of this many real frames of a clip
            (None: all of them).

    Bad arguments raise :class:`~avseg.models.registry.ArgumentError` (a ``ValueError``) naming them.
    """

    batch_keys = BINARY_BATCH_KEYS

    def __init__(
        self,
        backbone: nn.Module,
        audio_encoder: nn.Module,
        neck_channels: int = 128,
        latent_dim: int = 16,
        mi_dim: int = 6,
        encoder_channels: int = 16,
        image_size: int = 224,
        tpavi_stages: Sequence[int] = (0, 1, 2, 3),
        fusion: bool = True,
        latent_path: bool = True,
        shared_only: bool = False,
        loss: ECMVAELoss = ECMVAELoss(),
        sample_at_test: bool = False,
        num_samples: int = 1,
        num_classes: int = 1,
        tpavi_group_size: Optional[int] = None,
    ):
        super().__init__()
        check_classes(num_classes)
        if tpavi_group_size is not None and tpavi_group_size < 1:
            raise ArgumentError("tpavi_group_size", f"must be at least 1 (or None: the whole clip), got {tpavi_group_size}")
        stages = sorted(set(int(s) for s in tpavi_stages)) if fusion else []
        audio_dim = int(getattr(audio_encoder, "out_dim", 128))
        if any(s not in range(4) for s in stages):
            raise ArgumentError("tpavi_stages", f"stages must be in 0..3, got {list(tpavi_stages)}")
        if fusion and not stages:
            raise ArgumentError("tpavi_stages", "fusion is on but no stage is listed (use fusion=False)")
        if stages and audio_dim != neck_channels:
            raise ArgumentError(
                "neck_channels", f"the ECMVAE TPAVI has no audio alignment layer, so the audio encoder's "
                f"{audio_dim}-d output must equal neck_channels ({neck_channels})"
            )
        if loss.avm_weight and not stages:
            raise ArgumentError("avm_weight", "the AV-map loss needs TPAVI fusion (fusion=True)")
        if image_size < 32 or image_size % 32:
            raise ArgumentError("image_size", f"ECMVAE needs a multiple of 32, got {image_size}")
        if num_samples < 1:
            raise ArgumentError("num_samples", f"must be at least 1, got {num_samples}")
        self.tpavi_stages = stages
        self.latent_path = latent_path
        self.loss = loss
        self.sample_at_test = sample_at_test
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.tpavi_group_size = tpavi_group_size
        self.batch_keys = batch_keys_for(num_classes)

        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.neck_prior = ReductionNeck(backbone.channels, neck_channels)
        self.fusion_modules = nn.ModuleList(
            TPAVI(neck_channels, audio_channels=None, normalize_inputs=True) for _ in stages
        )
        self.decoder_prior = RefineDecoder(neck_channels, style="ecmvae", num_classes=num_classes)
        if latent_path:
            self.neck_post = ReductionNeck(backbone.channels, neck_channels)
            self.decoder_post = RefineDecoder(neck_channels, style="ecmvae", num_classes=num_classes)
            self.mm_vae_model = FactorisedLatents(
                image_channels=3, audio_dim=audio_dim, feature_channels=neck_channels, latent_dim=latent_dim,
                mi_dim=mi_dim, base_channels=encoder_channels, grid_size=image_size // 32, shared_only=shared_only,
            )

    # ------------------------------------------------------------------ building blocks
    def encode_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``[B, T, 1, 96, 64] -> [B·T, D]``."""
        return self.audio_encoder(log_mel.flatten(0, 1))

    def fuse(self, maps: List[torch.Tensor], audio: torch.Tensor, clip_lengths: Sequence[int],
             levels: Sequence[int] = (0, 1, 2, 3)) -> Tuple[List[torch.Tensor], Dict[int, torch.Tensor]]:
        """TPAVI on ``levels`` of ``maps`` (four ``[N, C, h, w]``), clips of ``clip_lengths`` frames (sum N).

        Returns the maps with those levels fused and the per-level TPAVI audio ``[N, C]``.
        """
        maps = list(maps)
        fused_audio: Dict[int, torch.Tensor] = {}
        clip_lengths = _group_lengths(clip_lengths, self.tpavi_group_size)
        for index, stage in enumerate(self.tpavi_stages):
            if stage in levels:
                maps[stage], fused_audio[stage] = _tpavi_over_clips(self.fusion_modules[index], maps[stage], audio, clip_lengths)
        return maps, fused_audio

    def _codes(self, gaussians: Dict[str, Gaussian], sample: bool,
               noise: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        if not sample:
            return {name: mu for name, (mu, _) in gaussians.items()}
        noise = noise or {}
        return {name: reparameterise(mu, logvar, noise.get(name)) for name, (mu, logvar) in gaussians.items()}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        frames: torch.Tensor,
        log_mel: torch.Tensor,
        masks: Optional[torch.Tensor] = None,
        mask_valid: Optional[torch.Tensor] = None,
        latent_noise: Optional[Dict[str, torch.Tensor]] = None,
        labels: Optional[torch.Tensor] = None,
        frame_valid: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """frames ``[B, T, 3, H, W]``, log_mel ``[B, T, 1, 96, 64]``, masks ``[B, T, 1, H, W]`` (binary) or
        labels ``[B, T, H, W]`` int64 (AVSS), mask_valid ``[B, T]`` (annotated), frame_valid ``[B, T]`` (real frames).

        Returns ``logits`` ``[B, T, K, H, W]`` (prior path; zero on frames with ``frame_valid`` false);
        with ``num_samples > 1`` also ``uncertainty`` ``[B, T, K, H, W]``; with masks or labels also every
        loss term and ``loss``. ``latent_noise`` fixes the prior-path ε: ``{"vs", "as", "c"}`` -> ``[N, D]``
        (or ``[num_samples, N, D]``; N = the real frames) and implies sampling.
        """
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        check_supervision(self.num_classes, masks, labels)
        batch, num_frames = frames.shape[:2]
        if log_mel is None or log_mel.shape[:2] != (batch, num_frames):
            got = None if log_mel is None else tuple(log_mel.shape)
            raise ValueError(f"log_mel must be [B, T, 1, 96, 64] matching frames {(batch, num_frames)}, got {got}")
        real = self._real_frames(frame_valid, batch, num_frames, frames.device)
        images, mel = frames.flatten(0, 1), log_mel.flatten(0, 1)
        if real is not None:
            images, mel = images[real], mel[real]
            clip_lengths = [int(n) for n in frame_valid.to(torch.bool).sum(dim=1).tolist() if n > 0]
        else:
            clip_lengths = [num_frames] * batch
        audio = self.audio_encoder(mel)
        features = self.backbone(images)
        if masks is None and labels is None:
            outputs = self._predict(images, audio, features, clip_lengths, latent_noise)
        else:
            targets = self._frame_targets(frames, masks, labels)
            if mask_valid is None:
                mask_valid = torch.ones(batch, num_frames, dtype=torch.bool, device=frames.device)
            if mask_valid.shape != (batch, num_frames):
                raise ValueError(f"mask_valid must be [B, T] = {(batch, num_frames)}, got {tuple(mask_valid.shape)}")
            annotated = mask_valid.to(torch.bool)
            if real is not None:
                annotated = annotated & frame_valid.to(torch.bool)
            post_lengths = [int(n) for n in annotated.sum(dim=1).tolist() if n > 0]
            annotated = annotated.flatten()
            if real is not None:
                annotated, targets = annotated[real], targets[real]
            outputs = self._train_outputs(images, audio, features, targets, annotated, clip_lengths, post_lengths,
                                          labels is not None, latent_noise)
        if real is not None:
            outputs = {key: _scatter_frames(value, real, batch * num_frames) if value.dim() == 4 else value
                       for key, value in outputs.items()}
        return {key: rearrange(value, "(b t) c h w -> b t c h w", b=batch) if value.dim() == 4 else value
                for key, value in outputs.items()}

    @staticmethod
    def _real_frames(frame_valid: Optional[torch.Tensor], batch: int, num_frames: int, device) -> Optional[torch.Tensor]:
        """``frame_valid [B, T]`` -> the flat indices of the real frames (None: every frame is real)."""
        if frame_valid is None:
            return None
        if tuple(frame_valid.shape) != (batch, num_frames):
            raise ValueError(f"frame_valid must be [B, T] = {(batch, num_frames)}, got {tuple(frame_valid.shape)}")
        real = frame_valid.to(device=device, dtype=torch.bool).flatten().nonzero().squeeze(1)
        if real.numel() == 0:
            raise ValueError("frame_valid marks no frame as real; a batch needs at least one frame")
        return real

    @staticmethod
    def _frame_targets(frames: torch.Tensor, masks: Optional[torch.Tensor], labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Binary masks ``[B·T, 1, H, W]`` or class labels ``[B·T, H, W]``, shape-checked against the frames."""
        if labels is not None:
            if labels.shape != frames.shape[:2] + frames.shape[-2:]:
                raise ValueError(f"labels must be [B, T, H, W] matching frames, got {tuple(labels.shape)}")
            return labels.flatten(0, 1)
        if masks.shape != frames.shape[:2] + (1,) + frames.shape[-2:]:
            raise ValueError(f"masks must be [B, T, 1, H, W] matching frames, got {tuple(masks.shape)}")
        return masks.flatten(0, 1)

    def _predict(self, images, audio, features, clip_lengths, latent_noise) -> Dict[str, torch.Tensor]:
        """Prior path only; ``[N, K, H, W]`` logits (and ``uncertainty`` for several samples)."""
        size = images.shape[-2:]
        maps = self.neck_prior(features)
        if not self.latent_path:
            fused, _ = self.fuse(maps, audio, clip_lengths)
            return {"logits": self.decoder_prior(fused, output_size=size)}
        gaussians = self.mm_vae_model.encode(PRIOR, images, audio)
        samples = self.num_samples
        sample = self.sample_at_test or samples > 1 or latent_noise is not None
        deepest = len(maps) - 1
        shallow, _ = self.fuse(maps, audio, clip_lengths, levels=range(deepest))  # unaffected by the codes
        probabilities = []
        for index in range(samples):
            noise = _noise_for_sample(latent_noise, index, samples)
            codes = self.mm_vae_model.combine(PRIOR, self._codes(gaussians, sample, noise))
            level_maps = list(shallow)
            level_maps[deepest] = self.mm_vae_model.inject(PRIOR, maps[deepest], codes)
            level_maps, _ = self.fuse(level_maps, audio, clip_lengths, levels=(deepest,))
            logits = self.decoder_prior(level_maps, output_size=size)
            if samples == 1:
                return {"logits": logits}
            probabilities.append(torch.sigmoid(logits) if self.num_classes == 1 else torch.softmax(logits, dim=1))
        stacked = torch.stack(probabilities)
        mean = stacked.mean(dim=0)
        eps = torch.finfo(mean.dtype).eps
        logits = torch.logit(mean.clamp(eps, 1 - eps)) if self.num_classes == 1 else torch.log(mean.clamp_min(eps))
        return {"logits": logits, "uncertainty": stacked.std(dim=0)}

    def _seg_loss(self, logits: torch.Tensor, targets: torch.Tensor, semantic: bool) -> torch.Tensor:
        """Segmentation term on annotated frames ``[K, C, H, W]`` (each a one-frame clip): CE or the binary loss."""
        if semantic:
            return semantic_ce_loss(logits, targets)
        return segmentation_loss(self.loss.seg_loss, logits.unsqueeze(1), targets.unsqueeze(1))

    def _train_outputs(self, images, audio, features, targets, annotated_flags, clip_lengths, post_lengths,
                       semantic, latent_noise) -> Dict[str, torch.Tensor]:
        """Both paths and every loss term; frames ``[N, ...]`` (the real ones), ``annotated_flags [N]`` bool,
        ``targets`` masks ``[N, 1, H, W]`` or labels ``[N, H, W]``; clips of ``clip_lengths`` frames, of which
        ``post_lengths`` are annotated."""
        size = images.shape[-2:]
        annotated = annotated_flags.nonzero().squeeze(1)
        if annotated.numel() == 0:
            raise ValueError("mask_valid marks no frame as annotated; a training batch needs at least one mask")
        targets_annotated = targets[annotated]
        if semantic:  # the posterior encoders see where something sounds, whatever its class
            masks_annotated = (targets_annotated != 0).unsqueeze(1).to(images.dtype)
        else:
            masks_annotated = targets_annotated.to(images.dtype)
            targets_annotated = masks_annotated
        outputs: Dict[str, torch.Tensor] = {}

        # prior path, every frame
        maps_prior = self.neck_prior(features)
        if self.latent_path:
            gaussians_prior = self.mm_vae_model.encode(PRIOR, images, audio)
            sample = self.training or self.sample_at_test or latent_noise is not None
            codes_prior = self._codes(gaussians_prior, sample, latent_noise)
            combined_prior = self.mm_vae_model.combine(PRIOR, codes_prior)
            maps_prior[-1] = self.mm_vae_model.inject(PRIOR, maps_prior[-1], combined_prior)
        fused_prior, audio_prior = self.fuse(maps_prior, audio, clip_lengths)
        logits_prior = self.decoder_prior(fused_prior, output_size=size)
        outputs["logits"] = logits_prior
        loss = self.loss
        outputs["seg_prior"] = self._seg_loss(logits_prior[annotated], targets_annotated, semantic)
        total = outputs["seg_prior"]

        if self.latent_path:
            # posterior path, annotated frames only; each clip's annotated frames form its TPAVI context
            images_q, audio_q = images[annotated], audio[annotated]
            maps_post = self.neck_post([f[annotated] for f in features])
            gaussians_post = self.mm_vae_model.encode(POSTERIOR, images_q, audio_q, masks_annotated)
            codes_post = self._codes(gaussians_post, self.training)
            combined_post = self.mm_vae_model.combine(POSTERIOR, codes_post)
            maps_post[-1] = self.mm_vae_model.inject(POSTERIOR, maps_post[-1], combined_post)
            fused_post, _ = self.fuse(maps_post, audio_q, post_lengths)
            logits_post = self.decoder_post(fused_post, output_size=size)
            outputs["seg_post"] = self._seg_loss(logits_post, targets_annotated, semantic)
            outputs.update(self._latent_terms(gaussians_prior, codes_prior, combined_prior, annotated,
                                              gaussians_post, codes_post, combined_post))
            total = total + loss.posterior_seg_weight * outputs["seg_post"] + loss.kl_weight * outputs["kl"]
            if "diff" in outputs:
                total = total + loss.diff_weight * outputs["diff"] - loss.mi_weight * outputs["mi"]

        if loss.avm_weight:
            stages = self.tpavi_stages
            audio_list, visual_list = [audio_prior[s] for s in stages], [fused_prior[s] for s in stages]
            if semantic:
                outputs["avm"] = semantic_avm_loss(logits_prior, audio_list, visual_list, annotated_flags, normalize=True)
            else:
                outputs["avm"] = avm_loss(logits_prior, audio_list, visual_list, normalize=True)
            total = total + loss.avm_weight * outputs["avm"]
        outputs["loss"] = total
        return outputs

    def _latent_terms(self, gaussians_prior, codes_prior, combined_prior, annotated,
                      gaussians_post, codes_post, combined_post) -> Dict[str, torch.Tensor]:
        """KL on annotated frames; difference and MI terms on each path's own frames."""
        prior_at_annotated = {name: (mu[annotated], logvar[annotated]) for name, (mu, logvar) in gaussians_prior.items()}
        mu_p, logvar_p = prior_at_annotated["c"]
        mu_q, logvar_q = gaussians_post["c"]
        loss = self.loss
        kl = shared_code_divergence(loss.shared_divergence, mu_p, logvar_p, mu_q, logvar_q, loss.js_samples, loss.kl_form)
        terms = {}
        if self.mm_vae_model.shared_only:
            terms["kl"] = kl
            return terms
        for name in ("vs", "as"):
            kl = kl + batch_mean(gaussian_kl(*gaussians_post[name], *prior_at_annotated[name], form=loss.kl_form))
        terms["kl"] = kl
        terms["diff"] = sum(
            difference_loss(codes[name], codes["c"]) for codes in (codes_prior, codes_post) for name in ("vs", "as")
        )
        terms["mi"] = sum(
            ba_log_likelihood(*self.mm_vae_model.mi_heads(side, combined), form=loss.mi_form)
            for side, combined in ((POSTERIOR, combined_post), (PRIOR, combined_prior))
        )
        return terms


# ----------------------------------------------------------------------------- helpers
def _tpavi_over_clips(block: TPAVI, frames: torch.Tensor, audio: torch.Tensor,
                      clip_lengths: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """TPAVI on ``[N, C, h, w]`` frames and ``[N, C]`` audio grouped into clips of ``clip_lengths`` frames."""
    lengths = list(clip_lengths)
    if len(set(lengths)) == 1:
        length = lengths[0]
        fused, fused_audio = block(rearrange(frames, "(b t) c h w -> b t c h w", t=length),
                                   rearrange(audio, "(b t) c -> b t c", t=length))
        return fused.flatten(0, 1), fused_audio.flatten(0, 1)
    pieces = [block(f.unsqueeze(0), a.unsqueeze(0)) for f, a in zip(frames.split(lengths), audio.split(lengths))]
    return torch.cat([p[0].flatten(0, 1) for p in pieces]), torch.cat([p[1].flatten(0, 1) for p in pieces])


def _group_lengths(clip_lengths: Sequence[int], group_size: Optional[int]) -> List[int]:
    """Clip lengths split into consecutive TPAVI groups of ``group_size`` frames (the last may be shorter)."""
    if group_size is None:
        return list(clip_lengths)
    return [min(group_size, length - start) for length in clip_lengths for start in range(0, length, group_size)]


def _scatter_frames(values: torch.Tensor, real: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Values of the real frames ``[N_real, ...]`` at their flat indices ``real`` among ``num_frames``; zeros elsewhere."""
    return values.new_zeros((num_frames,) + values.shape[1:]).index_copy(0, real, values)


def _noise_for_sample(latent_noise: Optional[Dict[str, torch.Tensor]], index: int,
                      num_samples: int) -> Optional[Dict[str, torch.Tensor]]:
    if latent_noise is None:
        return None
    unknown = set(latent_noise) - set(LATENT_NOISE_KEYS)
    if unknown:
        raise ValueError(f"latent_noise keys must be among {LATENT_NOISE_KEYS}, got {sorted(unknown)}")
    picked = {}
    for name, eps in latent_noise.items():
        if eps.dim() == 3:
            if eps.shape[0] != num_samples:
                raise ValueError(f"latent_noise['{name}'] has {eps.shape[0]} samples, num_samples is {num_samples}")
            eps = eps[index]
        picked[name] = eps
    return picked


# ----------------------------------------------------------------------------- official weights
#: Official MMVAE-AVS keys that the released forward pass never uses (no counterpart here).
MMVAE_UNUSED_PREFIXES = ("audio_neck.", "decoder_prior.fusion_block_1.resConfUnit1.", "decoder_post.fusion_block_1.resConfUnit1.")


def is_mmvae_avs_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a released MMVAE-AVS state dict (``encoder.*`` plus ``decoder_prior.*``/``mm_vae_model.*``)."""
    return any(k.startswith("encoder.") for k in state_dict) and any(
        k.startswith(("decoder_prior.", "mm_vae_model.")) for k in state_dict)


def convert_mmvae_avs_state_dict(state_dict: Dict[str, torch.Tensor]) -> ConversionResult:
    """Rename a released MMVAE-AVS ``AVSMMVAE`` state dict to :class:`ECMVAE` names.

    ``encoder.*`` (torchvision ResNet or original PVTv2 names) becomes ``backbone.body.*`` (timm
    ``features_only`` names); ``neck_prior``, ``neck_post``, ``fusion_modules``, ``decoder_prior``,
    ``decoder_post`` and ``mm_vae_model`` keep their names. Dropped, because the released forward
    never calls them: ``audio_neck`` and the deepest decoder block's ``resConfUnit1``. VGGish is not
    part of the release's state dict; the audio encoder keeps its own weights.

    A ``module.`` prefix (DataParallel) is removed first.
    """
    state_dict = strip_prefix(state_dict)
    converted: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    backbone = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    if any(k.startswith("patch_embed1.") for k in backbone):
        from timm.models import pvt_v2

        backbone = pvt_v2.checkpoint_filter_fn(backbone, None)
    for key, value in backbone.items():
        if key.startswith("fc."):
            dropped.append(f"encoder.{key}")
        else:
            converted[f"backbone.body.{feature_key(key)}"] = value
    for key, value in state_dict.items():
        if key.startswith("encoder."):
            continue
        if key.startswith(MMVAE_UNUSED_PREFIXES):
            dropped.append(key)
        else:
            converted[key] = value
    return ConversionResult(converted, dropped)


# ----------------------------------------------------------------------------- factory
#: Constructor argument -> the config key it comes from (for error messages).
_CONFIG_KEYS = {
    "tpavi_stages": "model.tpavi_stages", "neck_channels": "model.neck_channels", "image_size": "data.image_size",
    "avm_weight": "model.avm_weight", "seg_loss": "model.seg_loss", "num_samples": "model.ecmvae.num_samples",
    "num_classes": "model.num_classes", "tpavi_group_size": "model.tpavi_group_size",
    **{name: f"model.ecmvae.{name}" for name in ("shared_divergence", "js_samples", "kl_form", "mi_form")},
}


def build_ecmvae(cfg) -> ECMVAE:
    """The ``ecmvae`` model from a full config (``cfg.model`` with ``cfg.model.ecmvae``; ``cfg.data.image_size``)."""
    from avseg.audio.vggish import build_audio_encoder
    from avseg.models.backbones import build_backbone

    model_cfg, ecmvae_cfg = cfg.model, cfg.model.ecmvae
    if not model_cfg.audio_align_bias:
        raise ConfigError("key 'model.audio_align_bias': applies to the tpavi model only "
                          "(the ECMVAE TPAVI has no audio alignment layer); leave it true")
    with config_keys(_CONFIG_KEYS):
        loss = ECMVAELoss(
            seg_loss=model_cfg.seg_loss,
            posterior_seg_weight=float(ecmvae_cfg.posterior_seg_weight),
            kl_weight=float(ecmvae_cfg.kl_weight),
            diff_weight=float(ecmvae_cfg.diff_weight),
            mi_weight=float(ecmvae_cfg.mi_weight),
            avm_weight=float(model_cfg.avm_weight),
            shared_divergence=ecmvae_cfg.shared_divergence,
            js_samples=ecmvae_cfg.js_samples,
            kl_form=ecmvae_cfg.kl_form,
            mi_form=ecmvae_cfg.mi_form,
        )
        return ECMVAE(
            build_backbone(model_cfg.backbone),
            build_audio_encoder(model_cfg.audio),
            neck_channels=model_cfg.neck_channels,
            latent_dim=ecmvae_cfg.latent_dim,
            mi_dim=ecmvae_cfg.mi_dim,
            encoder_channels=ecmvae_cfg.encoder_channels,
            image_size=cfg.data.image_size,
            tpavi_stages=model_cfg.tpavi_stages,
            fusion=model_cfg.fusion,
            latent_path=ecmvae_cfg.latent_path,
            shared_only=ecmvae_cfg.shared_only,
            loss=loss,
            sample_at_test=ecmvae_cfg.sample_at_test,
            num_samples=ecmvae_cfg.num_samples,
            num_classes=model_cfg.num_classes,
            tpavi_group_size=model_cfg.tpavi_group_size,
        )


register(ModelRecord(
    "ecmvae", build_ecmvae, ECMVAE.batch_keys, "avs", semantic_batch_keys=SEMANTIC_BATCH_KEYS,
    formats={"mmvae-avs": WeightFormat(
        is_mmvae_avs_state_dict, convert_mmvae_avs_state_dict, missing_ok=("audio_encoder.",),
        description="released MMVAE-AVS state dict: encoder.* with decoder_prior.*/mm_vae_model.*",
    )},
    tiny_overrides=("model.backbone.name=resnet18", "model.audio.name=small", "model.audio.freeze=false",
                    "model.neck_channels=128", "data.image_size=64"),
    description="ECMVAE (Mao et al., ICCV 2023)",
))
