"""Safe reading of the official AVSBench log-mel ``.pkl`` files.

The official preprocessing writes each clip's log-mel with ``pickle.dump(tensor)``. A plain pickle of a
torch tensor refers to exactly three globals: ``torch._utils._rebuild_tensor_v2`` (the tensor),
``torch.storage._load_from_bytes`` (its storage, itself a nested ``torch.save`` blob) and
``collections.OrderedDict`` (the empty backward-hook dict); protocol-2 pickles add ``_codecs.encode``
for byte strings. This unpickler resolves only those, each to a checked replacement (the nested blob is
read by :func:`avseg.weights.load_weights_only`), and refuses every other global and persistent id
before anything is called. Nothing in a refused file is executed.

Sizes are checked before anything is allocated: a file over a size cap is refused unread, every
length field of the pickle must fit in the bytes present, the storage header's element count must be
within the cap and match the raw data that follows it, and the tensor view may not describe more
elements than its storage holds. :func:`load_log_mel_pickle` also checks the log-mel shape ``[T, 1, 96, 64]``.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any, List, Tuple, Union

import torch

from avseg.errors import DatasetError
from avseg.weights import load_weights_only


# Official log-mels are [5, 1, 96, 64] (30,720 floats, 123 kB). The caps allow 600 examples (9.6 min of
# audio) in float64; anything larger is refused before it is read or allocated.
MAX_LOG_MEL_EXAMPLES = 600
MAX_TENSOR_ELEMENTS = MAX_LOG_MEL_EXAMPLES * 96 * 64
MAX_TENSOR_RANK = 4
PICKLE_OVERHEAD_BYTES = 64 * 1024  # pickle opcodes and torch's storage headers around the raw numbers
STORAGE_ELEMENT_SIZES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2}
LEGACY_PICKLES = 5  # magic number, protocol version, sys info, storage record, storage keys


class _RefusedPickle(Exception):
    """Raised inside the unpickler; turned into a DatasetError naming the file."""


class _PlainValueUnpickler(pickle.Unpickler):
    """Plain values only (numbers, strings, containers): torch's legacy storage header pickles."""

    def find_class(self, module: str, name: str):
        raise _RefusedPickle(f"its storage header refers to '{module}.{name}'")

    def persistent_load(self, pid):
        raise _RefusedPickle("its storage header uses persistent ids")


class _StorageRecordReader(_PlainValueUnpickler):
    """Reads the persistent ids of torch's legacy storage record without building any storage."""

    def __init__(self, file):
        super().__init__(file)
        self.records: List[tuple] = []

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_ELEMENT_SIZES:
            return name
        raise _RefusedPickle(f"its tensor storage is of type '{module}.{name}', not a floating-point storage")

    def persistent_load(self, pid):
        self.records.append(pid)
        return None


def _check_counted_lengths(data: bytes) -> None:
    """Refuse a pickle whose length fields claim more bytes than it holds (the unpickler would allocate them)."""
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except ValueError as exc:
        raise _RefusedPickle(f"is not a complete pickle ({exc})") from None


def _split_pickles(data: bytes, count: int) -> Tuple[List[bytes], bytes]:
    """The first ``count`` consecutive pickles of ``data`` (lengths checked) and the bytes after them."""
    stream = io.BytesIO(data)
    pickles = []
    for _ in range(count):
        start = stream.tell()
        try:
            for _ in pickletools.genops(stream):
                pass
        except ValueError as exc:
            raise _RefusedPickle(f"its tensor storage is not in torch's pickle format ({exc})") from None
        pickles.append(data[start : stream.tell()])
    return pickles, data[stream.tell() :]


def _check_legacy_storage(data: bytes, max_elements: int) -> None:
    """Check torch's legacy storage blob before torch allocates what its header claims.

    The blob is five pickles (magic number, protocol, sys info, one storage record
    ``('storage', <Type>Storage, key, location, numel, None)``, the key list), then the int64 element
    count and the raw numbers. The claimed ``numel`` must be within ``max_elements`` and match the
    bytes actually present.
    """
    pickles, raw = _split_pickles(data, LEGACY_PICKLES)
    try:
        magic = _PlainValueUnpickler(io.BytesIO(pickles[0])).load()
        reader = _StorageRecordReader(io.BytesIO(pickles[3]))
        reader.load()
    except _RefusedPickle:
        raise
    except Exception as exc:
        raise _RefusedPickle(f"its tensor storage header is unreadable ({type(exc).__name__}: {exc})") from None
    if magic != torch.serialization.MAGIC_NUMBER:
        raise _RefusedPickle("its tensor storage is not in torch's legacy storage format")
    if len(reader.records) != 1:
        raise _RefusedPickle(f"its tensor storage blob holds {len(reader.records)} storages, expected 1")
    record = reader.records[0]
    if not (isinstance(record, tuple) and len(record) == 6 and record[0] == "storage" and record[1] in STORAGE_ELEMENT_SIZES):
        raise _RefusedPickle("its tensor storage record is not a plain storage")
    numel, view = record[4], record[5]
    if not isinstance(numel, int) or numel < 0 or view is not None:
        raise _RefusedPickle("its tensor storage record has a bad element count or a storage view")
    if numel > max_elements:
        raise _RefusedPickle(f"its tensor storage claims {numel} elements, over the limit of {max_elements} elements")
    stored = len(raw) - 8
    if stored != numel * STORAGE_ELEMENT_SIZES[record[1]] or raw[:8] != numel.to_bytes(8, "little"):
        raise _RefusedPickle(f"its tensor storage claims {numel} elements but {max(stored, 0)} bytes of data follow")


class TensorOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild plain CPU tensors of at most ``max_elements`` elements and nothing else."""

    def __init__(self, file, max_elements: int = MAX_TENSOR_ELEMENTS):
        super().__init__(file)
        self.max_elements = max_elements
        self._allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch.storage", "_load_from_bytes"): self._load_storage_bytes,
            ("collections", "OrderedDict"): _empty_ordered_dict,
            ("_codecs", "encode"): _latin1_bytes,
        }

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedPickle(f"refers to '{module}.{name}', which is not part of a pickled tensor") from None

    def persistent_load(self, pid):
        raise _RefusedPickle("uses persistent ids (expected a plain pickle of a tensor)")

    def _load_storage_bytes(self, data: bytes):
        if not isinstance(data, (bytes, bytearray)):
            raise _RefusedPickle("tensor storage is not a byte string")
        _check_legacy_storage(bytes(data), self.max_elements)
        try:
            storage = load_weights_only(io.BytesIO(data))
        except Exception:  # torch's message would suggest weights_only=False: never repeat that
            raise _RefusedPickle("its tensor storage is not a weights-only torch blob") from None
        if not isinstance(storage, torch.TypedStorage):
            raise _RefusedPickle(f"tensor storage decoded to {type(storage).__name__}, not a typed torch storage")
        return storage

    def _rebuild_tensor(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        if not isinstance(storage, torch.TypedStorage):
            raise _RefusedPickle("tensor built from something that is not a typed torch storage")
        if backward_hooks:
            raise _RefusedPickle("tensor carries backward hooks")
        sizes, strides = tuple(size), tuple(stride)
        if not all(isinstance(v, int) and v >= 0 for v in (storage_offset, *sizes, *strides)) or len(sizes) != len(strides):
            raise _RefusedPickle("tensor geometry is not made of non-negative integers, one stride per size")
        if len(sizes) > MAX_TENSOR_RANK:
            raise _RefusedPickle(f"describes a tensor of {len(sizes)} dimensions (at most {MAX_TENSOR_RANK})")
        numel = math.prod(sizes)
        held = storage._size()  # TypedStorage.size() without its deprecation warning
        if numel > min(held, self.max_elements):
            raise _RefusedPickle(
                f"describes a tensor of shape {list(sizes)}, more elements than its storage holds ({held}) "
                f"or the limit of {self.max_elements} elements"
            )
        if numel and storage_offset + sum((n - 1) * st for n, st in zip(sizes, strides)) >= held:
            raise _RefusedPickle(f"describes a tensor of shape {list(sizes)} that reaches past the end of its storage")
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


def load_tensor_pickle(path: Union[str, os.PathLike], max_elements: int = MAX_TENSOR_ELEMENTS) -> torch.Tensor:
    """Read a ``.pkl`` holding one pickled torch tensor (official AVSBench log-mel files) safely.

    Raises :class:`DatasetError` naming the file when it is missing, corrupt, refers to anything but
    tensor reconstruction, holds something other than a tensor, or describes more than it holds: the
    file, its byte strings, its storage and the tensor view are all bounded by ``max_elements``
    (at most :data:`MAX_TENSOR_RANK` dimensions) and by the bytes actually in the file, so a small
    file can never make the loader allocate much.
    """
    path = Path(path)
    max_bytes = max_elements * max(STORAGE_ELEMENT_SIZES.values()) + PICKLE_OVERHEAD_BYTES
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise _RefusedPickle(f"has {size} bytes, more than a tensor within the limit of {max_elements} elements needs ({max_bytes})")
            data = handle.read()
        _check_counted_lengths(data)
        result: Any = TensorOnlyUnpickler(io.BytesIO(data), max_elements).load()
    except FileNotFoundError:
        raise DatasetError(f"log-mel file not found: {path}") from None
    except _RefusedPickle as exc:
        raise DatasetError(f"{path}: refused to unpickle: the file {exc}; only pickled torch tensors are accepted") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise DatasetError(f"{path}: not a readable pickle of a torch tensor ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, torch.Tensor):
        raise DatasetError(f"{path}: holds a {type(result).__name__}, expected a torch tensor")
    return result.detach()


def load_log_mel_pickle(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Log-mel examples ``[T, 1, 96, 64]`` from an official ``.pkl`` (stored ``[T, 1, 96, 64]`` or ``[T, 96, 64]``)."""
    examples = load_tensor_pickle(path)
    stored_shape = tuple(examples.shape)
    if examples.dim() == 3:
        examples = examples.unsqueeze(1)
    if examples.dim() != 4 or tuple(examples.shape[1:]) != (1, 96, 64) or examples.shape[0] == 0:
        raise DatasetError(f"{path}: log-mel of shape {stored_shape}, expected [T, 1, 96, 64] or [T, 96, 64]")
    return examples
