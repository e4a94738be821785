"""Typed configuration: YAML files with ``_base_`` inheritance merged into structured OmegaConf configs.

Every key is declared in the dataclasses below, so an unknown key or a value of the wrong type fails
with a :class:`~avseg.errors.ConfigError` that names the key and the file (or the command-line override).
The same declarations carry the allowed values: :func:`one_of` fields take one of a fixed set of strings
(``train.amp``: auto | off | bf16 | fp16), :func:`bounded` fields a number in a range (``train.batch_size``
>= 1). :func:`load_config` checks them after the merges and overrides, so a config that cannot run fails
before anything is built or written, naming the key, the file that set it, the value and what is allowed.

Example::

    cfg = load_config("ms3.yaml", ["train.lr=5e-5", "data.root=/data/avsbench"])

``ms3.yaml`` resolves to ``configs/ms3.yaml`` when it is not an existing path (the ``configs/`` folder
of the checkout, or the copy an installed avseg ships as ``avseg/configs``). ``_base_`` holds one
path or a list of paths relative to the file that names it; bases merge in order, the file on top,
then the overrides. Lists are replaced, not concatenated.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from avseg.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
# An installed wheel carries the configs inside the package; a checkout (or editable install) reads the repo's.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir() else REPO_ROOT / "configs"


# ----------------------------------------------------------------------------- data
@dataclass
class VaeDataConfig:
    """Image datasets for the autoencoder/VAE baselines (``data.name`` fashion_mnist|celeba|digits|lfw).

    ``data.root``: Fashion-MNIST IDX folder (e.g. /usr/share/datasets/fashion-mnist) or CelebA folder.
    ``pad_to``: Fashion-MNIST/digits side after zero padding (28 -> 32 in the book). ``image_size``:
    CelebA/lfw side after the squash resize. ``binarize``: none | dynamic (Bernoulli draw per access in
    training, one fixed draw seeded by ``binarize_seed`` otherwise) | threshold (> 0.5).
    ``attributes_file``: CelebA list_attr_celeba.txt/.csv when not beside the images.
    ``val_fraction`` > 0 holds out the last part of the training images as split ``val``
    (digits/lfw: a seeded shuffle, 0.2 when 0). ``max_images`` > 0 keeps the first N of a split.
    """

    pad_to: int = 32
    image_size: int = 64
    binarize: str = "none"
    binarize_seed: int = 0
    attributes_file: Optional[str] = None
    val_fraction: float = 0.0
    max_images: int = 0


@dataclass
class DataConfig:
    """Dataset selection. ``root`` is the folder that holds the dataset (AVSBench: ``Single-source/``).

    ``layout`` v1|semantic; ``audio_source`` pkl|wav|auto; ``resampler`` soxr|resampy; ``feature_cache``
    folder for log-mels computed from wavs (null: ``~/.cache/avseg/log_mel``, ``off``: none);
    ``hflip_prob``/``scale_crop``: clip-consistent training augmentation (off at evaluation).
    """

    name: str = "avsbench"
    root: str = "datasets/avsbench"
    task: str = "s4"
    layout: str = "v1"
    image_size: int = 224
    audio_source: str = "auto"
    resampler: str = "soxr"
    feature_cache: Optional[str] = None
    hflip_prob: float = 0.0
    scale_crop: float = 0.0
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 2
    vae: VaeDataConfig = field(default_factory=VaeDataConfig)


# ----------------------------------------------------------------------------- model
@dataclass
class BackboneConfig:
    """Visual backbone: resnet18 | resnet50 | pvt_v2_b0 | pvt_v2_b5; ``weights`` is a local file or null.

    ``weights`` accepts torchvision/timm ResNet files and the original PVTv2 release layout (see
    docs/models.md). ``drop_path_rate`` null means the papers' value (0.1 for pvt_v2_b5, else 0).
    """

    name: str = "resnet18"
    weights: Optional[str] = None
    drop_path_rate: Optional[float] = None


@dataclass
class AudioEncoderConfig:
    """Audio encoder: ``vggish`` (AVSBench) or ``small`` (trainable, for CPU/synthetic work)."""

    name: str = "vggish"
    weights: Optional[str] = None
    freeze: bool = True
    final_relu: bool = True
    pca_weights: Optional[str] = None


@dataclass
class EcmvaeConfig:
    """ECMVAE latent path and loss weights (defaults as released; see docs/ecmvae.md)."""

    latent_dim: int = 16
    mi_dim: int = 6
    encoder_channels: int = 16
    kl_weight: float = 0.01
    diff_weight: float = 0.001
    mi_weight: float = 0.001
    posterior_seg_weight: float = 1.0
    shared_divergence: str = "js_released"
    js_samples: int = 8
    kl_form: str = "analytic"
    mi_form: str = "released"
    latent_path: bool = True
    shared_only: bool = False
    sample_at_test: bool = False
    num_samples: int = 1


@dataclass
class VaeModelConfig:
    """Image autoencoder/VAE settings (``model.name`` conv_ae | fashion_vae | faces_vae); see docs/vae.md.

    ``loss``: book (``beta`` x per-element-mean reconstruction + summed KL) | elbo (summed negative
    log-likelihood + ``kl_weight`` x KL). ``recon``: bce (Bernoulli) | mse (Gaussian; under ``elbo``
    with variance ``gaussian_variance``). ``num_features``/``num_blocks``/``negative_slope``: the faces
    VAE's filters per conv, conv blocks and LeakyReLU slope (Keras default 0.3). The evaluator computes
    the importance-weighted NLL bound with ``iwae_samples`` samples on the first ``iwae_images``
    evaluation images (0: not at all; each image costs ``iwae_samples`` decoder passes).
    """

    latent_dim: int = 2
    loss: str = "book"
    recon: str = "bce"
    beta: float = 500.0
    kl_weight: float = 1.0
    gaussian_variance: float = 1.0
    num_features: int = 64
    num_blocks: int = 5
    negative_slope: float = 0.3
    iwae_samples: int = 5000
    iwae_images: int = 0


@dataclass
class ModelConfig:
    """Model family (``tpavi`` | ``ecmvae`` | VAE names) and its parts (see docs/models.md).

    ``fusion: false`` is the visual-only ablation (no audio, no TPAVI). ``tpavi_stages`` lists the
    fused levels (0 = stride 4). ``seg_loss``: bce | structure. ``avm_weight`` weights the AV-map loss
    (0.5 in the MS3 configs, 0 = off).
    """

    name: str = "tpavi"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    fusion: bool = True
    tpavi_stages: List[int] = field(default_factory=lambda: [0, 1, 2, 3])
    neck_channels: int = 256
    seg_loss: str = "bce"
    avm_weight: float = 0.0
    ecmvae: EcmvaeConfig = field(default_factory=EcmvaeConfig)
    vae: VaeModelConfig = field(default_factory=VaeModelConfig)


# ----------------------------------------------------------------------------- engine
@dataclass
class TrainConfig:
    """Optimisation, validation, checkpointing and logging (see docs/training.md).

    ``batch_size`` is per process (per GPU under torchrun). ``optimizer``: adam | adamw | sgd (over the
    trainable parameters only; ``momentum`` for sgd). ``lr_schedule``: none | step (x ``lr_gamma`` every
    ``lr_step`` epochs) | cosine (down to ``min_lr``), after ``warmup_epochs`` of linear warm-up.
    ``grad_clip`` > 0 clips the global gradient norm. ``amp``: auto | off | bf16 | fp16 (CUDA only).
    ``cpu_allocator``: auto | tuned | system (glibc malloc keeps freed memory; see ``tune_cpu_allocator``).
    ``val_every`` epochs (0: never); ``max_steps_per_epoch`` > 0 caps an epoch for quick runs.
    ``init_from``: an avseg checkpoint loaded non-strictly before training (e.g. MS3 from S4).
    ``find_unused_parameters`` and ``sync_bn`` only matter under DDP.
    """

    epochs: int = 15
    batch_size: int = 4
    optimizer: str = "adam"
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_schedule: str = "none"
    lr_step: int = 10
    lr_gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: int = 0
    grad_clip: float = 0.0
    amp: str = "auto"
    cpu_allocator: str = "auto"
    val_every: int = 1
    log_every: int = 10
    max_steps_per_epoch: int = 0
    init_from: Optional[str] = None
    find_unused_parameters: bool = False
    sync_bn: bool = False
    tensorboard: bool = True
    progress: bool = True


@dataclass
class EvalConfig:
    """Evaluation (see docs/evaluation.md).

    ``batch_size`` is in clips: the official metrics take the F maximum per batch of 4 clips, so it fixes
    how the official numbers group the frames. ``audio``: normal | shuffle (each clip gets another clip's
    log-mel, a derangement drawn from ``shuffle_seed``) | silent (the log-mel of silence); tools/eval.py
    also takes a comma-separated list. ``num_vis`` clips go into the qualitative grid PNG.
    """

    split: str = "test"
    batch_size: int = 4
    audio: str = "normal"
    shuffle_seed: int = 0
    save_masks: bool = False
    save_rle: bool = False
    num_vis: int = 4


@dataclass
class AvsegConfig:
    """The whole configuration of a run."""

    name: str = ""
    seed: int = 123
    deterministic: bool = False
    device: str = "auto"
    output_dir: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading
def resolve_config_path(name: Union[str, os.PathLike]) -> Path:
    """An existing path as is; otherwise ``configs/<name>`` (``.yaml`` appended when missing)."""
    path = Path(name)
    if path.is_file():
        return path
    candidates = [CONFIG_DIR / path, CONFIG_DIR / path.with_suffix(".yaml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: '{name}' (looked for it as a path and in {CONFIG_DIR})")


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans (``off``/``no`` stay strings), ``5e-5`` is a float."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = _parse_yaml(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    return f"key '{key}': {message}" if key else message


def _merge_file(schema: DictConfig, path: Path, chain: tuple) -> DictConfig:
    if path in chain:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(str(p) for p in chain)}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '_base_' must be a path or a list of paths")
    merged = schema
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file not found: '{base}' (resolved to {base_path})")
        merged = _merge_file(merged, base_path, chain + (path,))
    try:
        return OmegaConf.merge(merged, data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Merge dotted ``key=value`` overrides; values are parsed as YAML (``train.lr=5e-5``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            parsed = _parse_yaml(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        try:
            update = OmegaConf.create({})
            OmegaConf.update(update, key, parsed, force_add=True)
            cfg = OmegaConf.merge(cfg, update)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"command-line override '{item}': {_describe(exc)}") from None
    return cfg


def load_config(name: Union[str, os.PathLike, None] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a config file (path or short name) with its bases and overrides, fully typed and checked.

    With ``name=None`` the schema defaults are used. ``cfg.name`` defaults to the file's stem.
    """
    schema = OmegaConf.structured(AvsegConfig)
    if name is None:
        cfg = schema
    else:
        path = resolve_config_path(name).resolve()
        cfg = _merge_file(schema, path, ())
        if not cfg.name:
            cfg.name = path.stem
    cfg = apply_overrides(cfg, overrides)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def config_from_dict(data: dict) -> DictConfig:
    """Validate a plain dict (e.g. the config stored in a checkpoint) against the schema."""
    try:
        return OmegaConf.merge(OmegaConf.structured(AvsegConfig), data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"stored config: {_describe(exc)}") from None


def config_to_dict(cfg: DictConfig) -> dict:
    """A plain, YAML-safe dict of the config (for checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: Union[str, os.PathLike]) -> None:
    """Write the resolved config as YAML (atomically); ``load_config(path)`` repeats the run."""
    from avseg.fileio import atomic_write_text

    atomic_write_text(path, config_to_yaml(cfg))
