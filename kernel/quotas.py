"""Quotas per principal: how much of the machine one user's programs may hold together.

Per-process limits (requests in flight, running at once) stop one program hogging a device;
a user could open many connections, so the limits that matter for sharing count across all
of a principal's processes. Defaults come from the config's [quotas] table; a user's own
override from `user_add {quotas}`. The operator and the service host have no quota unless the
config gives `[quotas.operator]`. A quota used up answers EDQUOT, except the token rate, which
answers EAGAIN with `retry_after`: it frees itself as the minute moves on.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING

from .errors import SyscallError, edquot
from .principals import OPERATOR, SERVICES

if TYPE_CHECKING:
    from .config import Settings
    from .principals import PrincipalTable

QUOTA_NAMES = ("processes", "requests", "tokens_per_minute", "reserve_bytes", "mem_bytes", "mem_keys")
DEFAULT_QUOTAS = {"processes": 64, "requests": 256, "tokens_per_minute": None, "reserve_bytes": None,
                  "mem_bytes": 1 << 30, "mem_keys": 100_000}
WINDOW_S = 60.0


class Quotas:
    def __init__(self, settings: "Settings", principals: "PrincipalTable"):
        self.defaults = {**DEFAULT_QUOTAS, **settings.quotas}
        self.operator_quotas = dict(settings.operator_quotas)
        self.principals = principals
        self.requests: dict[str, int] = defaultdict(int)         # principal -> requests in flight
        self._tokens: dict[str, deque] = defaultdict(deque)      # principal -> (time, tokens) this minute

    def limit(self, principal: str, name: str) -> int | None:
        if principal in (OPERATOR, SERVICES):
            return self.operator_quotas.get(name)
        p = self.principals.get(principal)
        own = p.quotas if p is not None else {}
        return own.get(name, self.defaults.get(name))

    def check(self, principal: str, name: str, used: int, adding: int = 1, what: str = "") -> None:
        """EDQUOT if `adding` more on top of `used` would pass the principal's quota `name`."""
        limit = self.limit(principal, name)
        if limit is not None and used + adding > limit:
            raise edquot(f"{what or name}: user '{principal}' has {used} of its quota of {limit} {name}; "
                         f"ask the operator for more, or free some")

    # -- token rate ------------------------------------------------------------------------------

    def charge_tokens(self, principal: str, tokens: int) -> None:
        if self.limit(principal, "tokens_per_minute") is not None:
            now = time.monotonic()
            self._window(principal, now).append((now, tokens))

    def _window(self, principal: str, now: float) -> deque:
        """This minute's (time, tokens) of a principal: older entries dropped, so it holds a minute at most."""
        window = self._tokens[principal]
        while window and now - window[0][0] > WINDOW_S:
            window.popleft()
        return window

    def check_token_rate(self, principal: str) -> None:
        limit = self.limit(principal, "tokens_per_minute")
        if limit is None:
            return
        now = time.monotonic()
        window = self._window(principal, now)
        used = sum(n for _, n in window)
        if used >= limit:
            retry = WINDOW_S - (now - window[0][0]) if window else 0.0
            raise SyscallError("EAGAIN", f"user '{principal}' generated {used} tokens in the last minute, its "
                                         f"quota is {limit}; retry in {retry:.1f}s", retry_after=max(retry, 0.0))
