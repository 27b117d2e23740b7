"""specs/GATEWAY.md names every route, parameter, option, metric and errno status the gateway's code has,
and no other route."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmos.specs import SYSCALLS
from llmos.specs.protocol import ERRNOS
from llmos.userland.gateway import console, ollama, responses
from llmos.userland.gateway.app import Settings, make_app
from llmos.userland.gateway.console import headers, live
from llmos.userland.gateway.errors import STATUS_OF_ERRNO
from llmos.userland.gateway.http import HEAD_TIMEOUT_S, KEEP_ALIVE_S, LIMIT_CONCURRENCY, MAX_CONNECTIONS, MAX_HEAD_BYTES
from llmos.userland.gateway.observe import GatewayMetrics
from llmos.userland.gateway.openai import (CHAT_PARAMS, COMPLETION_PARAMS, EMBED_PARAMS, MAX_PROMPTS, NEUTRAL,
                                           chat_request)

DOC = (Path(__file__).resolve().parent.parent / "specs" / "GATEWAY.md").read_text()


def test_the_doc_lists_exactly_the_routes_served():
    documented = {(path.replace(":path}", "}"), method)
                  for path, method in re.findall(r"^\| `(/[^`]*)` \| (GET|POST) \|", DOC, re.MULTILINE)}
    served = {(r.path.replace(":path}", "}"), m) for r in make_app(Settings()).routes for m in r.methods if m != "HEAD"}
    assert documented == served


def test_the_doc_states_the_consoles_headers_and_bounds():
    web = DOC.split("## Web console", 1)[1]
    assert headers.CSP in " ".join(web.split())
    assert f"| {live.MAX_SUBSCRIBERS} in all, {live.MAX_SUBSCRIBERS_PER_PRINCIPAL} per principal |" in web
    assert f"| {live.MAX_LOADS} in all, {live.MAX_LOADS_PER_PRINCIPAL} per principal |" in web
    assert f"per {live.SNAPSHOT_TTL_S:g} s" in web and f"every {console.loading.POLL_S:g} s" in web


@pytest.mark.parametrize("param", sorted({*CHAT_PARAMS, *COMPLETION_PARAMS, *EMBED_PARAMS, *NEUTRAL,
                                          *responses.PARAMS, *responses.NEUTRAL}))
def test_every_openai_parameter_is_documented(param):
    assert f"`{param}`" in DOC


OLLAMA = DOC.split("## Ollama's API", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("param", sorted({*ollama.CHAT_PARAMS, *ollama.GENERATE_PARAMS, *ollama.EMBED_PARAMS,
                                          *ollama.LEGACY_EMBED_PARAMS, *ollama.OPTIONS, *ollama.MESSAGE_EXTRAS}))
def test_every_ollama_parameter_and_option_is_documented_in_its_section(param):
    assert f"`{param}`" in OLLAMA


def test_the_doc_lists_exactly_the_gateways_metrics():
    section = DOC.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(llmos_gateway_\w+)` \| (\w+) \|", section, re.MULTILINE))
    exported = {f.name + ("_total" if f.type == "counter" else ""): f.type
                for f in GatewayMetrics().registry.collect()}
    assert documented == exported


@pytest.mark.parametrize("errno", sorted(ERRNOS))
def test_every_errno_has_a_status_in_the_doc(errno):
    status, kind = STATUS_OF_ERRNO[errno]
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {status} |"))
    assert errno in row and kind in row


@pytest.mark.parametrize("seed", [-1, -2**63, 0, 7, 2**63 - 1, 2**63, 2**64 - 1])
def test_any_64_bit_seed_reaches_infer_inside_its_bounds_as_the_engine_read_it(seed):
    (args,), _ = chat_request({"messages": [{"role": "user", "content": "hi"}], "seed": seed})
    assert SYSCALLS["infer"].validate(args)["seed"] == seed % 2**63    # what the engine made of it before


def test_the_doc_states_the_http_bounds_the_gateway_keeps():
    bounds = DOC.split("## Bounds", 1)[1].split("\n## ", 1)[0]
    for stated in (f"| prompts in one `/v1/completions` | {MAX_PROMPTS} |", f"| {responses.MAX_METADATA} pairs",
                   f"| {MAX_HEAD_BYTES // 1024} KiB |", f"| {HEAD_TIMEOUT_S:g} s from", f"| {KEEP_ALIVE_S} s |",
                   f"| {MAX_CONNECTIONS}; past it", f"| {LIMIT_CONCURRENCY} (uvicorn's `limit_concurrency`) |"):
        assert stated in bounds
