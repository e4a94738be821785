"""A free TCP port on localhost, for the tests that start gloo process groups or a local web server."""
import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
