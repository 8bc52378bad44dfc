"""A worker's Ray metrics (exported as ray_fair_lora_*; Serve adds deployment, replica and application tags)."""
from ray.serve.metrics import Counter, Gauge, Histogram

from fair_lora.engine.core_messages import StepReport
from fair_lora.popularity import BASE_KEY

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
MERGE_BOUNDARIES = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def adapter_tag(adapter: str | None) -> str:
    return BASE_KEY if adapter is None else adapter


class WorkerMetrics:
    def __init__(self, worker: int) -> None:
        self.worker = str(worker)
        by_adapter, by_worker = ("adapter", "worker"), ("worker",)
        self.requests = Counter("fair_lora_requests", "Requests finished, by adapter", by_adapter)
        self.prompt_tokens = Counter("fair_lora_prompt_tokens", "Prompt tokens of finished requests", by_adapter)
        self.generation_tokens = Counter("fair_lora_generation_tokens", "Tokens generated", by_adapter)
        self.ttft = Histogram("fair_lora_ttft_seconds", "Time to first token", LATENCY_BOUNDARIES, by_adapter)
        self.latency = Histogram("fair_lora_request_latency_seconds", "Request latency", LATENCY_BOUNDARIES, by_adapter)
        self.hot = Gauge("fair_lora_hot_adapter", "1 for the adapter this worker keeps merged", by_adapter)
        self.switches = Counter("fair_lora_merge_switches", "Hot adapter switches (merge/unmerge)", by_worker)
        self.merge_seconds = Histogram("fair_lora_merge_seconds", "Duration of a hot switch", MERGE_BOUNDARIES, by_worker)
        self.batched_tokens = Counter("fair_lora_batched_tokens", "Tokens run through the model", by_worker)
        self.corrected_tokens = Counter("fair_lora_corrected_tokens", "Tokens that took the correction path", by_worker)
        self.correction_share = Gauge("fair_lora_correction_token_share", "Corrected / all tokens, last step", by_worker)
        self.batch_size = Histogram("fair_lora_batch_size", "Sequences per engine step", BATCH_BOUNDARIES, by_worker)
        self.waiting = Gauge("fair_lora_queue_waiting", "Requests waiting for a batch slot", by_worker)
        self.running = Gauge("fair_lora_queue_running", "Requests in the running batch", by_worker)

    def _tags(self, adapter: str | None = None, with_adapter: bool = False) -> dict[str, str]:
        tags = {"worker": self.worker}
        if with_adapter:
            tags["adapter"] = adapter_tag(adapter)
        return tags

    def step(self, report: StepReport) -> None:
        """Once per engine step, on the worker's event loop (the engine steps in its own process)."""
        tags, stats = self._tags(), report.stats
        self.waiting.set(report.waiting, tags)
        self.running.set(report.running, tags)
        if not stats.num_seqs:
            return
        self.batch_size.observe(stats.num_seqs, tags)
        self.batched_tokens.inc(stats.num_tokens, tags)
        if stats.num_corrected_tokens:
            self.corrected_tokens.inc(stats.num_corrected_tokens, tags)
        self.correction_share.set(stats.num_corrected_tokens / max(stats.num_tokens, 1), tags)

    def first_token(self, adapter: str | None, seconds: float) -> None:
        """Time to first token, from the ingress's arrival (queueing in Serve included)."""
        self.ttft.observe(seconds, self._tags(adapter, with_adapter=True))

    def finished(self, adapter: str | None, prompt_tokens: int, generated: int, seconds: float) -> None:
        tags = self._tags(adapter, with_adapter=True)
        self.requests.inc(1, tags)
        self.prompt_tokens.inc(prompt_tokens, tags)
        if generated:
            self.generation_tokens.inc(generated, tags)
        self.latency.observe(seconds, tags)

    def set_hot(self, adapter: str | None) -> None:
        self.hot.set(1, self._tags(adapter, with_adapter=True))

    def switch(self, old: str | None, new: str | None, seconds: float) -> None:
        tags = self._tags()
        self.switches.inc(1, tags)
        self.merge_seconds.observe(seconds, tags)
        self.hot.set(0, self._tags(old, with_adapter=True))
        self.set_hot(new)
