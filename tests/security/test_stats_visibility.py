"""`stats` shows a user only its own principal's figures (processes, calls, tokens, latency, throughput);
the operator (admin) sees every one; a refused key is counted, and nothing of it but the count is shown."""

from __future__ import annotations

import pytest
import zmq

from harness import raised
from llmos.specs.keys import KERNEL_KEY_META, read_key_file, write_key_file
from llmos.userland import Client, KernelUnavailable


@pytest.fixture
def two_users(tcp_kernel, make_user):
    """Two users, each with one connected program: ((name, client), (name, client))."""
    a, a_key = make_user()
    b, b_key = make_user()
    with tcp_kernel.client("prog-a", key=a_key) as ca, tcp_kernel.client("prog-b", key=b_key) as cb:
        yield (a, ca), (b, cb)


def test_a_user_sees_only_its_own_principals_processes(two_users):
    (a, ca), (b, cb) = two_users
    seen = ca.stats()["processes"]
    assert {p["principal"] for p in seen} == {a}
    assert ca.info["pid"] in {p["pid"] for p in seen}
    assert cb.info["pid"] not in {p["pid"] for p in seen}


def test_the_operator_sees_every_process(two_users, operator):
    (a, ca), (b, cb) = two_users
    seen = {p["pid"]: p["principal"] for p in operator.stats()["processes"]}
    assert seen[ca.info["pid"]] == a and seen[cb.info["pid"]] == b
    assert seen[operator.info["pid"]] == "operator"


def test_a_refused_key_is_counted_as_an_auth_failure(tcp_kernel, operator, tmp_path):
    public, secret = (k.decode() for k in zmq.curve_keypair())
    kernel_key = read_key_file(tcp_kernel.state_dir / "keys" / "kernel.key")["public-key"]
    forged = write_key_file(tmp_path / "forged.key_secret", public, secret,
                            {KERNEL_KEY_META: kernel_key, "socket": tcp_kernel.socket})
    before = operator.stats()["auth_failures"]
    with pytest.raises(KernelUnavailable):
        Client(socket=tcp_kernel.socket, name="forger", key=str(forged))
    assert operator.stats()["auth_failures"] > before      # ZeroMQ retries: one or more per attempt


def test_a_users_syscall_counts_are_its_own_principals(two_users, operator):
    (a, ca), (b, cb) = two_users
    for _ in range(3):
        ca.devices()
    raised(ca.memread, "nowhere", "nothing")
    theirs = cb.stats()["requests"]
    assert "devices" not in theirs["by_syscall"] and "memread" not in theirs["by_syscall"]
    assert theirs["by_syscall"]["hello"]["ok"] >= 1                  # its own calls are there
    assert theirs["total"] == sum(row["ok"] + sum(row["errors"].values()) for row in theirs["by_syscall"].values())
    own = ca.stats()["requests"]["by_syscall"]
    assert own["devices"]["ok"] == 3 and own["memread"]["errors"] == {"ENOENT": 1}
    assert operator.stats()["requests"]["by_syscall"]["devices"]["ok"] >= 3     # the operator sees every one


@pytest.fixture(scope="module")
def generating_users(tcp_model_kernel):
    """alice and bob on a kernel that generates: (alice's client, bob's client, the operator's client)."""
    with tcp_model_kernel.client("console", caps=["admin", "ps"]) as op:
        keys = [op.user_add(name)["key_file"] for name in ("alice", "bob")]
        with tcp_model_kernel.client("a", key=keys[0]) as ca, tcp_model_kernel.client("b", key=keys[1]) as cb:
            yield ca, cb, op
        for name in ("alice", "bob"):
            op.user_remove(name)


def test_another_users_tokens_latency_and_throughput_are_not_shown(generating_users):
    alice, bob, operator = generating_users
    alice.infer(prompt="Tell me a story.", max_tokens=8, temperature=0.0)
    theirs = bob.stats()
    assert theirs["tokens"] == {"prompt": 0, "generated": 0}
    assert all(theirs["latency"][kind]["count"] == 0 for kind in ("ttft_s", "itl_s", "e2e_s"))
    assert theirs["throughput"]["tokens_per_s"] == 0
    own = alice.stats()
    assert own["tokens"]["generated"] == 8 and own["tokens"]["prompt"] > 0
    assert own["latency"]["e2e_s"]["count"] == 1 and own["throughput"]["tokens_per_s"] > 0
    assert operator.stats()["tokens"]["generated"] >= 8


def test_a_principals_own_figures_are_bounded_and_forgotten_with_its_user():
    """Kept per principal (the user table bounds them) and per syscall and errno (the table bounds those)."""
    from llmos.kernel.metrics import Metrics

    metrics = Metrics()
    for _ in range(100):
        metrics.reply("ping", "OK", "alice")
        metrics.reply(f"made-up-{_}", "ENOSYS", "alice")
    assert metrics.calls["alice"] == {("ping", "OK"): 100, ("unknown", "ENOSYS"): 100}
    metrics.forget("alice")
    assert "alice" not in metrics.calls and metrics.replies("alice")["total"] == 0
