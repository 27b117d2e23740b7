"""Health on the metrics port and `llmos health`: live when the loop answers, ready when a probe did.

Two kernels: one on the tiny model (its default, loaded at boot) and one with no model at all,
which can never be ready. The HTTP server is the kernel's own small one, so the tests also hold
it to its bounds: a request too large or malformed gets its 4xx and the kernel keeps serving.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from harness import KernelProcess, wait_until
from llmos.kernel.httpserve import MAX_CONNECTIONS_PER_CLIENT, READ_TIMEOUT_S
from llmos.userland.cli.exits import EXIT_NO_KERNEL
from llmos.userland.testing import LLMOS_COMMAND, free_tcp_port


def boot_with_metrics(workdir, model: str | None, *extra: str) -> KernelProcess:
    port = free_tcp_port()
    k = KernelProcess(workdir, model=model, extra=["--metrics", f"127.0.0.1:{port}", *extra],
                      env={"LLMOS_NO_SERVICES": "1"}).start()
    k.metrics_port = port
    return k


@pytest.fixture(scope="module")
def ready_kernel(tmp_path_factory, tiny_llama):
    k = boot_with_metrics(tmp_path_factory.mktemp("ready-kernel"), tiny_llama)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def modelless_kernel(tmp_path_factory):
    k = boot_with_metrics(tmp_path_factory.mktemp("modelless-kernel"), None)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def unprobeable_kernel(tmp_path_factory, tiny_llama):
    """Its default model is loaded, but the operator (whom the probe runs as) may make no request."""
    workdir = tmp_path_factory.mktemp("unprobeable-kernel")
    config = workdir / "config.toml"
    config.write_text("[quotas.operator]\nrequests = 0\n")
    k = boot_with_metrics(workdir, tiny_llama, "--config", str(config))
    yield k
    k.stop()


def get(kernel: KernelProcess, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{kernel.metrics_port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def raw_http(kernel: KernelProcess, data: bytes) -> bytes:
    """What the server answers to `data` sent as is, read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", kernel.metrics_port), timeout=30) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def test_live_answers_200_from_the_kernels_loop(ready_kernel):
    assert get(ready_kernel, "/health/live") == (200, {"status": "live"})


def test_ready_answers_200_once_a_probe_of_the_default_model_succeeded(ready_kernel):
    status, body = get(ready_kernel, "/health/ready")
    assert (status, body["status"]) == (200, "ready"), body
    assert "probe" in body["reason"]


def test_ready_answers_503_without_a_default_model(modelless_kernel):
    status, body = get(modelless_kernel, "/health/ready")
    assert (status, body["status"]) == (503, "not ready")
    assert body["reason"] == "this kernel has no default model"


def test_a_loaded_model_is_not_ready_until_a_probe_through_the_scheduler_succeeds(unprobeable_kernel):
    status, body = get(unprobeable_kernel, "/health/ready")
    assert (status, body["status"]) == (503, "not ready")
    assert "probe" in body["reason"] and "EDQUOT" in body["reason"]


def test_stats_ready_flag_agrees_with_the_http_answer(ready_kernel, modelless_kernel):
    with ready_kernel.client("ready?") as c:
        assert c.stats(wait_ready=15)["ready"] is True
    with modelless_kernel.client("ready?") as c:
        stats = c.stats(wait_ready=15)
        assert (stats["ready"], stats["ready_reason"]) == (False, "this kernel has no default model")


def test_headers_over_8_kib_get_431_and_the_kernel_keeps_serving(ready_kernel):
    answer = raw_http(ready_kernel, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (9 << 10) + b"\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert get(ready_kernel, "/health/live")[0] == 200
    with ready_kernel.client("after-431") as c:
        assert c.ping()["pong"] is True


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n", b"GET /metrics\r\n\r\n",
                                           b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"\xff\xfe\r\n\r\n"])
def test_a_malformed_request_gets_400_and_the_kernel_keeps_serving(ready_kernel, request_bytes):
    assert status_line(raw_http(ready_kernel, request_bytes)) == b"HTTP/1.1 400 Bad Request"
    assert get(ready_kernel, "/health/live")[0] == 200


def test_only_get_is_served(ready_kernel):
    answer = raw_http(ready_kernel, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 405 Method Not Allowed"
    assert b"\r\nAllow: GET\r\n" in answer


def test_an_unknown_path_gets_404(ready_kernel):
    assert get(ready_kernel, "/admin")[0] == 404


def test_a_silent_connection_does_not_hold_up_the_others(ready_kernel):
    with socket.create_connection(("127.0.0.1", ready_kernel.metrics_port), timeout=30) as silent:
        silent.sendall(b"GET /metrics HTTP/1.1\r\n")       # and never the rest
        assert get(ready_kernel, "/health/live")[0] == 200


def slow_connections(kernel: KernelProcess, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """Connections from `source` that start a request and never finish it (slowloris)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", kernel.metrics_port), timeout=10, source_address=(source, 0))
        s.sendall(b"GET /health/live HTTP/1.1\r\nX-Slow: ")
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(1 << 16) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_slow_connections_cannot_starve_health_live(modelless_kernel):
    """Finding 10: 64 connections that never finished their request took every slot for 5 s."""
    socks = slow_connections(modelless_kernel, 80)
    try:
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{modelless_kernel.metrics_port}/health/live", timeout=2) as r:
            assert r.status == 200
        assert time.monotonic() - started < 2
    finally:
        for s in socks:
            s.close()


def test_one_client_holds_at_most_its_share_of_connections(modelless_kernel):
    socks = slow_connections(modelless_kernel, 20, source="127.0.0.2")
    try:
        assert wait_until(lambda: sum(map(closed_by_server, socks)) >= 20 - MAX_CONNECTIONS_PER_CLIENT, timeout=3)
        assert not any(closed_by_server(s) for s in socks[-MAX_CONNECTIONS_PER_CLIENT:])   # the newest are kept
    finally:
        for s in socks:
            s.close()


def test_a_request_head_not_sent_within_the_deadline_gets_408(modelless_kernel):
    with socket.create_connection(("127.0.0.1", modelless_kernel.metrics_port), timeout=READ_TIMEOUT_S + 5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        assert s.recv(1 << 16).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < READ_TIMEOUT_S + 2


def test_a_taken_metrics_port_fails_the_boot(tmp_path, ready_kernel):
    k = KernelProcess(tmp_path, extra=["--metrics", f"127.0.0.1:{ready_kernel.metrics_port}"],
                      env={"LLMOS_NO_SERVICES": "1"})
    try:
        with pytest.raises(RuntimeError, match="cannot serve metrics"):
            k.start()
    finally:
        k.stop()


def llmos_health(kernel: KernelProcess, *args: str, socket_url: str | None = None) -> subprocess.CompletedProcess:
    env = kernel.cli_env(**({"LLMOS_SOCKET": socket_url} if socket_url else {}))
    return subprocess.run([*LLMOS_COMMAND, "health", *args], capture_output=True, text=True, env=env, timeout=60)


def test_llmos_health_exits_0_when_ready(ready_kernel):
    done = llmos_health(ready_kernel)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ready: ")


def test_llmos_health_exits_1_saying_why_when_not_ready(modelless_kernel):
    done = llmos_health(modelless_kernel)
    assert done.returncode == 1
    assert done.stderr.strip() == "llmos health: not ready: this kernel has no default model"


def test_llmos_health_exits_3_the_no_kernel_code_when_no_kernel_answers(ready_kernel, tmp_path):
    done = llmos_health(ready_kernel, socket_url=f"ipc://{tmp_path}/nobody.sock")
    assert done.returncode == EXIT_NO_KERNEL == 3
    assert done.stderr.startswith("llmos health: not ready: ") and "nobody.sock" in done.stderr


def test_the_config_file_may_name_the_address(tmp_path):
    port = free_tcp_port()        # loopback only in tests: 127.0.0.2 is not the default 127.0.0.1, and is no one else's
    config = tmp_path / "config.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.2:{port}"\n')
    k = KernelProcess(tmp_path / "k", extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"}).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/health/live", timeout=30) as r:
            assert r.status == 200
        assert not k.events("metrics.exposed")
    finally:
        k.stop()


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("::", False),
                                           ("10.1.2.3", False), ("metrics.example", False)])
def test_an_address_off_loopback_is_the_one_warned_about(host, loopback):
    from llmos.kernel.httpserve import is_loopback
    assert is_loopback(host) is loopback
