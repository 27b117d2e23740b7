"""Quotas per principal: how much of the machine one user's programs may hold together.

Per-process limits (requests in flight, running at once) stop one program hogging a device;
a user could open many connections, so the limits that matter for sharing count across all
of a principal's processes. Defaults come from the config's [quotas] table; a user's own
override from `user_add {quotas}`. The operator and the service host have no quota unless the
config gives `[quotas.operator]`. A quota used up answers EDQUOT.

The defaults are finite, so a new user cannot take the machine: a quarter of each device's memory
(`reserve_bytes` may be a share, "25%", of each device, or a size across them all), 60,000 tokens a
minute. The token rate is charged as tokens are generated, not only checked at admission: a
generation that uses up the minute's ends there with EDQUOT, and a request made after that is
EAGAIN with `retry_after` (it frees itself as the minute moves on).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Iterable

from .configschema import DEFAULT_QUOTAS, QUOTA_NAMES, share_of   # the [quotas] table: names, defaults
from .errors import SyscallError, edquot
from .principals import OPERATOR, SERVICES

if TYPE_CHECKING:
    from .config import Settings
    from .job import Job
    from .principals import PrincipalTable
    from .process import Process

WINDOW_S = 60.0


def reservations_of(procs: Iterable["Process"], jobs: Iterable["Job"], principal: str) -> list[tuple[str, int]]:
    """(device, bytes) of what a principal holds reserved: its processes' alloc_gpu and its fine-tune jobs'."""
    held = [r for p in procs if p.principal == principal for r in p.reservations.values()]
    return held + [(j.device, j.reserved) for j in jobs if j.owner == principal and j.reserved]


class Quotas:
    def __init__(self, settings: "Settings", principals: "PrincipalTable"):
        self.defaults = {**DEFAULT_QUOTAS, **settings.quotas}
        self.operator_quotas = dict(settings.operator_quotas)
        self.principals = principals
        self.requests: dict[str, int] = defaultdict(int)         # principal -> requests in flight
        self._tokens: dict[str, deque] = defaultdict(deque)      # principal -> [time, tokens] this minute
        self._used: dict[str, int] = defaultdict(int)            # principal -> the sum of its window

    def limit(self, principal: str, name: str) -> int | str | None:
        if principal in (OPERATOR, SERVICES):
            return self.operator_quotas.get(name)
        p = self.principals.get(principal)
        own = p.quotas if p is not None else {}
        return own.get(name, self.defaults.get(name))

    def effective(self, principal: str) -> dict[str, int | str | None]:
        """Every quota of a principal as it applies now: its overrides over the defaults (None: none)."""
        return {name: self.limit(principal, name) for name in QUOTA_NAMES}

    def check(self, principal: str, name: str, used: int, adding: int = 1, what: str = "") -> None:
        """EDQUOT if `adding` more on top of `used` would pass the principal's quota `name`."""
        limit = self.limit(principal, name)
        if limit is not None and used + adding > limit:
            raise edquot(f"{what or name}: user '{principal}' has {used} of its quota of {limit} {name}; "
                         f"ask the operator for more, or free some")

    def check_reserve(self, principal: str, device: str, device_total: int, held: list[tuple[str, int]],
                      adding: int, what: str) -> None:
        """EDQUOT if reserving `adding` bytes on `device` would pass the principal's reserve_bytes: a share
        counts what it holds on that device against the device's total, a size what it holds on all."""
        limit = self.limit(principal, "reserve_bytes")
        if limit is None:
            return
        share = share_of(limit)
        if share is None:
            self.check(principal, "reserve_bytes", sum(n for _, n in held), adding, what)
            return
        used, cap = sum(n for d, n in held if d == device), int(device_total * share)
        if used + adding > cap:
            raise edquot(f"{what}: user '{principal}' holds {used} bytes of {device}, its quota reserve_bytes is "
                         f"{limit} of it ({cap} bytes); ask the operator for more, or free some")

    # -- token rate ------------------------------------------------------------------------------

    def charge_tokens(self, principal: str, tokens: int) -> SyscallError | None:
        """Count tokens generated for a principal; the EDQUOT to end its generation with once this
        minute's reach its quota (None while they do not, or it has none)."""
        limit = self.limit(principal, "tokens_per_minute")
        if limit is None:
            return None
        now = time.monotonic()
        window = self._window(principal, now)
        if window and now - window[-1][0] < 1.0:      # one entry a second: the window holds 61 at most
            window[-1][1] += tokens
        else:
            window.append([now, tokens])
        self._used[principal] += tokens
        used = self._used[principal]
        if used < limit:
            return None
        return SyscallError("EDQUOT", f"user '{principal}' generated {used} tokens in the last minute, its quota "
                                      f"tokens_per_minute is {limit}; the text so far was sent, retry in "
                                      f"{self._retry(window, now):.1f}s", retry_after=self._retry(window, now))

    def _window(self, principal: str, now: float) -> deque:
        """This minute's [time, tokens] of a principal: older entries dropped, so it holds a minute at most."""
        window = self._tokens[principal]
        while window and now - window[0][0] > WINDOW_S:
            self._used[principal] -= window.popleft()[1]
        return window

    def forget(self, principal: str) -> None:
        """A removed user's token window: the table of windows holds only users that exist, and a user
        added again under the name starts its minute afresh."""
        self._tokens.pop(principal, None)
        self._used.pop(principal, None)

    @staticmethod
    def _retry(window: deque, now: float) -> float:
        return max(WINDOW_S - (now - window[0][0]), 0.0) if window else 0.0

    def check_token_rate(self, principal: str) -> None:
        limit = self.limit(principal, "tokens_per_minute")
        if limit is None:
            return
        now = time.monotonic()
        window = self._window(principal, now)
        used = self._used[principal]
        if used >= limit:
            retry = self._retry(window, now)
            raise SyscallError("EAGAIN", f"user '{principal}' generated {used} tokens in the last minute, its "
                                         f"quota is {limit}; retry in {retry:.1f}s", retry_after=retry)
