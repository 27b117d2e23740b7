"""The web console's routes on `llmos serve`: its page, its JSON over the CLI's syscalls, its live events.

A real kernel on the tiny model and a real gateway subprocess; without keys here (the gateway's
own identity, the operator), with keys in test_console_keys.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest

from llmos.userland.gateway.console.headers import CSP
from llmos.userland.gateway.console.live import (EVENT_INTERVAL_S, MAX_LOADS, MAX_LOADS_PER_PRINCIPAL,
                                                 MAX_SUBSCRIBERS_PER_PRINCIPAL, Live)
from llmos.userland.gateway.errors import ApiError
from llmos.userland.gateway.keys import KeyEntry
from llmos.userland.gateway.principals import Identity
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess, wait_until


@pytest.fixture(scope="module")
def console_kernel(tmp_path_factory, tiny_llama):
    with KernelProcess(tmp_path_factory.mktemp("console"), model=tiny_llama) as k:
        yield k


@pytest.fixture(scope="module")
def gateway(console_kernel):
    with GatewayProcess(console_kernel.cli_env()) as gw:
        yield gw


def get(gw, path, **kw):
    return httpx.get(gw.url + path, timeout=30, **kw)


def post(gw, path, body, **kw):
    return httpx.post(gw.url + path, json=body, timeout=120, **kw)


def snapshot(gw) -> dict:
    """The principal's snapshot: at most live.SNAPSHOT_TTL_S old, so a change shows within a second."""
    return get(gw, "/console/api/snapshot").json()


def assert_secured(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"] == CSP
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_page_is_served_at_the_root_and_under_console_with_a_strict_policy(gateway):
    for path in ("/", "/console/"):
        r = get(gateway, path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/console/app.js">' in r.text
        assert_secured(r)
    r = get(gateway, "/console/app.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert_secured(r)


def test_the_page_has_no_inline_script_or_style(gateway):
    html = get(gateway, "/").text
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    for name in ("app.js", "api.js", "chat.js", "md.js", "system.js", "charts.js", "services.js", "audit.js"):
        js = get(gateway, f"/console/{name}").text
        for unsafe in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", '"style"'):
            assert unsafe not in js, (name, unsafe)


@pytest.mark.parametrize("path", ["/console/nothing.js", "/console/../app.py", "/console/%2e%2e/app.py",
                                  "/console/static/app.js", "/console/api/nothing"])
def test_a_file_not_in_the_console_is_404_in_openais_shape(gateway, path):
    r = get(gateway, path)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    if r.url.path.startswith("/console/"):        # not "/console/../app.py", which the client made "/app.py"
        assert_secured(r)


def test_whoami_without_keys_is_the_gateways_own_identity_with_admin(gateway):
    r = get(gateway, "/console/api/whoami")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert_secured(r)
    me = r.json()
    assert me["principal"] == "operator" and me["admin"] is True and me["keyed"] is False


def test_the_snapshot_has_what_the_cli_shows(gateway, console_kernel):
    with console_kernel.client("console-seen") as c:
        snap = get(gateway, "/console/api/snapshot").json()
        mine = next(p for p in snap["processes"] if p["pid"] == c.pid)
    assert mine["name"] == "console-seen" and mine["principal"] == "operator"
    assert {"age_s", "requests", "tokens", "tokens_per_s", "reserved_bytes"} <= mine.keys()
    assert snap["devices"] and {"models_bytes", "kv_bytes", "reserved_bytes", "free_bytes", "total_bytes"} <= \
        snap["devices"][0].keys()
    assert snap["models"]["loaded"] and isinstance(snap["jobs"], list)
    assert snap["queues"].get("operator", 0) >= 0 and "tokens_per_s" in snap["throughput"]


def test_the_service_host_is_in_the_live_process_list(gateway):
    assert wait_until(lambda: any(p["name"] == "llmos-services" for p in snapshot(gateway)["processes"]), timeout=60, interval=0.5)


def read_events(gw, count: int, timeout: float = 20) -> tuple[httpx.Response, list[dict]]:
    events = []
    with httpx.stream("GET", gw.url + "/console/api/events", timeout=timeout) as r:
        if r.status_code != 200:
            r.read()
            return r, events
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == count:
                    return r, events
    return r, events


def test_events_come_once_a_second_uncached(gateway):
    r, events = read_events(gateway, 3)
    assert r.headers["content-type"].startswith("text/event-stream") and r.headers["cache-control"] == "no-store"
    assert_secured(r)
    gaps = [b["time"] - a["time"] for a, b in zip(events, events[1:])]
    assert all(EVENT_INTERVAL_S * 0.5 <= g <= EVENT_INTERVAL_S * 3 for g in gaps), gaps


async def test_event_streams_past_the_bound_are_429_and_a_closed_one_frees_its_slot(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        streams = []
        try:
            for _ in range(MAX_SUBSCRIBERS_PER_PRINCIPAL):
                r = await http.send(http.build_request("GET", "/console/api/events"), stream=True)
                assert r.status_code == 200
                streams.append(r)
            over = await http.get("/console/api/events")
            assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_event_streams"
            assert "retry-after" in over.headers
            await streams.pop().aclose()

            async def admitted():
                r = await http.send(http.build_request("GET", "/console/api/events"), stream=True)
                if r.status_code == 200:
                    streams.append(r)
                    return True
                await r.aclose()
                return False

            for _ in range(50):
                if await admitted():
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("a closed event stream's slot was not given back")
        finally:
            for r in streams:
                await r.aclose()


async def test_pages_of_one_principal_share_one_snapshot_a_second(gateway, console_kernel):
    """Six pages for 4 s ask the kernel for about 4 snapshots, not 24: no polling storm."""
    pages, seconds = 6, 4.0
    with console_kernel.client("console-counter", caps=["ps", "admin"]) as op:
        def ps_calls() -> int:
            return op.stats()["requests"]["by_syscall"].get("ps", {}).get("ok", 0)

        before = ps_calls()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
            async def page():
                got = 0
                async with http.stream("GET", "/console/api/events") as r:
                    async for line in r.aiter_lines():
                        got += line.startswith("data: ")
                return got

            tasks = [asyncio.ensure_future(page()) for _ in range(pages)]
            await asyncio.sleep(seconds)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asked = ps_calls() - before
    assert 1 <= asked <= seconds / 0.9 + 2, asked


def test_other_sites_cannot_use_the_api_without_keys(gateway):
    assert get(gateway, "/console/api/whoami", headers={"Host": "evil.example:8000"}).status_code == 403
    r = get(gateway, "/console/api/whoami", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    r = httpx.post(gateway.url + "/console/api/processes/kill", content="pid=1",
                   headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert r.status_code == 415
    assert get(gateway, "/console/api/whoami", headers={"Host": f"localhost:{gateway.port}"}).status_code == 200


@pytest.mark.parametrize("body, param", [({}, "pid"), ({"pid": "7"}, "pid"), ({"pid": True}, "pid"),
                                         ({"pid": 0}, None)])
def test_a_bad_kill_is_400_naming_the_argument(gateway, body, param):
    r = post(gateway, "/console/api/processes/kill", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_an_admin_kills_a_process_and_it_leaves_the_list(gateway, console_kernel):
    c = console_kernel.client("console-victim")
    try:
        assert post(gateway, "/console/api/processes/kill", {"pid": c.pid}).status_code == 200
        assert wait_until(lambda: c.pid not in {p["pid"] for p in snapshot(gateway)["processes"]}, timeout=5)
        assert post(gateway, "/console/api/processes/kill", {"pid": c.pid}).status_code == 404
    finally:
        c.close()


def test_load_and_unload_a_model(gateway, tiny_bert, tmp_path):
    copy = shutil.copytree(tiny_bert, tmp_path / "console-bert")
    r = post(gateway, "/console/api/models/load", {"model": str(copy)})
    assert r.status_code == 200, r.text
    name = load_result(r)["name"]
    assert wait_until(lambda: any(m["name"] == name and m["state"] == "ready" and m["refs"] == 0    # no ref held
                                  for m in snapshot(gateway)["models"]["loaded"]), timeout=5)
    assert post(gateway, "/console/api/models/unload", {"model": name}).status_code == 200
    assert wait_until(lambda: name not in {m["name"] for m in snapshot(gateway)["models"]["loaded"]}, timeout=5)
    assert post(gateway, "/console/api/models/load", {"model": "no-such-model"}).status_code == 404


def load_result(r: httpx.Response) -> dict:
    """A load's result: its JSON, or the last event when the gateway told progress first."""
    if not r.headers["content-type"].startswith("text/event-stream"):
        return r.json()
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert all("progress" in e for e in events[:-1]), events
    return events[-1]["result"]


def test_services_are_listed_and_a_task_is_called(gateway):
    assert wait_until(lambda: get(gateway, "/console/api/services").json()["host"]["state"] == "up", timeout=60)
    listing = get(gateway, "/console/api/services").json()
    tasks = {(s["name"], t["name"]) for s in listing["services"] for t in s["tasks"]}
    assert tasks
    r = post(gateway, "/console/api/services/call", {"service": "nope", "task": "nope", "args": {}})
    assert r.status_code == 404
    r = post(gateway, "/console/api/services/call", {"service": "x", "task": "y", "args": [1]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "args"


def test_cancelling_an_unknown_job_is_404(gateway):
    assert post(gateway, "/console/api/jobs/cancel", {"job": "no-such-job"}).status_code == 404


def test_the_operator_reads_and_verifies_the_audit_log(gateway):
    lines = get(gateway, "/console/api/audit?lines=20").json()["lines"]
    assert 0 < len(lines) <= 20 and any(r["event"] == "hello" for r in lines)
    verdict = post(gateway, "/console/api/audit/verify", {}).json()
    assert verdict["problem"] is None and verdict["lines"] > 0


@pytest.mark.parametrize("lines", ["-1", "x", "1001"])
def test_a_bad_audit_line_count_is_400(gateway, lines):
    r = get(gateway, f"/console/api/audit?lines={lines}")
    assert r.status_code == 400


def test_loads_past_either_bound_are_429_and_a_finished_one_frees_its_slot():
    """The bookkeeping behind the load route (a tiny model loads too fast to hold slots open end to end)."""
    loads = Live(None, None).loads
    users = [Identity(KeyEntry(f"u{i}", "/nonexistent", 0.0)) for i in range(MAX_LOADS)]
    for _ in range(MAX_LOADS_PER_PRINCIPAL):
        loads.take(users[0])
    with pytest.raises(ApiError) as caught:
        loads.take(users[0])
    assert caught.value.status == 429 and caught.value.code == "too_many_loads"
    for who in users[1:MAX_LOADS - MAX_LOADS_PER_PRINCIPAL + 1]:
        loads.take(who)
    with pytest.raises(ApiError):
        loads.take(users[-1])           # its first, but the total is reached
    loads.release(users[0])
    loads.take(users[-1])
