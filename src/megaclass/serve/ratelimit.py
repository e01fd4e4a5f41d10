"""Rate limiting of refused (401) requests, per client address.

Every refused attempt is audited (who tried what). Unbounded, that is also a way to fill
the audit table and the disk: a client that keeps sending bad keys would write a row per
request. So each client address may be refused :attr:`RefusalLimiter.max_refusals`
times per :attr:`RefusalLimiter.window_s` seconds with an audit row each; past that its
refused requests get 429 (``Retry-After``) and *one* audit row says that it is being
limited, until its window has room again. Requests with a valid key are never limited
(several users behind one address keep working while someone there mistypes a key).

Memory is bounded: at most :attr:`RefusalLimiter.max_clients` addresses are tracked (the
least recently refused are forgotten first).

Example
-------
>>> limiter = RefusalLimiter(max_refusals=2, window_s=60)
>>> [limiter.check("10.0.0.1", now=0.0) for _ in range(4)]
['audit', 'audit', 'limit-first', 'limit']
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque


class RefusalLimiter:
    """A sliding-window count of refused requests per client address (thread-safe)."""

    def __init__(self, max_refusals: int = 30, window_s: float = 60.0, max_clients: int = 10_000):
        self.max_refusals = max_refusals
        self.window_s = window_s
        self.max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._limited: set[str] = set()
        self._lock = threading.Lock()

    def check(self, client: str, *, now: float) -> str:
        """Count one refusal of ``client``: ``"audit"`` (within the budget: audit it and
        answer 401), ``"limit-first"`` (over it for the first time in a row: audit that it
        is being limited, answer 429) or ``"limit"`` (429, no audit row)."""
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            self._seen[client] = times  # most recently refused last
            while times and times[0] <= now - self.window_s:
                times.popleft()
            while len(self._seen) > self.max_clients:
                old, _ = self._seen.popitem(last=False)
                self._limited.discard(old)
            if len(times) < self.max_refusals:
                times.append(now)
                self._limited.discard(client)
                return "audit"
            if client in self._limited:
                return "limit"
            self._limited.add(client)
            return "limit-first"

    def retry_after(self, client: str, *, now: float) -> int:
        """Seconds until ``client`` may be refused with an audit row again."""
        with self._lock:
            times = self._seen.get(client)
            if not times:
                return 0
            return max(1, math.ceil(times[0] + self.window_s - now))
