"""The web console `llmos serve` serves at `/`: chat, and the machine live (specs/GATEWAY.md, "Web console")."""

from __future__ import annotations

from .routes import ROUTES


async def close(app) -> None:
    """Close the console's kernel connections, at the gateway's shutdown."""
    live = getattr(app.state, "console", None)
    if live is not None:
        await live.close()


__all__ = ["ROUTES", "close"]
