"""The console's files, read once from static/ and served by name: a path outside that table is 404.

No build step: static/ holds the HTML, the CSS and the ES modules as the browser runs them.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from ..errors import ApiError
from .headers import STATIC_HEADERS

STATIC_DIR = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".txt": "text/plain; charset=utf-8"}


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.suffix in TYPES:
            files[path.relative_to(STATIC_DIR).as_posix()] = (path.read_bytes(), TYPES[path.suffix])
    return files


FILES = _load()


def _serve(name: str) -> Response:
    found = FILES.get(name)
    if found is None:
        raise ApiError(404, f"no console file {name[:200]!r}", "not_found_error", code="not_found")
    body, kind = found
    return Response(body, media_type=kind, headers=STATIC_HEADERS)


async def index(request: Request):
    return _serve("index.html")


async def asset(request: Request):
    return _serve(request.path_params["path"] or "index.html")
