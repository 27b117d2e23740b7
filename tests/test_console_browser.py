"""The web console in a real browser (Debian's Chromium, driven by Playwright) against a real kernel.

One tcp kernel on the tiny model, with its service host, two gateways on it: one without keys
(the operator's own identity, loopback) and one with API keys for two users. One browser for
the module; each test opens its own page (its own sessionStorage) and checks that the page
logged no console error.
"""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess, wait_until

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e '.[test]'")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)
TIMEOUT_MS = 30_000
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def console_kernel(tmp_path_factory, tiny_llama):
    with KernelProcess(tmp_path_factory.mktemp("console-browser"), model=tiny_llama, tcp=True) as k:
        yield k


@pytest.fixture(scope="module")
def operator(console_kernel):
    with console_kernel.client("console-test-operator", caps=["admin", "ps", "load"]) as c:
        yield c


@pytest.fixture(scope="module")
def gateway(console_kernel):
    with GatewayProcess(console_kernel.cli_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def keyed_gateway(console_kernel, operator, tmp_path_factory):
    """A gateway with an API key for alice and one for bob, both plain users (no admin)."""
    table = tmp_path_factory.mktemp("console-keys") / "keys.json"
    keys = {}
    for name in ("alice", "bob"):
        key_file = operator.user_add(name)["key_file"]
        r = console_kernel.cli("serve", "keys", "add", name, "--key-file", key_file, "--keys", str(table))
        assert r.returncode == 0, r.stderr
        keys[name] = r.stdout.strip()
    try:
        with GatewayProcess(console_kernel.cli_env(), keys=table) as gw:
            yield gw, keys
    finally:
        for name in keys:
            operator.user_remove(name)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page of its own; the test fails if the page logged an error or threw."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    yield page
    context.close()
    assert not errors, errors


def infer_cancelled(operator) -> int:
    return operator.stats()["requests"]["by_syscall"].get("infer", {}).get("errors", {}).get("ECANCELED", 0)


def test_the_live_process_list_shows_the_service_host_and_the_views_have_labels(page, gateway):
    page.goto(gateway.url + "/#processes")
    expect(page.locator("#processes-table tbody")).to_contain_text("llmos-services")
    expect(page.locator("#whoami")).to_have_text("operator (admin)")
    expect(page.get_by_role("button", name=re.compile(r"Kill process \d+")).first).to_be_visible()
    page.goto(gateway.url + "/#devices")
    expect(page.locator("#devices-list .bar").first).to_have_attribute(
        "aria-label", re.compile(r"weights [\d.]+ \w+, kv [\d.]+ \w+, reserved [\d.]+ \w+, free [\d.]+ \w+ of "))
    page.goto(gateway.url + "/#chat")
    for label in ("Message", "Model", "System prompt", "Max tokens"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()


def test_a_question_streams_its_answer_with_ttft_and_tokens_per_second(page, gateway):
    page.goto(gateway.url + "/")
    page.evaluate("""() => {
        window.lengths = new Set();
        new MutationObserver(() => {
            const body = document.querySelector('.msg.assistant .body');
            if (body) window.lengths.add(body.textContent.length);
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_label("Max tokens").fill("64")
    page.get_by_label("Message", exact=True).fill("Tell me a story")
    page.get_by_label("Message", exact=True).press("Enter")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".meta")).to_contain_text(re.compile(r"TTFT \d+ ms · \d+ tokens, [\d.]+ tok/s"))
    assert page.evaluate("window.lengths.size") >= 3      # painted as it came, not once at the end
    assert page.locator(".msg.user").last.text_content() == "Tell me a story"



def test_a_second_question_carries_the_system_prompt_and_the_turns_before(page, gateway):
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(gateway.url + "/")
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_label("Max tokens").fill("8")
    for n, question in enumerate(["First?", "Second?"], 1):
        page.get_by_label("Message", exact=True).fill(question)
        page.get_by_role("button", name="Send").click()
        expect(page.locator(".msg.assistant[data-state=done]")).to_have_count(n)
    first_answer = page.locator(".msg.assistant .body").first.text_content()
    roles = [(m["role"], m["content"]) for m in sent[-1]["messages"]]
    assert roles[0] == ("system", "Be brief.") and roles[1] == ("user", "First?") and roles[-1] == ("user", "Second?")
    assert roles[2][0] == "assistant" and roles[2][1].strip() and len(roles) == 4
    assert sent[-1]["stream"] is True and first_answer.strip()


def test_stop_aborts_the_answer_and_the_kernel_cancels_the_request(page, gateway, operator):
    before = infer_cancelled(operator)
    page.goto(gateway.url + "/")
    page.get_by_label("Max tokens").fill("32768")
    page.get_by_label("Message", exact=True).fill("Go on forever")
    page.get_by_label("Message", exact=True).press("Enter")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".body")).not_to_be_empty()
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".meta")).to_contain_text("stopped")
    assert wait_until(lambda: infer_cancelled(operator) > before, timeout=10)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_model_output_cannot_inject_html(page, gateway):
    """The answer comes from a route the test serves: the model's text is chosen, the page is the real one."""
    text = ('Look: <img src=x onerror="window.pwned=1"> and **bold** and [a](javascript:window.pwned=2)\n\n'
            '```html\n<script>window.pwned=3</script>\n```\n')
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": text[:20]}}]},
              {"choices": [{"index": 0, "delta": {"content": text[20:]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream"}, body=body))
    page.goto(gateway.url + "/")
    page.get_by_label("Message", exact=True).fill("<img src=x onerror=window.pwned=4>")
    page.get_by_label("Message", exact=True).press("Enter")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", "done")
    assert page.locator("#transcript img, #transcript script").count() == 0
    assert answer.locator("strong").text_content() == "bold"
    assert "<script>window.pwned=3</script>" in answer.locator("pre code").text_content()
    assert answer.locator("a").count() == 0              # a javascript: link stays text
    assert page.evaluate("window.pwned") is None


def test_loading_a_model_shows_its_progress_then_ready(page, gateway, operator):
    page.goto(gateway.url + "/#models")
    page.evaluate("""() => {
        window.progress = [];
        new MutationObserver(() => window.progress.push(document.getElementById('models-status').textContent))
            .observe(document.getElementById('models-status'), {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_role("button", name="Load minilm-l6-v2").click()
    expect(page.locator("#models-status")).to_have_text("load minilm-l6-v2: done", timeout=120_000)
    expect(page.locator('#models-table tr[data-model="minilm-l6-v2"]')).to_contain_text("ready")
    told = page.evaluate("window.progress")
    assert any(re.fullmatch(r"loading minilm-l6-v2: (queued|reading weights|tokenizer|kv cache)(, [\d.]+ s.*)?", t)
               for t in told), told
    operator.unload_model("minilm-l6-v2", evict=True)


def test_a_wrong_key_is_refused_and_a_user_sees_only_their_own_processes(page, keyed_gateway):
    gw, keys = keyed_gateway
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys['bob']}"},
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
    assert r.status_code == 200       # bob now has a process of his own on the kernel
    page.on("console", lambda m: page.errors.remove(m.text) if "401" in m.text else None)   # the refused key's answer
    page.goto(gw.url + "/")
    page.get_by_label("API key").fill("sk-llmos-not-a-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_contain_text("unknown API key")
    page.get_by_label("API key").fill(keys["alice"])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#whoami")).to_have_text("alice")
    page.goto(gw.url + "/#processes")
    rows = page.locator("#processes-table tbody")
    expect(rows).to_contain_text("llmos-services")
    expect(rows).to_contain_text("alice")
    assert "bob" not in rows.text_content()
    assert page.get_by_role("button", name=re.compile("Kill")).count() == 0
    assert page.evaluate("sessionStorage.getItem('llmos-api-key')") == keys["alice"]
    assert page.context.cookies() == []


def test_an_admin_reads_and_verifies_the_audit_log(page, gateway):
    page.goto(gateway.url + "/#audit")
    expect(page.locator("#audit-table tbody")).to_contain_text("hello")
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#audit-status")).to_contain_text("chain intact")


def test_the_console_fits_a_phone(browser, gateway):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        for view in ("chat", "processes", "devices", "scheduler"):
            page.goto(f"{gateway.url}/#{view}")
            expect(page.locator(f"#view-{view}")).to_be_visible()
            page.wait_for_timeout(300)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, view
        page.goto(f"{gateway.url}/#chat")
        box = page.get_by_label("Message", exact=True).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    finally:
        context.close()
