"""The engine's numbers to reach, judged on one run's records: each row gives the goal, the worst value reached
(met or missed) and where that worst value was measured."""
import statistics
from collections.abc import Callable

ENGINE_MODES = ("base", "fair", "slora")


class Index:
    """Decode records by (mode, adapter set, graphs, batch, mix); base records have set and mix None, and
    hf-peft records (no CUDA graphs) sit beside the engine's main sweep."""

    def __init__(self, results: dict) -> None:
        self.meta = results["meta"]
        self.graphs = self.meta["primary_graphs"]
        self.uniform = self.meta["adapter_sets"][0]["name"]
        self.decode = {self._key(r): r for r in results["decode"] if "error" not in r}

    def _key(self, r: dict) -> tuple:
        graphs = self.graphs if r["mode"] == "hf-peft" else r["graphs"]
        return r["mode"], r["adapter_set"], graphs, r["batch"], r["mix"]

    def get(
        self, mode: str, batch: int, mix: str | None, aset: str | None = None, graphs: bool | None | str = "main"
    ) -> dict | None:
        """One record; graphs "main": the CUDA-graph setting of the main sweep."""
        graphs = self.graphs if graphs == "main" else graphs
        if mode == "base":
            return self.decode.get(("base", None, graphs, batch, None))
        return self.decode.get((mode, aset or self.uniform, graphs, batch, mix))

    def records(self, mode: str, aset: str | None = None) -> list[dict]:
        """A mode's records of the main sweep, of one adapter set or all."""
        return [r for (m, s, g, _, _), r in self.decode.items() if m == mode and g == self.graphs and aset in (None, s)]


def targets(results: dict) -> list[dict]:
    ix, meta = Index(results), results["meta"]
    rows = [_fair_hot_vs_base(ix), _roofline(ix, meta["roofline_min_batch"])]
    for aset in [s["name"] for s in meta["adapter_sets"]]:
        rows += _fair_vs_slora(ix, aset)
    rows += _prefill(results["prefill"], meta["prefill_len"]) + _merge(results.get("merge"))
    rows.append(_fair_vs_peft(ix, meta["hf_peft_method"]))
    return rows


def _row(target: str, goal: str, reached: str, met: bool | None, where: str) -> dict:
    return {"target": target, "goal": goal, "reached": reached, "met": met, "where": where}


def _judge(
    target: str, goal: str, values: list[tuple[float, str]], bound: float, higher_is_better: bool, fmt: str
) -> dict:
    """values: (value, where measured); met when the worst value is on the right side of `bound`."""
    if not values:
        return _row(target, goal, "not measured", None, "")
    worst = (min if higher_is_better else max)(values)
    met = worst[0] >= bound if higher_is_better else worst[0] <= bound
    if len(values) <= 6:
        spread = "; ".join(f"{w}: {fmt.format(v)}" for v, w in values)
    else:
        spread = f"median {fmt.format(statistics.median(v for v, _ in values))} over {len(values)} measurements"
    return _row(target, goal, fmt.format(worst[0]), met, f"worst at {worst[1]} ({spread})")


Partner = Callable[[dict], dict | None]  # the record a record is compared with, if it was measured


def _speedups(records: list[dict], slower: Partner, faster: Partner) -> list[tuple[float, str]]:
    """step time of slower(r) / step time of faster(r), for every record whose two partners were both measured."""
    out = []
    for r in records:
        a, b = slower(r), faster(r)
        if a and b:
            out.append((a["step_ms"] / b["step_ms"], f"B={r['batch']} {r['mix'] or ''}".strip()))
    return out


def _same(r: dict) -> dict:
    return r


def _fair_hot_vs_base(ix: Index) -> dict:
    """Each base record against fair serving every token hot: the fair run timed in turns with it (its
    `partner`), or, when the two engines did not fit the device together, fair's own all-hot record."""
    ratios = []
    for r in ix.records("base"):
        fair = r.get("partner") or ix.get("fair", r["batch"], "all-hot")
        if fair and fair["mix"] == "all-hot":
            ratios.append((fair["step_ms"] / r["step_ms"], f"B={r['batch']} all-hot"))
    return _judge("decode: fair, every token hot, step time vs base", "≤ 1.02×", ratios, 1.02, False, "{:.3f}×")


def _roofline(ix: Index, min_batch: int) -> dict:
    records = [r for m in ENGINE_MODES for r in ix.records(m) if r["batch"] >= min_batch]
    values = [(r["roofline_pct"], f"{r['mode']} {r['adapter_set'] or ''} B={r['batch']} {r['mix'] or ''}")
              for r in records]
    target = f"decode: % of step roofline, every engine mode and mix, batch ≥ {min_batch}"
    return _judge(target, "≥ 80%", values, 80.0, True, "{:.0f}%")


def _fair_vs_slora(ix: Index, aset: str) -> list[dict]:
    def slora(r: dict) -> dict | None:
        return ix.get("slora", r["batch"], r["mix"], aset)

    fair = ix.records("fair", aset)
    skewed = _speedups([r for r in fair if r["hot_share"] >= 0.9], slora, _same)
    uniform = _speedups([r for r in fair if r["mix"] == "alpha=1"], slora, _same)
    return [
        _judge(f"decode: fair vs slora speed-up, ≥ 90% of tokens hot ({aset})", "≥ 1.10×", skewed, 1.10, True,
               "{:.2f}×"),
        _judge(f"decode: fair vs slora speed-up at α = 1 ({aset})", "≥ 0.98×", uniform, 0.98, True, "{:.3f}×"),
    ]


def _fair_vs_peft(ix: Index, method: str) -> dict:
    mixed = [r for r in ix.records("hf-peft", ix.uniform) if r["distinct_adapters"] >= 2]
    ratios = _speedups(mixed, _same, lambda r: ix.get("fair", r["batch"], r["mix"]))
    target = f"decode: fair vs hf-peft tokens/s, mixed batches ({method})"
    return _judge(target, "≥ 20×", ratios, 20.0, True, "{:.1f}×")


def _prefill(prefill: list[dict], length: int) -> list[dict]:
    ms = {p["case"]: p["ms"] for p in prefill if "error" not in p}
    rows = []
    for case, bound in (("fair-hot", 1.02), ("fair-cold", 1.10)):
        values = [(ms[case] / ms["base"], f"{length} tokens")] if case in ms and "base" in ms else []
        target = f"prefill: one {case.removeprefix('fair-')} request vs base"
        rows.append(_judge(target, f"≤ {bound:.2f}×", values, bound, False, "{:.3f}×"))
    return rows


def _merge(merge: dict | None) -> list[dict]:
    if not merge or "error" in merge:
        return [_row("merge switch", "≤ 10 ms", "not measured", None, ""),
                _row("restore bit-exact", "yes", "not measured", None, "")]
    where = f"{merge['projections']} projections, rank {merge['rank']}, median of {merge['switches_timed']} switches"
    exact = merge["bit_exact"] and merge["merged_differs"]
    return [
        _row("merge switch (adapter → adapter)", "≤ 10 ms", f"{merge['switch_ms']:.2f} ms", merge["switch_ms"] <= 10,
             where),
        _row("restore bit-exact after the switches", "yes", "yes" if exact else "NO", exact,
             f"{merge['projections']} weights compared bit for bit; a merge changed them: {merge['merged_differs']}"),
    ]
