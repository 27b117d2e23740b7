"""`stats` shows a user only its own principal's processes; the operator (admin) sees every one; a
refused key is counted, and nothing of it but the count is shown."""

from __future__ import annotations

import pytest
import zmq

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
