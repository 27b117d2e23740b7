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


# -- every argument bounded where it is declared (issue 25, item 1) ------------------------------

NUMERIC, SIZED_TEXT, SIZED_ITEMS = {"int", "float"}, {"str", "bytes"}, {"list", "map"}
ALL_ARGS = [(name, arg) for name, s in SYSCALLS.items() for arg in s.args.values()]


def unbounded(arg) -> list[str]:
    """What a declaration leaves unbounded: a number without min or max, a string without max_len
    (choices bound one too), a list or map without max_items."""
    types, missing = set(arg.types), []
    if types & NUMERIC and (arg.min is None or arg.max is None):
        missing.append("min and max")
    if types & SIZED_TEXT and arg.max_len is None and arg.choices is None:
        missing.append("max_len")
    if types & SIZED_ITEMS and arg.max_items is None:
        missing.append("max_items")
    return missing


@pytest.mark.parametrize("name, arg", ALL_ARGS, ids=[f"{n}.{a.name}" for n, a in ALL_ARGS])
def test_every_argument_of_the_table_has_both_bounds_or_a_length(name, arg):
    assert not unbounded(arg), f"{name}.{arg.name} lacks {', '.join(unbounded(arg))}"


@pytest.mark.parametrize("call, arg, key", [("infer", "top_k", "max"), ("infer", "seed", "min"),
                                            ("infer", "prompt", "max_len"), ("embed", "input", "max_items"),
                                            ("svc_call", "args", "max_items")])
def test_a_table_leaving_an_argument_unbounded_is_refused_when_it_loads(monkeypatch, call, arg, key):
    with pytest.raises(abi.SchemaError, match=f"{call} argument '{arg}'.*{key}"):
        load_broken_table(monkeypatch, lambda table: table["syscalls"][call]["args"][arg].pop(key))


def test_a_table_whose_default_breaks_its_own_bounds_is_refused(monkeypatch):
    with pytest.raises(abi.SchemaError, match="max_tokens.*default"):
        load_broken_table(monkeypatch, lambda table: table["syscalls"]["infer"]["args"]["max_tokens"].update(max=8))


def test_a_table_whose_minimum_passes_its_maximum_is_refused(monkeypatch):
    with pytest.raises(abi.SchemaError, match="priority.*min"):
        load_broken_table(monkeypatch, lambda table: table["syscalls"]["infer"]["args"]["priority"].update(min=11))


FLOATS = [(name, arg) for name, arg in ALL_ARGS if "float" in arg.types]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name, arg", FLOATS, ids=[f"{n}.{a.name}" for n, a in FLOATS])
def test_no_float_argument_takes_nan_or_an_infinity(name, arg, value):
    with pytest.raises(ArgError, match=f"'{arg.name}' must be finite"):
        arg.check(name, value)


def test_a_list_past_max_items_or_with_an_item_past_max_len_is_refused_naming_it():
    stop = SYSCALLS["infer"].args["stop"]
    with pytest.raises(ArgError, match=f"'stop' has more than {stop.max_items} items"):
        SYSCALLS["infer"].validate({"prompt": "x", "stop": ["s"] * (stop.max_items + 1)})
    with pytest.raises(ArgError, match=r"'stop'\[1\] is longer than"):
        SYSCALLS["infer"].validate({"prompt": "x", "stop": ["s", "s" * (stop.max_len + 1)]})
    quotas = SYSCALLS["user_add"].args["quotas"]
    with pytest.raises(ArgError, match=f"'quotas' has more than {quotas.max_items} entries"):
        SYSCALLS["user_add"].validate({"name": "x", "quotas": {str(i): 0 for i in range(quotas.max_items + 1)}})
    assert SYSCALLS["infer"].validate({"prompt": "x", "stop": ["s"] * stop.max_items})["stop"]


def test_integers_past_int64_are_refused_wherever_the_kernel_keys_by_them():
    for call, arg in [("cancel", "id"), ("free", "handle"), ("kill", "pid"), ("infer", "seed"), ("infer", "top_k")]:
        with pytest.raises(ArgError, match=f"'{arg}' must be <="):
            SYSCALLS[call].args[arg].check(call, 2**63)
