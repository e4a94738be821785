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


# ----------------------------------------------------------------------------- allowed values
AVS_DATASETS = ("avsbench",)
VAE_DATASETS = ("fashion_mnist", "celeba", "digits", "lfw")
TASKS = ("s4", "ms3", "v1s", "v1m", "v2", "avss")  # v1 layout: s4, ms3; semantic layout: all (avss: 71 classes)
AVSS_SUBSETS = ("v1s", "v1m", "v2")  # data.subsets of the avss task
FLIP_MODES = ("clip", "released")  # data.flip: one draw per clip | the MMVAE-AVS loaders' per-frame flips
LAYOUTS = ("v1", "semantic")
AUDIO_SOURCES = ("auto", "pkl", "wav")
RESAMPLERS = ("soxr", "resampy")
BINARIZE_MODES = ("none", "dynamic", "threshold")
BACKBONES = ("resnet18", "resnet50", "pvt_v2_b0", "pvt_v2_b5")
AUDIO_ENCODERS = ("vggish", "small")
SEGMENTATION_LOSSES = ("bce", "structure")
SHARED_DIVERGENCES = ("js_released", "js_mc", "kl")
KL_FORMS = ("analytic", "released")
MI_FORMS = ("released", "gaussian")
VAE_LOSSES = ("book", "elbo")
VAE_RECONSTRUCTIONS = ("bce", "mse")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("none", "step", "cosine")
AMP_MODES = ("auto", "off", "bf16", "fp16")
CPU_ALLOCATOR_MODES = ("auto", "tuned", "system")
EVAL_AUDIO_MODES = ("normal", "shuffle", "silent", "noise", "offscreen")


@dataclass(frozen=True)
class Choices:
    """The strings a key accepts; with ``separator`` a list of them in one string (``normal,shuffle``)."""

    values: Tuple[str, ...]
    separator: Optional[str] = None

    def problem(self, value: Any) -> Optional[str]:
        """None when ``value`` is allowed, else what is wrong with it."""
        items = [item.strip() for item in value.split(self.separator)] if self.separator else [value]
        if all(item in self.values for item in items):
            return None
        allowed = ", ".join(self.values)
        if self.separator:
            return f"'{value}' is not a '{self.separator}'-separated list of {allowed}"
        return f"'{value}' is not one of {allowed}"


@dataclass(frozen=True)
class Bounds:
    """The range of a number (of each number, for a list); a None end is open. NaN and infinities never fit."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_inclusive)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low}"
        return f"{'[' if self.low_inclusive else '('}{self.low}, {self.high}{']' if self.high_inclusive else ')'}"

    def problem(self, value: Any) -> Optional[str]:
        """None when ``value`` (None: unset) is allowed, else what is wrong with it."""
        numbers = list(value) if isinstance(value, Sequence) else [] if value is None else [value]
        bad = [number for number in numbers if not self.admits(number)]
        if not bad:
            return None
        element = f" (element of {list(value)})" if isinstance(value, Sequence) else ""
        return f"{bad[0]}{element} is out of range; allowed: {self}"


def one_of(default: str, choices: Sequence[str], separator: Optional[str] = None):
    """A string field that takes one of ``choices`` (checked by :func:`check_config`)."""
    rule = Choices(tuple(choices), separator)
    if rule.problem(default) is not None:
        raise ValueError(f"schema default '{default}' is not one of {choices}")
    return field(default=default, metadata={"rule": rule})


def bounded(default: Any = None, low: Optional[float] = None, high: Optional[float] = None, *,
            low_inclusive: bool = True, high_inclusive: bool = True, default_factory=None):
    """A number field (or list of numbers, with ``default_factory``) within ``low``..``high``."""
    metadata = {"rule": Bounds(low, high, low_inclusive, high_inclusive)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


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

    pad_to: int = bounded(32, 1)
    image_size: int = bounded(64, 1)
    binarize: str = one_of("none", BINARIZE_MODES)
    binarize_seed: int = bounded(0, 0)
    attributes_file: Optional[str] = None
    val_fraction: float = bounded(0.0, 0.0, 1.0, high_inclusive=False)
    max_images: int = bounded(0, 0)


@dataclass
class DataConfig:
    """Dataset selection. ``root`` is the folder that holds the dataset (AVSBench: ``Single-source/``).

    ``layout`` v1|semantic; ``audio_source`` pkl|wav|auto; ``resampler`` soxr|resampy; ``feature_cache``
    folder for log-mels computed from wavs (null: ``~/.cache/avseg/log_mel``, ``off``: none);
    ``hflip_prob``/``scale_crop``: training augmentation (off at evaluation); ``flip`` clip (one flip draw
    per clip, default) | released (the MMVAE-AVS loaders: each annotated frame flipped on its own draw, so
    S4 flips only frame 1, MS3 every frame independently). ``task`` avss (semantic layout): 71-class labels
    of the ``subsets`` (comma-separated v1s, v1m, v2), every clip padded to 10 frames as released.
    ``resize_masks`` (v1 layout): resize a mask whose size differs from its frame instead of refusing it.
    ``image_size`` >= 32, the backbones' output stride.
    """

    name: str = one_of("avsbench", AVS_DATASETS + VAE_DATASETS)
    root: str = "datasets/avsbench"
    task: str = one_of("s4", TASKS)
    subsets: str = one_of("v1s,v1m,v2", AVSS_SUBSETS, separator=",")
    layout: str = one_of("v1", LAYOUTS)
    image_size: int = bounded(224, 32)
    audio_source: str = one_of("auto", AUDIO_SOURCES)
    resampler: str = one_of("soxr", RESAMPLERS)
    feature_cache: Optional[str] = None
    hflip_prob: float = bounded(0.0, 0.0, 1.0)
    flip: str = one_of("clip", FLIP_MODES)
    scale_crop: float = bounded(0.0, 0.0)
    resize_masks: bool = False
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = bounded(2, 0)
    vae: VaeDataConfig = field(default_factory=VaeDataConfig)


# ----------------------------------------------------------------------------- model
@dataclass
class BackboneConfig:
    """Visual backbone: resnet18 | resnet50 | pvt_v2_b0 | pvt_v2_b5; ``weights`` is a local file or null.

    ``weights`` accepts torchvision/timm ResNet files and the original PVTv2 release layout (see
    docs/models.md). ``drop_path_rate`` null means the papers' value (0.1 for pvt_v2_b5, else 0).
    """

    name: str = one_of("resnet18", BACKBONES)
    weights: Optional[str] = None
    drop_path_rate: Optional[float] = bounded(None, 0.0, 1.0, high_inclusive=False)


@dataclass
class AudioEncoderConfig:
    """Audio encoder: ``vggish`` (AVSBench) or ``small`` (trainable, for CPU/synthetic work)."""

    name: str = one_of("vggish", AUDIO_ENCODERS)
    weights: Optional[str] = None
    freeze: bool = True
    final_relu: bool = True
    pca_weights: Optional[str] = None


@dataclass
class EcmvaeConfig:
    """ECMVAE latent path and loss weights (see docs/ecmvae.md). ``kl_form`` defaults to ``analytic``; the paper
    configs set the released form through ``configs/_base_/released_maths.yaml``."""

    latent_dim: int = bounded(16, 1)
    mi_dim: int = bounded(6, 1)
    encoder_channels: int = bounded(16, 1)
    kl_weight: float = bounded(0.01, 0.0)
    diff_weight: float = bounded(0.001, 0.0)
    mi_weight: float = bounded(0.001, 0.0)
    posterior_seg_weight: float = bounded(1.0, 0.0)
    shared_divergence: str = one_of("js_released", SHARED_DIVERGENCES)
    js_samples: int = bounded(8, 1)
    kl_form: str = one_of("analytic", KL_FORMS)
    mi_form: str = one_of("released", MI_FORMS)
    latent_path: bool = True
    shared_only: bool = False
    sample_at_test: bool = False
    num_samples: int = bounded(1, 1)


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

    latent_dim: int = bounded(2, 1)
    loss: str = one_of("book", VAE_LOSSES)
    recon: str = one_of("bce", VAE_RECONSTRUCTIONS)
    beta: float = bounded(500.0, 0.0, low_inclusive=False)
    kl_weight: float = bounded(1.0, 0.0)
    gaussian_variance: float = bounded(1.0, 0.0, low_inclusive=False)
    num_features: int = bounded(64, 1)
    num_blocks: int = bounded(5, 1)
    negative_slope: float = bounded(0.3, 0.0)
    iwae_samples: int = bounded(5000, 1)
    iwae_images: int = bounded(0, 0)


@dataclass
class ModelConfig:
    """Model family (``tpavi`` | ``ecmvae`` | VAE names) and its parts (see docs/models.md).

    ``fusion: false`` is the visual-only ablation (no audio, no TPAVI). ``tpavi_stages`` lists the
    fused levels (0 = stride 4). ``seg_loss``: bce | structure, the loss of binary models (``num_classes``
    1); models with more classes train with the official AVSS masked per-frame cross-entropy.
    ``avm_weight`` weights the AV-map loss (0.5 in the MS3 and AVSS configs, 0 = off). ``num_classes``:
    1 = binary masks (S4/MS3), 71 = AVSS.
    ``tpavi_group_size``: TPAVI attends within consecutive groups of that many frames (5 in official AVSS:
    a 10-frame clip is two independent groups); null = the whole clip. ``audio_align_bias``: the tpavi
    model's audio alignment Linear has a bias (S4/MS3) or not (AVSS).
    """

    name: str = "tpavi"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    fusion: bool = True
    tpavi_stages: List[int] = bounded(low=0, high=3, default_factory=lambda: [0, 1, 2, 3])
    neck_channels: int = bounded(256, 1)
    seg_loss: str = one_of("bce", SEGMENTATION_LOSSES)
    avm_weight: float = bounded(0.0, 0.0)
    num_classes: int = bounded(1, 1, 1024)
    tpavi_group_size: Optional[int] = bounded(None, 1)
    audio_align_bias: bool = True
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
    ``find_unused_parameters`` and ``sync_bn`` only matter under DDP; ``sync_bn`` makes BatchNorm use the
    statistics of the global batch where the backend supports it (CUDA with NCCL; on gloo/CPU it logs a
    warning and BatchNorm stays per process). ``negative_audio_fraction`` p in [0, 1):
    negative-audio copies of training clips (silence, noise, off-screen sound; empty masks) make up p of
    the training items (``avseg.data.negative_audio``; the segmentation loss must have gradient on empty masks).
    """

    epochs: int = bounded(15, 1)
    batch_size: int = bounded(4, 1)
    optimizer: str = one_of("adam", OPTIMIZERS)
    lr: float = bounded(1.0e-4, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    momentum: float = bounded(0.9, 0.0, 1.0)
    lr_schedule: str = one_of("none", LR_SCHEDULES)
    lr_step: int = bounded(10, 1)
    lr_gamma: float = bounded(0.1, 0.0)
    min_lr: float = bounded(0.0, 0.0)
    warmup_epochs: int = bounded(0, 0)
    grad_clip: float = bounded(0.0, 0.0)
    amp: str = one_of("auto", AMP_MODES)
    cpu_allocator: str = one_of("auto", CPU_ALLOCATOR_MODES)
    val_every: int = bounded(1, 0)
    log_every: int = bounded(10, 0)
    max_steps_per_epoch: int = bounded(0, 0)
    init_from: Optional[str] = None
    find_unused_parameters: bool = False
    sync_bn: bool = False
    negative_audio_fraction: float = bounded(0.0, 0.0, 1.0, high_inclusive=False)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class EvalConfig:
    """Evaluation (see docs/evaluation.md).

    ``batch_size`` is in clips: the official metrics take the F maximum per batch of 4 clips, so it fixes
    how the official numbers group the frames. ``audio``: normal | shuffle (each clip gets another clip's
    log-mel, a derangement) | silent (the log-mel of silence) | noise (white noise at −20 dBFS through
    the same front end) | offscreen (the sound of a clip of another category group); tools/eval.py also
    takes a comma-separated list. ``shuffle_seed`` seeds every counterfactual. ``num_vis`` clips go into the qualitative grid PNG.
    """

    split: str = "test"
    batch_size: int = bounded(4, 1)
    audio: str = one_of("normal", EVAL_AUDIO_MODES, separator=",")
    shuffle_seed: int = bounded(0, 0)
    save_masks: bool = False
    save_rle: bool = False
    num_vis: int = bounded(4, 0)


@dataclass
class AvsegConfig:
    """The whole configuration of a run."""

    name: str = ""
    seed: int = bounded(123, 0)
    deterministic: bool = False
    device: str = "auto"
    output_dir: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _schema_rules(schema: Any, prefix: str = "") -> Iterator[Tuple[str, Union[Choices, Bounds]]]:
    for spec in fields(schema):
        default = getattr(schema, spec.name)
        if is_dataclass(default):
            yield from _schema_rules(default, f"{prefix}{spec.name}.")
        elif "rule" in spec.metadata:
            yield f"{prefix}{spec.name}", spec.metadata["rule"]


SCHEMA_RULES: Dict[str, Union[Choices, Bounds]] = dict(_schema_rules(AvsegConfig()))
"""Dotted key -> the choices or range the schema declares for it (``train.amp``, ``data.image_size`` ...)."""


def check_config(cfg: DictConfig, sources: Optional[Mapping[str, str]] = None, default_source: str = "config") -> None:
    """Raise :class:`ConfigError` for the first value outside its declared choices or range.

    The message names the key, where the value came from (``sources[key]``: a file or a command-line
    override; ``default_source`` when not listed), the value and what is allowed.
    """
    for key, rule in SCHEMA_RULES.items():
        problem = rule.problem(OmegaConf.select(cfg, key))
        if problem is not None:
            raise ConfigError(f"{(sources or {}).get(key, default_source)}: key '{key}': {problem}")


def _dotted_keys(data: Mapping, prefix: str = "") -> Iterator[str]:
    """The dotted keys of the leaves of a nested mapping (lists are leaves)."""
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


# ----------------------------------------------------------------------------- loading
def resolve_config_path(name: Union[str, os.PathLike]) -> Path:
    """An existing path as is; otherwise ``configs/<name>`` (``.yaml`` appended when missing)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config path '{name}' is a folder; expected a YAML config file (e.g. {path / 's4_tpavi_r50.yaml'})")
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


def _merge_file(schema: DictConfig, path: Path, chain: tuple, sources: Dict[str, str]) -> DictConfig:
    """``schema`` with ``path`` and its bases merged in; ``sources`` records the file that set each key."""
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
        merged = _merge_file(merged, base_path, chain + (path,), sources)
    try:
        merged = OmegaConf.merge(merged, data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    sources.update(dict.fromkeys(_dotted_keys(data), str(path)))
    return merged


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Merge dotted ``key=value`` overrides (values parsed as YAML: ``train.lr=5e-5``), then :func:`check_config`."""
    sources: Dict[str, str] = {}
    cfg = _merge_overrides(cfg, overrides, sources)
    check_config(cfg, sources)
    return cfg


def _merge_overrides(cfg: DictConfig, overrides: Sequence[str], sources: Dict[str, str]) -> DictConfig:
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
        keys = _dotted_keys(parsed, f"{key}.") if isinstance(parsed, Mapping) else [key]
        sources.update(dict.fromkeys(keys, f"command-line override '{item}'"))
    return cfg


def load_config(name: Union[str, os.PathLike, None] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a config file (path or short name) with its bases and overrides, fully typed and checked.

    With ``name=None`` the schema defaults are used. ``cfg.name`` defaults to the file's stem. The
    choices and ranges (:data:`SCHEMA_RULES`) are checked on the result, naming the file or override
    that set a bad value.
    """
    schema = OmegaConf.structured(AvsegConfig)
    sources: Dict[str, str] = {}
    if name is None:
        cfg = schema
    else:
        path = resolve_config_path(name).resolve()
        cfg = _merge_file(schema, path, (), sources)
        if not cfg.name:
            cfg.name = path.stem
    cfg = _merge_overrides(cfg, overrides, sources)
    check_config(cfg, sources)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def config_from_dict(data: dict) -> DictConfig:
    """Validate a plain dict (e.g. the config stored in a checkpoint) against the schema, choices and ranges."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(AvsegConfig), data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"stored config: {_describe(exc)}") from None
    check_config(cfg, default_source="stored config")
    return cfg


def config_to_dict(cfg: DictConfig) -> dict:
    """A plain, YAML-safe dict of the config (for checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: Union[str, os.PathLike]) -> None:
    """Write the resolved config as YAML (atomically); ``load_config(path)`` repeats the run."""
    from avseg.fileio import atomic_write_text

    atomic_write_text(path, config_to_yaml(cfg))
