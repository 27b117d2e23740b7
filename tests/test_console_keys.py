"""The console with API keys: each key sees and does what its kernel principal may, and nothing without one.

A tcp (CurveZMQ) kernel on the tiny model with users alice and bob (plain) and ada (admin), and a
real gateway with an API key for each.
"""

from __future__ import annotations

import httpx
import pytest

from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess, wait_until

PLAIN_CAPS = ["ps", "devices", "models", "load", "infer", "embed", "mem", "alloc", "svc"]
API_ROUTES = [("GET", "/console/api/whoami"), ("GET", "/console/api/snapshot"), ("GET", "/console/api/events"),
              ("GET", "/console/api/services"), ("POST", "/console/api/processes/kill"),
              ("POST", "/console/api/models/load"), ("POST", "/console/api/models/unload"),
              ("POST", "/console/api/jobs/cancel"), ("POST", "/console/api/services/call"),
              ("GET", "/console/api/audit"), ("POST", "/console/api/audit/verify")]


@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory, tiny_llama):
    with KernelProcess(tmp_path_factory.mktemp("console-keys"), model=tiny_llama, tcp=True,
                       env={"LLMOS_NO_SERVICES": "1"}) as k:
        yield k


@pytest.fixture(scope="module")
def keyed(tcp_kernel, tmp_path_factory):
    """(gateway, {user: API key}) for alice, bob and ada (an admin), and eve, whose key a test removes."""
    table = tmp_path_factory.mktemp("console-key-table") / "keys.json"
    keys = {}
    with tcp_kernel.client("console-keys-operator", caps=["admin"]) as op:
        for name in ("alice", "bob", "ada", "eve"):
            key_file = op.user_add(name, caps=PLAIN_CAPS + (["admin"] if name == "ada" else []))["key_file"]
            r = tcp_kernel.cli("serve", "keys", "add", name, "--key-file", key_file, "--keys", str(table))
            assert r.returncode == 0, r.stderr
            keys[name] = r.stdout.strip()
    with GatewayProcess(tcp_kernel.cli_env(), keys=table) as gw:
        gw.table = table
        yield gw, keys


def as_user(gw, key: str | None, method: str, path: str, body: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, gw.url + path, headers=headers, json=body if method == "POST" else None, timeout=60)


def processes(gw, key: str) -> list[dict]:
    return as_user(gw, key, "GET", "/console/api/snapshot").json()["processes"]


def bobs_pid(gw, keys) -> int:
    """Bob's gateway connection, made by a chat request of his: a process of the principal bob."""
    assert as_user(gw, keys["bob"], "POST", "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200
    return next(p["pid"] for p in processes(gw, keys["bob"]) if p["name"] == "llmos-serve:bob")


@pytest.mark.parametrize("method, path", API_ROUTES)
@pytest.mark.parametrize("key", [None, "sk-llmos-not-a-key"])
def test_every_api_route_is_401_without_a_known_key(keyed, method, path, key):
    gw, _ = keyed
    r = as_user(gw, key, method, path, {})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_the_page_itself_needs_no_key(keyed):
    gw, _ = keyed
    assert httpx.get(gw.url + "/", timeout=10).status_code == 200


def test_whoami_is_the_keys_principal(keyed):
    gw, keys = keyed
    me = as_user(gw, keys["alice"], "GET", "/console/api/whoami").json()
    assert me["principal"] == "alice" and me["admin"] is False and me["keyed"] is True
    assert as_user(gw, keys["ada"], "GET", "/console/api/whoami").json()["admin"] is True


def test_a_user_sees_only_their_own_processes_and_an_admin_sees_everyones(keyed):
    gw, keys = keyed
    pid = bobs_pid(gw, keys)
    alices = processes(gw, keys["alice"])
    assert alices and {p["principal"] for p in alices} == {"alice"}
    assert pid not in {p["pid"] for p in alices}
    assert wait_until(lambda: pid in {p["pid"] for p in processes(gw, keys["ada"])}, timeout=5)


def test_a_user_may_not_kill_and_the_kernel_says_so(keyed):
    gw, keys = keyed
    pid = bobs_pid(gw, keys)
    r = as_user(gw, keys["alice"], "POST", "/console/api/processes/kill", {"pid": pid})
    assert r.status_code == 403 and r.json()["error"]["code"] == "EPERM"
    assert "admin" in r.json()["error"]["message"]
    assert pid in {p["pid"] for p in processes(gw, keys["bob"])}


def test_an_admin_user_kills_another_users_process(keyed):
    gw, keys = keyed
    pid = bobs_pid(gw, keys)
    assert as_user(gw, keys["ada"], "POST", "/console/api/processes/kill", {"pid": pid}).status_code == 200
    assert wait_until(lambda: pid not in {p["pid"] for p in processes(gw, keys["ada"])}, timeout=5)


def test_a_user_naming_a_model_path_is_403(keyed):
    gw, keys = keyed
    r = as_user(gw, keys["alice"], "POST", "/console/api/models/load", {"model": "/etc"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_the_audit_log_is_the_kernels_to_refuse_to_a_user_and_an_admins_to_read(keyed):
    gw, keys = keyed
    for method, path in (("GET", "/console/api/audit"), ("POST", "/console/api/audit/verify")):
        r = as_user(gw, keys["alice"], method, path, {})
        assert r.status_code == 403 and r.json()["error"]["code"] == "EPERM"
    lines = as_user(gw, keys["ada"], "GET", "/console/api/audit?lines=1000").json()["lines"]
    assert any(r["event"] == "denied" and r.get("principal") == "alice" for r in lines)   # her refused hellos
    assert as_user(gw, keys["ada"], "POST", "/console/api/audit/verify", {}).json()["problem"] is None


def test_a_removed_keys_event_stream_ends_with_a_401_event(keyed, tcp_kernel):
    gw, keys = keyed
    events = []
    with httpx.stream("GET", gw.url + "/console/api/events", headers={"Authorization": f"Bearer {keys['eve']}"},
                      timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break                   # one snapshot: the stream is live
        removed = tcp_kernel.cli("serve", "keys", "rm", "eve", "--keys", str(gw.table))
        assert removed.returncode == 0, removed.stderr
        events = [line for line in lines if line.startswith(("event: ", "data: "))]     # to the stream's end
    assert events[-2] == "event: failure" and '"invalid_api_key"' in events[-1]
    assert as_user(gw, keys["eve"], "GET", "/console/api/whoami").status_code == 401
