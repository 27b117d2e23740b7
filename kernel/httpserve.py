"""The metrics port: GET /metrics, /health/live and /health/ready, served on the kernel's own loop.

No thread and no web framework: /health/live answering must prove that the loop that serves
syscalls answers. So the HTTP is the smallest that Prometheus, curl and load balancers need,
with every bound explicit: one GET per connection (the answer closes it), a request line plus
headers of at most MAX_HEAD_BYTES (else 431), READ_TIMEOUT_S to send them (else 408),
WRITE_TIMEOUT_S for a reader to take the answer. Anything else is 400, 404 or 405. The data is
read-only and unauthenticated: bind it to loopback, or to an address only the scrapers reach.

Connections: MAX_CONNECTIONS at once, MAX_CONNECTIONS_PER_CLIENT from one address. Past either, a
new connection takes the place of the oldest one (of that address, or anyone's) that is still
sending its request; only when none is, is it closed unanswered. So slow clients (slowloris) can
hold slots for at most READ_TIMEOUT_S each, and never the one a scraper or load balancer needs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from . import logs
from .config import split_listen

log = logs.get("llmos.metrics")

MAX_HEAD_BYTES = 8 << 10
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_CLIENT = 8
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
READY_WAIT_S = 12.0        # /health/ready waits this long for a probe it started (or found running)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class MetricsUnavailable(RuntimeError):
    """The metrics address cannot be served (taken, or not this machine's); the boot is refused."""


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    def __init__(self, listen: str, exposition: Callable[[], bytes],
                 readiness: Callable[[float], Awaitable[tuple[bool, str]]]):
        """exposition: the metrics in Prometheus's text format; readiness: (ready, why), waiting up to
        the seconds given for a probe under way (health.Readiness.check)."""
        self.exposition = exposition
        self.readiness = readiness
        self.host, self.port = split_listen(listen)
        self.server: asyncio.Server | None = None
        self.open: dict[asyncio.StreamWriter, Slot] = {}     # insertion-ordered: the oldest first

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_HEAD_BYTES)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}") from None
        bound = self.server.sockets[0].getsockname()
        self.port = bound[1]
        if not is_loopback(self.host):
            log.warning("metrics.exposed", listen=f"{self.host}:{self.port}",
                        note="metrics and health are unauthenticated read-only data; "
                             "firewall this port to the scrapers")
        log.info("metrics.listening", listen=f"{self.host}:{self.port}")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        slot = Slot(peer[0] if isinstance(peer, tuple) else "")
        if not self._make_room(slot.client):
            writer.close()
            return
        self.open[writer] = slot
        try:
            try:
                path = await self._read_request(reader)
                slot.reading = False
                status, ctype, body = await self._answer(path)
            except HttpError as exc:
                status, ctype, body = exc.status, "application/json", _json({"error": str(exc)})
            except (asyncio.IncompleteReadError, ConnectionError):
                return      # the client left before asking
            head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                    + ("Allow: GET\r\n" if status == 405 else "") + "\r\n")
            writer.write(head.encode("ascii") + body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            if status >= 400:
                await _discard(reader)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self.open.pop(writer, None)
            writer.close()

    def _make_room(self, client: str) -> bool:
        """Room for one more connection from `client`, if need be by closing the oldest connection (its
        own, then anyone's) still sending its request; False when there is none to close."""
        mine = [w for w, slot in self.open.items() if slot.client == client]
        if len(mine) >= MAX_CONNECTIONS_PER_CLIENT and not self._close_oldest_reading(mine):
            return False
        return len(self.open) < MAX_CONNECTIONS or self._close_oldest_reading(list(self.open))

    def _close_oldest_reading(self, writers: list[asyncio.StreamWriter]) -> bool:
        for writer in writers:
            if self.open[writer].reading:
                del self.open[writer]
                writer.close()      # its read ends at once; it answers nothing
                return True
        return False

    async def _read_request(self, reader: asyncio.StreamReader) -> str:
        """The path of one GET, from a head within MAX_HEAD_BYTES read within READ_TIMEOUT_S."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request line and headers over {MAX_HEAD_BYTES} bytes") from None
        except asyncio.TimeoutError:
            raise HttpError(408, f"no complete request within {READ_TIMEOUT_S:g} s") from None
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
            raise HttpError(400, "malformed request line")
        if any(b":" not in line for line in lines[1:]):
            raise HttpError(400, "malformed header line")
        if parts[0] != b"GET":
            raise HttpError(405, "only GET is served here")
        return parts[1].split(b"?", 1)[0].decode("ascii", "replace")

    async def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.exposition()
        if path == "/health/live":
            return 200, "application/json", _json({"status": "live"})
        if path == "/health/ready":
            ready, why = await self.readiness(READY_WAIT_S)
            if ready:
                return 200, "application/json", _json({"status": "ready", "reason": why})
            return 503, "application/json", _json({"status": "not ready", "reason": why})
        raise HttpError(404, "served here: /metrics, /health/live, /health/ready")


async def _discard(reader: asyncio.StreamReader, limit: int = 1 << 20, within_s: float = 0.5) -> None:
    """Take (a bounded part of) what a refused client still sends, so that closing does not reset the
    connection before it reads the answer."""
    try:
        while limit > 0:
            chunk = await asyncio.wait_for(reader.read(64 << 10), within_s)
            if not chunk:
                return
            limit -= len(chunk)
    except (asyncio.TimeoutError, ConnectionError):
        pass


@dataclass
class Slot:
    client: str                 # the peer's address
    reading: bool = True        # still sending its request line and headers


def _json(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"
