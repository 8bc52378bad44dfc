"""CPU time of the serving processes on this host during a run: which one is the bottleneck.

A process at ~1.0 CPU-seconds per wall-second is saturated (one Python interpreter, one core); its CPU
milliseconds per request say what a request costs there. Processes are told apart by their command line
(Ray names its actors' processes `ray::<Class>`), so only processes of this host are seen.

    before = snapshot(); ...run...; usage = cpu_usage(before, snapshot(), seconds, requests)
"""
import os
from dataclasses import dataclass

# Command-line marker -> the name a report uses; first match wins.
ROLES = (
    ("ray::ProxyActor", "proxy"),
    (":Ingress", "ingress"),
    (":LoRAWorker", "worker"),
    ("fair_lora.serving.core_process", "engine_core"),
    (":PopularityTracker", "tracker"),
    ("ray::ServeController", "controller"),
    ("gcs_server", "gcs"),
    ("raylet", "raylet"),
)


@dataclass(frozen=True)
class Sample:
    role: str
    cpu_s: float  # user + system since the process started


def snapshot() -> dict[int, Sample]:
    """Every process of this host whose command line names a serving role; this process as "client"."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, Sample] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        role = "client" if pid == os.getpid() else next((name for mark, name in ROLES if mark in cmdline), None)
        if role is not None:
            out[pid] = Sample(role, (int(fields[11]) + int(fields[12])) / ticks)  # utime, stime
    return out


def cpu_usage(before: dict[int, Sample], after: dict[int, Sample], seconds: float, requests: int) -> dict[str, dict]:
    """Per role (processes of one role summed; a process's share counts from when it was first seen):
    busy = CPU-seconds per wall-second, ms_per_request = CPU milliseconds per request, processes."""
    per_role: dict[str, list[float]] = {}
    for pid, sample in after.items():
        start = before.get(pid)
        used = sample.cpu_s - (start.cpu_s if start is not None and start.role == sample.role else 0.0)
        per_role.setdefault(sample.role, []).append(used)
    return {
        role: {"busy": sum(used) / seconds, "max_busy": max(used) / seconds,
               "ms_per_request": 1000 * sum(used) / max(requests, 1), "processes": len(used)}
        for role, used in sorted(per_role.items())
    }
