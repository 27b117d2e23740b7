"""The web console `llmos serve` serves at `/`: chat, and the machine live (specs/GATEWAY.md, "Web console")."""

from __future__ import annotations

from starlette.routing import Route

from . import routes, static
from .loading import load

ROUTES = [
    Route("/", static.index, methods=["GET"]),
    Route("/console/api/whoami", routes.whoami, methods=["GET"]),
    Route("/console/api/snapshot", routes.snapshot, methods=["GET"]),
    Route("/console/api/events", routes.events, methods=["GET"]),
    Route("/console/api/processes/kill", routes.kill, methods=["POST"]),
    Route("/console/api/models/load", load, methods=["POST"]),
    Route("/console/api/models/unload", routes.unload, methods=["POST"]),
    Route("/console/api/jobs/cancel", routes.cancel_job, methods=["POST"]),
    Route("/console/api/services", routes.services, methods=["GET"]),
    Route("/console/api/services/call", routes.call_service, methods=["POST"]),
    Route("/console/api/audit", routes.audit, methods=["GET"]),
    Route("/console/api/audit/verify", routes.verify_audit, methods=["POST"]),
    Route("/console/{path:path}", static.asset, methods=["GET"]),
]


async def close(app) -> None:
    """Close the console's kernel connections, at the gateway's shutdown."""
    live = getattr(app.state, "console", None)
    if live is not None:
        await live.close()
