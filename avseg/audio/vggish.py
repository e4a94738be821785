"""Audio encoders: VGGish (torchvggish/AVSBench layout) with the TF PCA postprocessor, and a small trainable CNN.

Both map log-mel examples ``[N, 1, 96, 64]`` to vectors ``[N, 128]`` (``out_dim``).

**VGGish** (``model.audio.name: vggish``). The TF VGGish network with the state-dict keys of
``harritaylor/torchvggish`` and AVSBench (``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``), so
``vggish-10086976.pth`` loads as is (torchaudio's ``features_network.*``/``embedding_network.*`` names
are accepted too). The feature map is flattened in NHWC order as in TF. ``final_relu=True`` keeps the
ReLU after the 128-d layer of torchvggish/AVSBench (the 2017 TF graph); ``False`` gives the current TF
VGGish, whose embedding is pre-activation. Frozen by default, as in AVSBench: no gradients, always in
eval mode, run under ``torch.no_grad``; ``freeze: false`` makes it trainable.

**PCA postprocessor** (``model.audio.pca_weights``), TF ``vggish_postprocess`` semantics:
``q = uint8((clip(P·(e − μ), −2, 2) + 2)·255/4)``, computed in float64 with *truncation* (torchvggish
rounds instead). It has no gradient, so it requires a frozen VGGish. The encoder then returns
``q.float()`` (values 0..255). ``vggish_pca_params`` files are read safely: ``.npz`` without pickle, or
``.pth`` with :func:`avseg.weights.safe_load` and an allowlist of exactly the numpy names needed to
rebuild plain float arrays.

**Small encoder** (``model.audio.name: small``): four conv3×3-BN-ReLU stages with stride 2 (16, 32, 64,
128 channels), a global average and a Linear to 128 (plus ReLU with ``final_relu``). About 0.1M
parameters; trainable by default, meant for CPU and synthetic-data runs.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from avseg.errors import CheckpointError, ConfigError
from avseg.models.registry import ArgumentError, config_keys
from avseg.weights import safe_load

EMBEDDING_DIM = 128
PCA_CLIP = 2.0
_VGG_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
_TORCHAUDIO_PREFIXES = {"features_network.": "features.", "embedding_network.": "embeddings."}


class MissingWeightsWarning(UserWarning):
    """A frozen network was built without pretrained weights (it will stay random)."""


class AudioEncoder(nn.Module):
    """Base class: ``log_mel [N, 1, 96, 64] -> [N, out_dim]``, optionally frozen (no grad, eval mode)."""

    out_dim: int = EMBEDDING_DIM

    def __init__(self, freeze: bool = False):
        super().__init__()
        self.frozen = False
        self._freeze_requested = freeze

    def _apply_freeze(self) -> None:
        """Called at the end of a subclass ``__init__``, once the parameters exist."""
        self.frozen = self._freeze_requested
        if self.frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> "AudioEncoder":
        return super().train(mode and not self.frozen)

    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        if log_mel.dim() != 4 or log_mel.shape[1] != 1:
            raise ValueError(f"audio encoder expects log-mel examples [N, 1, 96, 64], got {tuple(log_mel.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encode(log_mel)


# ----------------------------------------------------------------------------- PCA postprocessor
def _numpy_allowlist() -> list:
    """The numpy globals a pickled float ndarray refers to (numpy 1.x and 2.x spellings)."""
    from numpy._core.multiarray import _reconstruct

    return [
        np.ndarray,
        np.dtype,
        np.dtypes.Float32DType,
        np.dtypes.Float64DType,
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
    ]


def load_pca_params(path: os.PathLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(eigen_vectors [128, 128], means [128])`` in float64 from ``vggish_pca_params.npz`` or ``.pth``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"VGGish PCA parameters not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                params = {k: data[k] for k in data.files}
        else:
            params = safe_load(path, "VGGish PCA parameters file", _numpy_allowlist())
    except (CheckpointError, OSError, ValueError) as exc:
        reason = str(exc).split(": ", 1)[-1] if isinstance(exc, CheckpointError) else "not a numpy .npz archive of plain arrays"
        raise CheckpointError(f"{path}: cannot be read safely as VGGish PCA parameters ({reason})") from None
    if not isinstance(params, dict) or not {"pca_eigen_vectors", "pca_means"} <= set(params):
        found = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise CheckpointError(f"{path}: expected keys 'pca_eigen_vectors' and 'pca_means', found {found}")
    try:
        vectors = torch.as_tensor(np.asarray(params["pca_eigen_vectors"], dtype=np.float64))
        means = torch.as_tensor(np.asarray(params["pca_means"], dtype=np.float64)).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: PCA parameters are not numeric arrays ({exc})") from None
    if vectors.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or means.shape != (EMBEDDING_DIM,):
        raise CheckpointError(
            f"{path}: expected pca_eigen_vectors (128, 128) and pca_means (128,), "
            f"got {tuple(vectors.shape)} and {tuple(means.shape)}"
        )
    return vectors, means


class VGGishPostprocessor(nn.Module):
    """TF VGGish PCA whitening + quantisation: ``[N, 128]`` float -> ``[N, 128]`` uint8 (buffers in float64)."""

    def __init__(self, eigen_vectors: Optional[torch.Tensor] = None, means: Optional[torch.Tensor] = None):
        super().__init__()
        eye = torch.eye(EMBEDDING_DIM, dtype=torch.float64)
        self.register_buffer("pca_eigen_vectors", eye if eigen_vectors is None else eigen_vectors.double())
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_DIM, dtype=torch.float64) if means is None else means.double().reshape(-1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        whitened = (embeddings.double() - self.pca_means.double()) @ self.pca_eigen_vectors.double().T
        clipped = whitened.clamp(-PCA_CLIP, PCA_CLIP)
        return ((clipped + PCA_CLIP) * (255.0 / (2 * PCA_CLIP))).to(torch.uint8)


# ----------------------------------------------------------------------------- VGGish
class VGGish(AudioEncoder):
    """VGGish: ``[N, 1, 96, 64] -> [N, 128]`` (see the module docstring for ``final_relu`` and the postprocessor)."""

    def __init__(self, final_relu: bool = True, freeze: bool = True, postprocessor: Optional[VGGishPostprocessor] = None):
        super().__init__(freeze)
        if postprocessor is not None and not freeze:
            raise ArgumentError("postprocessor", "the PCA postprocessor quantises to uint8 and has no gradient; use it with freeze: true")
        layers, in_channels = [], 1
        for item in _VGG_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
            nn.ReLU(inplace=True) if final_relu else nn.Identity(),
        )
        self.pproc = postprocessor
        self._apply_freeze()

    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.features(log_mel)
        x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, as in TF
        x = self.embeddings(x)
        return self.pproc(x).float() if self.pproc is not None else x


def load_vggish_weights(model: VGGish, path: os.PathLike) -> None:
    """Load ``vggish-10086976.pth`` (torchvggish/AVSBench) or a torchaudio-named VGGish state dict, strictly."""
    from avseg.weights import group_keys, read_state_dict

    state = read_state_dict(path)
    renamed: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in _TORCHAUDIO_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        renamed[key] = value
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("pproc.")}
    file_pca = {k: v for k, v in renamed.items() if k.startswith("pproc.")}
    weights = {k: v for k, v in renamed.items() if not k.startswith("pproc.")}
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} file {tuple(weights[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"missing: {group_keys(missing)}")
        if unexpected:
            details.append(f"unexpected: {group_keys(unexpected)}")
        details += shapes[:5]
        raise CheckpointError(f"{path}: not a VGGish state dict (features.*, embeddings.*): " + "; ".join(details))
    model.load_state_dict(weights, strict=False)
    if model.pproc is not None and {"pproc.pca_eigen_vectors", "pproc.pca_means"} <= set(file_pca):
        model.pproc.pca_eigen_vectors.copy_(file_pca["pproc.pca_eigen_vectors"].double())
        model.pproc.pca_means.copy_(file_pca["pproc.pca_means"].double().reshape(-1))


# ----------------------------------------------------------------------------- small encoder
class SmallAudioEncoder(AudioEncoder):
    """A light trainable CNN: ``[N, 1, 96, 64] -> [N, 128]`` (four stride-2 conv-BN-ReLU stages, mean, Linear)."""

    def __init__(self, width: int = 16, final_relu: bool = True, freeze: bool = False):
        super().__init__(freeze)
        layers, in_channels = [], 1
        for scale in (1, 2, 4, 8):
            layers += [
                nn.Conv2d(in_channels, width * scale, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width * scale),
                nn.ReLU(inplace=True),
            ]
            in_channels = width * scale
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(in_channels, EMBEDDING_DIM), nn.ReLU() if final_relu else nn.Identity())
        self._apply_freeze()

    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.embeddings(self.features(log_mel).mean(dim=(2, 3)))


AUDIO_ENCODERS = ("vggish", "small")


def build_audio_encoder(cfg_audio) -> AudioEncoder:
    """From ``cfg.model.audio`` (``name``, ``weights``, ``freeze``, ``final_relu``, ``pca_weights``)."""
    name = cfg_audio.name
    if name == "vggish":
        postprocessor = VGGishPostprocessor(*load_pca_params(cfg_audio.pca_weights)) if cfg_audio.pca_weights else None
        with config_keys({"postprocessor": "model.audio.pca_weights"}):
            model = VGGish(final_relu=cfg_audio.final_relu, freeze=cfg_audio.freeze, postprocessor=postprocessor)
        if cfg_audio.weights:
            load_vggish_weights(model, cfg_audio.weights)
        elif cfg_audio.freeze:
            warnings.warn(
                "frozen VGGish built without weights (model.audio.weights is null): its embeddings stay random; "
                "point model.audio.weights at vggish-10086976.pth or set model.audio.freeze=false",
                MissingWeightsWarning,
                stacklevel=2,
            )
        return model
    if name == "small":
        if cfg_audio.pca_weights:
            raise ConfigError("key 'model.audio.pca_weights': the PCA postprocessor belongs to VGGish, not the small encoder")
        model = SmallAudioEncoder(final_relu=cfg_audio.final_relu, freeze=cfg_audio.freeze)
        if cfg_audio.weights:
            from avseg.weights import read_state_dict

            state = read_state_dict(cfg_audio.weights)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(f"{cfg_audio.weights}: not a small audio encoder state dict ({str(exc).splitlines()[0]})") from None
        return model
    raise ConfigError(f"key 'model.audio.name': unknown audio encoder '{name}' (expected one of {AUDIO_ENCODERS})")
