"""VTC against FCFS on the VTC paper's workloads (arXiv 2401.00588; the VTC artifact's fair_bench suite), run
through the engine on the demo model.

Offline, on a virtual clock: a loop adds the requests whose arrival time has come, runs one engine step and moves
the clock by a modelled step cost (STEP_S + TOKEN_S per token the step computes), so the results do not depend on
the machine's speed or load. Scaled down to run on a CPU in about a minute: requests of 16 tokens in and out (the
artifact: 256; a short request in poisson_short_long is a quarter of that, as there), durations of 120 s and
240 s (the artifact: 6 and 10 min; on/off periods 24 s instead of 60 s), the artifact's request rates. The engine
holds 8 running requests; with the step model it serves about 1.7 of these requests a second (~54 tokens/s), the
load level the artifact's rates put on its GPU (its on_off_overload served ~880 tokens/s of 512-token requests).

Service, as VTC counts it: a prompt token when it is first computed, an output token (weight 2) when sampled;
divided by the client's weight. For each pair of clients, D = the difference of their service accumulated while
both are backlogged (have a waiting request), from zero at the start of each such period; the metrics are the
largest |D| (max over pairs) and its time average over backlogged time (the artifact accumulates over the whole
run instead). Throughput: prompt and output tokens served per virtual second (recomputations not counted); under
this step model it follows only how full the batch is, so it cannot show a policy's own cost on a real device.

python -m benchmarks.vtc.bench [--tiny] [--out DIR]   writes vtc_bench_<date>_cpu[-tiny].{json,md,png}"""
import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common.report import RESULTS, output_stem, versions, write_files
from fair_lora import EngineConfig, LLMEngine, SamplingParams
from fair_lora.engine.vtc import client_of

LEN = 16
STEP_S, TOKEN_S = 0.15, 0.01
ENGINE = dict(mode="slora", max_num_seqs=8, num_kv_blocks=16, block_size=16, max_model_len=64, max_waiting=100_000)
TARGET_WORKLOADS = ("overload", "on_off_overload")


@dataclass(frozen=True)
class Workload:
    name: str
    rates: tuple[float, ...]  # requests per virtual second, per client (client i sends to adapter-i)
    duration: float  # virtual seconds
    on_off: float | None = None  # client 0 sends only in every other period of this length, starting on
    short_long: bool = False  # one Poisson stream of the total rate; client 0's requests a quarter as long
    weights: tuple[float, ...] | None = None


WORKLOADS = (
    Workload("overload", (1.5, 3.0), 120),
    Workload("on_off_less", (0.5, 2.0), 240, on_off=24),
    Workload("on_off_overload", (2.0, 3.0), 240, on_off=24),
    Workload("poisson_short_long", (8.0, 1.5), 120, short_long=True),
    Workload("proportional", (0.25, 0.5, 1.5), 120),
    Workload("weighted", (3.0, 3.0), 120, weights=(1.0, 2.0)),  # the artifact's WVTC case: weights 1:2
)


def arrivals(w: Workload, seed: int = 42) -> list[tuple[float, int, int]]:
    """(arrival, client, tokens in = tokens out), in arrival order, drawn as the artifact's trace.py draws them."""
    rng = np.random.RandomState(seed)
    if w.short_long:
        total = sum(w.rates)
        n = int(total * w.duration)
        clients = (rng.rand(n) > w.rates[0] / total).astype(int)
        times = np.cumsum(rng.gamma(1.0, 1.0 / total, n))
        return [(float(t), int(c), LEN if c else LEN // 4) for t, c in zip(times, clients)]
    out = []
    for c, rate in enumerate(w.rates):
        t = rng.rand() / rate
        for _ in range(int(rate * w.duration)):
            t += 1 / rate
            if not (w.on_off and c == 0 and int(t // w.on_off) % 2):
                out.append((t, c, LEN))
    return sorted(out)


class Meter:
    """Service per client, the backlogged pairs' accumulated differences, throughput and first-token times, from
    each step's schedule (read before the step runs)."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = weights
        self.arrival: dict[object, float] = {}  # sequence -> virtual arrival
        self.service: dict[str, float] = {}
        self.tokens = 0
        self.prefilled: dict[object, int] = {}
        self.periods: dict[tuple[str, str], float] = {}
        self.series: list[tuple[float, float, float]] = []  # (clock, max |D| over co-backlogged pairs, step s)
        self.ttft: dict[str, list[float]] = {}

    def record(self, scheduled, backlogged: set[str], start: float, end: float) -> None:
        gained: dict[str, float] = {}
        for s in scheduled:
            seq, client, samples = s.seq, client_of(s.seq), s.samples_next_token
            done = min(seq.num_computed + s.num_new, len(seq.prompt_token_ids))
            prompt = max(0, done - self.prefilled.get(seq, 0))
            self.prefilled[seq] = self.prefilled.get(seq, 0) + prompt
            gained[client] = gained.get(client, 0.0) + prompt + 2 * samples
            self.tokens += prompt + samples
            if samples and seq.num_output == 0:
                self.ttft.setdefault(client, []).append(end - self.arrival[seq])
        for client, g in gained.items():
            self.service[client] = self.service.get(client, 0.0) + g
        clients = sorted(backlogged)
        pairs = {(f, g) for i, f in enumerate(clients) for g in clients[i + 1 :]}
        self.periods = {p: d for p, d in self.periods.items() if p in pairs}  # a new period starts from zero
        for f, g in pairs:
            delta = gained.get(f, 0.0) / self.weights.get(f, 1.0) - gained.get(g, 0.0) / self.weights.get(g, 1.0)
            self.periods[(f, g)] = self.periods.get((f, g), 0.0) + delta
        if pairs:
            self.series.append((end, max(abs(d) for d in self.periods.values()), end - start))

    def summary(self, finished: dict[str, int], steps: int, duration: float) -> dict:
        diffs = np.array([d for _, d, _ in self.series] or [0.0])
        dt = np.array([s for _, _, s in self.series] or [1.0])
        stride = max(1, len(self.series) // 400)
        return {
            "max_diff": float(diffs.max()),
            "avg_diff": float((diffs * dt).sum() / dt.sum()),
            "throughput_tok_s": self.tokens / duration,
            "service": dict(sorted(self.service.items())), "finished": dict(sorted(finished.items())),
            "steps": steps, "mean_ttft_s": {c: float(np.mean(v)) for c, v in sorted(self.ttft.items())},
            "series": [(round(t, 3), d) for t, d, _ in self.series[::stride]],
        }


class Run:
    """One workload under one policy: arrivals on the virtual clock, engine steps, the meter."""

    def __init__(self, w: Workload, policy: str, demo_dir: str | None) -> None:
        self.w, self.policy = w, policy
        weights = {f"adapter-{i}": x for i, x in enumerate(w.weights)} if w.weights else {}
        config = EngineConfig(scheduling_policy=policy, client_weights=weights, demo_dir=demo_dir, **ENGINE)
        self.engine = LLMEngine(config)
        self.meter, self.clock, self.steps, self.finished = Meter(weights), 0.0, 0, {}
        self._schedule = self.engine.scheduler.schedule
        self.engine.scheduler.schedule = self._recorded

    def _recorded(self):
        backlogged = {client_of(s) for s in self.engine.scheduler.waiting}
        out = self._schedule()
        end = self.clock + STEP_S + TOKEN_S * out.num_tokens
        self.meter.record(out.scheduled, backlogged, self.clock, end)
        self.clock = end
        return out

    def go(self, progress) -> dict:
        pending = list(reversed(arrivals(self.w)))
        while self.clock < self.w.duration:
            while pending and pending[-1][0] <= self.clock:
                t, c, n = pending.pop()
                rid = self.engine.add_request([100] * n, f"adapter-{c}", SamplingParams(max_tokens=n, ignore_eos=True))
                self.meter.arrival[self.engine.sequences[rid]] = t
            if not self.engine.has_unfinished():
                self.clock = pending[-1][0] if pending else self.w.duration
                continue
            for o in self.engine.step():
                if o.finished:
                    self.finished[o.adapter] = self.finished.get(o.adapter, 0) + 1
            self.steps += 1
            progress(f"{self.w.name} {self.policy}: t = {min(self.clock, self.w.duration):5.1f} of "
                     f"{self.w.duration:.0f} s, step {self.steps}, {sum(self.finished.values())} done, "
                     f"{len(self.engine.scheduler.waiting)} waiting")
        return self.meter.summary(self.finished, self.steps, self.w.duration)


def targets(results: dict) -> list[dict]:
    """VTC's max service difference ≤ 1/10 of FCFS's at ≥ 0.98× FCFS's throughput."""
    rows = []
    for name in TARGET_WORKLOADS:
        if name in results["workloads"]:
            vtc, fcfs = results["workloads"][name]["vtc"], results["workloads"][name]["fcfs"]
            diff = vtc["max_diff"] / max(fcfs["max_diff"], 1e-9)
            speed = vtc["throughput_tok_s"] / fcfs["throughput_tok_s"]
            rows.append({"workload": name, "diff_ratio": diff, "throughput_ratio": speed,
                         "met": diff <= 0.1 and speed >= 0.98})
    return rows


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# VTC vs FCFS, {meta['date']} ({'tiny' if meta['tiny'] else 'full'} run, demo model on the CPU)", "",
             meta["method"], "", f"Command: `{' '.join(meta['command'])}`; wall {meta['wall_s']:.0f} s; "
             f"versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", "",
             "| workload | policy | max diff | avg diff | tokens/s | finished per client | mean TTFT per client (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in results["workloads"].items():
        for policy, r in runs.items():
            done = ", ".join(f"{c}: {n}" for c, n in r["finished"].items())
            ttft = ", ".join(f"{c}: {t:.1f}" for c, t in r["mean_ttft_s"].items())
            lines.append(f"| {name} | {policy} | {r['max_diff']:.0f} | {r['avg_diff']:.0f} | "
                         f"{r['throughput_tok_s']:.1f} | {done} | {ttft} |")
    lines += ["", "| target | VTC / FCFS max diff (≤ 0.1) | VTC / FCFS throughput (≥ 0.98) | |",
              "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['workload']} | {t['diff_ratio']:.4f} | {t['throughput_ratio']:.4f} | "
                     f"{'met' if t['met'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    names = list(results["workloads"])
    cols = min(3, len(names))
    fig = Figure(figsize=(5.5 * cols, 4 * -(-len(names) // cols)), layout="tight")
    for ax, name in zip(fig.subplots(-(-len(names) // cols), cols, squeeze=False).flat, names):
        for policy in ("fcfs", "vtc"):
            series = results["workloads"][name][policy]["series"]
            if series:
                ax.plot(*zip(*series), label=policy.upper(), linewidth=1)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_title(name)
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel("max |accumulated service difference| (tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"VTC vs FCFS, backlogged clients, {results['meta']['date']} (demo model, virtual clock)")
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a smoke run: every workload at a tenth of its length")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--demo-dir", default=None, help="where the demo model and adapters are (created if absent)")
    parser.add_argument("--workloads", nargs="*", default=[w.name for w in WORKLOADS])
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest, and steady beside other work
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Path]:
    scale = 0.1 if args.tiny else 1.0
    chosen = [w for w in WORKLOADS if w.name in args.workloads]
    chosen = [Workload(**{**asdict(w), "duration": w.duration * scale,
                          "on_off": w.on_off and w.on_off * scale}) for w in chosen]
    started = time.perf_counter()
    results = {"meta": {"date": datetime.date.today().isoformat(), "tiny": args.tiny, "command": sys.argv,
                        "versions": versions(), "method": " ".join(__doc__.split("\n\n")[1:3]).replace("\n", " "),
                        "step_model_s": {"per_step": STEP_S, "per_token": TOKEN_S}, "engine": ENGINE,
                        "tokens_per_request": LEN, "workloads": [asdict(w) for w in chosen]},
               "workloads": {}}
    for i, w in enumerate(chosen):
        for policy in ("fcfs", "vtc"):
            line = Progress(f"[{2 * i + (policy == 'vtc') + 1}/{2 * len(chosen)}] ")
            results["workloads"].setdefault(w.name, {})[policy] = Run(w, policy, args.demo_dir).go(line)
            line.done()
    results["meta"]["wall_s"] = time.perf_counter() - started
    results["targets"] = targets(results)
    stem = output_stem("vtc_bench", results["meta"]["date"], "cpu", args.tiny)
    files = write_files(args.out, stem, results, markdown(results), lambda path: plot(results, path))
    print(markdown(results))
    return files


class Progress:
    """One status line on stderr, rewritten at most twice a second."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.last, self.text = prefix, 0.0, ""

    def __call__(self, text: str) -> None:
        self.text = text
        if time.monotonic() - self.last > 0.5:
            self.last = time.monotonic()
            print(f"\r{self.prefix}{text}\033[K", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        print(f"\r{self.prefix}{self.text}\033[K", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
