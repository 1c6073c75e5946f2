"""When is a server idle, and which servers go first under memory pressure.

Hub activity alone is not enough: a kernel computing silently with the tab
closed sends none. A server counts as idle only when the hub saw no activity
for the idle timeout *and* its processes averaged less than a CPU fraction
over that same window.
"""

from __future__ import annotations

import time
from collections import deque


class IdleTracker:
    """CPU samples of one server and the decisions drawn from them."""

    def __init__(self, started=None):
        self.started = started if started is not None else time.time()
        self.samples = deque()  # (wall time, cumulative CPU seconds)
        self.last_busy = self.started

    def add(self, now, cpu_seconds, busy_fraction, keep_seconds):
        """Record a sample; mark the server busy if it used >= *busy_fraction* since the last."""
        if self.samples:
            t0, c0 = self.samples[-1]
            if now > t0 and (cpu_seconds - c0) / (now - t0) >= busy_fraction:
                self.last_busy = now
        self.samples.append((now, cpu_seconds))
        # keep one sample at or before the window start, to measure across it
        while len(self.samples) > 2 and self.samples[1][0] <= now - keep_seconds:
            self.samples.popleft()

    def cpu_fraction(self, now, window):
        """Average cores used over the last *window* seconds; None until the window is covered."""
        if not self.samples or self.samples[0][0] > now - window:
            return None
        start = self.samples[0]
        for sample in self.samples:
            if sample[0] > now - window:
                break
            start = sample
        end = self.samples[-1]
        if end[0] <= start[0]:
            return None
        return (end[1] - start[1]) / (end[0] - start[0])

    def busy_share(self, now, window, fraction):
        """The share of the last *window* seconds spent in intervals between
        two samples that used at least *fraction* of a core (a loop: all of
        it; a student between cells: little); None until the window is
        covered. A share, not the least of them: one pause per window must not
        be enough to count as not busy."""
        if not self.samples or self.samples[0][0] > now - window:
            return None
        pairs = [(t0, c0, t1, c1) for (t0, c0), (t1, c1) in zip(list(self.samples), list(self.samples)[1:])]
        pairs = [p for p in pairs if p[2] > now - window and p[2] > p[0]]
        total = sum(t1 - t0 for t0, _, t1, _ in pairs)
        if not total:
            return None
        return sum(t1 - t0 for t0, c0, t1, c1 in pairs if (c1 - c0) / (t1 - t0) >= fraction) / total

    def idle_seconds(self, now, last_activity):
        """Seconds since the later of hub activity and the last busy sample."""
        return now - max(last_activity or self.started, self.last_busy, self.started)

    def cull_reason(self, now, last_activity, idle_timeout, max_age, cpu_fraction_limit):
        """Why the server should be culled now, or None."""
        if max_age and now - self.started >= max_age:
            return f"reached its maximum age of {max_age} s"
        if not idle_timeout:
            return None
        if now - max(last_activity or self.started, self.started) < idle_timeout:
            return None
        used = self.cpu_fraction(now, idle_timeout)
        if used is None or used >= cpu_fraction_limit:
            return None
        return f"idle for {idle_timeout} s (no hub activity, {used:.3f} cores used on average)"


def mem_available(meminfo_path="/proc/meminfo", field="MemAvailable"):
    """MemAvailable in bytes (what the kernel could give without swapping),
    or another *field* of /proc/meminfo such as MemTotal."""
    with open(meminfo_path) as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo_path} has no {field} line")


def idlest_first(spawners, now, min_idle=None):
    """Running spawners idle for at least *min_idle* s, the idlest first.

    With *min_idle* None each spawner's own ``pressure_min_idle`` applies,
    so a tier can protect its servers for longer.
    """
    candidates = []
    for spawner in spawners:
        if not spawner.active or spawner.pending:
            continue
        idle = spawner.idle_seconds(now)
        threshold = spawner.pressure_min_idle if min_idle is None else min_idle
        if idle is not None and idle >= threshold:
            candidates.append((idle, spawner))
    candidates.sort(key=lambda pair: pair[0], reverse=True)
    return [spawner for _, spawner in candidates]
