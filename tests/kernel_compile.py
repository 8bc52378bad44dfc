"""Compile the fused decode correction for sm_90 and print its resource use as JSON, one line per form
(with and without a merged adapter, each with 1, 2 and 4 accumulator chains, at the default BLOCK_K).

Run as a subprocess by tests/test_kernels_compile.py, so that no test process's TRITON_INTERPRET (read when a
kernel module is imported) turns the kernel into its interpreted form first."""
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fair_lora.kernels.lora import fused

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
SIGNATURE = {
    "y_ptr": "*bf16", "x_ptr": "*bf16", "a_ptr": "*bf16", "b_t_ptr": "*bf16", "token_idx_ptr": "*i64",
    "scale_ptr": "*fp32", "hot_entry_of_ptr": "*i32", "tiles_ptr": "*i32", "counts_ptr": "*i32", "ranks_ptr": "*i32",
    "hot_slot_ptr": "*i32", "items_ptr": "*i32", "num_groups": "i32", "h_in": "i32", "width": "i32",
    "num_slots": "i32", "stride_y": "i32", "stride_x": "i32", "stride_a_slot": "i32", "stride_a_rank": "i32",
    "stride_b_slot": "i32", "stride_b_rank": "i32",
    **dict.fromkeys(["HAS_HOT", "BLOCK_E", "BLOCK_N", "BLOCK_R", "BLOCK_K", "CHAINS", "GRID", "PRECISION", "UPCAST"],
                    "constexpr"),
}


def resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", out)}


def main() -> None:
    for has_hot in (True, False):
        for chains in (1, 2, 4):
            constexprs = {"HAS_HOT": has_hot, "BLOCK_E": 16, "BLOCK_N": fused.BLOCK_N, "BLOCK_R": 16,
                          "BLOCK_K": fused.BLOCK_K, "CHAINS": chains, "GRID": fused.GRID, "PRECISION": "tf32",
                          "UPCAST": False}
            source = ASTSource(fn=fused._fused_kernel, signature=SIGNATURE, constexprs=constexprs)
            kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            print(json.dumps({"has_hot": has_hot, "chains": chains, **resource_usage(kernel.asm["cubin"])}))


if __name__ == "__main__":
    main()
