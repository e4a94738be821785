"""Export an AVS model (TPAVI, ECMVAE) to ONNX or TorchScript for serving without the avseg training code.

The exported graph is the model's inference forward with dynamic batch and clip length::

    frames  [B, T, 3, S, S]  float32, normalised like the dataset (avseg.data.avsbench_dataset.normalize_frames)
    log_mel [B, T, 1, 96, 64] float32, VGGish log-mel examples (one per frame)
    ->
    logits  [B, T, 1, S, S]  float32 (sigmoid gives the foreground probability)

``B`` and ``T`` are free; ``S`` is the model's ``data.image_size``. ECMVAE exports its deterministic
path (prior latent means); a model that samples at test time (``model.ecmvae.sample_at_test`` or
``num_samples > 1``) is refused, since a graph with fixed noise would not be the model.

Each file carries the model's config (JSON): ONNX in ``metadata_props["avseg_config"]``, TorchScript as
the extra file ``avseg_config.json``, so a file alone can be run by :class:`avseg.inference.onnx_runtime.
OnnxSegmentationModel` or ``torch.jit.load``. Files are written atomically (temporary file, then rename).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence, Tuple, Union

import torch
from omegaconf import DictConfig
from torch import nn

from avseg.config import config_from_dict, config_to_dict
from avseg.errors import CheckpointError, ConfigError
from avseg.fileio import atomic_path, atomic_write_bytes
from avseg.models import registry

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript")
INPUT_NAMES = ("frames", "log_mel")
OUTPUT_NAME = "logits"
CONFIG_KEY = "avseg_config"
TORCHSCRIPT_CONFIG_FILE = "avseg_config.json"
DEFAULT_OPSET = 17
# Tracing shapes: B and T larger than 1 so that no size-1 broadcast is baked into the graph.
TRACE_BATCH, TRACE_SECONDS = 2, 2
_DYNAMIC_AXES = {name: {0: "batch", 1: "time"} for name in (*INPUT_NAMES, OUTPUT_NAME)}


def require_onnx(module: str = "onnx"):
    """Import ``onnx`` or ``onnxruntime``; when absent, a :class:`ConfigError` saying how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export and inference need {module}: pip install 'avseg[export]' "
                          "(or pip install onnx onnxruntime)") from None


class LogitsOnly(nn.Module):
    """``forward(frames [B, T, 3, S, S], log_mel [B, T, 1, 96, 64]) -> logits [B, T, 1, S, S]`` of an AVS model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
        return self.model(frames=frames, log_mel=log_mel)[OUTPUT_NAME]


def check_exportable(model: nn.Module) -> DictConfig:
    """The config of ``model`` (built by avseg, it carries ``model.cfg``) once it is an AVS model that
    runs deterministically at test time; otherwise :class:`ConfigError` naming the key."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ConfigError(f"{type(model).__name__} was not built from an avseg config (no .cfg); "
                          "load it with avseg.models.load_model(checkpoint)")
    record = registry.get(cfg.model.name)
    if record.task != "avs":
        raise ConfigError(f"key 'model.name': '{cfg.model.name}' is not an AVS model; export supports "
                          f"{', '.join(registry.names('avs'))}")
    if getattr(model, "sample_at_test", False) or getattr(model, "num_samples", 1) > 1:
        raise ConfigError("keys 'model.ecmvae.sample_at_test' / 'model.ecmvae.num_samples': export writes the "
                          "deterministic path (latent means); set sample_at_test=false and num_samples=1")
    return cfg


def example_inputs(image_size: int, batch: int = TRACE_BATCH, seconds: int = TRACE_SECONDS,
                   seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random ``(frames [B, T, 3, S, S], log_mel [B, T, 1, 96, 64])`` for tracing and parity checks."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, seconds, 3, image_size, image_size, generator=generator)
    log_mel = torch.randn(batch, seconds, 1, 96, 64, generator=generator)
    return frames, log_mel


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[Tuple[LogitsOnly, Tuple[torch.Tensor, torch.Tensor], str]]:
    """The CPU, eval-mode wrapper of ``model``, example inputs and the config JSON; restores the model after."""
    cfg = check_exportable(model)
    device = next(model.parameters()).device
    was_training = model.training
    wrapper = LogitsOnly(model.cpu().eval())
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python-level shape check in the models; that the traced graph
            # follows any batch and clip length is what tests/test_export.py checks against eager PyTorch.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
            yield wrapper, example_inputs(int(cfg.data.image_size)), json.dumps(config_to_dict(cfg))
    finally:
        model.to(device).train(was_training)


def onnx_bytes(model: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised ONNX model (inputs ``frames``, ``log_mel``; output ``logits``; config in the metadata)."""
    onnx = require_onnx("onnx")
    with _tracing(model) as (wrapper, inputs, config_json):
        buffer = io.BytesIO()
        torch.onnx.export(wrapper, inputs, buffer, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=_DYNAMIC_AXES, opset_version=opset, dynamo=False)
    proto = onnx.load_model_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, config_json
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the path."""
    atomic_write_bytes(path, onnx_bytes(model, opset))
    return Path(path)


def export_torchscript(model: nn.Module, path: PathLike) -> Path:
    """Write ``model`` as a traced TorchScript file at ``path`` (atomically; config as an extra file)."""
    with _tracing(model) as (wrapper, inputs, config_json):
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
        with atomic_path(path, suffix=Path(path).suffix) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_CONFIG_FILE: config_json})
    return Path(path)


def onnx_config(proto_metadata: dict, source: PathLike) -> DictConfig:
    """The avseg config stored in an exported ONNX file's metadata (``{key: value}``)."""
    if CONFIG_KEY not in proto_metadata:
        raise CheckpointError(f"{source}: this ONNX file carries no avseg config (metadata '{CONFIG_KEY}'); "
                              "export it with tools/export.py --format onnx")
    return config_from_dict(json.loads(proto_metadata[CONFIG_KEY]))


def export_checkpoint(ckpt: PathLike, out: PathLike, fmt: str, opset: int = DEFAULT_OPSET,
                      overrides: Sequence[str] = ()) -> Path:
    """Load the avseg checkpoint ``ckpt`` and export it as ``fmt`` (``onnx`` | ``torchscript``) to ``out``.

    ``out`` may not be ``ckpt`` (symlinks resolved); an ONNX ``out`` must end in ``.onnx``.
    ``overrides`` are dotted ``key=value`` changes of the stored config (``model.ecmvae.sample_at_test=false``).
    """
    from avseg.checkpoint import read_checkpoint
    from avseg.config import apply_overrides
    from avseg.inference.outputs import check_outputs_not_inputs
    from avseg.models import load_model

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if fmt == "onnx" and Path(out).suffix.lower() != ".onnx":
        raise ConfigError(f"--out must end in .onnx for --format onnx, got {out}")
    check_outputs_not_inputs({"--ckpt": ckpt}, files={"--out": out})
    cfg = apply_overrides(read_checkpoint(ckpt)["config"], overrides) if overrides else None
    model = load_model(ckpt, device="cpu", cfg=cfg)
    if fmt == "onnx":
        return export_onnx(model, out, opset)
    return export_torchscript(model, out)


def load_torchscript(path: PathLike) -> Tuple[torch.jit.ScriptModule, DictConfig]:
    """A TorchScript file written by :func:`export_torchscript` (on the CPU) and its avseg config."""
    extra = {TORCHSCRIPT_CONFIG_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load` is deprecated.*", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[TORCHSCRIPT_CONFIG_FILE]:
        raise CheckpointError(f"{path}: this TorchScript file carries no {TORCHSCRIPT_CONFIG_FILE}; "
                              "export it with tools/export.py --format torchscript")
    return module, config_from_dict(json.loads(extra[TORCHSCRIPT_CONFIG_FILE]))


def max_difference(ckpt: PathLike, exported: PathLike, fmt: str, shapes: Sequence[Tuple[int, int]] = ((2, 3), (1, 5))) -> float:
    """Largest ``|exported - eager|`` logit over random inputs of each ``(batch, clip length)`` in ``shapes``.

    The eager model is ``ckpt`` rebuilt with the config stored in the exported file.
    """
    from avseg.models import load_model

    if fmt == "onnx":
        from avseg.inference.onnx_runtime import OnnxSegmentationModel

        runtime = OnnxSegmentationModel(exported)
        cfg, run = runtime.cfg, lambda frames, log_mel: runtime(frames=frames, log_mel=log_mel)[OUTPUT_NAME]
    else:
        run, cfg = load_torchscript(exported)
    eager = LogitsOnly(load_model(ckpt, device="cpu", cfg=cfg))
    worst = 0.0
    with torch.no_grad():
        for seed, (batch, seconds) in enumerate(shapes):
            frames, log_mel = example_inputs(int(cfg.data.image_size), batch, seconds, seed)
            worst = max(worst, float((run(frames, log_mel) - eager(frames, log_mel)).abs().max()))
    return worst
