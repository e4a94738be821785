"""Run an exported AVS model with onnxruntime behind the torch model's call, so a :class:`~avseg.inference.
segmenter.Segmenter` can use it in place of the PyTorch model::

    from avseg.inference.onnx_runtime import load_onnx_model
    model = load_onnx_model("model.onnx")            # or an avseg checkpoint: exported in memory
    Segmenter(model, model.cfg, device="cpu").predict_video("clip.mp4")

The model is called like the PyTorch one: ``model(frames=[B, T, 3, S, S], log_mel=[B, T, 1, 96, 64])
-> {"logits": [B, T, 1, S, S]}`` (torch tensors in and out, on the inputs' device). onnxruntime runs on
the CPU with as many threads as torch uses (``torch.get_num_threads()``) unless told otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from omegaconf import DictConfig

from avseg.errors import CheckpointError
from avseg.inference.export import DEFAULT_OPSET, OUTPUT_NAME, onnx_bytes, onnx_config, require_onnx

PathLike = Union[str, os.PathLike]
ONNX_SUFFIX = ".onnx"


class OnnxSegmentationModel:
    """An ONNX AVS model exported by :mod:`avseg.inference.export`, called like the torch model.

    Args:
        model: the serialised ONNX model (bytes) or the path of an ``.onnx`` file.
        cfg: the model's config; default: the one stored in the file's metadata.
        threads: onnxruntime intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(self, model: Union[bytes, PathLike], cfg: Optional[DictConfig] = None, threads: Optional[int] = None):
        ort = require_onnx("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no per-node optimiser notes on stderr
        self.source = "<in memory>" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
            raise CheckpointError(f"{self.source}: onnxruntime cannot load this file: {error}") from None
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.cfg = cfg if cfg is not None else onnx_config(self.session.get_modelmeta().custom_metadata_map, self.source)
        self.image_size = int(self.cfg.data.image_size)

    @classmethod
    def from_torch(cls, model: torch.nn.Module, opset: int = DEFAULT_OPSET, threads: Optional[int] = None
                   ) -> "OnnxSegmentationModel":
        """Export an avseg AVS model in memory (no file) and load it."""
        return cls(onnx_bytes(model, opset), model.cfg, threads)

    def to(self, device: Union[str, torch.device]) -> "OnnxSegmentationModel":
        """No-op (runs on the CPU; outputs come back on the inputs' device)."""
        return self

    def eval(self) -> "OnnxSegmentationModel":
        """No-op (an exported graph is always in inference mode)."""
        return self

    def __call__(self, frames: torch.Tensor, log_mel: Optional[torch.Tensor] = None, **unused) -> Dict[str, torch.Tensor]:
        """``frames [B, T, 3, S, S]``, ``log_mel [B, T, 1, 96, 64]`` -> ``{"logits": [B, T, 1, S, S]}``."""
        size = self.image_size
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise ValueError(f"frames must be [B, T, 3, {size}, {size}] for this export, got {tuple(frames.shape)}")
        feeds = {"frames": frames, "log_mel": log_mel}
        missing = [name for name in self.input_names if feeds.get(name) is None]
        if missing:
            raise ValueError(f"the ONNX model needs the inputs {missing}")
        arrays = {name: np.ascontiguousarray(feeds[name].detach().cpu().numpy(), dtype=np.float32)
                  for name in self.input_names}
        logits = self.session.run([OUTPUT_NAME], arrays)[0]
        return {OUTPUT_NAME: torch.from_numpy(logits).to(frames.device)}


def load_onnx_model(path: PathLike, threads: Optional[int] = None) -> OnnxSegmentationModel:
    """An :class:`OnnxSegmentationModel` from an exported ``.onnx`` file, or from an avseg checkpoint
    (any other suffix), exported in memory."""
    if Path(path).suffix.lower() == ONNX_SUFFIX:
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: no such ONNX file")
        return OnnxSegmentationModel(path, threads=threads)
    from avseg.models import load_model

    require_onnx("onnxruntime")
    return OnnxSegmentationModel.from_torch(load_model(path, device="cpu"), threads=threads)
