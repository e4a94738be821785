"""Safe reading of the official AVSBench log-mel ``.pkl`` files.

The official preprocessing writes each clip's log-mel with ``pickle.dump(tensor)``. A plain pickle of a
torch tensor refers to exactly three globals: ``torch._utils._rebuild_tensor_v2`` (the tensor),
``torch.storage._load_from_bytes`` (its storage, itself a nested ``torch.save`` blob) and
``collections.OrderedDict`` (the empty backward-hook dict); protocol-2 pickles add ``_codecs.encode``
for byte strings. This unpickler resolves only those, each to
a checked replacement (the nested blob is read by :func:`avseg.weights.load_weights_only`), and refuses every
other global and persistent id before anything is called. Nothing in a refused file is executed.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any, Union

import torch

from avseg.errors import DatasetError
from avseg.weights import load_weights_only


class _RefusedPickle(Exception):
    """Raised inside the unpickler; turned into a DatasetError naming the file."""


def _load_storage_bytes(data: bytes):
    if not isinstance(data, (bytes, bytearray)):
        raise _RefusedPickle("tensor storage is not a byte string")
    try:
        storage = load_weights_only(io.BytesIO(data))
    except Exception:  # torch's message would suggest weights_only=False: never repeat that
        raise _RefusedPickle("its tensor storage is not a weights-only torch blob") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _RefusedPickle(f"tensor storage decoded to {type(storage).__name__}, not a torch storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _RefusedPickle("tensor built from something that is not a torch storage")
    if backward_hooks:
        raise _RefusedPickle("tensor carries backward hooks")
    sizes, strides = tuple(size), tuple(stride)
    if not all(isinstance(v, int) for v in (storage_offset, *sizes, *strides)):
        raise _RefusedPickle("tensor geometry is not made of integers")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, sizes, strides, False, collections.OrderedDict())


def _latin1_bytes(text, encoding):
    """Protocol-2 pickles spell byte strings as ``_codecs.encode(text, 'latin1')``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _RefusedPickle("calls _codecs.encode other than for a latin-1 byte string")
    return text.encode("latin1")


def _empty_ordered_dict(*args):
    if args:
        raise _RefusedPickle("OrderedDict with constructor arguments")
    return collections.OrderedDict()


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("collections", "OrderedDict"): _empty_ordered_dict,
    ("_codecs", "encode"): _latin1_bytes,
}


class TensorOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild plain CPU tensors and nothing else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedPickle(f"refers to '{module}.{name}', which is not part of a pickled tensor") from None

    def persistent_load(self, pid):
        raise _RefusedPickle("uses persistent ids (expected a plain pickle of a tensor)")


def load_tensor_pickle(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Read a ``.pkl`` holding one pickled torch tensor (official AVSBench log-mel files) safely.

    Raises :class:`DatasetError` naming the file when it is missing, corrupt, refers to anything but
    tensor reconstruction, or holds something other than a tensor.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            result: Any = TensorOnlyUnpickler(handle).load()
    except FileNotFoundError:
        raise DatasetError(f"log-mel file not found: {path}") from None
    except _RefusedPickle as exc:
        raise DatasetError(f"{path}: refused to unpickle: the file {exc}; only pickled torch tensors are accepted") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise DatasetError(f"{path}: not a readable pickle of a torch tensor ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, torch.Tensor):
        raise DatasetError(f"{path}: holds a {type(result).__name__}, expected a torch tensor")
    return result.detach()
