"""What a worker counts for /stats: requests by adapter (and how many found their adapter merged), the batches
its engine ran, and the messages it sent to the ingress."""
from collections import Counter
from dataclasses import dataclass, field

from deployments.worker_metrics import adapter_tag
from fair_lora.serving.core_messages import StepReport
from fair_lora.engine.vtc import INPUT_WEIGHT as VTC_INPUT_WEIGHT, OUTPUT_WEIGHT as VTC_OUTPUT_WEIGHT


@dataclass
class WorkerStats:
    requests: Counter = field(default_factory=Counter)  # admitted, by adapter tag
    hot_requests: Counter = field(default_factory=Counter)  # of those, admitted while their adapter was merged here
    max_batch_size: int = 0
    max_adapters_per_step: int = 0  # distinct adapters (the base model counts as one) in one step
    batched_steps: int = 0  # steps that ran more than one request (compare two reads to see a burst batch)
    multi_adapter_steps: int = 0  # steps that ran more than one adapter
    aborted: int = 0  # requests whose client left before they finished
    stream_messages: int = 0  # Deltas sent to the ingress
    completion_messages: int = 0  # non-streamed requests answered (one message each)
    # Tokens served per client (X-Client-Id / user, else the adapter), counted as VTC counts them: prompt tokens
    # + 2 per generated token, divided by the client's weight. Summed over workers by the popularity tracker.
    service: Counter = field(default_factory=Counter)

    def admitted(self, adapter: str | None, hot_adapter: str | None) -> None:
        tag = adapter_tag(adapter)
        self.requests[tag] += 1
        if adapter is not None and adapter == hot_adapter:
            self.hot_requests[tag] += 1

    def served(self, client: str, prompt_tokens: int, generated: int, weight: float) -> None:
        self.service[client] += (VTC_INPUT_WEIGHT * prompt_tokens + VTC_OUTPUT_WEIGHT * generated) / weight

    def step(self, report: StepReport) -> None:
        stats = report.stats
        self.max_batch_size = max(self.max_batch_size, stats.num_seqs)
        self.max_adapters_per_step = max(self.max_adapters_per_step, stats.num_adapters)
        self.batched_steps += stats.num_seqs > 1
        self.multi_adapter_steps += stats.num_adapters > 1

    def snapshot(self) -> dict:
        counters = {"requests": dict(self.requests), "hot_requests": dict(self.hot_requests), "service": dict(self.service)}
        return {**vars(self), **counters}
