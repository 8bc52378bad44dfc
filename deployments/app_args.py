"""The app's arguments (the `args:` block of serve_config.yaml), validated once at build time."""
import dataclasses
import warnings
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from fair_lora import EngineConfig, PopularityConfig

DEMO_MODEL_NAME = "fair-lora-demo"
ENGINE, POPULARITY = EngineConfig(), PopularityConfig()  # the defaults the app's keys take (max_waiting aside)
ENGINE_KEYS = {f.name for f in dataclasses.fields(EngineConfig)} - {"popularity"}  # popularity: PopularityArgs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PopularityArgs(_Strict):
    """PopularityConfig's fields and defaults, with the YAML's stricter types."""
    window_s: PositiveFloat = POPULARITY.window_s
    window_requests: PositiveInt | None = POPULARITY.window_requests
    enter_share: float = Field(POPULARITY.enter_share, gt=0.0, le=1.0)
    exit_share: float = Field(POPULARITY.exit_share, ge=0.0, lt=1.0)
    min_dwell_s: float = Field(POPULARITY.min_dwell_s, ge=0.0)
    min_requests: PositiveInt = POPULARITY.min_requests

    @model_validator(mode="after")
    def _hysteresis(self) -> "PopularityArgs":
        if self.exit_share >= self.enter_share:
            raise ValueError(
                f"popularity.exit_share ({self.exit_share}) must be below enter_share ({self.enter_share}), "
                "or a hot adapter flaps in and out"
            )
        return self

    def config(self) -> PopularityConfig:
        return PopularityConfig(**self.model_dump())


class ReplicaArgs(_Strict):
    num_replicas: PositiveInt = 1
    num_cpus: float = Field(0.1, ge=0.0)  # fractional on CPU machines: three 1-CPU replicas never fit on 2 cores
    num_gpus: float = Field(0.0, ge=0.0)  # a fraction shares a GPU: give each worker its gpu_memory_utilization share
    # Ray custom resources each replica needs, e.g. {"fair_lora_worker": 1} with `ray start --resources
    # '{"fair_lora_worker": 1}'` on the nodes that may hold a worker: pins replicas to nodes (docs/cluster.md).
    resources: dict[str, float] = Field(default_factory=dict)
    max_ongoing_requests: PositiveInt | None = None  # None: derived (workers: batch + queue; ingress: 1024)
    # Requests the callers (the HTTP proxy, the ingress) may queue for these replicas beyond max_ongoing_requests;
    # past it they get 503 (proxy) / 429 (ingress) at once instead of waiting in an unbounded queue.
    # None: derived (workers: max_waiting; ingress: 1024).
    max_queued_requests: PositiveInt | None = None


class RoutingArgs(_Strict):
    # hot_adapter: this app's router (a request goes to a worker with its adapter merged); default: Ray Serve's
    # own (power of two choices on queue length, blind to adapters), the baseline that the multi-GPU benchmark
    # measures the hot-adapter router against.
    router: Literal["hot_adapter", "default"] = "hot_adapter"
    stats_period_s: PositiveFloat = 0.5  # how often each worker's hot adapter and queue reach the router
    imbalance_threshold: PositiveInt | None = None  # prefer a hot worker unless it is this much busier; None: max_num_seqs
    flush_s: PositiveFloat = 0.1  # ingress -> popularity tracker
    assignment_poll_s: PositiveFloat = 0.25  # worker -> popularity tracker
    tracker_timeout_s: PositiveFloat = 1.0


class AppArgs(_Strict):
    # The keys named in ENGINE_KEYS are the engine's: EngineConfig's meaning and defaults, the YAML's stricter types.
    model: str | None = ENGINE.model  # a model directory on every worker node; None: the embedded demo
    load_format: Literal["safetensors", "dummy"] = ENGINE.load_format  # dummy: random weights from config.json
    served_model_name: str | None = None  # the base model's `model` name in the API; default: the directory name
    adapters: dict[str, str] = Field(default_factory=dict)  # name -> PEFT adapter directory
    adapter_roots: list[str] = Field(default_factory=list)  # where /v1/load_lora_adapter may read from
    demo_dir: str | None = ENGINE.demo_dir  # the demo's cache; None: $FAIR_LORA_DEMO_DIR or ~/.cache/fair_lora/demo
    device: Literal["cpu", "cuda"] = ENGINE.device
    dtype: Literal["float32", "bfloat16", "float16"] = ENGINE.dtype
    mode: Literal["fair", "slora"] = ENGINE.mode
    max_num_seqs: PositiveInt = ENGINE.max_num_seqs
    max_num_batched_tokens: PositiveInt = ENGINE.max_num_batched_tokens
    max_model_len: PositiveInt | None = ENGINE.max_model_len
    max_waiting: PositiveInt = 256  # per worker; beyond it requests get 429
    max_lora_rank: PositiveInt = ENGINE.max_lora_rank
    max_adapter_slots: PositiveInt = ENGINE.max_adapter_slots
    # KV cache size: at most one of these two; None: from the memory left.
    num_kv_blocks: PositiveInt | None = ENGINE.num_kv_blocks
    num_kv_tokens: PositiveInt | None = ENGINE.num_kv_tokens
    gpu_memory_utilization: float = Field(ENGINE.gpu_memory_utilization, gt=0.0, le=1.0)
    scheduling_policy: Literal["fcfs", "vtc"] = ENGINE.scheduling_policy
    # Each merge the cluster's plan assigns is a trial of this many decode steps, undone (and the adapter planned
    # out for a while) if it does not make them cheaper per token; 0: every assigned merge stays.
    merge_trial_steps: NonNegativeInt = ENGINE.merge_trial_steps
    client_weights: dict[str, PositiveFloat] = Field(default_factory=dict)  # vtc: client -> weight (default 1)
    max_request_bytes: PositiveInt = 1 << 20  # larger HTTP bodies get 413 before they are read
    access_log: bool = False  # one INFO line per request in the ingress and the workers
    # Per worker: stream messages (deltas) per second, shared by its streamed requests. Each message costs the
    # worker, the ingress and the proxy about the same CPU whatever it carries; with more streams than this each
    # stream's tokens come grouped (first token and finish always at once). None: one message per step each.
    stream_messages_per_s: PositiveFloat | None = 1000.0
    cpu_threads: PositiveInt | None = None  # torch threads per worker; None: torch's default
    workers: ReplicaArgs = Field(default_factory=lambda: ReplicaArgs(num_replicas=2))
    ingress: ReplicaArgs = Field(default_factory=ReplicaArgs)
    popularity: PopularityArgs = Field(default_factory=PopularityArgs)
    routing: RoutingArgs = Field(default_factory=RoutingArgs)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: object) -> object:
        """`fair_weights`, client_weights's deprecated old name, still reads."""
        if not (isinstance(data, dict) and "fair_weights" in data):
            return data
        if "client_weights" in data:
            raise ValueError("give client_weights only: fair_weights is its deprecated old name")
        warnings.warn("the app's fair_weights is deprecated: use client_weights", DeprecationWarning, stacklevel=2)
        renamed = {k: v for k, v in data.items() if k != "fair_weights"}
        return {**renamed, "client_weights": data["fair_weights"]}

    @model_validator(mode="after")
    def _consistent(self) -> "AppArgs":
        if self.device == "cuda" and self.workers.num_gpus <= 0:
            raise ValueError("device is 'cuda' but workers.num_gpus is 0: give each worker a GPU (workers.num_gpus: 1), "
                             "or a share of one (0.5: two workers per GPU, each with num_kv_tokens set)")
        if self.device == "cuda" and self.workers.num_gpus < 1 and self.num_kv_blocks is None and self.num_kv_tokens is None:
            # gpu_memory_utilization budgets the whole device, every process's memory counted: workers sharing a
            # GPU would race to size their caches from the same free memory. Each gets its share explicitly.
            raise ValueError(
                f"workers.num_gpus is {self.workers.num_gpus}: workers share a GPU, so give each its KV cache "
                "explicitly with num_kv_tokens (or num_kv_blocks)"
            )
        if self.num_kv_blocks is not None and self.num_kv_tokens is not None:
            raise ValueError("set num_kv_blocks or num_kv_tokens, not both")
        if self.model is None and self.device == "cpu" and self.workers.num_gpus:
            raise ValueError("the embedded demo runs on CPU: drop workers.num_gpus or set model and device: cuda")
        return self

    @property
    def base_model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model).name if self.model else DEMO_MODEL_NAME

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            **self.model_dump(include=ENGINE_KEYS),
            popularity=self.popularity.config(),
            auto_hot=False,  # the cluster-wide plan decides, through assign_hot_adapter (judged: merge_trial_steps)
        )

    @property
    def worker_max_ongoing(self) -> int:
        # One over the engine's capacity: the overflow request reaches the engine and gets its QueueFullError.
        return self.workers.max_ongoing_requests or self.max_num_seqs + self.max_waiting + 1

    @property
    def worker_max_queued(self) -> int:
        return self.workers.max_queued_requests or self.max_waiting

    @property
    def ingress_max_ongoing(self) -> int:
        return self.ingress.max_ongoing_requests or 1024

    @property
    def ingress_max_queued(self) -> int:
        return self.ingress.max_queued_requests or 1024
