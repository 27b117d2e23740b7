"""Values at and past every declared edge of an argument, read from its declaration (an abi.Arg).

`edges(arg)` gives (value, inside) pairs: inside values are ones the declaration allows (min, max,
max_len, max_items, each choice, nil when nullable), the rest are past an edge or of a wrong type
and must be answered EINVAL naming the argument. What msgpack cannot carry (ints past
[-2**63, 2**64-1]) is left out; a bound not declared (a third-party plugin's) has no edge, and the
biggest ints count as inside it. Inside values too big to be cheap (strings over INSIDE_CHARS,
lists over INSIDE_ITEMS) are left out: the heaviest legal calls have tests of their own.
"""

from __future__ import annotations

import itertools
import math
import time

import msgpack
import zmq

from llmos.userland.testing import curve_dealer

MSGPACK_INTS = (-2**63, 2**64 - 1)
BIG_INTS = (-2**63, 2**63, 2**64 - 1)
INSIDE_CHARS = 65536
INSIDE_ITEMS = 4096
WRONG = {"bool": True, "int": 7, "float": 0.5, "str": "7", "bytes": b"7", "list": [7], "map": {"k": 7}}


def edges(arg, item=None) -> list[tuple[object, bool]]:
    """(value, inside) at and past each edge of arg; item: what a list of it holds (default "x")."""
    types, out = set(arg.types), []
    if "any" in types:
        return out
    if "int" in types or "float" in types:
        out += _number_edges(arg, "float" in types)
    max_len, max_items = arg.max_len, getattr(arg, "max_items", None)
    if "str" in types and arg.choices is None:
        out += _sized(max_len, lambda n: "x" * n)
    if "bytes" in types:
        out += _sized(max_len, lambda n: b"\0" * n)
    if "list" in types:
        sample = "x" if item is None else item
        out += _sized(max_items, lambda n: [sample] * n, INSIDE_ITEMS)
        if isinstance(sample, str):
            out += _sized(max_len, lambda n: ["x" * n])
    if "map" in types:
        out += _sized(max_items, lambda n: {f"k{i}": 0 for i in range(n)}, INSIDE_ITEMS)
    if arg.choices is not None:
        out += [(c, True) for c in arg.choices] + [("not-one-of-them", False)]
    if "bool" in types:
        out += [(True, True), (False, True)]
    out.append((None, "null" in types))
    for name, value in WRONG.items():
        if name not in types and not (name == "int" and "float" in types):
            out.append((value, False))
    return out


def _number_edges(arg, is_float: bool) -> list[tuple[object, bool]]:
    lo, hi = arg.min, arg.max
    out = [(v, True) for v in (lo, hi) if v is not None]
    if is_float:
        out += [(math.nextafter(v, d), False) for v, d in ((lo, -math.inf), (hi, math.inf)) if v is not None]
        out += [(math.nan, False), (math.inf, False), (-math.inf, False)]
    else:
        out += [(v + d, False) for v, d in ((lo, -1), (hi, 1))
                if v is not None and MSGPACK_INTS[0] <= v + d <= MSGPACK_INTS[1]]
    out += [(v, not (lo is not None and v < lo or hi is not None and v > hi)) for v in BIG_INTS]
    return out


def _sized(limit: int | None, make, inside_limit: int = INSIDE_CHARS) -> list[tuple[object, bool]]:
    if limit is None:
        return []
    return ([(make(limit), True)] if limit <= inside_limit else []) + [(make(limit + 1), False)]


def shown(value) -> str:
    """A short name for a value in an assertion message."""
    if isinstance(value, (str, bytes, list, dict)) and len(value) > 8:
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} chars)"


class RawCaller:
    """A DEALER speaking raw frames as the principal of a key file (CurveZMQ on a tcp kernel):
    call() sends any map of args and gives the final reply, skipping notices and stream frames."""

    def __init__(self, socket: str, key_file: str):
        self.socket, self.key_file = socket, key_file
        self.ctx = zmq.Context()
        self.sock = curve_dealer(self.ctx, socket, key_file)
        self.ids = itertools.count(1)

    def call(self, call: str, args: dict, timeout: float = 60.0) -> dict:
        req_id = next(self.ids)
        self.sock.send(msgpack.packb({"v": 1, "id": req_id, "call": call, "args": args}, use_bin_type=True))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError(f"{call}: no final reply within {timeout:g}s")
            reply = msgpack.unpackb(self.sock.recv(), raw=False)
            if reply.get("id") == req_id and not reply.get("more"):
                return reply

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
