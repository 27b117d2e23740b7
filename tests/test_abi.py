"""The ABI's three derived forms (kernel handlers, client methods, rendered reference) agree with the table."""

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmos.kernel.syscalls import HANDLERS
from llmos.specs import ABI_VERSION, SYSCALLS, ArgError, abi
from llmos.specs.abi import render_markdown
from llmos.userland import AsyncClient

SPECS = Path(__file__).resolve().parent.parent / "specs"
CLIENT_NAMES = {"hello": None, "exit": None}   # done by connect() and close()


def test_rendered_reference_is_up_to_date():
    assert (SPECS / "syscalls.md").read_text() == render_markdown(), \
        "specs/syscalls.md is stale: run python -m llmos.specs render"


def test_every_syscall_in_the_table_has_a_kernel_handler_and_nothing_else_does():
    assert set(HANDLERS) == set(SYSCALLS)


@pytest.mark.parametrize("name", sorted(SYSCALLS))
def test_every_syscall_has_a_client_method_taking_its_arguments(name):
    if name in CLIENT_NAMES:
        return
    method = getattr(AsyncClient, name)
    params = set(inspect.signature(method).parameters) - {"self"}
    wanted = set(SYSCALLS[name].args) - {"stream"}
    assert params == wanted, f"AsyncClient.{name} takes {sorted(params)}, the table says {sorted(wanted)}"


def load_broken_table(monkeypatch, breakage) -> dict:
    """abi.py's own loader, run on syscalls.toml as parsed and then broken by `breakage`."""
    table = abi.tomllib.loads((SPECS / "syscalls.toml").read_text())
    breakage(table)
    monkeypatch.setattr(abi, "tomllib", SimpleNamespace(loads=lambda text: table))
    return abi._load()


def test_a_table_listing_an_errno_protocol_py_does_not_know_is_refused(monkeypatch):
    def typo(table):
        table["syscalls"]["infer"]["errors"]["ETIMEOUT"] = "a misspelt ETIMEDOUT"
    with pytest.raises(RuntimeError, match="infer lists unknown errno ETIMEOUT"):
        load_broken_table(monkeypatch, typo)


def test_a_table_of_another_abi_version_is_refused(monkeypatch):
    with pytest.raises(RuntimeError, match=f"ABI {ABI_VERSION + 1}, protocol.py says {ABI_VERSION}"):
        load_broken_table(monkeypatch, lambda table: table.update(version=ABI_VERSION + 1))


def test_every_syscall_is_documented_in_abi_md_or_the_reference():
    reference = (SPECS / "syscalls.md").read_text()
    for name in SYSCALLS:
        assert f"## {name}" in reference


def test_validation_fills_defaults_and_rejects_bad_types():
    args = SYSCALLS["infer"].validate({"prompt": "hi"})
    assert args["max_tokens"] == 256 and args["stream"] is False and args["model"] is None
    with pytest.raises(ArgError, match="max_tokens"):
        SYSCALLS["infer"].validate({"prompt": "hi", "max_tokens": "many"})
    with pytest.raises(ArgError, match="unknown argument"):
        SYSCALLS["ping"].validate({"nonsense": 1})
    with pytest.raises(ArgError, match="missing required"):
        SYSCALLS["load_model"].validate({})
    with pytest.raises(ArgError, match=">= 1"):
        SYSCALLS["infer"].validate({"prompt": "hi", "max_tokens": 0})


def test_bools_are_not_ints_and_ints_are_floats():
    with pytest.raises(ArgError):
        SYSCALLS["kill"].validate({"pid": True})
    assert SYSCALLS["infer"].validate({"prompt": "x", "temperature": 1})["temperature"] == 1.0
