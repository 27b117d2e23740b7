"""The client's methods are the syscall table's: same names, parameters, defaults and order.

The frames a method sends are checked on a client whose `_call` records them instead of sending;
tests/test_syscalls.py runs the same methods against a real kernel.
"""

import inspect

import pytest

from llmos.specs import SYSCALLS
from llmos.userland import AsyncClient, Client
from llmos.userland.methods import CONNECTION_CALLS, STREAM_NAMES

CALLS = sorted(set(SYSCALLS) - CONNECTION_CALLS)


def table_parameters(name: str) -> list[tuple]:
    return [(a.name, inspect.Parameter.empty if a.required else a.default)
            for a in SYSCALLS[name].args.values() if a.name != "stream"]


def method_parameters(method) -> list[tuple]:
    return [(p.name, p.default) for p in inspect.signature(method).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("cls", [AsyncClient, Client])
@pytest.mark.parametrize("name", CALLS)
def test_every_syscall_is_a_method_taking_the_tables_arguments_defaults_and_order(cls, name):
    assert method_parameters(getattr(cls, name)) == table_parameters(name)


@pytest.mark.parametrize("cls", [AsyncClient, Client])
@pytest.mark.parametrize("name", sorted(STREAM_NAMES))
def test_every_streaming_syscall_has_a_stream_method_taking_the_same_arguments(cls, name):
    assert SYSCALLS[name].stream
    assert method_parameters(getattr(cls, STREAM_NAMES[name])) == table_parameters(name)


def test_a_method_documents_its_syscall():
    assert SYSCALLS["memsearch"].doc in Client.memsearch.__doc__
    assert "ENOENT" in Client.memsearch.__doc__


class Recording(AsyncClient):
    """An AsyncClient that records the calls it would send and answers each with `reply`."""

    def __init__(self, reply=None):
        super().__init__(socket="ipc:///nowhere", name="recording", timeout=60.0)
        self.sent: list[tuple] = []
        self.reply = reply if reply is not None else {}

    async def _call(self, call, args, timeout):
        self.sent.append((call, args, timeout))
        return self.reply


async def test_positional_arguments_are_sent_under_the_tables_names():
    c = Recording()
    await c.memwrite("notes", "todo", "buy milk")
    await c.svc_call("kb", "ask", {"kb": "docs"})
    assert c.sent == [("memwrite", {"region": "notes", "key": "todo", "value": "buy milk"}, 60.0),
                      ("svc_call", {"service": "kb", "task": "ask", "args": {"kb": "docs"}}, None)]


async def test_calls_that_wait_on_a_model_have_no_timeout_and_others_the_clients():
    c = Recording()
    await c.infer(prompt="hi")
    await c.memwrite("notes", "k", "v", embed=True)
    await c.memread("notes", "k")
    assert [timeout for _, _, timeout in c.sent] == [None, None, 60.0]


async def test_an_argument_the_table_does_not_have_is_a_type_error_and_nothing_is_sent():
    c = Recording()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        await c.infer(prompt="hi", colour="red")
    with pytest.raises(TypeError, match="missing required argument"):
        await c.memwrite("notes", "k")
    assert c.sent == []


async def test_ps_returns_the_process_list_itself():
    c = Recording(reply={"processes": [{"pid": 1}]})
    assert await c.ps() == [{"pid": 1}]
