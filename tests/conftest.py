"""Test harness: offline by construction, small, deterministic.

* ``HF_HUB_OFFLINE=1`` is set before anything imports timm or huggingface_hub.
* Any socket connection or name lookup to a host other than this machine fails the test
  (loopback stays allowed for the torch.distributed tests).
"""
import ipaddress
import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: several times faster on a loaded 2-core machine

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "", None}


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if address else None
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL_NAMES and host != socket.gethostname():
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise NetworkAccessError(f"test tried to resolve {host!r}")
        except ValueError:
            raise NetworkAccessError(f"test tried to resolve {host!r}") from None
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(autouse=True)
def _small_torch():
    """Two threads and a fixed seed for every test."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


def _make_synthetic_fixture(tmp_path_factory, task: str):
    from avseg.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp(f"synthetic_{task}")
    return make_synthetic(root, task=task, size=64, seed=0, split_sizes=(4, 2, 2), write_videos=False)


@pytest.fixture(scope="session")
def synthetic_s4_root(tmp_path_factory):
    """Root (holds ``Single-source/``) of a tiny synthetic S4 in the official v1 layout: 64 px, 4/2/2 clips, no raw mp4s."""
    return _make_synthetic_fixture(tmp_path_factory, "s4")


@pytest.fixture(scope="session")
def synthetic_ms3_root(tmp_path_factory):
    """Root (holds ``Multi-sources/``) of a tiny synthetic MS3 in the official v1 layout: 64 px, 4/2/2 clips, no raw mp4s."""
    return _make_synthetic_fixture(tmp_path_factory, "ms3")


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (tiny models: as fast, and no OpenMP barrier stalls when busy)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
