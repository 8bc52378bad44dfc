"""Worker replicas this ingress process has seen fail a request (their engine process stopped), so that the
router avoids them at once: their own routing stats say so only up to `stats_period_s` later, and Serve replaces
a replica only after three failed health checks. Process-wide because Serve builds the router itself, in the
ingress's process, and gives no handle to it. An entry is forgotten after a while: Serve gives a replaced
replica a new id, so a remembered id only ever names a dead one."""
import time

FORGET_AFTER_S = 300.0

_lost: dict[str, float] = {}  # replica unique id -> time.monotonic() when a request saw it fail


def mark_lost(replica_id: str) -> None:
    now = time.monotonic()
    for stale in [r for r, at in _lost.items() if now - at > FORGET_AFTER_S]:
        del _lost[stale]
    _lost[replica_id] = now


def is_lost(replica_id: str) -> bool:
    return replica_id in _lost
