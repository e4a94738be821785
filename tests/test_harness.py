import socket

import pytest

from conftest import NetworkAccessError


def test_network_connection_is_refused():
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_name_lookup_is_refused():
    with pytest.raises(NetworkAccessError):
        socket.getaddrinfo("huggingface.co", 443)


def test_hub_is_offline():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
