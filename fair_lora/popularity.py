"""Adapter popularity over a sliding window, and which adapter to keep merged (pure Python, injectable clock)."""
from dataclasses import dataclass


@dataclass
class PopularityConfig:
    window_s: float = 30.0  # requests older than this leave the window
    window_requests: int | None = 1000  # at most this many most recent requests count; None: no cap
    enter_share: float = 0.5  # an adapter becomes hot when its share of the window reaches this
    exit_share: float = 0.3  # a hot adapter stays hot until its share falls below this
    min_dwell_s: float = 5.0  # no switch within this long of the previous one
    min_requests: int = 10  # no hot choice from fewer requests than this in the window
