"""The gateway's HTTP connections are bounded: a request head has HEAD_TIMEOUT_S to arrive, and slow
clients (slowloris) neither keep their connections nor stop others being served.

The gateway runs as a real subprocess, without API keys, beside a kernel with no model: only its
HTTP side is under test here.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from llmos.userland.gateway.http import HEAD_TIMEOUT_S, MAX_CONNECTIONS
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess, wait_until


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with KernelProcess(tmp_path_factory.mktemp("gw-http"), env={"LLMOS_NO_SERVICES": "1"}) as k, \
            GatewayProcess(k.cli_env()) as gw:
        yield gw


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.001)
    try:
        return s.recv(1 << 16) == b"" or closed_by_server(s)     # an answer (408) may come first
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def trickle(s: socket.socket, stop: threading.Event) -> None:
    """A byte of header every second, to look alive to a timer that any data resets."""
    while not stop.wait(1.0):
        try:
            s.sendall(b"x")
        except OSError:
            return


def test_slow_request_heads_are_cut_within_the_head_timeout_while_others_are_served(gateway):
    """Finding 10: 200 connections that never finished their request were held for 40 s and more."""
    port = gateway.port
    slow = []
    for _ in range(199):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(s)
    kept_alive = socket.create_connection(("127.0.0.1", port), timeout=10)   # one answer, then a slow second head
    kept_alive.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept_alive.recv(1 << 16).startswith(b"HTTP/1.1 200 ")
    kept_alive.sendall(b"GET /health/live HTTP/1.1\r\nX-Slow: ")
    slow.append(kept_alive)
    stop = threading.Event()
    trickler = threading.Thread(target=trickle, args=(kept_alive, stop), daemon=True)
    trickler.start()
    started = time.monotonic()
    try:
        assert httpx.get(gateway.url + "/health/live", timeout=2).status_code == 200    # served meanwhile
        assert wait_until(lambda: all(map(closed_by_server, slow)), timeout=HEAD_TIMEOUT_S + 3, interval=0.2), \
            f"{sum(not closed_by_server(s) for s in slow)} slow connections still open"
        assert time.monotonic() - started <= HEAD_TIMEOUT_S + 3
        assert httpx.get(gateway.url + "/health/live", timeout=2).status_code == 200
    finally:
        stop.set()
        for s in slow:
            s.close()


def test_past_the_connection_cap_the_oldest_slow_connections_make_room(gateway):
    slow = []
    try:
        for _ in range(MAX_CONNECTIONS + 8):
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            s.sendall(b"GET /health/live HTTP/1.1\r\nX-Slow: ")
            slow.append(s)
        assert wait_until(lambda: all(map(closed_by_server, slow[:8])), timeout=3)
        assert not any(map(closed_by_server, slow[-8:]))
        assert httpx.get(gateway.url + "/health/live", timeout=2).status_code == 200
    finally:
        for s in slow:
            s.close()
