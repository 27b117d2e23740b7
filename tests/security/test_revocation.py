"""Revocation reaches live connections: a rotated or removed key stops working on the connections it
already opened, not only at the next handshake; the refusal is audited once per connection; a
client whose key is refused fails at once; the gateway reconnects with a rotated key file."""

from __future__ import annotations

import itertools
import json
import time

import httpx
import msgpack
import pytest
import zmq

from harness import raised
from llmos.specs.keys import read_key_file
from llmos.userland import Client, KernelUnavailable
from llmos.userland.errors import KeyRefused
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import curve_dealer


def _public_key(key_file: str) -> str:
    return read_key_file(key_file)["public-key"]


class Raw:
    """A bare CurveZMQ DEALER with a user's key: it keeps sending whatever it is told, as a
    client that ignores refusals would (the client library stops at the first)."""

    def __init__(self, tcp_kernel, key_file: str):
        self.ctx = zmq.Context()
        self.sock = curve_dealer(self.ctx, tcp_kernel.socket, key_file)
        self.ids = itertools.count(1)

    def ask(self, call: str, **args) -> dict:
        req_id = next(self.ids)
        self.sock.send(msgpack.packb({"v": 1, "id": req_id, "call": call, "args": args}))
        while self.sock.poll(10_000):
            reply = msgpack.unpackb(self.sock.recv(), raw=False)
            if reply["id"] == req_id:
                return reply
        raise AssertionError(f"no answer to {call} within 10 s")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _refuses_everything(raw: Raw) -> None:
    """hello, ping and sysinfo (the calls a connection may make before hello) all EPERM, and no call after."""
    for call, args in (("hello", {"name": "again"}), ("ping", {}), ("sysinfo", {}), ("ps", {})):
        reply = raw.ask(call, **args)
        assert not reply["ok"] and reply["error"]["errno"] == "EPERM", (call, reply)
        assert reply["error"]["message"].startswith("key revoked")


def _audit(tcp_kernel, event: str) -> list[dict]:
    lines = (tcp_kernel.state_dir / "audit.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_after_rotate_the_old_connection_gets_no_hello_ping_or_sysinfo(tcp_kernel, operator, make_user):
    name, key_file = make_user()
    old = Raw(tcp_kernel, key_file)
    try:
        assert old.ask("hello", name="before-rotate")["ok"]
        operator.user_rotate(name)
        _refuses_everything(old)
    finally:
        old.close()


def test_after_rotate_a_connection_with_the_new_key_works(tcp_kernel, operator, make_user):
    name, key_file = make_user()
    old = tcp_kernel.client("before-rotate", key=key_file)
    try:
        operator.user_rotate(name)              # rewrites the same key file with the new key
        with tcp_kernel.client("after-rotate", key=key_file) as new:
            assert new.info["principal"] == name and new.ping()["pong"] is True
    finally:
        old.close()


def test_after_remove_the_old_connection_gets_nothing(tcp_kernel, operator, make_user):
    name, key_file = make_user()
    old = Raw(tcp_kernel, key_file)
    try:
        assert old.ask("ping")["ok"]            # not even a process yet: ping is refused all the same
        operator.user_remove(name)
        _refuses_everything(old)
    finally:
        old.close()
        operator.user_add(name)                 # the fixture removes it again


def test_a_user_removed_and_added_again_does_not_revive_the_old_connection(tcp_kernel, operator, make_user):
    name, key_file = make_user(caps=["ps", "mem"])
    old = Raw(tcp_kernel, key_file)
    try:
        assert old.ask("hello", name="before-remove")["ok"]
        operator.user_remove(name)
        operator.user_add(name, caps=["ps", "mem"])     # same name, a new key
        _refuses_everything(old)
    finally:
        old.close()


def test_a_client_whose_key_is_revoked_raises_key_refused_at_once(tcp_kernel, operator, make_user):
    name, key_file = make_user()
    old = tcp_kernel.client("before-rotate", key=key_file)
    try:
        operator.user_rotate(name)
        error = raised(old.ping)
        assert isinstance(error, KeyRefused) and error.errno == "EPERM" and "key" in error.message
        assert isinstance(raised(old.ps), KeyRefused)       # and so is every call after
    finally:
        old.close()


def test_a_revoked_keys_refusal_is_audited_once_per_connection(tcp_kernel, operator, make_user):
    name, key_file = make_user()
    old_key = _public_key(key_file)
    first, second = Raw(tcp_kernel, key_file), Raw(tcp_kernel, key_file)
    try:
        assert first.ask("ping")["ok"] and second.ask("ping")["ok"]
        operator.user_rotate(name)
        for _ in range(5):
            assert not first.ask("ping")["ok"]
        assert not second.ask("ping")["ok"]
    finally:
        first.close()
        second.close()
    records = [r for r in _audit(tcp_kernel, "revoked_key") if r.get("public_key") == old_key]
    assert len(records) == 2 and all(r["name"] == name for r in records)


def test_a_client_whose_key_is_refused_at_the_handshake_fails_at_once(tcp_kernel, operator, make_user, tmp_path):
    name, key_file = make_user()
    kept = tmp_path / "old.key_secret"
    kept.write_text(open(key_file).read())
    operator.user_rotate(name)
    started = time.monotonic()
    with pytest.raises(KernelUnavailable) as refused:
        Client(socket=tcp_kernel.socket, name="stale", key=str(kept))
    assert time.monotonic() - started < 5       # not the 10 s a hello waits for an answer
    assert isinstance(refused.value, KeyRefused) and "refused" in refused.value.message


def test_the_gateway_reconnects_after_its_users_key_is_rotated(tcp_kernel, operator, make_user, tmp_path):
    name, key_file = make_user()
    keys = tmp_path / "gateway-keys.json"
    added = tcp_kernel.cli("serve", "keys", "add", name, "--key-file", key_file, "--keys", str(keys))
    assert added.returncode == 0, added.stderr
    headers = {"Authorization": f"Bearer {added.stdout.strip()}"}
    with GatewayProcess(tcp_kernel.cli_env(), keys=keys) as gw:
        assert httpx.get(gw.url + "/v1/models", headers=headers, timeout=30).status_code == 200
        operator.user_rotate(name)
        r = httpx.get(gw.url + "/v1/models", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        served = [p for p in operator.ps() if p["name"] == f"llmos-serve:{name}"]
        assert len(served) == 1 and served[0]["principal"] == name     # one connection, with the new key
