"""Serve request router for LoRAWorker: a request for an adapter that some workers keep merged goes to the
least loaded of them; any other request goes to the least loaded worker.

Serve calls choose_replicas() in the caller's process (the ingress) and tries the returned tiers in order,
picking the replica with the fewest ongoing requests within a tier (its queue-length cache, or a probe), and
moving to the next tier when every replica of a tier is full. Each worker's hot adapter comes from its
record_routing_stats() (it lags by up to request_routing_stats_period_s); every worker serves every
adapter, so a stale view only costs speed, never correctness.
"""
import random

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from deployments.lost_workers import is_lost
from deployments.worker_protocol import GenerateRequest


class HotAdapterRouter(RequestRouter):
    def initialize_state(self, imbalance_threshold: int = 64) -> None:
        # A hot worker is skipped when it has this many more requests in flight than the least loaded worker:
        # past that, waiting costs more than the correction path saves.
        self.imbalance_threshold = imbalance_threshold

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        # A worker whose engine died says so in its stats (and the ingress marks it lost as soon as a request of
        # it fails); Serve replaces it after failed health checks. With none left, the request fails there and is
        # re-run (worker_call.py) until Serve has a live one.
        replicas = [r for r in candidate_replicas if _alive(r)] or list(candidate_replicas)
        random.shuffle(replicas)  # ties between equally loaded replicas must not always go to the same one
        adapter = _adapter_of(pending_request)
        hot = [r for r in replicas if adapter is not None and r.routing_stats.get("hot_adapter") == adapter]
        if not hot or self._load(hot) - self._load(replicas) > self.imbalance_threshold:
            return [replicas]
        return [hot, [r for r in replicas if r not in hot]]

    def _load(self, replicas: list[RunningReplica]) -> int:
        """The smallest number of requests in flight among `replicas` (Serve's cache, else the last stats)."""
        loads = []
        for replica in replicas:
            cached = self.replica_queue_len_cache.get(replica.replica_id)
            loads.append(cached if cached is not None else replica.routing_stats.get("queue", 0))
        return min(loads)


def _alive(replica: RunningReplica) -> bool:
    return replica.routing_stats.get("alive", True) and not is_lost(replica.replica_id.unique_id)


def _adapter_of(pending_request: PendingRequest | None) -> str | None:
    if pending_request is None or not pending_request.args:
        return None
    request = pending_request.args[0]
    return request.adapter if isinstance(request, GenerateRequest) else None
