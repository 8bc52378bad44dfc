"""The soak's faults and its gauges: a worker replica, a worker's engine process and the popularity tracker
killed at random times, and every few seconds each worker's memory (its replica process and engine process
together: RSS) as the soak goes."""
import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field

import httpx
import psutil
import ray

FAULTS = ("worker", "engine", "tracker")


@dataclass
class Chaos:
    app: str
    url: str
    events: list[dict] = field(default_factory=list)  # {"at": s after the start, "fault": ..., "what": ...}

    def schedule(self, duration_s: float, seed: int) -> list[tuple[float, str]]:
        """Each fault once, in random order, at a random time in its own slot: 15-30%, 40-55%, 65-80% of the run."""
        rng = random.Random(seed)
        order = rng.sample(FAULTS, len(FAULTS))
        return [(rng.uniform(0.15 + 0.25 * i, 0.3 + 0.25 * i) * duration_s, fault) for i, fault in enumerate(order)]

    async def run(self, duration_s: float, seed: int, origin: float) -> None:
        for at, fault in self.schedule(duration_s, seed):
            await asyncio.sleep(max(origin + at - time.perf_counter(), 0))
            what = await asyncio.to_thread(getattr(self, f"kill_{fault}"))
            self.events.append({"at": time.perf_counter() - origin, "fault": fault, "what": what})

    def _replica(self, deployment: str, tag: str = ""):
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if name.startswith(f"SERVE_REPLICA::{self.app}#{deployment}#") and name.endswith(tag):
                return name, ray.get_actor(name, namespace=entry["namespace"])
        raise RuntimeError(f"no live {deployment} replica to kill")

    def _victim(self, timeout_s: float = 120.0) -> dict:
        """Worker 0, once it serves: both worker faults hit the same rank, so the other worker always serves (a
        fleet with no worker at all only queues requests until Serve has replaced one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            workers = httpx.get(f"{self.url}/stats", timeout=30).json()["workers"]
            victim = next((w for w in workers if w.get("worker") == 0 and "adapters" in w), None)
            if victim is not None:
                return victim
            time.sleep(1)
        raise RuntimeError(f"worker 0 did not come back within {timeout_s:.0f} s")

    def kill_worker(self) -> str:
        name, actor = self._replica("LoRAWorker", self._victim()["replica"])
        ray.kill(actor, no_restart=True)
        return name

    def kill_engine(self) -> str:
        worker = self._victim()
        os.kill(worker["engine_pid"], signal.SIGKILL)
        return f"engine process {worker['engine_pid']} of {worker['replica']}"

    def kill_tracker(self) -> str:
        name, actor = self._replica("PopularityTracker")
        ray.kill(actor, no_restart=True)
        return name


async def sample_memory(app: str, origin: float, until_s: float, every_s: float = 5.0) -> list[dict]:
    """{"at", "replica pid", "rss_mb"} of every LoRAWorker replica (with its engine process) of this node."""
    samples = []
    title = f"ServeReplica:{app}:LoRAWorker"
    while time.perf_counter() - origin < until_s:
        for process in psutil.process_iter(["cmdline"]):
            if title not in " ".join(process.info["cmdline"] or []):
                continue
            try:
                rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
            samples.append({"at": time.perf_counter() - origin, "pid": process.pid, "rss_mb": rss / 2**20})
        await asyncio.sleep(every_s)
    return samples
