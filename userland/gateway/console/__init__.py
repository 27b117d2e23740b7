"""The web console `llmos serve` serves at `/`: chat, and the machine live (specs/GATEWAY.md, "Web console")."""

from __future__ import annotations

from starlette.routing import Route

from . import routes, static
from .loading import load
from .routes import secured

ROUTES = [
    Route("/", secured(static.index), methods=["GET"]),
    Route("/console/api/whoami", secured(routes.whoami), methods=["GET"]),
    Route("/console/api/snapshot", secured(routes.snapshot), methods=["GET"]),
    Route("/console/api/events", secured(routes.events), methods=["GET"]),
    Route("/console/api/processes/kill", secured(routes.kill), methods=["POST"]),
    Route("/console/api/models/load", secured(load), methods=["POST"]),
    Route("/console/api/models/unload", secured(routes.unload), methods=["POST"]),
    Route("/console/api/jobs/cancel", secured(routes.cancel_job), methods=["POST"]),
    Route("/console/api/services", secured(routes.services), methods=["GET"]),
    Route("/console/api/services/call", secured(routes.call_service), methods=["POST"]),
    Route("/console/api/audit", secured(routes.audit), methods=["GET"]),
    Route("/console/api/audit/verify", secured(routes.verify_audit), methods=["POST"]),
    Route("/console/{path:path}", secured(static.asset), methods=["GET"]),
]


async def close(app) -> None:
    """Close the console's kernel connections, at the gateway's shutdown."""
    live = getattr(app.state, "console", None)
    if live is not None:
        await live.close()
