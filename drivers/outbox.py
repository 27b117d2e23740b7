"""How often a driver sends the kernel its steps' tokens: every step, unless steps come faster than
people read.

Each frame a driver sends wakes the kernel, which wakes the client it forwards to: four thread
wake-ups over two processes per frame. On a CPU every core is already the driver's, computing the
next step, and each wake-up takes a core from under a compute thread that its siblings then wait
for at the next barrier. At one frame per token, a single stream on llama.cpp (a 10 ms step on
two cores) lost about a fifth of its rate to this (benchmarks/README.md, "CPU: llmos against
llama.cpp"). So while steps are shorter than STREAM_INTERVAL_S, a step's events are held and
merged into the next step's, and go out together once the interval has passed: a stream then
arrives a few tokens a frame, 50 times a second, which no reader can tell from one token a frame.

Never held: a request's first event (time to first token is what an interactive user waits for),
a final one (the request's end, an error), prefill progress, and anything when the driver has no
more work (nothing would come to flush it). Steps slower than the interval go out one by one, as
before. The ABI promises a stream "any number of frames" whose deltas add up to the text; both
stay true.
"""

from __future__ import annotations

import time

from llmos.specs.channel import TokenEvent

STREAM_INTERVAL_S = 0.02


class Outbox:
    """A step's events in, frames' worth of events out (`take`), merged per request."""

    def __init__(self, interval_s: float = STREAM_INTERVAL_S, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.held: dict[int, TokenEvent] = {}   # rid -> its events since the last send, merged
        self.started: set[int] = set()          # rids that have had a token sent (their first is not held)
        self.urgent = False                     # something held must go with the next take
        self.last_sent = clock()

    def add(self, events: list[TokenEvent]) -> None:
        for ev in events:
            if ev.finish is not None or ev.prefill is not None or ev.rid not in self.started:
                self.urgent = True
            held = self.held.get(ev.rid)
            self.held[ev.rid] = ev if held is None else merged(held, ev)

    def take(self, more_work: bool) -> list[TokenEvent]:
        """The events to send now (often none while they are being held)."""
        if not self.held:
            return []
        now = self.clock()
        if more_work and not self.urgent and now - self.last_sent < self.interval_s:
            return []
        out = list(self.held.values())
        self.held.clear()
        self.urgent = False
        self.last_sent = now
        for ev in out:
            if ev.finish is not None:
                self.started.discard(ev.rid)
            elif ev.tokens:
                self.started.add(ev.rid)
        return out

    def drop(self, rid: int) -> None:
        """A cancelled request: what is held for it is not sent."""
        self.held.pop(rid, None)
        self.started.discard(rid)


def merged(a: TokenEvent, b: TokenEvent) -> TokenEvent:
    """b following a, as one event: texts, counts, ids and logprobs joined; the rest is b's."""
    def join(x: list | None, y: list | None) -> list | None:
        return None if x is None and y is None else [*(x or ()), *(y or ())]

    return TokenEvent(b.rid, a.delta + b.delta, a.tokens + b.tokens, b.finish, b.usage, b.errno, b.message,
                      b.prefill, join(a.ids, b.ids), join(a.logprobs, b.logprobs), b.tool_calls)
