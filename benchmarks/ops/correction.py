"""The LoRA correction (shrink + expand) of one projection, alone, against the base GEMM of the same shape.

Each row builds a pool of 100 rank-16 adapters (Llama-2-7B projection shapes), a decode batch of B tokens with
an adapter mix, and the batch metadata padded as a CUDA-graph bucket pads it (entries to the next power of two,
at most 2B; tiles to that bucket's worst case, the padding tiles stale copies of real ones),
then checks the Triton result against the torch reference and times graph replays (20 launches each) of: the base GEMM
(F.linear), the shrink (with the zeroing of v), the zeroing alone, the expand, and both. Bytes counted: the distinct
adapters' A and B, x once, y read and written once; "vs GEMM" is the correction's time over the base GEMM's (the
share it adds to that projection).

The summary multiplies out a Llama-2-7B step: 32 layers × the four projection groups.
--vary sets a kernel module's tuning constant to each listed value in turn (every combination is measured).

    python -m benchmarks.ops.correction            # on the GPU machine
    python -m benchmarks.ops.correction --vary lora.shrink.MAX_K_BLOCKS=2,4,8 --mixes 1,2
    python -m benchmarks.ops.correction --tiny     # CPU smoke run under TRITON_INTERPRET=1
"""
import argparse
import importlib
import itertools
import os
from dataclasses import replace

import torch
import torch.nn.functional as F

from benchmarks.ops.attention import graph_replay, timed

# A projection group: its input width and its members' output widths (fused q/k/v and gate/up, as the model runs)
SHAPES = {"q/k/v 4096→3×4096": (4096, (4096,) * 3), "o 4096→4096": (4096, (4096,)),
          "gate/up 4096→2×11008": (4096, (11008,) * 2), "down 11008→4096": (11008, (4096,))}
LAYERS = 32
REPEAT = 20  # launches per graph replay: a replay's own fixed cost would otherwise hide short kernels
# (name, share of hot tokens, distinct cold adapters); a hot share of 0 means nothing is merged (slora). A share
# above 1 is a count: B - n hot tokens and n cold ones (the few-cold steps a high hot share makes).
MIXES = (("1 adapter, none hot", 0.0, 1), ("all distinct, none hot", 0.0, None), ("90% hot, rest distinct", 0.9, None),
         ("8 adapters, one hot", 1 / 8, 7), ("1 cold, rest hot", 1 + 1, None), ("4 cold, rest hot", 1 + 4, None),
         ("16 cold, rest hot", 1 + 16, None))


def token_slots(batch: int, hot_share: float, distinct: int | None, num_slots: int) -> tuple[list[int], int | None]:
    """Each token's slot (slot 0 is the hot adapter when hot_share > 0) and the hot slot."""
    num_hot = round(batch * hot_share) if hot_share <= 1 else max(0, batch - round(hot_share - 1))
    cold = batch - num_hot
    kinds = distinct or cold
    slots = [0] * num_hot + [1 + i % kinds % (num_slots - 1) for i in range(cold)]
    return slots, (0 if hot_share > 0 else None)


def padded(batch, size: int, num_slots: int):
    """The batch as DecodeGraphs replays it: entries padded to their bucket, tiles to that bucket's worst case.
    The padding tiles repeat real ones, as a graph's static tables keep earlier steps' tiles past the count."""
    from fair_lora.engine.decode_graphs import MIN_ENTRY_BUCKET
    from fair_lora.kernels.lora.batch import max_tiles

    e = MIN_ENTRY_BUCKET
    while e < batch.num_entries:
        e *= 2
    e = min(e, max(2 * size, MIN_ENTRY_BUCKET))
    tiles = max_tiles(e, num_slots, batch.tile_entries)

    def pad(t: torch.Tensor, n: int, value) -> torch.Tensor:
        extra = torch.full((n - t.shape[0], *t.shape[1:]), value, dtype=t.dtype, device=t.device)
        return torch.cat([t, extra])

    def stale(t: torch.Tensor) -> torch.Tensor:
        if not hasattr(batch, "tile_counts") or not len(t):  # kernels that read the whole table: empty tiles
            return pad(t, tiles, 0)
        return t.repeat(-(-tiles // len(t)), 1)[:tiles]

    return replace(batch, num_tokens=size, token_idx=pad(batch.token_idx, e, 0), scale=pad(batch.scale, e, 0.0),
                   hot_entry_of=pad(batch.hot_entry_of, e, -1), shrink_tiles=stale(batch.shrink_tiles),
                   expand_tiles=stale(batch.expand_tiles))


def row(shape: tuple[int, tuple[int, ...]], size: int, mix, args, device, dtype, gen) -> dict:
    from fair_lora.kernels.lora.batch import build_lora_batch
    from fair_lora.kernels.lora.correction import lora_correction
    from fair_lora.kernels.lora.expand import lora_expand
    from fair_lora.kernels.lora.expand_ref import lora_expand_ref
    from fair_lora.kernels.lora.shrink import lora_shrink
    from fair_lora.kernels.lora.shrink_ref import lora_shrink_ref
    from fair_lora.kernels.lora.slots import LoRASlots

    h_in, sizes = shape
    h_out = sum(sizes)
    name, hot_share, distinct = mix
    slots = LoRASlots.empty(args.slots, args.rank, h_in, sizes, dtype, device)
    for j, width in enumerate(sizes):
        for s in range(args.slots):
            slots.sub(j).write(s, torch.randn(args.rank, h_in, generator=gen, device=device, dtype=dtype) * h_in**-0.5,
                               torch.randn(width, args.rank, generator=gen, device=device, dtype=dtype) * args.rank**-0.5)
    per_token, hot = token_slots(size, hot_share, distinct, args.slots)
    batch = build_lora_batch(torch.tensor(per_token), torch.full((args.slots,), 2.0), hot, device)
    static = padded(batch, size, args.slots)
    x = torch.randn(size, h_in, generator=gen, device=device, dtype=dtype)
    w = torch.randn(h_out, h_in, generator=gen, device=device, dtype=dtype) * h_in**-0.5
    y0 = F.linear(x, w)
    ref = y0.float().clone()
    f32 = replace(slots, a=slots.a.float(), b_t=slots.b_t.float())
    lora_expand_ref(ref, lora_shrink_ref(x.float(), f32, batch), f32, batch)
    y = y0.clone()
    lora_correction(y, x, slots, static)
    error = ((y.float() - ref).norm() / (ref - y0.float()).norm().clamp_min(1e-30)).item()
    v = lora_shrink(x, slots, static)
    out = {"shape": f"{h_in}→{'+'.join(map(str, sizes))}", "B": size, "mix": name, "error": error}
    if device.type == "cuda":
        runs = {"gemm": lambda: F.linear(x, w), "shrink": lambda: lora_shrink(x, slots, static),
                "zeros": lambda: torch.zeros(v.shape, dtype=v.dtype, device=device),
                "expand": lambda: lora_expand(y, v, slots, static),
                "correction": lambda: lora_correction(y, x, slots, static)}
        for key, fn in runs.items():
            replay, _ = graph_replay(fn, device, REPEAT)
            out[key] = timed(replay, args.iters, device) / REPEAT
        touched = len(set(batch.seg_slot_host))
        out["bytes"] = touched * args.rank * (h_in + h_out) * x.element_size() + x.nbytes + 2 * y.nbytes
    return out


def summary(rows: list[dict]) -> str:
    """Correction time of a whole Llama-2-7B decode step (224 projections) per variant, batch and mix."""
    steps: dict[tuple, float] = {}
    for r in rows:
        if "correction" in r:
            key = (r["variant"], r["B"], r["mix"])
            steps[key] = steps.get(key, 0.0) + LAYERS * r["correction"]
    lines = ["| variant | B | mix | correction per step ms |", "|---|---:|---|---:|"]
    lines += [f"| {v} | {b} | {m} | {t * 1e3:.2f} |" for (v, b, m), t in steps.items()]
    return "\n".join(lines)


def variants(vary: list[str]) -> list[dict[tuple[str, str], str]]:
    """--vary module.NAME=v1,v2 ... → every combination, as {(module, name): value}."""
    axes = []
    for item in vary:
        target, values = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        axes.append([((module, name), v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def apply(variant: dict[tuple[str, str], str]) -> str:
    for (module, name), value in variant.items():
        mod = importlib.import_module(f"fair_lora.kernels.{module}")
        setattr(mod, name, type(getattr(mod, name))(value))
    return " ".join(f"{m}.{n}={v}" for (m, n), v in variant.items()) or "default"


def table(rows: list[dict]) -> str:
    lines = ["| variant | projection | B | mix | GEMM µs | shrink µs | of it zeros µs | expand µs | correction µs | vs GEMM "
             "| GB/s | rel err |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "gemm" not in r:
            lines.append(f"| {r['variant']} | {r['shape']} | {r['B']} | {r['mix']} | - | - | - | - | - | - | - | "
                         f"{r['error']:.1e} |")
            continue
        lines.append(
            f"| {r['variant']} | {r['shape']} | {r['B']} | {r['mix']} | {r['gemm'] * 1e6:.1f} | {r['shrink'] * 1e6:.1f} | "
            f"{r['zeros'] * 1e6:.1f} | "
            f"{r['expand'] * 1e6:.1f} | {r['correction'] * 1e6:.1f} | {r['correction'] / r['gemm']:.2f} | "
            f"{r['bytes'] / r['correction'] / 1e9:.0f} | {r['error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small shapes on the CPU, Triton interpreted")
    p.add_argument("--batches", default="1,8,32,128,256")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--slots", type=int, default=100)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--mixes", default=",".join(str(i) for i in range(len(MIXES))), help="indices into MIXES")
    p.add_argument("--vary", action="append", default=[], help="module.NAME=v1,v2 (a kernels module's constant)")
    args = p.parse_args(argv)
    shapes = SHAPES
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ["FAIR_LORA_TRITON"] = "1"
        shapes, args.batches, args.slots, args.rank, args.iters = {"tiny": (48, (80, 32))}, "3", 6, 8, 1
    import triton

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    gen = torch.Generator(device).manual_seed(0)
    rows = []
    mixes = [MIXES[int(i)] for i in args.mixes.split(",")]
    for variant in variants(args.vary):
        label = apply(variant)
        for shape in shapes.values():
            for size in (int(b) for b in args.batches.split(",")):
                for mix in mixes:
                    rows.append({"variant": label, **row(shape, size, mix, args, device, dtype, gen)})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)  # each row as it comes: a run may be cut
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreted)"
    report = (f"{name}, torch {torch.__version__}, triton {triton.__version__}, {dtype}, rank {args.rank}, "
              f"{args.slots} slots, graph replays\n\n" + table(rows))
    if device.type == "cuda":
        report += "\n\n" + summary(rows)
    print(report)
    return report


if __name__ == "__main__":
    main()
