"""specs/GATEWAY.md names every route, parameter and errno status the gateway's code has, and no other route."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmos.specs import SYSCALLS
from llmos.specs.protocol import ERRNOS
from llmos.userland.gateway.app import Settings, make_app
from llmos.userland.gateway.errors import STATUS_OF_ERRNO
from llmos.userland.gateway.http import HEAD_TIMEOUT_S, KEEP_ALIVE_S, LIMIT_CONCURRENCY, MAX_CONNECTIONS, MAX_HEAD_BYTES
from llmos.userland.gateway.openai import CHAT_PARAMS, COMPLETION_PARAMS, EMBED_PARAMS, NEUTRAL, chat_request

DOC = (Path(__file__).resolve().parent.parent / "specs" / "GATEWAY.md").read_text()


def test_the_doc_lists_exactly_the_routes_served():
    documented = set(re.findall(r"^\| `(/[^`]+)` \| (GET|POST) \|", DOC, re.MULTILINE))
    served = {(r.path, m) for r in make_app(Settings()).routes for m in r.methods if m != "HEAD"}  # every module's routes
    assert documented == served


@pytest.mark.parametrize("param", sorted({*CHAT_PARAMS, *COMPLETION_PARAMS, *EMBED_PARAMS, *NEUTRAL}))
def test_every_parameter_is_documented(param):
    assert f"`{param}`" in DOC


@pytest.mark.parametrize("errno", sorted(ERRNOS))
def test_every_errno_has_a_status_in_the_doc(errno):
    status, kind = STATUS_OF_ERRNO[errno]
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {status} |"))
    assert errno in row and kind in row


@pytest.mark.parametrize("seed", [-1, -2**63, 0, 7, 2**63 - 1, 2**63, 2**64 - 1])
def test_any_64_bit_seed_reaches_infer_inside_its_bounds_as_the_engine_read_it(seed):
    args, _ = chat_request({"messages": [{"role": "user", "content": "hi"}], "seed": seed})
    assert SYSCALLS["infer"].validate(args)["seed"] == seed % 2**63    # what the engine made of it before


def test_the_doc_states_the_http_bounds_the_gateway_keeps():
    bounds = DOC.split("## Bounds", 1)[1].split("\n## ", 1)[0]
    for stated in (f"| {MAX_HEAD_BYTES // 1024} KiB |", f"| {HEAD_TIMEOUT_S:g} s from", f"| {KEEP_ALIVE_S} s |",
                   f"| {MAX_CONNECTIONS}; past it", f"| {LIMIT_CONCURRENCY} (uvicorn's `limit_concurrency`) |"):
        assert stated in bounds
