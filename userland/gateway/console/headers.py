"""The headers every console response carries: a strict Content-Security-Policy and no caching of the API.

The page loads only its own files (no inline script or style, no other origin), talks only to
this gateway, and may not be framed. API answers are the principal's view of the machine:
never stored by a browser or a proxy.
"""

from __future__ import annotations

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

SECURITY = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer"}
STATIC_HEADERS = {**SECURITY, "Cache-Control": "no-cache"}      # revalidated, so a new version shows at once
API_HEADERS = {**SECURITY, "Cache-Control": "no-store"}
EVENT_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no"),
                 *((k.lower().encode(), v.encode()) for k, v in API_HEADERS.items())]
