"""Paged attention kernels against the torch reference and torch SDPA on pre-gathered contiguous K/V.

Decode at batch {1, 32, 128, 256} × context {512, 2048} and a 2k-token prefill, Llama-2-7B head shapes
(32 heads, 32 kv heads, D=128, bf16, block_size 16), each sequence's blocks shuffled over the cache. Every row
first checks the kernel against the float32 reference, then times it; decode also runs as a CUDA graph
replay (the capture itself is part of the check). SDPA on contiguous K/V is the floor a paged kernel aims
at: it does not pay for the block table gather (its gather is not timed). GB/s counts K and V read once.

    python -m benchmarks.ops.attention               # on the GPU machine
    python -m benchmarks.ops.attention --kv-heads 8  # GQA (Llama-3-8B heads)
    python -m benchmarks.ops.attention --tiny        # CPU smoke run under TRITON_INTERPRET=1
"""
import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

BLOCK_SIZE = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small shapes on the CPU, Triton interpreted")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batches", default="1,32,128,256")
    p.add_argument("--contexts", default="512,2048")
    p.add_argument("--prefill", type=int, default=2048, help="prompt tokens of the prefill row")
    p.add_argument("--mixed-decodes", type=int, default=62, help="decoding sequences of the mixed row")
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args(argv)
    if args.tiny:
        args.heads, args.kv_heads, args.head_dim, args.batches, args.contexts = 4, 2, 32, "1,3", "17,40"
        args.prefill, args.mixed_decodes, args.iters = 40, 6, 1
    args.batches = [int(x) for x in args.batches.split(",")]
    args.contexts = [int(x) for x in args.contexts.split(",")]
    return args


def make_batch(batch: list[tuple[int, int]], args, device, dtype, gen: torch.Generator):
    """Caches, q and metadata for (context, new tokens) per sequence, blocks shuffled over the cache."""
    from fair_lora.kernels.attention.metadata import AttentionMetadata

    needed = [-(-ctx // BLOCK_SIZE) for ctx, _ in batch]
    physical = torch.randperm(sum(needed), generator=gen, device="cpu").tolist()
    tables, query_start = [], [0]
    for (_, num_new), count in zip(batch, needed):
        tables.append(physical[:count] + [-1] * (max(needed) - count))
        physical = physical[count:]
        query_start.append(query_start[-1] + num_new)
    shape = (sum(needed), BLOCK_SIZE, args.kv_heads, args.head_dim)
    k_cache = torch.randn(shape, device=device, dtype=dtype)
    v_cache = torch.randn(shape, device=device, dtype=dtype)
    q = torch.randn(query_start[-1], args.heads, args.head_dim, device=device, dtype=dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(query_start[-1], dtype=torch.int64, device=device),  # unused by attention
        query_start=torch.tensor(query_start, dtype=torch.int32, device=device),
        context_lens=torch.tensor([ctx for ctx, _ in batch], dtype=torch.int32, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        query_start_host=tuple(query_start),
        context_lens_host=tuple(ctx for ctx, _ in batch),
        max_query_len=max(n for _, n in batch),
    )
    return q, k_cache, v_cache, meta


def gathered(q, k_cache, v_cache, meta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, H, n, D] and contiguous K/V [B, H_kv, ctx, D] of a batch whose sequences share n and ctx."""
    num_seqs, ctx = meta.num_seqs, meta.context_lens_host[0]
    blocks = meta.block_tables[:, : -(-ctx // BLOCK_SIZE)].long()
    keys = k_cache[blocks].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    values = v_cache[blocks].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    return q.view(num_seqs, -1, *q.shape[1:]).transpose(1, 2), keys, values


def timed(fn: Callable[[], object], iters: int, device) -> float:
    """Median seconds of one call, after a warm-up call."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def graph_replay(fn: Callable[[], torch.Tensor], device, repeat: int = 1) -> tuple[Callable[[], object], torch.Tensor]:
    """fn captured `repeat` times in one CUDA graph (after a warm-up that compiles it): (replay, last output).
    A replay has a fixed cost of its own; time a short kernel with repeat > 1 and divide by it."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            out = fn()
    return graph.replay, out


def max_error(out: torch.Tensor, q, k_cache, v_cache, meta, scale) -> float:
    from fair_lora.kernels.attention.paged_attention_ref import paged_attention_ref

    ref = paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), meta, scale)
    return (out.float() - ref).abs().max().item()


def decode_row(batch: int, ctx: int, args, device, dtype, gen) -> dict:
    from fair_lora.kernels.attention.paged_attention_ref import paged_attention_ref
    from fair_lora.kernels.attention.decode import paged_decode_attention

    q, k_cache, v_cache, meta = make_batch([(ctx, 1)] * batch, args, device, dtype, gen)
    scale = args.head_dim**-0.5
    run = lambda: paged_decode_attention(q, k_cache, v_cache, meta, scale)  # noqa: E731
    row = {"case": f"decode B={batch} ctx={ctx}", "error": max_error(run(), q, k_cache, v_cache, meta, scale)}
    row["triton"] = timed(run, args.iters, device)
    if device.type == "cuda":
        replay, out = graph_replay(run, device)
        replay()
        row["error"] = max(row["error"], max_error(out, q, k_cache, v_cache, meta, scale))
        row["graph"] = timed(replay, args.iters, device)
    row["reference"] = timed(lambda: paged_attention_ref(q, k_cache, v_cache, meta, scale), min(args.iters, 5), device)
    query, keys, values = gathered(q, k_cache, v_cache, meta)
    sdpa = lambda: F.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=True)  # noqa: E731
    row["sdpa"] = timed(sdpa, args.iters, device)
    row["bytes"] = 2 * keys.numel() * keys.element_size()
    return row


def prefill_row(batch: list[tuple[int, int]], name: str, args, device, dtype, gen) -> dict:
    from fair_lora.kernels.attention.paged_attention_ref import paged_attention_ref
    from fair_lora.kernels.attention.prefill import prefill_attention

    q, k_cache, v_cache, meta = make_batch(batch, args, device, dtype, gen)
    scale = args.head_dim**-0.5
    run = lambda: prefill_attention(q, k_cache, v_cache, meta, scale)  # noqa: E731
    row = {"case": name, "error": max_error(run(), q, k_cache, v_cache, meta, scale)}
    row["triton"] = timed(run, args.iters, device)
    row["reference"] = timed(lambda: paged_attention_ref(q, k_cache, v_cache, meta, scale), min(args.iters, 5), device)
    if len({ctx for ctx, _ in batch}) == 1 and all(ctx == n for ctx, n in batch):
        query, keys, values = gathered(q, k_cache, v_cache, meta)
        row["sdpa"] = timed(lambda: F.scaled_dot_product_attention(
            query, keys, values, is_causal=True, scale=scale, enable_gqa=True), args.iters, device)
    row["flops"] = sum(2 * 2 * args.heads * args.head_dim * n * (ctx - (n - 1) / 2) for ctx, n in batch)
    return row


def table(rows: list[dict]) -> str:
    cols = ["triton", "graph", "reference", "sdpa"]
    head = " | ".join(f"{c} µs" for c in cols)
    lines = [f"| case | {head} | triton GB/s | triton TFLOP/s | sdpa / triton | max err |",
             "|---" * (len(cols) + 5) + "|"]
    for r in rows:
        best = min(r["triton"], r.get("graph", float("inf")))
        cells = [f"{r[c] * 1e6:.1f}" if c in r else "-" for c in cols]
        gbs = f"{r['bytes'] / best / 1e9:.0f}" if "bytes" in r else "-"
        tflops = f"{r['flops'] / best / 1e12:.1f}" if "flops" in r else "-"
        ratio = f"{r['sdpa'] / best:.2f}×" if "sdpa" in r else "-"
        lines.append(f"| {r['case']} | " + " | ".join(cells) + f" | {gbs} | {tflops} | {ratio} | {r['error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported
    import triton

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    rows = [decode_row(b, c, args, device, dtype, gen) for c in args.contexts for b in args.batches]
    n, ctx = args.prefill, args.contexts[-1]
    rows.append(prefill_row([(n, n)], f"prefill {n} tokens", args, device, dtype, gen))
    mixed = [(n, n // 4), (n // 2, n // 2)] + [(ctx, 1)] * args.mixed_decodes
    label = f"mixed: chunk {n // 4} on {n - n // 4}, prompt {n // 2}, {args.mixed_decodes} decodes at {ctx}"
    rows.append(prefill_row(mixed, label, args, device, dtype, gen))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreted)"
    header = (f"{name}, torch {torch.__version__}, triton {triton.__version__}, {dtype}, heads {args.heads}/"
              f"{args.kv_heads}, D={args.head_dim}, block_size {BLOCK_SIZE}")
    report = header + "\n\n" + table(rows)
    print(report)
    return report


if __name__ == "__main__":
    main()
