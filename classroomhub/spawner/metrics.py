"""Prometheus metrics of ClassroomSpawner, served by the hub at /hub/metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LABELS = ("user", "server")

MEMORY_BYTES = Gauge("classroomhub_server_memory_bytes", "Memory charged to a server's group", LABELS)
MEMORY_PEAK_BYTES = Gauge("classroomhub_server_memory_peak_bytes", "Peak memory of a server's group", LABELS)
MEMORY_LIMIT_BYTES = Gauge("classroomhub_server_memory_limit_bytes", "Memory limit of a server (0: none)", LABELS)
CPU_SECONDS = Gauge("classroomhub_server_cpu_seconds", "CPU seconds used by a server's group since it started", LABELS)
PROCESSES = Gauge("classroomhub_server_processes", "Processes and threads in a server's group", LABELS)
OOM_KILLS = Counter("classroomhub_server_oom_kills", "Processes of a server killed at its memory limit", LABELS)

_GAUGES = (MEMORY_BYTES, MEMORY_PEAK_BYTES, MEMORY_LIMIT_BYTES, CPU_SECONDS, PROCESSES)


def record(spawner, usage):
    labels = (spawner.user.name, spawner.name)
    MEMORY_BYTES.labels(*labels).set(usage.mem_bytes)
    MEMORY_PEAK_BYTES.labels(*labels).set(usage.mem_peak_bytes)
    MEMORY_LIMIT_BYTES.labels(*labels).set(spawner.mem_limit or 0)
    CPU_SECONDS.labels(*labels).set(usage.cpu_seconds)
    PROCESSES.labels(*labels).set(usage.procs)


def forget(spawner):
    """Drop a stopped server's series, so dashboards do not show ghosts."""
    labels = (spawner.user.name, spawner.name)
    for gauge in _GAUGES:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
