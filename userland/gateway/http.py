"""The gateway's HTTP connections, bounded: uvicorn's h11 protocol with a deadline on each request head
and a cap on connections.

uvicorn closes a keep-alive connection idle for timeout_keep_alive and answers 503 past
limit_concurrency, but it has no deadline for a request head: a client that opens a connection
and sends its headers a byte at a time (slowloris) is held as long as it likes, and any data
resets the keep-alive timer. So here:
- a connection has HEAD_TIMEOUT_S from its start, and from the end of each answer on it, to send a
  whole request line and headers (at most MAX_HEAD_BYTES); else it gets 408 and is closed;
- MAX_CONNECTIONS at once: past it, a new connection takes the place of the oldest one waiting for
  a request head (slow, or idle between requests); when none is, the new one is closed;
- LIMIT_CONCURRENCY, above MAX_CONNECTIONS, is uvicorn's limit_concurrency: requests in progress
  (which may outlive a client that left) past it are answered 503.
specs/GATEWAY.md ("Bounds") is the contract.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024          # h11_max_incomplete_event_size: over it, 400
MAX_CONNECTIONS = 512
LIMIT_CONCURRENCY = 640
KEEP_ALIVE_S = 5                    # uvicorn's timeout_keep_alive: an idle connection closes after it

_TIMEOUT_BODY = f"no whole request head within {HEAD_TIMEOUT_S:g} s\n".encode()
TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request head and a cap on connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.head_timer: asyncio.TimerHandle | None = None
        self.waiting_since = self.loop.time()
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS and not self._close_oldest_waiting():
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if not self.waiting_for_head():
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():       # the next request on this connection: a new deadline
            self.waiting_since = self.loop.time()
            self._arm_head_timer()

    def waiting_for_head(self) -> bool:
        """No request in progress: the client owes us a request line and headers."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self.head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.waiting_for_head() and not self.transport.is_closing():
            self.transport.write(TIMEOUT_ANSWER)
            self.transport.close()

    def _close_oldest_waiting(self) -> bool:
        waiting = [c for c in self.connections if c is not self and isinstance(c, BoundedH11Protocol)
                   and c.waiting_for_head() and not c.transport.is_closing()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.waiting_since)
        oldest.transport.close()
        self.connections.discard(oldest)      # now, not when the loop gets to its connection_lost
        return True


def uvicorn_options() -> dict:
    """What `llmos serve` passes uvicorn.run for these bounds."""
    return {"http": BoundedH11Protocol, "limit_concurrency": LIMIT_CONCURRENCY, "timeout_keep_alive": KEEP_ALIVE_S,
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


async def read_bounded(request, limit: int, too_large: Exception) -> bytes:
    """A request's body, refused (too_large raised) past limit bytes: at once when Content-Length says
    so, else as soon as the chunks streamed in pass it, so nothing past the limit is held."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    data, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        data.append(chunk)
    return b"".join(data)
