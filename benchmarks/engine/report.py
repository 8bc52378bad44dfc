"""The markdown report of one run (setup, targets, decode tables per adapter set and CUDA-graph
setting, prefill, hot merge, notes) and the run's environment. `results` is the JSON the benchmark writes."""
import statistics

import torch

from benchmarks.engine.targets import Index
from benchmarks.engine.workload import AdapterSet

COLUMNS = ("base", "fair", "slora", "hf-peft")
MET = {True: "met", False: "**missed**", None: "n/a"}


def markdown(results: dict) -> str:
    ix, meta = Index(results), results["meta"]
    lines = _setup(meta, results["calibration"]) + ["## Targets", ""]
    lines += ["| target | goal | reached | met | where |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['goal']} | {t['reached']} | {MET[t['met']]} | {t['where']} |"
              for t in results["targets"]]
    lines += ["", "## Decode", ""]
    for graphs in dict.fromkeys([ix.graphs, *(k[2] for k in ix.decode)]):
        for aset in [s["name"] for s in meta["adapter_sets"]]:
            lines += _decode_table(ix, aset, graphs)
    lines += _prefill_table(results["prefill"]) + _merge_table(results.get("merge"))
    if results["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    return "\n".join(lines)


def _setup(meta: dict, cal: dict) -> list[str]:
    v = meta["versions"]
    sets = "; ".join(
        f"{s['name']}: {s['count']} adapters, rank {s['rank_summary']}, on all {s['projections']} projections"
        for s in meta["adapter_sets"]
    )
    return [
        f"# Engine benchmark: {meta['date']}, {meta['device_name']}{' (tiny smoke run)' if meta['tiny'] else ''}",
        "",
        f"- versions: torch {v['torch']}, triton {v['triton']}, transformers {v['transformers']}, peft {v['peft']}, "
        f"CUDA {v['cuda']}; fair_lora git {v['git']}, sources {v['fair_lora_sources']}",
        f"- model: {meta['model']} shapes, random {meta['dtype']} weights; adapters: {sets}",
        f"- roofline, measured in this run: GEMM {cal['matmul_tflops']:.4g} TFLOP/s, device copy "
        f"{cal['copy_gbps']:,.4g} GB/s (read + written); a step's roofline = max(FLOPs / GEMM rate, "
        "bytes / copy rate), bytes = base weights + distinct adapters touched + KV cache",
        f"- decode: {meta['context']}-token prompts; median of {meta['steps']} engine.step() calls after "
        f"{meta['warmup']} warm-up, wall time between device synchronizations; fair merges the batch's most "
        "frequent adapter when its share reaches the hot policy's enter share (0.5), as its policy would, "
        "else nothing (then fair runs as slora); base = every request without an adapter, on the slora engine",
        f"- modes compared are timed in turns of {meta.get('turn', '?')} steps, both batches alive on their own "
        "engines: slora with fair at each mix (the table's fair and slora columns), base with fair serving "
        "every token hot (the first target's ratio; that fair time is in the base record's `partner`); the "
        "prefill cases take turns in each repetition",
        f"- hf-peft ({meta['hf_peft_method']}): {meta['hf_peft_description']}; attention "
        f"{meta.get('hf_peft_attention')}; median of {meta['peft_steps']} steps after {meta['peft_warmup']}",
        f"- CUDA graphs in the main sweep: {_graphs(meta['primary_graphs'])}; run wall time {meta['wall_s']:.0f} s",
        "",
    ]


def _graphs(graphs: bool | None) -> str:
    return {True: "on", False: "off", None: "(engine has no flag)"}[graphs]


def _decode_table(ix: Index, aset: str, graphs: bool | None) -> list[str]:
    order = {m: i for i, m in enumerate(ix.meta["mixes"])}
    keys = sorted({(k[3], k[4]) for k in ix.decode if k[1] == aset and k[2] == graphs},
                  key=lambda k: (k[0], order.get(k[1], len(order))))
    if not keys:
        return []
    lines = [
        f"### Adapters {aset}, CUDA graphs {_graphs(graphs)}",
        "",
        "Cells: median step time · tokens/s · % of the step roofline. The last two columns are fair's speed-ups.",
        "",
        "| B | mix | hot share | adapters | " + " | ".join(COLUMNS) + " | fair vs slora | fair vs hf-peft |",
        "|---:|---|---:|---:|" + "---|" * len(COLUMNS) + "---:|---:|",
    ]
    for batch, mix in keys:
        cells = {m: ix.get(m, batch, mix, aset, graphs) for m in COLUMNS}
        mixed = next(cells[m] for m in COLUMNS[1:] if cells[m])
        lines.append(
            f"| {batch} | {mix} | {mixed['hot_share']:.2f} | {mixed['distinct_adapters']} | "
            + " | ".join(_cell(cells[m]) for m in COLUMNS)
            + f" | {_speedup(cells['slora'], cells['fair'])} | {_speedup(cells['hf-peft'], cells['fair'])} |"
        )
    return lines + [""]


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{r['step_ms']:.2f} ms · {r['tokens_per_s']:,.0f} tok/s · {r['roofline_pct']:.0f}%"


def _speedup(slower: dict | None, faster: dict | None) -> str:
    return f"{slower['step_ms'] / faster['step_ms']:.2f}×" if slower and faster else "–"


def _prefill_table(prefill: list[dict]) -> list[str]:
    ok = [p for p in prefill if "error" not in p]
    if not ok:
        return []
    base = next((p["ms"] for p in ok if p["case"] == "base"), None)
    lines = ["## Prefill (one prompt per step)", ""]
    lines += ["| case | tokens | ms | tokens/s | % roofline | vs base |", "|---|---:|---:|---:|---:|---:|"]
    for p in ok:
        vs = f"{p['ms'] / base:.3f}×" if base else "–"
        rate = f"{p['tokens_per_s']:,.0f}"
        lines.append(f"| {p['case']} | {p['tokens']} | {p['ms']:.2f} | {rate} | {p['roofline_pct']:.0f}% | {vs} |")
    return lines + [""]


def _merge_table(merge: dict | None) -> list[str]:
    if not merge or "error" in merge:
        return []
    return [
        "## Hot merge (median times)",
        "",
        "| projections | rank | base → adapter | adapter → adapter | adapter → base | restore bit-exact |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {merge['projections']} | {merge['rank']} | {merge['merge_ms']:.2f} ms | {merge['switch_ms']:.2f} ms | "
        f"{merge['restore_ms']:.2f} ms | {merge['bit_exact']} |",
        "",
    ]


def progress_line(r: dict) -> str:
    """One measurement as the benchmark prints it to stderr."""
    if "step_ms" in r:
        line = (
            f"{r['step_ms']:8.2f} ms {r['tokens_per_s']:10,.0f} tok/s {r['roofline_pct']:4.0f}% roofline"
            f" (hot share {r['hot_share']:.2f}, {r['distinct_adapters']} adapters)"
        )
        if "partner" in r:  # a base record times fair serving every token hot beside it
            q = r["partner"]
            ratio = q["step_ms"] / r["step_ms"]
            line += f"; timed in turns with {q['mode']} {q['mix']}: {q['step_ms']:.2f} ms, {ratio:.3f}×"
        return line
    if "case" in r:
        return f"{r['ms']:8.2f} ms {r['tokens_per_s']:10,.0f} tok/s {r['roofline_pct']:4.0f}% roofline"
    return (
        f"switch {r['switch_ms']:.2f} ms, merge {r['merge_ms']:.2f} ms, restore {r['restore_ms']:.2f} ms, "
        f"bit-exact {r['bit_exact']}"
    )


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def describe_set(s: AdapterSet, projections: int) -> dict:
    ranks = sorted(set(s.ranks))
    summary = str(ranks[0]) if len(ranks) == 1 else f"{'/'.join(map(str, ranks))} (mean {statistics.mean(s.ranks):.1f})"
    return {
        "name": s.name,
        "count": len(s.ranks),
        "rank_summary": summary,
        "ranks": list(s.ranks),
        "projections": projections,
    }

