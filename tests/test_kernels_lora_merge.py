"""The Triton hot merge against its torch reference (addmm): same W' up to the last bit of the rounding.

Without CUDA the kernel runs in Triton's CPU interpreter; TRITON_INTERPRET is set before the kernel's import.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fair_lora.kernels.lora import merge as lora_merge_module  # noqa: E402
from fair_lora.kernels.lora.merge import lora_merge  # noqa: E402
from fair_lora.kernels.lora.merge_ref import lora_merge_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(h_out: int, h_in: int, rank: int, dtype: torch.dtype, seed: int, device: str = DEVICE):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(h_out, h_in, generator=gen).to(device, dtype)
    # B and A as the slots hold them: views of [S, R, H] buffers (row strides past the rank rows)
    b_t = torch.randn(3, 2 * rank, h_out, generator=gen).to(device, dtype)[1, :rank]
    a = (torch.randn(3, 2 * rank, h_in, generator=gen) / rank).to(device, dtype)[2, :rank]
    return w, b_t, a


def assert_merged_like_reference(out: torch.Tensor, w, b_t, a, scale: float) -> None:
    """out within rounding of the reference run in float64: one unit in the last place of W' (one rounding to
    the weight's dtype: to nearest on a GPU, toward zero in Triton's CPU interpreter) plus float32-accumulation
    error relative to the terms' size, |W| + |s|·|B|·|A|, which bounds a sum's error where W and s·B·A cancel."""
    exact = torch.empty_like(w, dtype=torch.float64)
    lora_merge_ref(exact, w.double(), b_t.double(), a.double(), scale)
    terms = w.double().abs() + abs(scale) * (b_t.double().abs().t() @ a.double().abs())
    unit = 2.0**-23 if w.dtype == torch.float32 else 2.0**-7
    bound = unit * exact.abs() + 2.0**-20 * terms
    assert ((out.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("h_out,h_in,rank", [(80, 48, 4), (200, 133, 8), (17, 300, 16), (64, 130, 64)])
def test_merge_writes_every_element_like_addmm(h_out, h_in, rank, dtype):
    w, b_t, a = make(h_out, h_in, rank, dtype, seed=h_out * h_in + rank)
    out = torch.full_like(w, float("nan"))
    lora_merge(out, w, b_t, a, 1.7)
    assert not out.isnan().any()
    assert_merged_like_reference(out, w, b_t, a, 1.7)


def test_merge_leaves_the_pristine_weight_alone_and_can_write_in_place():
    w, b_t, a = make(96, 160, 8, torch.float32, seed=1)
    pristine = w.clone()
    out = torch.empty_like(w)
    lora_merge(out, w, b_t, a, -0.5)
    assert torch.equal(w, pristine)
    lora_merge(w, w, b_t, a, -0.5)  # a program reads its own tile before writing it
    assert torch.equal(w, out)


def test_merge_refuses_mismatched_shapes():
    w, b_t, a = make(32, 48, 4, torch.float32, seed=2)
    with pytest.raises(AssertionError):
        lora_merge(torch.empty_like(w), w, b_t, a[:, :40], 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("h_out,h_in", [(4096, 4096), (11008, 4096), (4096, 11008)])
def test_merge_on_gpu_at_llama_shapes(h_out, h_in):
    w, b_t, a = make(h_out, h_in, 16, torch.bfloat16, seed=3, device="cuda")
    out = torch.full_like(w, float("nan"))
    lora_merge(out, w, b_t, a, 2.0)
    assert_merged_like_reference(out, w, b_t, a, 2.0)


def test_engine_merges_through_the_kernel_when_triton_is_on(demo, monkeypatch):
    """The hot merge dispatches to this kernel (forced here on the CPU): every targeted weight becomes
    W + s·B·A, and restoring brings back the bit-identical base."""
    from tests.engine_helpers import make_engine

    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    calls = []
    monkeypatch.setattr(lora_merge_module, "lora_merge", lambda *a: calls.append(1) or lora_merge(*a))
    engine = make_engine(demo)
    base = {name: p.detach().clone() for name, p in engine.model.named_parameters()}
    adapter = engine.pool.get("adapter-2")
    engine.set_hot_adapter("adapter-2")
    assert len(calls) == len(adapter.weights) > 0
    for path, (a, b) in adapter.weights.items():
        merged = engine.model.get_submodule(path).weight
        torch.testing.assert_close(merged, base[f"{path}.weight"] + adapter.scaling * b @ a, rtol=1e-6, atol=1e-6)
    engine.set_hot_adapter(None)
    assert all(torch.equal(p, base[name]) for name, p in engine.model.named_parameters())
