"""Adapter popularity over a sliding window, and which adapter to keep merged (pure Python, injectable clock).

`PopularityWindow` counts requests per adapter (None = the base model) over the last `window_s` seconds
and at most the last `window_requests` requests. `HotAdapterPolicy` picks one engine's hot adapter with
hysteresis. `WorkerPlanner` picks, for each of K workers, the adapter it keeps merged (or None).

Planner formula. Adapter a's quota is q(a) = share(a)·K: how many workers its traffic would fill.
Its k-th worker (k = 1, 2, ...) is a *seat* worth w(a, k) = q(a) − (k − 1), the traffic left for that
worker once a's first k − 1 workers are full. A new seat needs w >= enter_share; a seat a already holds
is kept while w >= exit_share and ranks as w + (enter_share − exit_share), so a challenger must beat it
by the hysteresis gap. The K best seats win, ties by adapter name. With the defaults an adapter gets
about round(q(a)) workers: 85% over 2 workers takes both, 95% over 4 takes all four, 60% over 4 takes two,
and two adapters at 45% over 2 workers take one each. Workers whose adapter still has seats keep it;
the other workers take the unplaced seats in rank order, or None. A worker changes at most once per
min_dwell_s (its first assignment is free), and nothing changes while the window holds fewer than
min_requests requests. Adapters whose merge a worker declined (its trial showed no gain) get no seat.
"""
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]
BASE_KEY = "__base__"  # snapshot() key of base-model requests: JSON object keys cannot be null


@dataclass
class PopularityConfig:
    window_s: float = 30.0  # requests older than this leave the window
    window_requests: int | None = 1000  # at most this many most recent requests count; None: no cap
    enter_share: float = 0.5  # an adapter becomes hot when its share of the window reaches this
    exit_share: float = 0.3  # a hot adapter stays hot until its share falls below this
    min_dwell_s: float = 5.0  # no switch within this long of the previous one
    min_requests: int = 10  # no hot choice from fewer requests than this in the window

    def __post_init__(self) -> None:
        if self.window_s <= 0 or (self.window_requests is not None and self.window_requests < 1):
            raise ValueError("window_s must be > 0 and window_requests >= 1 (or None)")
        if self.min_dwell_s < 0 or self.min_requests < 0:
            raise ValueError("min_dwell_s and min_requests must be >= 0")


def _check_shares(config: PopularityConfig) -> None:
    if not 0.0 <= config.exit_share < config.enter_share <= 1.0:
        raise ValueError(
            f"PopularityConfig needs 0 <= exit_share < enter_share <= 1, got exit_share={config.exit_share}, "
            f"enter_share={config.enter_share}; set enter_share above exit_share so a hot adapter cannot flap"
        )


def _dwell_over(changed_at: float | None, now: float, min_dwell_s: float) -> bool:
    # Never switched yet: the first choice needs no wait, there is nothing to thrash against.
    return changed_at is None or now - changed_at >= min_dwell_s


@dataclass(slots=True)
class _Bucket:
    time: float
    adapter: str | None
    count: int  # shrinks when the request cap cuts through the oldest bucket


class PopularityWindow:
    """Request counts per adapter over the last `window_s` seconds and the last `window_requests` requests."""

    def __init__(self, config: PopularityConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        # One bucket per (flush, adapter), not per request: an ingress flush costs O(distinct adapters).
        self._buckets: deque[_Bucket] = deque()
        self._counts: dict[str | None, int] = {}
        self._total = 0

    def record(self, adapter: str | None, count: int = 1) -> None:
        self.merge_counts({adapter: count})

    def merge_counts(self, counts: dict[str | None, int]) -> None:
        now = self._clock()
        for adapter, count in counts.items():
            if count < 0:
                raise ValueError(f"request count for adapter {adapter!r} is {count}; counts must be >= 0")
            if count:
                self._buckets.append(_Bucket(now, adapter, count))
                self._add(adapter, count)
        self._expire(now)

    def counts(self) -> dict[str | None, int]:
        self._expire(self._clock())
        return dict(self._counts)

    def total(self) -> int:
        self._expire(self._clock())
        return self._total

    def shares(self) -> dict[str, float]:
        counts, total = self.counts(), self._total
        return {a: n / total for a, n in counts.items() if a is not None}

    def snapshot(self) -> dict:
        counts = {BASE_KEY if a is None else a: n for a, n in self.counts().items()}
        return {"total": self._total, "counts": counts, "window_s": self.config.window_s}

    def _add(self, adapter: str | None, delta: int) -> None:
        count = self._counts.get(adapter, 0) + delta
        if count:
            self._counts[adapter] = count
        else:
            del self._counts[adapter]  # keeps counts() free of adapters that left the window
        self._total += delta

    def _expire(self, now: float) -> None:
        # Each bucket is appended once and popped once, and at most one is cut per call: amortized O(1).
        buckets = self._buckets
        while buckets and now - buckets[0].time > self.config.window_s:
            oldest = buckets.popleft()
            self._add(oldest.adapter, -oldest.count)
        cap = self.config.window_requests
        while cap is not None and self._total > cap:
            oldest = buckets[0]
            drop = min(oldest.count, self._total - cap)
            oldest.count -= drop
            self._add(oldest.adapter, -drop)
            if not oldest.count:
                buckets.popleft()


class HotAdapterPolicy:
    """One engine's hot adapter: enter at enter_share, stay while >= exit_share, one switch per min_dwell_s."""

    def __init__(self, config: PopularityConfig, clock: Clock = time.monotonic) -> None:
        _check_shares(config)
        self.config = config
        self._clock = clock
        self._current: str | None = None
        self._switched_at: float | None = None

    @property
    def current(self) -> str | None:
        return self._current

    def choose(self, window: PopularityWindow) -> str | None:
        if window.total() < self.config.min_requests:
            return self._current  # too few requests to tell popularity from noise
        target = self._target(window.shares())
        now = self._clock()
        if target != self._current and _dwell_over(self._switched_at, now, self.config.min_dwell_s):
            self._current, self._switched_at = target, now
        return self._current

    def _target(self, shares: dict[str, float]) -> str | None:
        if self._current is not None and shares.get(self._current, 0.0) >= self.config.exit_share:
            return self._current
        best = min(shares, key=lambda a: (-shares[a], a), default=None)
        if best is not None and shares[best] >= self.config.enter_share:
            return best
        return None


class WorkerPlanner:
    """Which adapter each of K workers keeps merged; the seat formula is in the module docstring."""

    def __init__(self, num_workers: int, config: PopularityConfig, clock: Clock = time.monotonic) -> None:
        _check_shares(config)
        self.config = config
        self._clock = clock
        self._plan: list[str | None] = []
        self._changed_at: list[float | None] = []
        self.resize(num_workers)

    @property
    def current(self) -> list[str | None]:
        return list(self._plan)

    def resize(self, num_workers: int) -> None:
        """Workers that remain keep their adapter and dwell timer; new workers start at None, free to assign."""
        if num_workers < 0:
            raise ValueError(f"num_workers is {num_workers}; it must be >= 0")
        extra = max(0, num_workers - len(self._plan))
        self._plan = self._plan[:num_workers] + [None] * extra
        self._changed_at = self._changed_at[:num_workers] + [None] * extra

    def adopt(self, rank: int, adapter: str | None) -> None:
        """Take what worker `rank` holds merged as its current plan, with no dwell to wait out: how a planner
        that restarted (a new popularity actor) learns the fleet's state, so its first plan keeps every worker
        whose adapter still deserves a seat instead of reshuffling the merges."""
        self._plan[rank] = adapter
        self._changed_at[rank] = None

    def plan(self, window: PopularityWindow, declined: frozenset[str] = frozenset()) -> list[str | None]:
        """declined: adapters whose merge did not pay on a worker: planned as if their share were 0 and they held
        no seat (dwell still keeps them on a worker that may not change yet)."""
        if window.total() < self.config.min_requests:
            return self.current
        # Their seats go to nobody: the other adapters keep their own shares, not shares renormalised without the
        # declined ones, which would hand those seats to less popular adapters. A merge that did not pay at a
        # higher share pays less at a lower one.
        shares = {a: s for a, s in window.shares().items() if a not in declined}
        seats = self._seats(shares)
        now = self._clock()
        locked = [not _dwell_over(t, now, self.config.min_dwell_s) for t in self._changed_at]
        new_plan = self._place(seats, locked)
        for rank, adapter in enumerate(new_plan):
            if adapter != self._plan[rank]:
                self._changed_at[rank] = now
        self._plan = new_plan
        return self.current

    def _seats(self, shares: dict[str, float]) -> list[str]:
        """The winning seats, best first; an adapter appears once per worker it deserves."""
        num_workers = len(self._plan)
        held = Counter(a for a in self._plan if a is not None)
        gap = self.config.enter_share - self.config.exit_share
        scored: list[tuple[float, str, int]] = []
        for adapter, share in shares.items():
            quota = share * num_workers
            for k in range(math.floor(quota - self.config.exit_share) + 1):
                worth = quota - k
                if k < held[adapter]:
                    scored.append((worth + gap, adapter, k))
                elif worth >= self.config.enter_share:
                    scored.append((worth, adapter, k))
        scored.sort(key=lambda s: (-s[0], s[1], s[2]))
        return [adapter for _, adapter, _ in scored[:num_workers]]

    def _place(self, seats: list[str], locked: list[bool]) -> list[str | None]:
        """Keep workers whose adapter still has a seat (or that may not change yet); fill the rest in order."""
        wanted = Counter(seats)
        kept: Counter[str | None] = Counter()
        new_plan: list[str | None] = [None] * len(self._plan)
        free: list[int] = []
        for rank, adapter in enumerate(self._plan):
            if locked[rank] or (adapter is not None and kept[adapter] < wanted[adapter]):
                new_plan[rank] = adapter
                kept[adapter] += 1
            else:
                free.append(rank)
        # The kept workers cover each adapter's best seats; what is left goes out in seat order.
        covered: Counter[str] = Counter()
        missing: list[str] = []
        for adapter in seats:
            if covered[adapter] < kept[adapter]:
                covered[adapter] += 1
            else:
                missing.append(adapter)
        for rank, adapter in zip(free, missing):
            new_plan[rank] = adapter
        return new_plan
