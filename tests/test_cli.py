"""The `llmos` command against a real kernel, and the subcommands plugins register through the hook.

Commands run in-process through `main([...])`, as the `llmos` entry point runs them; the
environment lets the command load the built-in plugins only, never what is installed here.
"""

import io
import subprocess
import sys
import uuid

import click
import pytest
from click.testing import CliRunner

from llmos.services import hookimpl, plugins
from llmos.userland.cli import connect, main
from llmos.userland.cli.app import make_cli
from llmos.userland.cli.plugins import add_commands
from llmos.userland.testing import wait_until


@pytest.fixture(autouse=True)
def only_built_in_plugins(monkeypatch):
    monkeypatch.setenv("LLMOS_PLUGINS", "")
    monkeypatch.delenv("LLMOS_PLUGIN_MODULES", raising=False)
    monkeypatch.delenv("LLMOS_SERVICES_PATH", raising=False)


@pytest.fixture
def llmos(kernel, capsys):
    """Run `llmos --socket KERNEL ARGS...`: (exit status, stdout, stderr)."""

    def run(*args: str, stdin: str | None = None):
        if stdin is not None:
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
        try:
            status = main(["--socket", kernel.socket, *args])
        finally:
            sys.stdin = sys.__stdin__
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def owner() -> str:
    """A program name of the test's own, so its memory regions are its own."""
    return f"cli-{uuid.uuid4().hex[:8]}"


# -- built-in commands ---------------------------------------------------------------------------

def test_ps_lists_the_commands_own_process(llmos):
    status, out, _ = llmos("ps")
    assert status == 0
    assert out.splitlines()[0].split() == ["PID", "NAME", "AGE", "REQS", "TOKENS", "RESERVED"]
    assert "llmos-ps" in out


def test_run_streams_the_answer_and_says_how_fast_on_stderr(llmos):
    status, out, err = llmos("run", "Hello", "--max-tokens", "3", "--temperature", "0")
    assert status == 0 and out.endswith("\n")
    assert "tokens in" in err and "finish: " in err


def test_run_quiet_prints_no_stats_line(llmos):
    status, _, err = llmos("run", "Hello", "--max-tokens", "2", "-q")
    assert status == 0 and "tokens in" not in err


def test_chat_answers_each_line_until_quit(llmos):
    status, out, _ = llmos("chat", "--max-tokens", "2", stdin="hello\nand again\n/quit\nnever read\n")
    assert status == 0
    assert out.count("> ") == 3      # two lines answered, then /quit ends the chat


def test_mem_get_prints_what_mem_put_wrote(llmos, owner):
    assert llmos("mem", "--owner", owner, "put", "notes", "todo", "buy milk")[0] == 0
    assert llmos("mem", "--owner", owner, "get", "notes", "todo")[1] == "buy milk\n"


def test_mem_put_dash_reads_the_value_from_stdin(llmos, owner):
    status, out, _ = llmos("mem", "--owner", owner, "put", "notes", "todo", "-", stdin="from a pipe")
    assert status == 0 and out.startswith("notes/todo: 11 bytes")
    assert llmos("mem", "--owner", owner, "get", "notes", "todo")[1] == "from a pipe\n"


def test_mem_ls_lists_the_keys_with_the_prefix(llmos, owner):
    for key in ("a1", "a2", "b1"):
        llmos("mem", "--owner", owner, "put", "notes", key, "x")
    assert llmos("mem", "--owner", owner, "ls", "notes", "--prefix", "a")[1].split() == ["a1", "a2"]


def test_mem_rm_deletes_the_key(llmos, owner):
    llmos("mem", "--owner", owner, "put", "notes", "todo", "x")
    assert llmos("mem", "--owner", owner, "rm", "notes", "todo")[1] == "deleted 1 from notes\n"
    status, _, err = llmos("mem", "--owner", owner, "get", "notes", "todo")
    assert status == 1 and err.startswith("llmos mem: ENOENT:")


def test_kill_reaps_the_process(llmos, kernel):
    with kernel.client("cli-victim") as victim:
        status, out, _ = llmos("kill", str(victim.pid))
        assert status == 0 and out == f"killed {victim.pid}\n"
        with kernel.client("cli-watcher") as watcher:
            assert victim.pid not in {p["pid"] for p in watcher.ps()}


def test_svc_call_parses_json_values_and_prints_the_text(llmos, kernel):
    with kernel.client("cli-svc-wait") as c:
        assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60)
    status, out, _ = llmos("svc", "call", "redact", "text", "--arg", "text=write to ann@example.com",
                           "--arg", 'types=["EMAIL"]')
    assert status == 0 and out.splitlines()[0] == "write to [EMAIL_1]"
    assert 'counts: {"EMAIL": 1}' in out.splitlines()      # types=["EMAIL"] arrived as a list


def test_svc_call_with_an_arg_that_is_not_key_value_is_a_usage_error(tmp_path, capsys):
    assert main(["--socket", f"ipc://{tmp_path}/nobody.sock", "svc", "call", "redact", "text", "--arg", "text"]) == 2
    assert "wants key=value" in capsys.readouterr().err


def test_boot_hands_its_flags_to_the_kernel():
    r = subprocess.run([sys.executable, "-m", "llmos.userland.cli", "boot", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--kv-cache" in r.stdout


def test_the_command_imports_neither_torch_nor_the_kernel():
    code = ("import sys; from llmos.userland.cli import main; main(['--help']); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('llmos.kernel', 'llmos.drivers'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "[]"


# -- commands from plugins -----------------------------------------------------------------------

def test_the_built_in_services_register_their_commands_through_the_hook(llmos):
    _, out, err = llmos("--help")
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert {"summarize", "support"} <= listed and err == ""


@click.command("hello-kernel", help="ping the kernel")
def hello_kernel():
    with connect("cli-plugin") as c:
        click.echo(f"pong {c.ping('hi')['payload']}")


class Greeter:
    @hookimpl
    def register_commands(self, register):
        register(hello_kernel)


class Broken:
    @hookimpl
    def register_commands(self, register):
        raise RuntimeError("this plugin is broken")


class Squatter:
    @hookimpl
    def register_commands(self, register):
        register(click.Command("ps", callback=lambda: click.echo("not the real ps")))


def cli_with(*fakes):
    """A root command whose plugin commands come from `fakes`, registered on a real plugin manager."""
    pm = plugins.plugin_manager()
    for fake in fakes:
        pm.register(fake, name=type(fake).__name__)
    return pm, make_cli(lambda group: add_commands(group, pm))


def test_a_command_a_plugin_registers_is_listed_and_runs_against_the_kernel(kernel):
    pm, cli = cli_with(Greeter())
    try:
        assert "hello-kernel" in CliRunner().invoke(cli, ["--help"]).output
        result = CliRunner().invoke(cli, ["--socket", kernel.socket, "hello-kernel"])
        assert result.exit_code == 0 and result.output == "pong hi\n"
    finally:
        pm.unregister(name="Greeter")


def test_a_plugin_whose_registration_fails_is_reported_and_the_others_still_register():
    pm, cli = cli_with(Broken(), Greeter())
    try:
        result = CliRunner().invoke(cli, ["--help"])
        assert result.exit_code == 0 and "hello-kernel" in result.stdout
        assert "plugin Broken" in result.stderr and "this plugin is broken" in result.stderr
    finally:
        pm.unregister(name="Broken")
        pm.unregister(name="Greeter")


def test_a_plugin_cannot_take_a_built_in_commands_name():
    pm, cli = cli_with(Squatter())
    try:
        listing = CliRunner().invoke(cli, ["--help"])
        assert "command 'ps' is already registered by llmos" in listing.stderr
        assert "list processes" in CliRunner().invoke(cli, ["ps", "--help"]).stdout
    finally:
        pm.unregister(name="Squatter")
