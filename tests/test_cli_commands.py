"""The `llmos` commands added for issues 8 and 9: embed, logs, audit, user, the global --key, and
svc call / svc list showing everything they are given.

Every test runs the real command in a subprocess against a real kernel.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import uuid

import pytest

from llmos.specs import auditlog
from llmos.userland.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NO_KERNEL
from llmos.userland.testing import LLMOS_COMMAND, KernelProcess, wait_until

ONLY_BUILT_INS = {"LLMOS_PLUGINS": ""}


class Follower:
    """`llmos ARGS...` left running (--follow); `lines` fills as it prints, stop() sends Ctrl-C."""

    def __init__(self, kernel: KernelProcess, *args: str):
        self.proc = subprocess.Popen([*LLMOS_COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=kernel.cli_env(**ONLY_BUILT_INS))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def shows(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def shows_new_processes(self, kernel: KernelProcess) -> bool:
        """Whether it prints a process that connects after it started: new ones connect until one shows
        (it printed none of the lines from before it opened the file: -n 0)."""
        prefix = f"probe-{uuid.uuid4().hex[:8]}"
        return wait_until(lambda: a_process_named(kernel, prefix) and self.shows(prefix), timeout=30, interval=0.3)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self._reader.join(10)
        return code


def a_process_named(kernel: KernelProcess, prefix: str) -> str:
    """Connect and leave as a program of a fresh name, so the kernel logs and audits it; the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kernel.client(name).close()
    return name


@pytest.fixture(scope="module")
def services_up(kernel):
    with kernel.client("cli-svc-wait") as c:
        assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60)


# -- embed -----------------------------------------------------------------------------------------

def test_embed_prints_the_dimensions_and_the_first_values_of_each_vector(kernel):
    r = kernel.cli("embed", "hello", "a second text")
    assert r.returncode == 0, r.stderr
    header, *vectors = r.stdout.splitlines()
    assert header.endswith(": 2 vectors of 384 dimensions")
    assert len(vectors) == 2 and vectors[1].startswith("[") and vectors[1].endswith("a second text")


def test_embed_json_prints_every_value(kernel):
    r = kernel.cli("embed", "hello", "--json")
    result = json.loads(r.stdout)
    assert result["dim"] == 384 and len(result["vectors"][0]) == 384


# -- logs and audit --------------------------------------------------------------------------------

def test_logs_prints_the_running_kernels_log_from_its_state_dir(kernel):
    r = kernel.cli("logs")
    assert r.returncode == 0, r.stderr
    first = (kernel.state_dir / "kernel.log").read_text().splitlines()[0]
    assert r.stdout.splitlines()[0] == first


@pytest.mark.parametrize("command", ["logs", "audit"])
def test_follow_prints_what_the_kernel_writes_after_it_started(kernel, command):
    follower = Follower(kernel, command, "--follow", "-n", "0")
    try:
        assert follower.shows_new_processes(kernel)
    finally:
        assert follower.stop() == EXIT_INTERRUPTED


def test_audit_lists_the_kernels_audit_log_readably(kernel):
    name = a_process_named(kernel, "audit-probe")
    r = kernel.cli("audit")
    assert r.returncode == 0, r.stderr
    assert any(" hello " in line and f"program={name}" in line for line in r.stdout.splitlines())


def test_audit_verify_counts_the_lines_of_an_intact_chain(kernel):
    r = kernel.cli("audit", "--verify")
    assert r.returncode == 0, r.stderr
    count, rest = r.stdout.split(" ", 1)
    assert int(count) >= 1 and rest == "lines, chain intact\n"


def test_audit_verify_names_the_first_changed_line_and_exits_1(kernel, tmp_path):
    for path in auditlog.files(kernel.state_dir):
        shutil.copy(path, tmp_path / path.name)
    log = tmp_path / auditlog.FILE_NAME
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"event":"', '"event":"x', 1)
    log.write_text("\n".join(lines) + "\n")
    r = kernel.cli("audit", "--verify", "--state-dir", str(tmp_path))
    assert r.returncode == EXIT_FAILED
    assert r.stderr.startswith(f"llmos audit: EBADMSG: {auditlog.FILE_NAME}:3: the chain is broken")


def test_audit_of_a_state_dir_that_is_not_there_is_one_line_enoent(kernel, tmp_path):
    r = kernel.cli("audit", "--state-dir", str(tmp_path / "nowhere"))
    assert r.returncode == EXIT_FAILED
    assert r.stderr == f"llmos audit: ENOENT: no state dir at {tmp_path / 'nowhere'} (on this machine)\n"

# -- users and keys --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory):
    k = KernelProcess(tmp_path_factory.mktemp("cli-tcp-kernel"), tcp=True, env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


def added_user(tcp_kernel, *options: str) -> tuple[str, str, str]:
    """`llmos user add` of a fresh name: (name, key file, the line it says to run)."""
    name = f"u{uuid.uuid4().hex[:8]}"
    r = tcp_kernel.cli("user", "add", name, *options)
    assert r.returncode == 0, r.stderr
    key_file = r.stdout.split("key file: ", 1)[1].split()[0]
    use = r.stdout.split("use it:", 1)[1].strip()
    return name, key_file, use


def test_user_add_prints_the_key_file_and_the_line_that_uses_it(tcp_kernel):
    name, key_file, use = added_user(tcp_kernel, "--caps", "ps,mem", "--quota", "requests=4",
                                     "--quota", "mem_bytes=1MiB")
    assert use == f"LLMOS_KEY={key_file} llmos --socket {tcp_kernel.socket} ps"
    listed = tcp_kernel.cli("user", "ls").stdout
    assert any(line.split()[:2] == [name, "mem,ps"] and "mem_bytes=1048576" in line and "requests=4" in line
               for line in listed.splitlines())


def test_the_global_key_option_connects_as_that_user_over_tcp(tcp_kernel):
    name, key_file, _ = added_user(tcp_kernel, "--caps", "ps")
    r = tcp_kernel.cli("--socket", tcp_kernel.socket, "--key", key_file, "ps")
    assert r.returncode == 0, r.stderr
    assert "llmos-ps" in r.stdout


def test_llmos_key_in_the_environment_connects_as_that_user_over_tcp(tcp_kernel):
    _, key_file, _ = added_user(tcp_kernel, "--caps", "ps")
    r = tcp_kernel.cli("--socket", tcp_kernel.socket, "ps", env={"LLMOS_KEY": key_file})
    assert r.returncode == 0 and "llmos-ps" in r.stdout


def test_tcp_without_a_key_is_one_line_saying_to_pass_one(tcp_kernel):
    r = tcp_kernel.cli("--socket", tcp_kernel.socket, "ps")
    assert r.returncode == EXIT_NO_KERNEL
    assert len(r.stderr.splitlines()) == 1 and "--key" in r.stderr


def test_user_rotate_writes_a_new_key_that_connects(tcp_kernel):
    name, key_file, _ = added_user(tcp_kernel)
    old_key = open(key_file).read()
    r = tcp_kernel.cli("user", "rotate", name)
    assert r.returncode == 0 and f"user {name}: new key" in r.stdout
    assert open(key_file).read() != old_key
    assert tcp_kernel.cli("--socket", tcp_kernel.socket, "--key", key_file, "ps").returncode == 0


def test_user_rm_removes_the_user(tcp_kernel):
    name, _, _ = added_user(tcp_kernel)
    r = tcp_kernel.cli("user", "rm", name)
    assert r.returncode == 0 and r.stdout.startswith(f"removed {name}")
    assert name not in tcp_kernel.cli("user", "ls").stdout
    assert tcp_kernel.cli("user", "rm", name).stderr.startswith("llmos user: EINVAL: ")


# -- services --------------------------------------------------------------------------------------

def test_svc_call_stream_prints_the_streamed_text_then_every_other_field(kernel, services_up):
    text = "The kernel owns the devices. Drivers talk to devices. Programs make syscalls to the kernel."
    r = kernel.cli("svc", "call", "summarize", "text", "--arg", f"text={text}", "--arg", "style=one_line",
                   "--stream", env=ONLY_BUILT_INS)
    assert r.returncode == 0, r.stderr
    streamed, *fields = r.stdout.splitlines()
    assert streamed and not streamed.startswith(("style:", "text:"))
    assert {"style: one_line", "fallback: false", "mode: extractive"} <= set(fields)
    assert not any(line.startswith("text: ") for line in fields)      # the text was streamed, not repeated


def test_svc_list_prints_each_description_whole(kernel, services_up):
    with kernel.client("cli-svc-list") as c:
        longest = max((t["description"] for s in c.svc_list()["services"] for t in s["tasks"]), key=len)
    assert len(longest) > 70
    assert longest in kernel.cli("svc", "list", env=ONLY_BUILT_INS).stdout



def test_llmos_stop_shuts_the_kernel_down_and_is_audited(fresh_kernel):
    k = fresh_kernel(model=None, env={"LLMOS_NO_SERVICES": "1"})
    out = k.cli("stop", "--reason", "maintenance")
    assert out.returncode == 0 and "stopping" in out.stdout
    assert k.proc.wait(60) == 0
    audit = (k.state_dir / "audit.log").read_text()
    assert '"event":"shutdown_requested"' in audit and "maintenance" in audit


def test_run_says_which_model_it_waits_for_when_the_model_is_not_loaded(fresh_kernel, tiny_llama, tmp_path):
    config = tmp_path / "models.toml"
    config.write_text(f'[models.tiny]\npath = "{tiny_llama}"\n')
    k = fresh_kernel(model=None, extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"})
    out = k.cli("run", "--model", "tiny", "--max-tokens", "3", "-q", "hi")
    assert out.returncode == 0, out.stderr
    assert "[loading model tiny" in out.stderr
    again = k.cli("run", "--model", "tiny", "--max-tokens", "3", "-q", "hi")
    assert "loading model" not in again.stderr and "waiting for model" not in again.stderr


def test_load_quant_int8_says_so_and_models_shows_the_quant_column(fresh_kernel, tiny_llama):
    k = fresh_kernel(model=None, env={"LLMOS_NO_SERVICES": "1"})
    out = k.cli("load", tiny_llama, "--quant", "int8")
    assert out.returncode == 0, out.stderr
    assert " int8, loaded in" in out.stdout
    listing = k.cli("models").stdout.splitlines()
    assert "QUANT" in listing[0] and any(tiny_llama in line and " int8 " in line for line in listing[1:])
