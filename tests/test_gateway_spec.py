"""specs/GATEWAY.md names every route, parameter and errno status the gateway's code has, and no other route."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmos.specs.protocol import ERRNOS
from llmos.userland.gateway.app import ROUTES
from llmos.userland.gateway.errors import STATUS_OF_ERRNO
from llmos.userland.gateway.openai import CHAT_PARAMS, COMPLETION_PARAMS, EMBED_PARAMS, NEUTRAL

DOC = (Path(__file__).resolve().parent.parent / "specs" / "GATEWAY.md").read_text()


def test_the_doc_lists_exactly_the_routes_served():
    documented = set(re.findall(r"^\| `(/[^`]+)` \| (GET|POST) \|", DOC, re.MULTILINE))
    served = {(r.path, m) for r in ROUTES for m in r.methods if m != "HEAD"}
    assert documented == served


@pytest.mark.parametrize("param", sorted({*CHAT_PARAMS, *COMPLETION_PARAMS, *EMBED_PARAMS, *NEUTRAL}))
def test_every_parameter_is_documented(param):
    assert f"`{param}`" in DOC


@pytest.mark.parametrize("errno", sorted(ERRNOS))
def test_every_errno_has_a_status_in_the_doc(errno):
    status, kind = STATUS_OF_ERRNO[errno]
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {status} |"))
    assert errno in row and kind in row
