"""Identity comes from the connection: keys on tcp, the operator on the private ipc socket."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from harness import errno_of, raised
from llmos.specs.keys import KERNEL_KEY_META, read_key_file, write_key_file
from llmos.userland import Client, KernelUnavailable


def test_a_user_key_file_is_private_and_names_the_kernel(tcp_kernel, make_user):
    name, key_file = make_user()
    assert stat.S_IMODE(Path(key_file).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(key_file).parent.stat().st_mode) == 0o700
    public, secret = zmq.auth.load_certificate(key_file)
    assert public and secret
    assert read_key_file(key_file)[KERNEL_KEY_META] == read_key_file(tcp_kernel.state_dir / "keys" / "kernel.key")["public-key"]


def test_a_user_connects_with_its_key_and_is_that_principal(tcp_kernel, make_user):
    name, key_file = make_user()
    with tcp_kernel.client("app", key=key_file) as c:
        assert c.info["principal"] == name
        assert c.ping()["pong"] is True


def test_tcp_without_a_key_is_refused_before_any_frame(tcp_kernel):
    error = raised(Client, socket=tcp_kernel.socket, name="anon")
    assert isinstance(error, KernelUnavailable) and "key" in error.message


def test_an_unknown_key_gets_nothing(tcp_kernel, tmp_path):
    public, secret = (k.decode() for k in zmq.curve_keypair())
    kernel_key = read_key_file(tcp_kernel.state_dir / "keys" / "kernel.key")["public-key"]
    forged = write_key_file(tmp_path / "forged.key_secret", public, secret,
                            {KERNEL_KEY_META: kernel_key, "socket": tcp_kernel.socket})
    with pytest.raises(KernelUnavailable):
        Client(socket=tcp_kernel.socket, name="forger", key=str(forged))
    records = [r for r in tcp_kernel.events("auth.refused") if r.get("public_key") == public]
    assert records, "the refused key is logged"


def test_a_user_cannot_grant_itself_admin(tcp_kernel, make_user):
    _, key_file = make_user()
    error = raised(Client, socket=tcp_kernel.socket, name="greedy", caps=["admin"], key=key_file)
    assert error.errno == "EPERM" and "admin" in error.message


def test_a_user_holds_at_most_the_caps_the_operator_gave_it(tcp_kernel, make_user):
    _, key_file = make_user(caps=["ps", "mem"])
    with tcp_kernel.client("narrow", key=key_file) as c:
        assert set(c.info["caps"]) == {"ps", "mem"}
        assert errno_of(c.models) == "EPERM"


def test_exit_then_hello_on_one_connection_cannot_regain_dropped_caps(tcp_kernel, make_user):
    _, key_file = make_user()
    with tcp_kernel.client("dropper", caps=["ps"], key=key_file) as c:
        c.call("exit")
        error = raised(c.call, "hello", name="dropper-again", caps=["ps", "mem"])
        assert error.errno == "EPERM" and "mem" in error.message
        assert c.call("hello", name="dropper-again", caps=["ps"])["caps"] == ["ps"]


def test_the_operator_on_the_private_socket_may_hold_admin(operator):
    assert "admin" in operator.info["caps"] and operator.info["principal"] == "operator"


def test_removing_a_user_reaps_its_processes_and_refuses_its_key(tcp_kernel, operator, make_user, tmp_path):
    name, key_file = make_user()
    kept = tmp_path / "kept.key_secret"
    kept.write_text(Path(key_file).read_text())
    c = tcp_kernel.client("doomed", key=key_file)
    try:
        assert operator.user_remove(name)["reaped"] == 1
        assert errno_of(c.ps) == "EPERM"          # reaped: no process on this connection any more
    finally:
        c.close()
    assert not Path(key_file).exists()
    with pytest.raises(KernelUnavailable):
        Client(socket=tcp_kernel.socket, name="doomed-again", key=str(kept))
    operator.user_add(name)      # the fixture removes it again


def test_user_names_are_checked(operator):
    for bad in ("Operator", "operator", "services", "a/b", "", "x" * 40):
        assert errno_of(operator.user_add, bad) == "EINVAL"
