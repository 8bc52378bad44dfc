"""Whether merging the popular adapter pays, judged by the engine's own decode steps (pure Python).

The share rule (HotAdapterPolicy) says which adapter is popular enough to merge; whether the merge makes steps
cheaper depends on the hardware and the rest of the traffic: the cold tokens of a merged batch carry two
corrections (their own adapter and the hot subtraction), so below some share a merge costs more than it saves.
Where that crossover lies is measured, not assumed (as dLoRA tunes its merge threshold from measured step
costs): every merge the share rule makes is a trial. Once `trial_steps` decode-only steps ran merged, their
per-token seconds are compared with those of unmerged decode steps of the same batch size and context per
sequence (attention grows with the context, so later steps cost more whatever is merged), measured
before the merge or, when there are none, in a probe: `probe_steps` unmerged steps right after the trial. If the
merged steps are not cheaper, the merge is undone and that adapter is not merged again until its share has grown
by `retry_share` or `retry_s` have passed; so a merge that does not pay costs one trial, not the whole run.

One case needs no trial: a step whose every sequence uses the rejected adapter. Merged, such a step is a plain
base-model forward with no correction launched at all, while unmerged it runs the whole correction; a trial
judged while cold tokens shared every step (where the correction's fixed latency makes merged and unmerged
steps cost about the same) says nothing about it. So such a step lifts the rejection at once, and the next
trial sees the steps as they now are.

The merges judged are the engine's own (auto_hot) and those assigned to it from outside (the Ray app's
cluster-wide plan, `assign_hot_adapter`); `declined()` tells which adapters are rejected now, so the plan
leaves them out until a lift rule above frees them.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Callable

Clock = Callable[[], float]


@dataclass
class MergeGainConfig:
    trial_steps: int = 32  # merged decode steps measured before a merge is judged; 0: every merge stays
    probe_steps: int = 12  # unmerged decode steps measured when the trial has nothing to compare with
    settle_steps: int = 2  # steps after a switch that are not counted (the pipeline still holds older steps)
    margin: float = 0.0  # a merge stays if merged per-token cost <= unmerged · (1 - margin)
    retry_share: float = 0.05  # a rejected adapter is tried again once its share grows this much
    retry_s: float = 120.0  # ... or this long after its rejection (traffic and batch sizes change)


@dataclass
class _Cost:
    """Mean per-token seconds of the decode steps seen (an exponential average past `window` steps)."""
    value: float = 0.0
    steps: int = 0
    window: int = 64

    def add(self, per_token: float) -> None:
        self.steps += 1
        self.value += (per_token - self.value) / min(self.steps, self.window)


@dataclass
class _Rejection:
    share: float
    at: float


@dataclass
class MergeGain:
    config: MergeGainConfig = field(default_factory=MergeGainConfig)
    clock: Clock = time.monotonic
    unmerged: dict[tuple[int, int], _Cost] = field(default_factory=dict)  # by (batch size, context) bucket
    trial: dict[tuple[int, int], _Cost] = field(default_factory=dict)  # the current merge's steps, by bucket
    trial_share: float = 0.0
    rejected: dict[str, _Rejection] = field(default_factory=dict)
    since_switch: int = 0
    sole_adapter: str | None = None  # the one adapter every sequence of the last step used, if there was one

    def record(
        self, hot: str | None, num_seqs: int, num_tokens: int, seconds: float, context: int = 0,
        sole_adapter: str | None = None,
    ) -> None:
        """A step the engine ran with `hot` merged; only decode-only steps (one token per sequence) count.
        context: the step's sequences' tokens in all; a decode step's attention grows with it, so steps are only
        compared with steps of similar batch size and context per sequence (both in power-of-two buckets).
        sole_adapter: the adapter of every sequence of the step when they all share one, else None."""
        self.since_switch += 1
        self.sole_adapter = sole_adapter
        # Lifted here, not only in allows(): an adapter the engine no longer asks about (the cluster's plan left
        # it out) would otherwise stay declined whatever its steps showed.
        self.rejected.pop(sole_adapter, None)
        if num_seqs == 0 or num_tokens != num_seqs or seconds <= 0 or self.since_switch <= self.config.settle_steps:
            return
        costs = self.unmerged if hot is None else self.trial
        costs.setdefault((_bucket(num_seqs), _bucket(context // num_seqs)), _Cost()).add(seconds / num_tokens)

    def switched(self, hot: str | None, share: float) -> None:
        """The engine merged `hot` (a new trial starts) or restored the base weights (None: the last trial's
        steps are kept, to compare with the unmerged steps that follow)."""
        self.since_switch = 0
        if hot is not None:
            self.trial, self.trial_share = {}, share

    def allows(self, adapter: str, share: float) -> bool:
        """Whether `adapter` may be merged (tried) at `share` of the traffic."""
        if adapter in self.rejected and not self._holds(adapter, share):
            del self.rejected[adapter]
        return adapter not in self.rejected

    def declined(self, shares: dict[str, float]) -> list[str]:
        """The adapters whose rejection holds now at these shares (what allows() would refuse), changing nothing.
        It applies allows()'s lift rules itself: an adapter left unasked (no longer chosen or assigned) is not
        declined for ever because allows() never ran for it."""
        return sorted(a for a in self.rejected if self._holds(a, shares.get(a, 0.0)))

    def _holds(self, adapter: str, share: float) -> bool:
        rejection = self.rejected[adapter]
        return not (share >= rejection.share + self.config.retry_share
                    or self.clock() - rejection.at >= self.config.retry_s or self.sole_adapter == adapter)

    def verdict(self) -> bool | None:
        """Whether the current merge pays: None until `trial_steps` merged decode steps share a batch-size bucket
        with at least `probe_steps` unmerged ones."""
        if self.config.trial_steps == 0:
            return True
        common = [b for b, c in self.trial.items() if b in self.unmerged]
        steps = sum(self.trial[b].steps for b in common)
        if steps < self.config.trial_steps or sum(self.unmerged[b].steps for b in common) < self.config.probe_steps:
            return None
        # Bucket by bucket, weighted by the merged steps seen: batch size moves per-token cost.
        merged = sum(self.trial[b].value * self.trial[b].steps for b in common) / steps
        unmerged = sum(self.unmerged[b].value * self.trial[b].steps for b in common) / steps
        return merged <= unmerged * (1.0 - self.config.margin)

    def needs_probe(self) -> bool:
        """The trial has run its steps but has no unmerged steps of its batch sizes to compare with."""
        return self.config.trial_steps > 0 and self.verdict() is None and \
            sum(c.steps for c in self.trial.values()) >= self.config.trial_steps

    def probe_done(self) -> bool:
        """Enough unmerged steps of the trial's batch sizes, or a probe long enough that they are not coming."""
        common = [b for b in self.trial if b in self.unmerged]
        enough = sum(self.unmerged[b].steps for b in common) >= self.config.probe_steps
        return enough or self.since_switch > self.config.settle_steps + 4 * self.config.probe_steps

    def reject(self, adapter: str, share: float = 0.0) -> None:
        """The current merge did not pay; `share`: the adapter's share now. The retry waits for growth past the
        larger of it and the trial's: behind the Ray app's router a worker's own share of its merged adapter
        grows while that adapter's requests are sent to it, and growth the merge itself drew is no news."""
        self.rejected[adapter] = _Rejection(max(self.trial_share, share), self.clock())

    def snapshot(self) -> dict:
        return {
            "unmerged_us_per_token": {f"{b}x{c}": round(v.value * 1e6, 2) for (b, c), v in sorted(self.unmerged.items())},
            "merged_us_per_token": {f"{b}x{c}": round(v.value * 1e6, 2) for (b, c), v in sorted(self.trial.items())},
            "rejected": {a: round(r.share, 3) for a, r in self.rejected.items()},
        }


def _bucket(num_seqs: int) -> int:
    return 1 << max(0, math.ceil(math.log2(num_seqs)))
