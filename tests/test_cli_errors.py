"""The `llmos` command never hangs and never prints a traceback: each failure is one line
`llmos CMD: ERRNO: message` with a documented exit code, and a closed pipe ends it quietly.

Every test runs the real command in a subprocess against a real kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap

import pytest

from llmos.userland.cli.exits import (EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED,
                                      EXIT_NO_KERNEL)
from llmos.userland.testing import LLMOS_COMMAND, wait_until

ONLY_BUILT_INS = {"LLMOS_PLUGINS": ""}


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_the_help_documents_every_exit_code(kernel):
    out = kernel.cli("--help", env=ONLY_BUILT_INS).stdout
    for code in (EXIT_FAILED, EXIT_NO_KERNEL, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE):
        assert f"\n    {code} " in out.split("Exit codes:")[1]


def test_a_failed_syscall_is_one_line_with_its_errno_and_exit_1(kernel):
    r = kernel.cli("unload", "no-such-model")
    assert r.returncode == EXIT_FAILED
    assert one_line(r.stderr).startswith("llmos unload: ENOENT: ")


def test_no_kernel_is_one_line_naming_the_socket_and_exit_3(tmp_path, kernel):
    socket = f"ipc://{tmp_path}/nobody.sock"
    r = kernel.cli("--socket", socket, "ps")
    assert r.returncode == EXIT_NO_KERNEL
    assert socket in one_line(r.stderr) and "llmos boot" in r.stderr


@pytest.fixture(scope="module")
def services_up(kernel):
    with kernel.client("cli-svc-wait") as c:
        assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60)


@pytest.mark.parametrize("args", [["svc", "list"], ["models"], ["ps"], ["svc", "list", "--json"],
                                  ["svc", "call", "redact", "text", "--arg", "text=mail ann@example.com", "--json"]],
                         ids=["svc-list", "models", "ps", "svc-list-json", "svc-call-json"])
def test_a_command_whose_reader_went_away_ends_quietly_with_exit_141(kernel, services_up, args):
    """As `llmos svc list | head -1` once head has read its line: the pipe is closed before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([*LLMOS_COMMAND, *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                           env=kernel.cli_env(**ONLY_BUILT_INS), timeout=120)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (EXIT_BROKEN_PIPE, "")


def test_an_unexpected_exception_is_one_line_naming_the_file_with_its_traceback(kernel, tmp_path):
    (tmp_path / "buggy_commands.py").write_text(textwrap.dedent("""
        import click
        from llmos.services import hookimpl

        @click.command("crash")
        def crash():
            raise ZeroDivisionError("a bug in a command")

        @hookimpl
        def register_commands(register):
            register(crash)
    """))
    r = kernel.cli("crash", env={"LLMOS_SERVICES_PATH": str(tmp_path), "LLMOS_PLUGIN_MODULES": "buggy_commands",
                                 **ONLY_BUILT_INS})
    assert r.returncode == EXIT_INTERNAL
    line = one_line(r.stderr)
    assert line.startswith("llmos crash: internal error: ZeroDivisionError: a bug in a command (full traceback in ")
    path = line.rsplit("full traceback in ", 1)[1].rstrip(")")
    try:
        assert "Traceback" in open(path).read() and "a bug in a command" in open(path).read()
    finally:
        os.unlink(path)


def empty_file(folder):
    (folder / "empty.txt").write_text(" \n")
    return folder / "empty.txt"


@pytest.mark.parametrize("make, errno", [(lambda d: d / "missing.txt", "ENOENT"), (lambda d: d, "EISDIR"),
                                         (empty_file, "EINVAL")], ids=["missing", "directory", "empty"])
def test_summarize_of_a_file_it_cannot_read_is_one_line_and_exit_1(kernel, tmp_path, make, errno):
    r = kernel.cli("summarize", str(make(tmp_path)), env=ONLY_BUILT_INS)
    assert r.returncode == EXIT_FAILED
    assert one_line(r.stderr).startswith(f"llmos summarize: {errno}: ")


def test_support_with_a_folder_of_no_readable_document_says_why_and_stops(kernel, tmp_path):
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    r = kernel.cli("support", "--kb", str(tmp_path), input="a question\n", env=ONLY_BUILT_INS)
    assert r.returncode == EXIT_FAILED
    line = one_line(r.stderr)
    assert line.startswith("llmos support: ENOENT: ") and "no document" in line and ".txt" in line


def test_run_interrupted_with_ctrl_c_ends_its_line_says_cancelled_and_cancels_the_request(kernel):
    with kernel.client("cli-watcher") as watcher:
        driver = watcher.devices()[0]["os_pid"]
        os.kill(driver, signal.SIGSTOP)       # the answer cannot come: only Ctrl-C ends the command
        try:
            proc = subprocess.Popen([*LLMOS_COMMAND, "run", "hello", "--max-tokens", "50"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=kernel.cli_env(**ONLY_BUILT_INS))

            def waiting() -> list[dict]:
                return [p for p in watcher.ps() if p["name"] == "llmos-run" and p["requests"]]

            assert wait_until(waiting, timeout=60)
            run_pid = waiting()[0]["pid"]
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            assert wait_until(lambda: all(p["pid"] != run_pid or not p["requests"] for p in watcher.ps()))
        finally:
            os.kill(driver, signal.SIGCONT)
    assert proc.returncode == EXIT_INTERRUPTED
    assert out.endswith("[cancelled]\n") and "Traceback" not in err


def test_run_whose_kernel_dies_mid_answer_ends_with_one_line_naming_the_socket(fresh_kernel):
    k = fresh_kernel()
    with k.client("cli-watcher") as watcher:
        driver = watcher.devices()[0]["os_pid"]
        os.kill(driver, signal.SIGSTOP)
        proc = subprocess.Popen([*LLMOS_COMMAND, "run", "hello", "--max-tokens", "5000"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=k.cli_env(**ONLY_BUILT_INS))
        assert wait_until(lambda: any(p["name"] == "llmos-run" and p["requests"] for p in watcher.ps()), timeout=60)
        k.proc.kill()
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):   # orphaned while stopped: SIGHUP took it already
                os.kill(driver, signal.SIGKILL)
    assert proc.returncode == EXIT_NO_KERNEL
    assert k.socket in one_line(err)
