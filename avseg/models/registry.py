"""The model registry: each model family file registers one :class:`ModelRecord`, everything else asks here.

A record says how to build the model from a config (``from_config``, the only code that reads
``cfg.model.*`` keys for it), which official weight layouts it converts (``formats``: format name →
:class:`WeightFormat`), which batch entries its ``forward`` takes (``batch_keys``), what kind of task it
serves (``task``: ``"avs"`` or ``"image"``) and, for the contract test, the overrides that make a tiny
instance (``tiny_overrides``). A model whose inputs depend on its config (the AVS models: binary masks
for ``model.num_classes: 1``, AVSS labels and frame flags for more classes) also names
``semantic_batch_keys``; :func:`record_for` (and :func:`record_of`) return the record with the batch keys
of that config. A new model is one file that ends with ``register(ModelRecord(...))`` and
one import line in :mod:`avseg.models`.

Modules validate their own arguments and raise :class:`ArgumentError` (a ``ValueError``) naming the
argument; a builder wraps construction in :func:`config_keys`, which turns those errors into
:class:`~avseg.errors.ConfigError` naming the config key.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from avseg.errors import ConfigError

AVSEG_FORMAT = "avseg"
TASKS = ("avs", "image")


class ArgumentError(ValueError):
    """A bad constructor argument: ``argument`` is its name, the message says what was expected."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.detail = message


@contextlib.contextmanager
def config_keys(keys: Mapping[str, str]) -> Iterator[None]:
    """Turn an :class:`ArgumentError` for an argument in ``keys`` (argument → config key) into a ConfigError."""
    try:
        yield
    except ArgumentError as error:
        if error.argument not in keys:
            raise
        raise ConfigError(f"key '{keys[error.argument]}': {error.detail}") from None


@dataclass
class ConversionResult:
    """A converted state dict, the release keys dropped on purpose (unused by the release's own forward)
    and the keys the converter did not recognise (reported as unexpected)."""

    state_dict: Dict[str, torch.Tensor]
    dropped: List[str] = field(default_factory=list)
    unknown: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class WeightFormat:
    """An official weight layout: ``detect(state_dict) -> bool`` and ``convert(state_dict) -> ConversionResult``.

    Both receive a plain ``{name: tensor}`` dict without a ``module.`` prefix. ``missing_ok`` are key
    prefixes such files never contain (kept from the model as built); ``description`` says how the
    layout is recognised (shown when no format matches a file).
    """

    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Dict[str, torch.Tensor]], ConversionResult]
    missing_ok: Tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ModelRecord:
    """One registered model; see the module docstring."""

    name: str
    from_config: Callable[[Any], nn.Module]
    batch_keys: Tuple[str, ...]
    task: str
    formats: Mapping[str, WeightFormat] = field(default_factory=dict)
    tiny_overrides: Tuple[str, ...] = ()
    description: str = ""
    semantic_batch_keys: Tuple[str, ...] = ()


_RECORDS: Dict[str, ModelRecord] = {}
_SEMANTIC_RECORDS: Dict[str, ModelRecord] = {}


def register(record: ModelRecord) -> ModelRecord:
    """Add ``record``; a second record under the same name, or a format another record owns, is an error."""
    if record.name in _RECORDS:
        raise ValueError(f"model '{record.name}' is registered twice")
    if record.task not in TASKS:
        raise ValueError(f"model '{record.name}': task must be one of {TASKS}, got '{record.task}'")
    for name in record.formats:
        if name == AVSEG_FORMAT or name in formats():
            raise ValueError(f"model '{record.name}': weight format '{name}' is already taken")
    _RECORDS[record.name] = record
    return record


def names(task: Optional[str] = None) -> List[str]:
    """The registered model names (of one ``task`` when given), sorted."""
    return sorted(n for n, r in _RECORDS.items() if task is None or r.task == task)


def get(name: str, key: str = "model.name") -> ModelRecord:
    """The record of ``name``; an unknown name is a :class:`ConfigError` naming ``key`` and the choices."""
    try:
        return _RECORDS[name]
    except KeyError:
        raise ConfigError(f"key '{key}': unknown model '{name}' (expected one of {names()})") from None


def formats() -> List[str]:
    """Every official weight format some record converts, sorted."""
    return sorted({f for r in _RECORDS.values() for f in r.formats})


def format_owner(name: str) -> ModelRecord:
    """The record that converts weight format ``name``; an unknown format is a :class:`ConfigError`."""
    for record in _RECORDS.values():
        if name in record.formats:
            return record
    raise ConfigError(f"unknown weights format '{name}' (expected one of {[AVSEG_FORMAT] + formats()})")


def detect(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The official format whose ``detect`` accepts ``state_dict`` (plain, unprefixed), or None."""
    for record in _RECORDS.values():
        for name, weight_format in record.formats.items():
            if weight_format.detect(state_dict):
                return name
    return None


def describe_formats() -> str:
    """Every official format with how it is recognised: ``avsbench (resnet.* ...); mmvae-avs (...)``."""
    described = [f"{name} ({fmt.description})" if fmt.description else name
                 for record in _RECORDS.values() for name, fmt in record.formats.items()]
    return "; ".join(sorted(described))


def record_for(cfg) -> ModelRecord:
    """The record of the model ``cfg`` builds, with the batch keys of that config.

    Same as ``get(cfg.model.name)``, except that a record with ``semantic_batch_keys`` and a config with
    ``model.num_classes`` > 1 gives the record with those keys (one object per name, so ``is`` compares).
    """
    record = get(cfg.model.name)
    if not record.semantic_batch_keys or cfg.model.num_classes == 1:
        return record
    if record.name not in _SEMANTIC_RECORDS:
        _SEMANTIC_RECORDS[record.name] = replace(record, batch_keys=record.semantic_batch_keys)
    return _SEMANTIC_RECORDS[record.name]


def record_of(model: nn.Module) -> ModelRecord:
    """The record of a model built by :func:`avseg.models.build_model` (it carries ``model.cfg``), see :func:`record_for`."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} was not built from a config (no .cfg): its record is unknown")
    return record_for(cfg)


def select_inputs(record: ModelRecord, batch: Mapping[str, Any], keys: Sequence[str] = ()) -> Dict[str, Any]:
    """The entries of ``batch`` that ``record``'s forward takes (its ``batch_keys``, or ``keys`` when given)."""
    wanted = tuple(keys) or record.batch_keys
    return {k: batch[k] for k in wanted if k in batch}
