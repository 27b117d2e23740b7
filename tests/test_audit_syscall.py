"""The audit syscall: an admin reads the audit log's newest lines and verifies it through the kernel."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from llmos.kernel.errors import SyscallError
from llmos.kernel.syscalls import auditread
from llmos.userland.errors import ERRORS


@pytest.fixture(scope="module")
def admin(kernel):
    with kernel.client("audit-reader", caps=["admin"]) as c:
        yield c


def test_an_admin_reads_the_newest_lines_oldest_first(admin):
    lines = admin.audit(lines=5)["lines"]
    assert len(lines) == 5
    assert [r["ts"] for r in lines] == sorted(r["ts"] for r in lines)
    assert any(r["event"] == "hello" and r.get("program") == "audit-reader" for r in admin.audit(lines=1000)["lines"])
    assert all({"ts", "event", "prev"} <= r.keys() for r in lines)


def test_no_lines_asked_is_none_answered(admin):
    assert admin.audit(lines=0) == {"lines": [], "verdict": None}


def test_verify_finds_the_chain_intact_and_is_itself_audited(admin):
    result = admin.audit(lines=1000, verify=True)
    verdict = result["verdict"]
    assert verdict["problem"] is None and verdict["lines"] > 0
    assert any(r["event"] == "audit_verify" and r["pid"] == admin.pid for r in result["lines"])


def test_verifies_at_once_each_answer_a_verdict_or_ebusy(admin, kernel):
    answers = []

    def verify():
        with kernel.client("audit-verifier", caps=["admin"]) as c:
            try:
                answers.append(c.audit(lines=0, verify=True)["verdict"]["problem"])
            except ERRORS["EBUSY"]:
                answers.append("EBUSY")

    threads = [threading.Thread(target=verify) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6 and set(answers) <= {None, "EBUSY"} and None in answers


async def test_a_verify_while_one_runs_is_ebusy(tmp_path):
    """The guard itself, on the handler: the race above is seldom lost on a small log."""
    k = SimpleNamespace(settings=SimpleNamespace(state_dir=tmp_path), audit=SimpleNamespace(record=lambda *a, **kw: None))
    ctx = SimpleNamespace(proc=SimpleNamespace(principal="operator", pid=1))
    auditread._verifying.add(id(k))
    try:
        with pytest.raises(SyscallError) as caught:
            await auditread.sys_audit(k, ctx, {"lines": 0, "verify": True})
        assert caught.value.errno == "EBUSY"
    finally:
        auditread._verifying.discard(id(k))
    assert (await auditread.sys_audit(k, ctx, {"lines": 0, "verify": True}))["verdict"]["lines"] == 0


def test_the_audit_needs_admin(kernel):
    with kernel.client("audit-peeker") as c:
        with pytest.raises(ERRORS["EPERM"]):
            c.audit()


@pytest.mark.parametrize("lines", [-1, 1001])
def test_lines_past_the_bounds_are_einval(admin, lines):
    with pytest.raises(ERRORS["EINVAL"]):
        admin.audit(lines=lines)
