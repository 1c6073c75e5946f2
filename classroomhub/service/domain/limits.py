"""Fair shares: one job per person at a time, and a bounded rate of requests.

A student's own requests (syncs, hand-ins) queue behind each other, never
behind or in front of everyone else's, and past a rate they are refused
with the time to wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time


class TooMany(Exception):
    """Refused for now: too many requests; *retry_after* seconds until one is allowed."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class KeyedLocks:
    """An asyncio lock per key (a student, a student's material), dropped when unused."""

    def __init__(self):
        self._locks = {}  # key -> [lock, users]

    @contextlib.asynccontextmanager
    async def hold(self, key):
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]

    def busy(self, key):
        return key in self._locks


class RateLimit:
    """At most *count* events per key in any *window* seconds (0: no limit)."""

    def __init__(self, count, window, what="requests"):
        self.count = count
        self.window = window
        self.what = what
        self._events = {}  # key -> deque of monotonic times

    def take(self, key):
        """Count one event for *key*, or raise :class:`TooMany`."""
        if not self.count:
            return
        now = time.monotonic()
        events = self._events.setdefault(key, collections.deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.count:
            wait = max(1, math.ceil(events[0] + self.window - now))
            raise TooMany(f"Too many {self.what}: at most {self.count} in {self.window:g} s; try again in {wait} s", wait)
        events.append(now)
        if len(self._events) > 10_000:  # forget people with no recent event
            for other in [k for k, q in self._events.items() if not q or q[-1] <= now - self.window]:
                del self._events[other]
