"""What one principal's programs can see and take of another's: nothing, and not more than a quota."""

from __future__ import annotations

import pytest

from harness import errno_of, raised
from llmos.userland import Client


@pytest.fixture
def alice_and_bob(tcp_kernel, make_user):
    """Two users' programs, both named "app": a name is a label, so it gives neither the other's rights."""
    (alice, alice_key), (bob, bob_key) = make_user(), make_user()
    with tcp_kernel.client("app", key=alice_key) as a, tcp_kernel.client("app", key=bob_key) as b:
        assert (a.info["principal"], b.info["principal"]) == (alice, bob)
        yield a, b


def test_two_users_regions_of_one_name_are_two_regions(alice_and_bob):
    alice, bob = alice_and_bob
    alice.memwrite("notes", "k", "alice's secret")
    assert errno_of(bob.memread, "notes", "k") == "ENOENT"
    bob.memwrite("notes", "k", "bob's")
    assert alice.memread("notes", "k")["value"] == "alice's secret"
    assert bob.memread("notes", "k")["value"] == "bob's"


def test_another_users_region_is_not_found_not_forbidden(alice_and_bob):
    alice, bob = alice_and_bob
    alice.memwrite("private", "k", "v")
    for call in (lambda: bob.memread("private", "k"), lambda: bob.memread("private"),
                 lambda: bob.memdel("private", "k"), lambda: bob.memread("never-made", "k")):
        error = raised(call)
        assert error.errno == "ENOENT" and alice.info["principal"] not in error.message


def test_ps_shows_a_user_only_its_own_processes(tcp_kernel, operator, make_user):
    alice, alice_key = make_user(caps=["ps"])
    bob, bob_key = make_user(caps=["ps"])
    with tcp_kernel.client("a-app", key=alice_key) as a, tcp_kernel.client("b-app", key=bob_key) as b:
        assert {p["principal"] for p in a.ps()} == {alice}
        assert {p["name"] for p in b.ps()} == {"b-app"}
        everyone = {p["principal"] for p in operator.ps()}
        assert {alice, bob, "operator"} <= everyone


def test_a_users_processes_are_bounded_by_its_quota(tcp_kernel, make_user):
    _, key = make_user(quotas={"processes": 2})
    first, second = tcp_kernel.client("p1", key=key), tcp_kernel.client("p2", key=key)
    try:
        error = raised(Client, socket=tcp_kernel.socket, name="p3", key=key)
        assert error.errno == "EDQUOT" and "processes" in error.message
    finally:
        first.close()
        second.close()
    with tcp_kernel.client("p3", key=key):     # the quota frees as processes exit
        pass


def test_a_users_memory_is_bounded_by_its_quota_and_memdel_gives_it_back(tcp_kernel, make_user):
    _, key = make_user(quotas={"mem_bytes": 1000, "mem_keys": 3})
    with tcp_kernel.client("m", key=key) as c:
        c.memwrite("r", "a", "x" * 600)
        assert errno_of(c.memwrite, "r", "b", "x" * 600) == "EDQUOT"
        assert errno_of(c.memread, "r", "b") == "ENOENT"          # nothing was written
        c.memwrite("r", "a", "x" * 900)                          # replacing a value counts the difference
        c.memdel("r", "a")
        c.memwrite("r", "b", "x" * 900)
        c.memwrite("r", "c", "1")
        c.memwrite("r", "d", "2")
        assert errno_of(c.memwrite, "r", "e", "3") == "EDQUOT"  # the fourth key


def test_requests_in_flight_are_bounded_per_principal_across_its_connections(fresh_kernel, tmp_path):
    config = tmp_path / "quotas.toml"
    config.write_text("[quotas.operator]\nrequests = 2\n")
    k = fresh_kernel(extra=["--config", str(config)])
    with k.client("one") as c1, k.client("two") as c2, k.client("three") as c3:
        first = c1.stream(prompt="Tell me a long story.", max_tokens=4000, temperature=0.0)
        second = c2.stream(prompt="Tell me another story.", max_tokens=4000, temperature=0.0)
        next(iter(first)), next(iter(second))                   # both are generating
        error = raised(c3.infer, prompt="hi", max_tokens=2)
        assert error.errno == "EDQUOT" and "requests" in error.message
        first.cancel()
        assert errno_of(list, first) == "ECANCELED"
        assert c3.infer(prompt="hi", max_tokens=2)["usage"]["completion_tokens"] == 2   # the cancel gave its slot back
        second.cancel()


def test_the_service_host_cannot_be_killed(kernel):
    with kernel.client("killer", caps=["admin", "ps"]) as c:
        host = next(p for p in c.ps() if p["name"] == "llmos-services")
        error = raised(c.kill, host["pid"])
        assert error.errno == "EPERM" and "svc_reload" in error.message
        assert any(p["pid"] == host["pid"] for p in c.ps())
