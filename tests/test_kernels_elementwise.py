"""The fused elementwise kernels (residual add + RMSNorm, SiLU·up, rotary) against their torch references.

Without CUDA the kernels run in Triton's CPU interpreter; triton.jit reads TRITON_INTERPRET when a kernel
module is imported, so it is set here, before those imports. Outputs are poisoned with NaN, and sit inside
wider NaN buffers, before the kernels run, so an unwritten element or a write past a row shows. The references
round to the dtype after each op, and so do the kernels: 16-bit results agree to an ulp (see CHAINED_ULPS),
float32 ones to about 1e-6.
"""
import os

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton.language as tl  # noqa: E402

from fair_lora.kernels.elementwise import ops as elementwise  # noqa: E402
from fair_lora.kernels.elementwise import rms_norm as rms_norm_module  # noqa: E402
from fair_lora.kernels.elementwise import rotary_embedding as rotary_module  # noqa: E402
from fair_lora.kernels.elementwise import silu_and_mul as silu_module  # noqa: E402
from fair_lora.kernels.elementwise.rms_norm import fused_add_rms_norm  # noqa: E402
from fair_lora.kernels.elementwise.rms_norm_ref import fused_add_rms_norm_ref  # noqa: E402
from fair_lora.kernels.elementwise.rotary_embedding import rotary_embedding  # noqa: E402
from fair_lora.kernels.elementwise.rotary_embedding_ref import rotary_embedding_ref  # noqa: E402
from fair_lora.kernels.elementwise.silu_and_mul import silu_and_mul  # noqa: E402
from fair_lora.kernels.elementwise.silu_and_mul_ref import silu_and_mul_ref  # noqa: E402
from fair_lora.layers.rotary import RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
TOKENS = [1, 3, 7, 133]
HIDDEN = [48, 80, 200]
HEADS = [(4, 4, 64), (6, 2, 80), (7, 1, 48)]  # (H, H_kv, D): MHA, GQA, MQA; odd counts, D/2 not a power of 2
PAD = 5  # extra NaN columns around every output, which the kernels must leave alone
EPS = 1e-5
# The interpreter computes with numpy's IEEE float32 ops, which differ from torch's in the order of a sum and
# in the last bit of exp. On the GPU exp, division and rsqrt are approximate (ex2.approx, div.full,
# rsqrt.approx), a few float32 ulps; and where a kernel rounds twice (the norm before its weight product, silu
# before its product with up) an intermediate one 16-bit ulp off can end two ulps off.
FP32_RTOL = 2e-6 if DEVICE == "cuda" else 1e-6
CHAINED_ULPS = 2 if DEVICE == "cuda" else 1


@pytest.fixture(autouse=True)
def round_bf16_like_the_gpu(monkeypatch):
    """Triton's interpreter (3.x) converts float32 to bf16 by truncation where the GPU (and torch) round to
    nearest even; rounding like the GPU here lets bf16 be held to one ulp. Nothing to do on a GPU."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    convert = interpreter._convert_float

    def round_to_nearest_even(data, src, dst, rounding_mode):
        if src == tl.float32 and dst == tl.bfloat16 and rounding_mode is None:
            return torch.from_numpy(np.array(data, dtype=np.float32)).to(torch.bfloat16).view(torch.uint16).numpy()
        return convert(data, src, dst, rounding_mode)

    monkeypatch.setattr(interpreter, "_convert_float", round_to_nearest_even)


def randn(*shape: int, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)


def padded_nan(*shape: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): a NaN buffer PAD wider in the last dim and the view of its first shape[-1] columns."""
    buffer = torch.full((*shape[:-1], shape[-1] + PAD), float("nan"), dtype=dtype, device=DEVICE)
    return buffer, buffer[..., : shape[-1]]


def ulps(x: torch.Tensor) -> torch.Tensor:
    """16-bit floats as integers in which neighbouring values differ by one (±0 are both 0)."""
    bits = x.view(torch.int16).int()
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, max_ulps: int = 1) -> None:
    assert out.dtype == ref.dtype, f"{out.dtype} result for a {ref.dtype} reference"
    assert not out.isnan().any(), "elements left unwritten"
    if out.element_size() == 2:
        worst = (ulps(out) - ulps(ref)).abs().max().item()
        assert worst <= max_ulps, f"{out.dtype} result {worst} ulps from the reference"
    else:
        torch.testing.assert_close(out, ref, rtol=FP32_RTOL, atol=1e-7)


def assert_padding_untouched(buffer: torch.Tensor, width: int) -> None:
    assert buffer[..., width:].isnan().all(), "a kernel wrote past the end of a row"


def rotary_tables(head_dim: int, max_positions: int = 4096) -> RotaryEmbedding:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return RotaryEmbedding(inv_freq, 1.0, max_positions).to(DEVICE)


def check_rms_norm(num_tokens: int, hidden: int, dtype: torch.dtype, with_residual: bool) -> None:
    gen = torch.Generator().manual_seed(num_tokens * hidden)
    # x with rows strided inside a wider tensor, as a slice of a bigger activation would be.
    x = randn(num_tokens, hidden + 3, dtype=dtype, gen=gen)[:, :hidden]
    residual = randn(num_tokens, hidden, dtype=dtype, gen=gen, scale=4.0) if with_residual else None
    weight = randn(hidden, dtype=dtype, gen=gen, scale=0.1) + 1
    ref_out, ref_h = fused_add_rms_norm_ref(x, weight, EPS, residual)
    buffer, out = padded_nan(num_tokens, hidden, dtype=dtype)
    given = None if residual is None else residual.clone()
    got_out, got_h = fused_add_rms_norm(x, weight, EPS, given, out=out)
    assert got_out is out
    assert got_h is (x if given is None else given), "h must be written into the residual"
    assert_matches(out, ref_out, CHAINED_ULPS)
    assert_padding_untouched(buffer, hidden)
    assert torch.equal(got_h, ref_h), "the residual add rounds once, as torch's does"


def check_silu_and_mul(num_tokens: int, width: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(num_tokens * width)
    gate_up = randn(num_tokens, 2 * width, dtype=dtype, gen=gen, scale=3.0)
    gate, up = gate_up[:, :width], gate_up[:, width:]  # the halves of a fused projection: strided rows
    buffer, out = padded_nan(num_tokens, width, dtype=dtype)
    assert silu_and_mul(gate, up, out=out) is out
    assert_matches(out, silu_and_mul_ref(gate, up), CHAINED_ULPS)
    assert_padding_untouched(buffer, width)


def check_rotary(num_tokens: int, heads: tuple[int, int, int], dtype: torch.dtype) -> None:
    num_heads, num_kv_heads, head_dim = heads
    gen = torch.Generator().manual_seed(num_tokens * num_heads)
    tables = rotary_tables(head_dim)
    positions = torch.randint(0, tables.cos.shape[0], (num_tokens,), generator=gen).to(DEVICE)
    q = randn(num_tokens, num_heads, head_dim, dtype=dtype, gen=gen)
    # k as the middle slice of a fused [T, H + 2·H_kv, D] qkv output: strided tokens.
    k = randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, dtype=dtype, gen=gen)[:, num_heads:-num_kv_heads]
    ref_q, ref_k = rotary_embedding_ref(q, k, tables.cos, tables.sin, positions)
    q_buffer, q_out = padded_nan(num_tokens, num_heads, head_dim, dtype=dtype)
    k_buffer, k_out = padded_nan(num_tokens, num_kv_heads, head_dim, dtype=dtype)
    got_q, got_k = rotary_embedding(q, k, tables.cos, tables.sin, positions, q_out=q_out, k_out=k_out)
    assert got_q is q_out and got_k is k_out
    for out, ref, buffer in ((q_out, ref_q, q_buffer), (k_out, ref_k, k_buffer)):
        assert_matches(out, ref)
        assert_padding_untouched(buffer, head_dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_add_rms_norm_matches_reference_and_writes_the_sum_into_the_residual(num_tokens, hidden, dtype):
    check_rms_norm(num_tokens, hidden, dtype, with_residual=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_rms_norm_without_residual_matches_reference(num_tokens, dtype):
    check_rms_norm(num_tokens, 80, dtype, with_residual=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", HIDDEN + [1500])  # 1500: two column blocks, the second partial
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_silu_and_mul_matches_reference_on_the_halves_of_a_fused_projection(num_tokens, width, dtype):
    check_silu_and_mul(num_tokens, width, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: "x".join(map(str, h)))
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_rotary_matches_reference_for_q_and_k(num_tokens, heads, dtype):
    check_rotary(num_tokens, heads, dtype)


def test_rotary_in_place_matches_reference():
    gen = torch.Generator().manual_seed(0)
    tables = rotary_tables(64)
    positions = torch.randint(0, 4096, (7,), generator=gen).to(DEVICE)
    q, k = randn(7, 4, 64, dtype=torch.bfloat16, gen=gen), randn(7, 2, 64, dtype=torch.bfloat16, gen=gen)
    ref_q, ref_k = rotary_embedding_ref(q, k, tables.cos, tables.sin, positions)
    rotary_embedding(q, k, tables.cos, tables.sin, positions, q_out=q, k_out=k)
    assert torch.equal(q, ref_q) and torch.equal(k, ref_k)


def test_kernels_accept_an_empty_batch():
    x = torch.empty(0, 48, device=DEVICE)
    out, h = fused_add_rms_norm(x, torch.ones(48, device=DEVICE), EPS, x.clone())
    assert out.shape == h.shape == (0, 48)
    assert silu_and_mul(x, x).shape == (0, 48)
    tables = rotary_tables(64)
    q, k = rotary_embedding(torch.empty(0, 4, 64, device=DEVICE), torch.empty(0, 2, 64, device=DEVICE),
                            tables.cos, tables.sin, torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert q.shape == (0, 4, 64) and k.shape == (0, 2, 64)


def public_op_calls(gen: torch.Generator) -> dict:
    """One call of each public op on small float32 CPU tensors: name -> (call, its reference's result)."""
    x, residual = torch.randn(3, 48, generator=gen), torch.randn(3, 48, generator=gen)
    weight = torch.randn(48, generator=gen)
    q, k = torch.randn(3, 4, 64, generator=gen), torch.randn(3, 2, 64, generator=gen)
    tables, positions = rotary_tables(64).to("cpu"), torch.tensor([0, 5, 4095])
    return {
        "rms_norm": (lambda: elementwise.rms_norm(x, weight, EPS, residual.clone()),
                     fused_add_rms_norm_ref(x, weight, EPS, residual)),
        "gated_silu": (lambda: elementwise.gated_silu(x, residual), silu_and_mul_ref(x, residual)),
        "apply_rotary": (lambda: elementwise.apply_rotary(q, k, tables.cos, tables.sin, positions),
                         rotary_embedding_ref(q, k, tables.cos, tables.sin, positions)),
    }


def test_public_ops_use_the_reference_for_cpu_tensors_by_default(monkeypatch):
    monkeypatch.delenv("FAIR_LORA_TRITON", raising=False)
    for module, name in ((rms_norm_module, "fused_add_rms_norm"), (silu_module, "silu_and_mul"),
                         (rotary_module, "rotary_embedding")):
        monkeypatch.setattr(module, name, lambda *a: pytest.fail("Triton used for CPU tensors"))
    for name, (call, ref) in public_op_calls(torch.Generator().manual_seed(0)).items():
        got = call()
        assert all(map(torch.equal, got, ref)) if isinstance(ref, tuple) else torch.equal(got, ref), name


def test_public_ops_dispatch_to_the_kernels_when_triton_is_forced(monkeypatch):
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    calls = []
    for module, name in ((rms_norm_module, "fused_add_rms_norm"), (silu_module, "silu_and_mul"),
                         (rotary_module, "rotary_embedding")):
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _name=name, _kernel=kernel: calls.append(_name) or _kernel(*a))
    for name, (call, ref) in public_op_calls(torch.Generator().manual_seed(0)).items():
        got = call()
        for out, expected in zip(got, ref) if isinstance(ref, tuple) else ((got, ref),):
            assert_matches(out, expected)
    assert calls == ["fused_add_rms_norm", "silu_and_mul", "rotary_embedding"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("num_tokens", [1, 32, 133, 4096])
def test_kernels_match_reference_at_model_shapes(num_tokens, dtype):
    """Llama-2-7B: H=4096, I=11008, 32 heads of 128; and Llama-3-8B's GQA, 32 q heads over 8 kv heads."""
    check_rms_norm(num_tokens, 4096, dtype, with_residual=True)
    check_rms_norm(num_tokens, 4096, dtype, with_residual=False)
    check_silu_and_mul(num_tokens, 11008, dtype)
    check_rotary(num_tokens, (32, 32, 128), dtype)
    check_rotary(num_tokens, (32, 8, 128), dtype)
