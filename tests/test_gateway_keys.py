"""`llmos serve` with API keys: each key is a kernel principal, on a tiny-model tcp (CurveZMQ) kernel.

The gateway runs as a real subprocess; its own identity is the operator on the private ipc
console, which it must never lend to a request.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import httpx
import pytest

from llmos.userland.errors import ERRORS, KernelUnavailable
from llmos.userland.gateway.errors import ApiError, from_syscall
from llmos.userland.gateway.keys import KeyEntry, KeyTable
from llmos.userland.gateway.principals import Identity, Principals
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import LLMOS_COMMAND, KernelProcess


@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory, tiny_llama):
    k = KernelProcess(tmp_path_factory.mktemp("gw-tcp"), model=tiny_llama, tcp=True,
                      env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def operator(tcp_kernel):
    with tcp_kernel.client("gw-operator", caps=["admin", "ps"]) as c:
        yield c


@pytest.fixture(scope="module")
def users(operator):
    """Kernel users: alice and bob; carol, whom a test removes; dave, with a token rate of 5 a minute."""
    made = {name: operator.user_add(name, quotas={"tokens_per_minute": 5} if name == "dave" else None)["key_file"]
            for name in ("alice", "bob", "carol", "dave")}
    yield made
    present = {u["name"] for u in operator.user_list()["users"]}
    for name in made.keys() & present:
        operator.user_remove(name)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    return tmp_path_factory.mktemp("gw-keys") / "keys.json"


@pytest.fixture(scope="module")
def api_keys(tcp_kernel, users, keys_file):
    """An API key per user, made with `llmos serve keys add`."""
    out = {}
    for name, key_file in users.items():
        r = tcp_kernel.cli("serve", "keys", "add", name, "--key-file", key_file, "--keys", str(keys_file))
        assert r.returncode == 0, r.stderr
        out[name] = r.stdout.strip()
    return out


@pytest.fixture(scope="module")
def gateway(tcp_kernel, api_keys, keys_file):
    with GatewayProcess(tcp_kernel.cli_env(), keys=keys_file) as gw:
        yield gw


def chat(gw: GatewayProcess, api_key: str | None, **body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
    return httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=60,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **body})


def test_each_api_key_runs_as_its_own_principal(gateway, api_keys, operator):
    assert chat(gateway, api_keys["alice"]).status_code == 200
    assert chat(gateway, api_keys["bob"]).status_code == 200
    served = {p["principal"]: p for p in operator.ps() if p["name"].startswith("llmos-serve:")}
    assert served["alice"]["name"] == "llmos-serve:alice" and served["alice"]["tokens"] >= 3
    assert served["bob"]["name"] == "llmos-serve:bob" and served["bob"]["tokens"] >= 3


def test_a_request_without_a_key_is_401_and_runs_nowhere(gateway, operator):
    before = sum(p["tokens"] for p in operator.ps())
    r = chat(gateway, None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert sum(p["tokens"] for p in operator.ps()) == before


def test_a_wrong_key_is_401(gateway, api_keys):
    r = chat(gateway, api_keys["alice"][:-2] + "xx")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("method, path", [("POST", "/api/chat"), ("POST", "/api/generate"), ("GET", "/api/tags"),
                                          ("GET", "/api/ps"), ("POST", "/api/show"), ("POST", "/api/embed"),
                                          ("GET", "/api/version"), ("POST", "/v1/responses"), ("GET", "/v1/models/x"),
                                          ("GET", "/metrics")])
def test_every_new_route_needs_a_key_before_its_body_is_read(gateway, operator, method, path):
    before = sum(p["tokens"] for p in operator.ps())
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "input": "hi"}
    r = httpx.request(method, gateway.url + path, timeout=30, **({"json": body} if method == "POST" else {}))
    assert r.status_code == 401
    assert sum(p["tokens"] for p in operator.ps()) == before


def test_the_ollama_client_with_a_key_runs_as_its_principal(gateway, api_keys, operator, tiny_llama):
    import ollama

    client = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {api_keys['bob']}"}, timeout=60)
    before = sum(p["tokens"] for p in operator.ps() if p["name"] == "llmos-serve:bob")
    r = client.chat(model=tiny_llama, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3})
    assert r.done and r.eval_count >= 1
    after = sum(p["tokens"] for p in operator.ps() if p["name"] == "llmos-serve:bob")
    assert after - before >= r.eval_count
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=gateway.url, headers={"Authorization": "Bearer sk-llmos-wrong"}).list()
    assert err.value.status_code == 401


def test_the_key_table_holds_only_hashes_in_a_0600_file(api_keys, keys_file):
    text = keys_file.read_text()
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o600
    assert not any(key in text for key in api_keys.values())
    assert {e["name"] for e in json.loads(text)["keys"].values()} == set(api_keys)


def test_keys_list_names_the_keys_without_showing_them(tcp_kernel, api_keys, keys_file):
    r = tcp_kernel.cli("serve", "keys", "list", "--keys", str(keys_file))
    assert r.returncode == 0 and "alice" in r.stdout and "bob" in r.stdout
    assert not any(key in r.stdout for key in api_keys.values())


def test_a_user_naming_a_model_path_is_403(gateway, api_keys):
    r = chat(gateway, api_keys["alice"], model="/etc")
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_a_principal_past_its_token_rate_is_429_with_retry_after(gateway, api_keys):
    assert chat(gateway, api_keys["dave"], max_tokens=5).status_code == 200
    r = chat(gateway, api_keys["dave"], max_tokens=5)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_a_removed_users_key_fails_cleanly_and_others_keep_working(gateway, api_keys, operator):
    assert chat(gateway, api_keys["carol"]).status_code == 200
    operator.user_remove("carol")
    r = chat(gateway, api_keys["carol"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "EPERM"
    assert chat(gateway, api_keys["bob"]).status_code == 200


def test_a_key_removed_from_the_table_is_refused_by_the_running_gateway(tcp_kernel, gateway, users, keys_file):
    r = tcp_kernel.cli("serve", "keys", "add", "bob-2", "--key-file", users["bob"], "--keys", str(keys_file))
    api_key = r.stdout.strip()
    assert chat(gateway, api_key).status_code == 200
    assert tcp_kernel.cli("serve", "keys", "rm", "bob-2", "--keys", str(keys_file)).returncode == 0
    assert chat(gateway, api_key).status_code == 401


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    r = subprocess.run([*LLMOS_COMMAND, "serve", "--host", "0.0.0.0", "--keys", str(tmp_path / "none.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "without API keys" in r.stderr


def test_a_gateway_that_requires_keys_refuses_everyone_until_the_first_key_is_added(tcp_kernel, users, tmp_path):
    """How containers start it: no table yet, so nobody is served as the gateway's own identity."""
    table = tmp_path / "state" / "keys.json"
    with GatewayProcess(tcp_kernel.cli_env(), keys=table, extra=["--require-keys"]) as gw:
        assert chat(gw, None).status_code == 401 and chat(gw, "sk-llmos-guess").status_code == 401
        assert httpx.get(gw.url + "/metrics", timeout=30).status_code == 401
        assert "0 API key(s)" in gw.log()
        link = tmp_path / "secret-mount" / "bob.key_secret"      # a Kubernetes Secret's file is a link
        link.parent.mkdir()
        link.symlink_to(users["bob"])
        r = tcp_kernel.cli("serve", "keys", "add", "bob-pod", "--key-file", str(link), "--keys", str(table))
        assert r.returncode == 0, r.stderr
        assert chat(gw, r.stdout.strip()).status_code == 200
    assert KeyTable(table).load().entries()[0].key_file == str(link)      # the link, not where it pointed


def test_open_metrics_serves_a_scraper_without_a_key_and_nothing_else(tcp_kernel, keys_file, api_keys):
    with GatewayProcess(tcp_kernel.cli_env(), keys=keys_file, extra=["--open-metrics"]) as gw:
        assert chat(gw, None).status_code == 401
        metrics = httpx.get(gw.url + "/metrics", timeout=30)
    assert metrics.status_code == 200 and 'llmos_gateway_requests_total{method="POST"' in metrics.text
    assert not any(name in metrics.text for name in api_keys)         # no key's or principal's name


def test_a_gateway_whose_kernel_is_gone_answers_503(tmp_path):
    env = {**os.environ, "LLMOS_SOCKET": f"ipc://{tmp_path}/no-kernel.sock"}
    with GatewayProcess(env) as gw:
        models = httpx.get(gw.url + "/v1/models", timeout=30)
        ready = httpx.get(gw.url + "/health/ready", timeout=30)
    assert models.status_code == 503 and models.json()["error"]["code"] == "kernel_unavailable"
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"


def test_streams_past_the_per_key_limit_are_429():
    principals = Principals(socket=None, key=None, max_streams=2)
    alice, bob = Identity(KeyEntry("alice", "/a")), Identity(KeyEntry("bob", "/b"))
    principals.take_stream(alice)
    principals.take_stream(alice)
    with pytest.raises(ApiError) as refused:
        principals.take_stream(alice)
    assert refused.value.status == 429 and refused.value.headers()["Retry-After"] == "1"
    principals.take_stream(bob)          # another key's slots are its own
    principals.give_stream(alice)
    principals.take_stream(alice)


@pytest.mark.parametrize("errno, status", [("EINVAL", 400), ("EPERM", 403), ("EACCES", 403), ("ENOENT", 404),
                                           ("EAGAIN", 429), ("EDQUOT", 429), ("ENOMEM", 503), ("ETIMEDOUT", 504)])
def test_each_errno_has_the_status_the_openai_clients_expect(errno, status):
    error = from_syscall(ERRORS[errno](errno, "why"))
    assert error.status == status and error.body()["error"]["message"] == "why"
    assert ("Retry-After" in error.headers()) == (status == 429)


def test_a_lost_kernel_is_503_with_retry_after():
    error = from_syscall(KernelUnavailable("gone"))
    assert error.status == 503 and "Retry-After" in error.headers()


def test_json_nested_too_deep_is_400_not_a_crash(gateway, api_keys):
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b"[" * 200_000, timeout=30,
                   headers={"Authorization": f"Bearer {api_keys['bob']}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
