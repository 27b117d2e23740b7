"""`llmos top`: the frame drawn from a real kernel's `stats`, `--once` for scripts and pipes, and the
live view quitting on q or Ctrl-C with success."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import time

import pytest
from rich.console import Console

from llmos.userland.cli.exits import EXIT_BROKEN_PIPE, EXIT_OK
from llmos.userland.cli.top import memory_bar, render
from llmos.userland.testing import LLMOS_COMMAND, KernelProcess

WORKER = "top-test-worker"
TITLE = "llmos test kernel"


@pytest.fixture(scope="module")
def worker(kernel):
    """A process that has generated tokens and is still connected, as top should show it."""
    with kernel.client(WORKER) as c:
        c.infer(prompt="hello", max_tokens=8)
        yield c


@pytest.fixture
def stats(kernel, worker) -> dict:
    with kernel.client("top-test-reader", caps=["ps", "admin"]) as c:
        return c.stats()


def frame(stats: dict, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render(stats, TITLE))
    return out.getvalue()


def row_of(text: str, *cells: str) -> str:
    """The one line of `text` holding every cell."""
    rows = [line for line in text.splitlines() if all(c in line.split() for c in cells)]
    assert len(rows) == 1, f"{cells} in {len(rows)} lines of:\n{text}"
    return rows[0]


def test_the_frame_shows_every_device_model_and_process_of_a_real_kernel(stats):
    text = frame(stats)
    for d in stats["devices"]:
        row_of(text, d["name"], d["driver"])
    for m in stats["models"]:
        row_of(text, m["name"], m["state"])
    for p in stats["processes"]:
        row_of(text, str(p["pid"]), p["name"], p["principal"])


def test_the_frame_lists_the_busiest_process_first(stats):
    processes = stats["processes"]      # the shared kernel: other tests' programs may be busier than ours
    assert any(p["name"] == WORKER and p["tokens_per_s"] > 0 for p in processes)
    top = max(p["tokens_per_s"] for p in processes)
    lines = frame(stats).splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["PID", "NAME"])
    first_pid = int(lines[header + 2].split()[0])     # the first row, below the header's rule
    assert next(p for p in processes if p["pid"] == first_pid)["tokens_per_s"] == top


def test_the_header_says_why_a_kernel_is_not_ready(stats):
    lines = frame({**stats, "ready": False, "ready_reason": "model tiny is loading"}).splitlines()
    header = lines[:next(i for i, line in enumerate(lines) if line.startswith("DEVICE"))]
    assert any(line.startswith("not ready: model tiny is loading") for line in header), header


def test_the_memory_bar_shows_models_reserved_and_free_memory_in_proportion():
    assert memory_bar(used=6, reserved=2, total=8, width=8).plain == "████▒▒░░"
    assert memory_bar(used=0, reserved=0, total=8, width=8).plain == "░" * 8
    assert memory_bar(used=9, reserved=0, total=8, width=8).plain == "█" * 8


def test_top_once_shows_the_device_the_model_and_the_process_that_ran_an_infer(kernel, worker):
    r = kernel.cli("top", "--once")
    assert (r.returncode, r.stderr) == (EXIT_OK, "")
    assert "\x1b[" not in r.stdout, "escape codes in output that is not a terminal"
    row_of(r.stdout, "cpu", "up")
    row_of(r.stdout, kernel.model, "cpu", "ready")
    row_of(r.stdout, str(worker.pid), WORKER, "operator")


def test_top_once_into_head_prints_the_title_and_ends_quietly(kernel, worker):
    r = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" top --once | head -1', "top", *LLMOS_COMMAND],
                       capture_output=True, text=True, env=kernel.cli_env(), timeout=120)
    assert r.returncode in (EXIT_OK, EXIT_BROKEN_PIPE) and r.stderr == ""     # head may read all before closing
    assert r.stdout.startswith("llmos ") and kernel.operator_socket in r.stdout and r.stdout.count("\n") == 1


def test_top_once_whose_reader_went_away_ends_quietly_with_exit_141(kernel):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([*LLMOS_COMMAND, "top", "--once"], stdout=write_end, stderr=subprocess.PIPE, text=True,
                           env=kernel.cli_env(), timeout=120)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (EXIT_BROKEN_PIPE, "")


def test_in_a_pipe_frames_follow_one_another_until_the_reader_goes(kernel, worker):
    top = subprocess.Popen([*LLMOS_COMMAND, "top", "--interval", "0.2"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=kernel.cli_env())
    try:
        titles, deadline = 0, time.monotonic() + 60
        while titles < 2 and time.monotonic() < deadline and select.select([top.stdout], [], [], 1)[0]:
            line = top.stdout.readline()
            if not line:
                break
            titles += line.startswith(b"llmos ")
        assert titles == 2
        top.stdout.close()
        assert top.wait(timeout=30) == EXIT_BROKEN_PIPE and top.stderr.read() == b""
    finally:
        if top.poll() is None:
            top.kill()
        top.wait()
        top.stderr.close()


@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory):
    k = KernelProcess(tmp_path_factory.mktemp("top-tcp-kernel"), tcp=True, env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


def test_a_user_without_admin_sees_their_own_processes_and_no_one_elses(tcp_kernel):
    with tcp_kernel.client("operators-program", caps=["admin", "ps"]) as operator:
        key_file = operator.user_add("top-user", caps=["ps"])["key_file"]
        r = tcp_kernel.cli("--socket", tcp_kernel.socket, "--key", key_file, "top", "--once")
    assert (r.returncode, r.stderr) == (EXIT_OK, "")
    row_of(r.stdout, "llmos-top", "top-user")
    assert "operators-program" not in r.stdout


class Terminal:
    """`llmos top` on a pseudo-terminal: what it drew so far, and keys typed into it."""

    def __init__(self, kernel, *args: str):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([*LLMOS_COMMAND, "top", *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=kernel.cli_env(COLUMNS="120", LINES="40"), start_new_session=True)
        os.close(slave)
        self.screen = b""

    def wait_for(self, text: bytes, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.screen and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:     # the program ended and closed the terminal
                    break
        return text in self.screen

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(kernel, worker):
    made = []

    def start(*args: str) -> Terminal:
        made.append(Terminal(kernel, *args))
        return made[-1]

    yield start
    for t in made:
        t.close()


def test_q_quits_the_live_view_with_success(terminal):
    t = terminal("--interval", "0.2")
    assert t.wait_for(WORKER.encode()), t.screen[-2000:]
    t.type(b"q")
    assert t.proc.wait(timeout=30) == EXIT_OK


def test_ctrl_c_quits_the_live_view_with_success(terminal):
    t = terminal("--interval", "0.2")
    assert t.wait_for(WORKER.encode()), t.screen[-2000:]
    t.proc.send_signal(signal.SIGINT)
    assert t.proc.wait(timeout=30) == EXIT_OK


def test_the_live_view_shows_a_process_that_connected_after_it_started(terminal, kernel):
    t = terminal("--interval", "0.2")
    assert t.wait_for(WORKER.encode()), t.screen[-2000:]
    with kernel.client("top-test-newcomer"):
        assert t.wait_for(b"top-test-newcomer"), t.screen[-2000:]
