"""A worker's metrics, recorded twice: in Ray's export (ray_fair_lora_*; Serve adds deployment, replica and
application tags) and in the replica's LiveMetrics, which the ingress's GET /metrics shows while it lives."""
from ray.serve.metrics import Counter, Gauge, Histogram

from deployments.live_metrics import LiveMetrics
from fair_lora.hot_adapter.popularity import BASE_KEY
from fair_lora.serving.core_messages import StepReport

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
MERGE_BOUNDARIES = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BY_ADAPTER, BY_WORKER = ("adapter", "worker"), ("worker",)
FAMILIES = (  # name, kind, help, tag keys, histogram boundaries
    ("fair_lora_requests", "counter", "Requests finished, by adapter", BY_ADAPTER, ()),
    ("fair_lora_prompt_tokens", "counter", "Prompt tokens of finished requests", BY_ADAPTER, ()),
    ("fair_lora_generation_tokens", "counter", "Tokens generated", BY_ADAPTER, ()),
    ("fair_lora_ttft_seconds", "histogram", "Time to first token", BY_ADAPTER, LATENCY_BOUNDARIES),
    ("fair_lora_request_latency_seconds", "histogram", "Request latency", BY_ADAPTER, LATENCY_BOUNDARIES),
    ("fair_lora_hot_adapter", "gauge", "1 for the adapter this worker keeps merged", BY_ADAPTER, ()),
    ("fair_lora_merge_switches", "counter", "Hot adapter switches (merge/unmerge)", BY_WORKER, ()),
    ("fair_lora_merge_seconds", "histogram", "Duration of a hot switch", BY_WORKER, MERGE_BOUNDARIES),
    ("fair_lora_batched_tokens", "counter", "Tokens run through the model", BY_WORKER, ()),
    ("fair_lora_corrected_tokens", "counter", "Tokens that took the correction path", BY_WORKER, ()),
    ("fair_lora_correction_token_share", "gauge", "Corrected / all tokens, last step", BY_WORKER, ()),
    ("fair_lora_batch_size", "histogram", "Sequences per engine step", BY_WORKER, BATCH_BOUNDARIES),
    ("fair_lora_queue_waiting", "gauge", "Requests waiting for a batch slot", BY_WORKER, ()),
    ("fair_lora_queue_running", "gauge", "Requests in the running batch", BY_WORKER, ()),
)
RAY_TYPES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


def adapter_tag(adapter: str | None) -> str:
    return BASE_KEY if adapter is None else adapter


class WorkerMetrics:
    def __init__(self, worker: int) -> None:
        self.worker = str(worker)
        self.live = LiveMetrics()
        self.ray = {}
        for name, kind, description, tags, bounds in FAMILIES:
            self.live.family(name, kind, description, bounds)
            args = (list(bounds),) if kind == "histogram" else ()
            self.ray[name] = RAY_TYPES[kind](name, description, *args, tags)

    def _record(self, name: str, value: float, adapter: str | None = None, with_adapter: bool = False) -> None:
        tags = {"worker": self.worker}
        if with_adapter:
            tags["adapter"] = adapter_tag(adapter)
        kind = self.live.families[name].kind
        if kind == "counter":
            self.ray[name].inc(value, tags)
            self.live.inc(name, value, tags)
        elif kind == "gauge":
            self.ray[name].set(value, tags)
            self.live.set(name, value, tags)
        else:
            self.ray[name].observe(value, tags)
            self.live.observe(name, value, tags)

    def step(self, report: StepReport) -> None:
        """Once per engine step, on the worker's event loop (the engine steps in its own process)."""
        stats = report.stats
        self._record("fair_lora_queue_waiting", report.waiting)
        self._record("fair_lora_queue_running", report.running)
        if not stats.num_seqs:
            return
        self._record("fair_lora_batch_size", stats.num_seqs)
        self._record("fair_lora_batched_tokens", stats.num_tokens)
        if stats.num_corrected_tokens:
            self._record("fair_lora_corrected_tokens", stats.num_corrected_tokens)
        self._record("fair_lora_correction_token_share", stats.num_corrected_tokens / max(stats.num_tokens, 1))

    def first_token(self, adapter: str | None, seconds: float) -> None:
        """Time to first token, from the ingress's arrival (queueing in Serve included)."""
        self._record("fair_lora_ttft_seconds", seconds, adapter, with_adapter=True)

    def finished(self, adapter: str | None, prompt_tokens: int, generated: int, seconds: float) -> None:
        self._record("fair_lora_requests", 1, adapter, with_adapter=True)
        self._record("fair_lora_prompt_tokens", prompt_tokens, adapter, with_adapter=True)
        if generated:
            self._record("fair_lora_generation_tokens", generated, adapter, with_adapter=True)
        self._record("fair_lora_request_latency_seconds", seconds, adapter, with_adapter=True)

    def set_hot(self, adapter: str | None) -> None:
        self._record("fair_lora_hot_adapter", 1, adapter, with_adapter=True)

    def switch(self, old: str | None, new: str | None, seconds: float) -> None:
        self._record("fair_lora_merge_switches", 1)
        self._record("fair_lora_merge_seconds", seconds)
        self._record("fair_lora_hot_adapter", 0, old, with_adapter=True)
        self.set_hot(new)
