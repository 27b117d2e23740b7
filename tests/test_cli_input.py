"""What the user hands the `llmos` command: text that is not UTF-8 is decoded with U+FFFD and a
warning, `mem put` keeps any bytes as bytes, and input too big for a frame fails before it is sent.

Every test runs the real command in a subprocess against a real kernel.
"""

from __future__ import annotations

import subprocess

import pytest

from llmos.specs.protocol import MAX_FRAME_BYTES
from llmos.userland.cli.exits import EXIT_FAILED
from llmos.userland.testing import LLMOS_COMMAND, wait_until

ONLY_BUILT_INS = {"LLMOS_PLUGINS": ""}
LATIN1 = "Le café est ouvert. Nous servons du thé et des crêpes toute la journée.".encode("latin-1")
REPLACED = "not valid UTF-8: its undecodable bytes were replaced with U+FFFD"


@pytest.fixture(scope="module")
def services_up(kernel):
    with kernel.client("cli-svc-wait") as c:
        assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60)


def llmos_bytes(kernel, *args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`llmos ARGS...` with stdout kept as bytes."""
    return subprocess.run([*LLMOS_COMMAND, *args], input=stdin, capture_output=True, timeout=120,
                          env=kernel.cli_env(**ONLY_BUILT_INS))


def test_run_of_a_prompt_that_is_not_utf8_answers_and_says_the_bytes_were_replaced(kernel):
    r = kernel.cli("run", b"caf\xe9", "--max-tokens", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("llmos run: warning: PROMPT is " + REPLACED)


def test_summarize_of_a_latin1_file_summarizes_it_and_says_the_bytes_were_replaced(kernel, services_up, tmp_path):
    (tmp_path / "latin1.txt").write_bytes(LATIN1)
    r = kernel.cli("summarize", str(tmp_path / "latin1.txt"), env=ONLY_BUILT_INS)
    assert r.returncode == 0, r.stderr
    assert "latin1.txt is " + REPLACED in r.stderr and "Le caf" in r.stdout


def test_summarize_of_latin1_on_stdin_summarizes_it_and_says_the_bytes_were_replaced(kernel, services_up):
    r = kernel.cli("summarize", "-", input=LATIN1, env=ONLY_BUILT_INS)
    assert r.returncode == 0, r.stderr
    assert "stdin is " + REPLACED in r.stderr and "Le caf" in r.stdout


def test_svc_call_with_an_arg_that_is_not_utf8_runs_the_task_and_says_so(kernel, services_up):
    r = kernel.cli("svc", "call", "redact", "text", "--arg", b"text=caf\xe9 ann@example.com", env=ONLY_BUILT_INS)
    assert r.returncode == 0, r.stderr
    assert REPLACED in r.stderr and r.stdout.splitlines()[0] == "caf\ufffd [EMAIL_1]"


def test_chat_of_a_line_that_is_not_utf8_answers_and_says_so(kernel):
    r = kernel.cli("chat", "--max-tokens", "1", input=b"caf\xe9\n")
    assert r.returncode == 0, r.stderr
    assert "the line is " + REPLACED in r.stderr and "Traceback" not in r.stderr


def test_chat_goes_on_past_an_empty_line(kernel):
    proc = subprocess.Popen([*LLMOS_COMMAND, "chat", "--max-tokens", "1", "--temperature", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=kernel.cli_env(**ONLY_BUILT_INS))
    try:
        proc.stdin.write(b"hello\n\nagain\n")
        proc.stdin.flush()
        with kernel.client("cli-watcher") as watcher:       # both lines answered, the chat still open
            assert wait_until(lambda: any(p["name"] == "llmos-chat" and p["tokens"] >= 2 for p in watcher.ps()),
                              timeout=60)
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        proc.kill()


def test_mem_put_file_stores_bytes_that_are_not_text_and_mem_get_writes_them_back(kernel, tmp_path):
    blob = bytes(range(256)) * 4
    (tmp_path / "blob.bin").write_bytes(blob)
    put = llmos_bytes(kernel, "mem", "put", "cli-bin", "file", "--file", str(tmp_path / "blob.bin"))
    assert put.returncode == 0 and b"1024 bytes (bytes)" in put.stdout
    with kernel.client("cli-reader") as c:
        assert c.memread("cli-bin", "file")["value"] == blob
    assert llmos_bytes(kernel, "mem", "get", "cli-bin", "file").stdout == blob


def test_mem_put_stdin_stores_bytes_as_bytes_and_text_as_text(kernel):
    assert llmos_bytes(kernel, "mem", "put", "cli-bin", "raw", "-", stdin=b"\xff\xfe\x00binary").returncode == 0
    assert llmos_bytes(kernel, "mem", "put", "cli-bin", "text", "-", stdin="café\n".encode()).returncode == 0
    with kernel.client("cli-reader") as c:
        assert c.memread("cli-bin", "raw")["value"] == b"\xff\xfe\x00binary"
        assert c.memread("cli-bin", "text")["value"] == "café\n"
    assert llmos_bytes(kernel, "mem", "get", "cli-bin", "text").stdout == "café\n".encode()


def test_mem_put_of_an_argument_that_is_not_utf8_stores_its_bytes(kernel):
    assert llmos_bytes(kernel, "mem", "put", "cli-bin", "arg", b"caf\xe9").returncode == 0
    with kernel.client("cli-reader") as c:
        assert c.memread("cli-bin", "arg")["value"] == b"caf\xe9"


def test_mem_put_of_stdin_over_the_frame_limit_fails_at_once_naming_the_limit(kernel):
    r = kernel.cli("mem", "put", "cli-big", "k", "-", input=b"x" * (80 << 20))
    assert r.returncode == EXIT_FAILED
    assert r.stderr.startswith("llmos mem: EINVAL: stdin holds more than ") and str(MAX_FRAME_BYTES) in r.stderr
    assert len(r.stderr.splitlines()) == 1
