"""The hot merge of a whole Llama-2-7B (224 projections, rank 16, bf16): the Triton kernel against addmm.

Times one adapter switch (every projection's W' = W + s·B·A from its pristine copy) as the engine does it,
for each tile shape given; error: the largest |W' - exact W'| over a bf16 unit in the last place of |W| + |s·B·A|.
Floor: each projection's W read once and W' written once, at the device copy bandwidth measured here.

    python -m benchmarks.ops.merge [--tiles 64x128,128x128]
"""
import argparse

import torch

from benchmarks.ops.attention import timed as timed_s
from benchmarks.ops.correction import LAYERS

PER_LAYER = {(4096, 4096): 4, (4096, 11008): 2, (11008, 4096): 1}  # Llama-2-7B projections (H_in, H_out)


def main(argv: list[str] | None = None) -> None:
    from fair_lora.kernels.lora import merge as module
    from fair_lora.kernels.lora.merge_ref import lora_merge_ref

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", default="64x128,32x256,16x256,32x512,16x512")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args(argv)
    gen = torch.Generator("cuda").manual_seed(0)
    shapes = [(h_in, h_out) for (h_in, h_out), n in PER_LAYER.items() for _ in range(n * LAYERS)]
    projections = []
    for h_in, h_out in shapes:
        w = torch.randn(h_out, h_in, device="cuda", dtype=torch.bfloat16, generator=gen)
        b_t = torch.randn(args.rank, h_out, device="cuda", dtype=torch.bfloat16, generator=gen) / args.rank
        a = torch.randn(args.rank, h_in, device="cuda", dtype=torch.bfloat16, generator=gen) / h_in**0.5
        projections.append((torch.empty_like(w), w, b_t, a))
    nbytes = sum(2 * w.nbytes for _, w, _, _ in projections)
    big = torch.empty(nbytes // 4, dtype=torch.uint8, device="cuda")
    copy_ms = timed(lambda: big[: nbytes // 8].copy_(big[nbytes // 8 :]), args.reps)  # ~ nbytes/4 read + written
    bandwidth = (nbytes / 4) / (copy_ms / 1e3)

    def switch(merge) -> None:
        for out, w, b_t, a in projections:
            merge(out, w, b_t, a, 2.0)

    rows = [(f"addmm (cuBLAS), error {check(projections):.2f}", timed(lambda: switch(lora_merge_ref), args.reps))]
    for tile in args.tiles.split(","):
        module.BLOCK_M, module.BLOCK_N = (int(v) for v in tile.split("x"))
        for out, *_ in projections:
            out.fill_(float("nan"))
        ms = timed(lambda: switch(module.lora_merge), args.reps)
        rows.append((f"triton {tile}, error {check(projections):.2f}", ms))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {len(projections)} projections, rank "
          f"{args.rank}; {nbytes / 1e9:.1f} GB read + written; copy {bandwidth / 1e9:,.0f} GB/s; "
          f"floor {nbytes / bandwidth * 1e3:.2f} ms\n")
    print("| merge | ms | % of copy bandwidth |\n|---|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {nbytes / bandwidth * 1e3 / ms * 100:.0f}% |")


def error(out: torch.Tensor, w: torch.Tensor, b_t: torch.Tensor, a: torch.Tensor) -> float:
    """Largest |W' - exact| over one bf16 unit in the last place of the terms' size, |W| + |s|·|B|·|A|."""
    exact = w.double() + 2.0 * (b_t.double().t() @ a.double())
    terms = w.double().abs() + 2.0 * (b_t.double().abs().t() @ a.double().abs())
    return ((out.double() - exact).abs() / (terms * 2.0**-8)).max().item()


def timed(fn, reps: int) -> float:
    """Median milliseconds of one call."""
    return timed_s(fn, reps, torch.device("cuda")) * 1e3


def check(projections: list) -> float:
    """The worst error (see `error`) over a sample of the projections: float64 copies of all would not fit."""
    return max(error(*p) for p in projections[:: len(projections) // 7])


if __name__ == "__main__":
    main()
