"""Ports for the clusters the tests start, kept off Ray's defaults (6379, 8265) so other Ray instances are left alone."""

import socket


def free_port_from(start):
    """The first free port on 127.0.0.1 from `start`."""
    for port in range(start, start + 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port from {start}")
