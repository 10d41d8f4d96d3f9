"""harness.services.TcpForwarder on loopback: what makes Prometheus and PostgreSQL reachable from the real node."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.services import TcpForwarder


@pytest.fixture
def echo() -> Iterator[int]:
    """A loopback server that echoes each connection upper-cased, then closes its side after the client's EOF."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())
            conn.sendall(b"BYE")

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(server.getsockname()[1])
    stop.set()
    t.join(2)
    server.close()


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)  # a half-close must reach the server, and its answer come back
        out = b""
        while data := c.recv(65536):
            out += data
        return out


def test_forwards_both_ways_with_half_close(echo: int) -> None:
    payload = b"x" * 300_000
    with TcpForwarder("127.0.0.1", echo) as fwd:
        assert fwd.address == f"127.0.0.1:{fwd.port}" and fwd.port != echo
        assert _exchange(fwd.port, payload) == b"X" * 300_000 + b"BYE"
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(_exchange(fwd.port, b"hi"))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [b"HIBYE"] * 8
        assert fwd.accepted == 9
        deadline = time.monotonic() + 5
        while fwd.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fwd.active == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", fwd.port), timeout=1).close()


def test_bounded_and_idle_connections_are_closed(echo: int) -> None:
    with TcpForwarder("127.0.0.1", echo, max_connections=2, idle_timeout=0.5) as fwd:
        held = [socket.create_connection(("127.0.0.1", fwd.port), timeout=5) for _ in range(2)]
        deadline = time.monotonic() + 5
        while fwd.active < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        extra = socket.create_connection(("127.0.0.1", fwd.port), timeout=5)
        assert extra.recv(10) == b""  # over the bound: closed at once
        extra.close()
        assert fwd.refused == 1
        # the held ones say nothing: closed after idle_timeout
        for c in held:
            c.settimeout(5)
            assert c.recv(10) == b""
            c.close()


def test_refuses_the_wildcard_address() -> None:
    for host in ("0.0.0.0", "::"):
        with pytest.raises(ValueError, match="wildcard"):
            TcpForwarder(host, 1)


def test_upstream_down_closes_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = int(s.getsockname()[1])
    with TcpForwarder("127.0.0.1", dead) as fwd, socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as c:
        assert c.recv(10) == b""
