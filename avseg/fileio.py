"""Safe file paths and atomic file writes.

* :func:`join_inside` builds a path from untrusted parts (dataset metadata, video ids) and refuses any
  that would leave its root; :func:`plain_name_problem` says why a value is not one plain file name.
* Atomic writes go to a temporary file in the same folder, then rename over the target: a crash or
  kill never leaves a half-written checkpoint, video or config behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path, PureWindowsPath
from typing import Iterator, Optional, Union

from avseg.errors import DatasetError

PathLike = Union[str, os.PathLike]


def plain_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be used as one file or folder name (None when it can).

    Refused: empty names, ``.`` and ``..``, path separators (``/`` or ``\\``), drive prefixes (``C:``)
    and NUL bytes, so that ``folder / name`` always stays directly inside ``folder``.
    """
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "is a relative folder reference"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if PureWindowsPath(name).drive:
        return "starts with a drive"
    if "\0" in name:
        return "contains a NUL byte"
    return None


def join_inside(root: PathLike, *parts: str, what: str = "path") -> Path:
    """``root / parts[0] / parts[1] ...``, refusing any result that would lie outside ``root``.

    Empty parts add nothing (as in pathlib). A part that is absolute, has a drive, holds a ``..``
    component or a NUL byte, or a path through a symbolic link that leads out of ``root``, raises
    :class:`DatasetError` naming ``what``, the offending value and ``root``. The returned path keeps
    the spelling of ``root`` (it is not resolved).
    """
    root = Path(root)
    texts = [os.fspath(part) for part in parts]
    for text in texts:
        spelled = PureWindowsPath(text)  # splits at '/' and '\\' and sees '/x', '\\x' and 'C:' as anchored
        if spelled.anchor or ".." in spelled.parts or "\0" in text:
            raise DatasetError(f"{what}: '{text}' would leave {root} (absolute paths, drives and '..' are not allowed)")
    path = root.joinpath(*texts)
    real_root, real_path = root.resolve(), path.resolve()
    if not real_path.is_relative_to(real_root):
        raise DatasetError(f"{what}: {path} would leave {root} through a symbolic link (it leads to {real_path})")
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The result gets the usual permissions of a new file (0666 less the umask), not mkstemp's 0600.

    ``suffix`` keeps an extension for writers that infer the format from the name (``.mp4``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_torch_save(obj, path: PathLike) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)  # a file object lets torch pass the OS error (e.g. ENOSPC) through
