"""Metrics of live replicas only: each replica keeps its own values, and the ingress's GET /metrics renders
those of the replicas that answer now, in Prometheus's text format.

Why beside Ray's export: Ray's per-node metrics agent keeps a dead process's counters and histograms for as
long as the node runs (only gauges expire), so after a worker is replaced its old series stay in Ray's export
for good. Here a replica that is gone does not answer, and its series are gone with it; its replacement starts
its counters at zero under a new `replica` label, which Prometheus's rate() reads as a restart.
"""
import math
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable and picklable


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    boundaries: tuple[float, ...] = ()  # histograms: upper bounds of the buckets, +Inf implied


@dataclass
class Histogram:
    buckets: list[int]  # per bucket (not cumulative), the +Inf bucket last
    sum: float = 0.0
    count: int = 0


@dataclass
class LiveMetrics:
    """One replica's metric values since it started."""

    families: dict[str, Family] = field(default_factory=dict)
    values: dict[str, dict[Labels, float | Histogram]] = field(default_factory=dict)

    def family(self, name: str, kind: str, description: str, boundaries=()) -> Family:
        self.families[name] = Family(name, kind, description, tuple(boundaries))
        self.values.setdefault(name, {})
        return self.families[name]

    def inc(self, name: str, value: float, labels: dict[str, str]) -> None:
        series = self.values[name]
        key = _key(labels)
        series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, labels: dict[str, str]) -> None:
        self.values[name][_key(labels)] = value

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        bounds = self.families[name].boundaries
        h = self.values[name].setdefault(_key(labels), Histogram([0] * (len(bounds) + 1)))
        h.buckets[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
        h.sum += value
        h.count += 1


def render(replicas: list[tuple[dict[str, str], LiveMetrics]]) -> str:
    """Prometheus text exposition of several replicas' metrics; each replica's series get its labels too."""
    families: dict[str, Family] = {}
    for _, metrics in replicas:
        families.update(metrics.families)
    lines: list[str] = []
    for name, fam in sorted(families.items()):
        lines += [f"# HELP {name} {fam.help}", f"# TYPE {name} {fam.kind}"]
        for extra, metrics in replicas:
            for key, value in sorted(metrics.values.get(name, {}).items(), key=lambda kv: kv[0]):
                labels = {**dict(key), **extra}
                if fam.kind == "histogram":
                    lines += _histogram_lines(name, fam.boundaries, labels, value)
                else:
                    suffix = "_total" if fam.kind == "counter" else ""
                    lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, bounds: tuple[float, ...], labels: dict[str, str], h: Histogram) -> list[str]:
    lines, running = [], 0
    for bound, n in zip([*bounds, math.inf], h.buckets):
        running += n
        le = "+Inf" if bound == math.inf else _number(bound)
        lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {running}")
    lines.append(f"{name}_sum{_labels(labels)} {_number(h.sum)}")
    lines.append(f"{name}_count{_labels(labels)} {h.count}")
    return lines


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    return repr(float(x))
