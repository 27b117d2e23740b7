"""The kernel's tables that a client can make grow, each at its bound (in process: the tables alone)."""

from __future__ import annotations

import types

import pytest

from llmos.kernel import principals as principals_mod
from llmos.kernel import quotas as quotas_mod
from llmos.kernel import process as process_mod
from llmos.kernel.config import Settings
from llmos.kernel.process import CallContext
from llmos.kernel.errors import SyscallError
from llmos.kernel.principals import PrincipalError, PrincipalTable
from llmos.kernel.process import ProcessTable
from llmos.kernel.quotas import Quotas
from llmos.kernel.syscalls.process import sys_hello

CAPS = ("ps", "mem", "admin")


@pytest.fixture
def table(tmp_path):
    t = PrincipalTable(tmp_path, CAPS, ("ps", "mem"))
    t.load()
    return t


def test_connections_remembered_after_exit_are_bounded_oldest_first(monkeypatch):
    monkeypatch.setattr(process_mod, "MAX_CEILINGS", 3)
    procs = ProcessTable()
    for i in range(5):
        procs.lower_ceiling(bytes([i]), frozenset({"ps"}))
    assert [procs.ceiling(bytes([i])) for i in range(5)] == [None, None] + [frozenset({"ps"})] * 3


def test_the_user_table_is_bounded(table, monkeypatch):
    monkeypatch.setattr(principals_mod, "MAX_USERS", 2)
    table.add("alice", None, {}, "tcp://h:1")
    table.add("bob", None, {}, "tcp://h:1")
    with pytest.raises(PrincipalError, match="limit"):
        table.add("carol", None, {}, "tcp://h:1")


def test_the_token_rate_answers_eagain_with_retry_after_and_its_window_holds_a_minute_at_most(table, monkeypatch):
    table.add("alice", None, {"tokens_per_minute": 100}, "tcp://h:1")
    quotas = Quotas(Settings(), table)
    now = [1000.0]
    monkeypatch.setattr(quotas_mod.time, "monotonic", lambda: now[0])
    for _ in range(100):
        quotas.charge_tokens("alice", 1)
    with pytest.raises(SyscallError) as info:
        quotas.check_token_rate("alice")
    assert info.value.errno == "EAGAIN" and info.value.retry_after == pytest.approx(60.0)
    now[0] += 61
    quotas.charge_tokens("alice", 1)
    assert len(quotas._tokens["alice"]) == 1            # the minute before is gone, not kept
    quotas.check_token_rate("alice")


def _kernel(table) -> types.SimpleNamespace:
    settings = Settings()
    audit = types.SimpleNamespace(records=[])
    audit.record = lambda event, **kw: audit.records.append((event, kw))
    return types.SimpleNamespace(settings=settings, principals=table, procs=ProcessTable(), quotas=Quotas(settings, table),
                                 service_token="the-token", audit=audit)


def test_the_service_token_is_refused_from_any_connection_but_the_operators(table):
    table.add("alice", None, {}, "tcp://h:1")
    k = _kernel(table)
    args = {"name": "fake-host", "caps": None, "service_token": "the-token"}
    from_alice = CallContext(types.SimpleNamespace(connection=lambda r: b"\x00" + r), [b"a"], 1, None, "alice")
    with pytest.raises(SyscallError) as info:
        sys_hello(k, from_alice, args)
    assert info.value.errno == "EPERM" and k.audit.records[-1][0] == "denied"
    from_operator = CallContext(types.SimpleNamespace(connection=lambda r: b"\x01" + r), [b"o"], 1, None, "operator")
    assert sys_hello(k, from_operator, args)["principal"] == "services"
