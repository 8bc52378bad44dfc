"""Triton rotary embedding of q and k in one launch (neox style: the two halves of each head rotate).

Grid (token,): a program reads its position's cos/sin rows once and rotates all its q heads, then all its k
heads, each as a [heads, D/2] tile per half. The roundings are the reference's, op for op: the tables round
to the dtype, each product rounds, then their sum. Launched without fp fusion, so float32 gets no fused
multiply-add and matches torch's separate mul and add kernels.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr, num_heads, stride_head, stride_out_head, half, c1, c2, s1, s2,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < num_heads) & (d < half)
    src = x_ptr + h * stride_head + d
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + half, mask=mask, other=0.0)
    dtype = x1.dtype
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    # out = x·cos + rotate_half(x)·sin, with rotate_half(x) = (-x2, x1) and each product rounded to the dtype.
    o1 = (a * c1).to(dtype).to(tl.float32) + (-b * s1).to(dtype).to(tl.float32)
    o2 = (b * c2).to(dtype).to(tl.float32) + (a * s2).to(dtype).to(tl.float32)
    dst = out_ptr + h * stride_out_head + d
    tl.store(dst, o1.to(dtype), mask=mask)
    tl.store(dst + half, o2.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_ptr, sin_ptr, positions_ptr, num_q_heads, num_k_heads, half,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_qo_tok, stride_qo_head,
    stride_ko_tok, stride_ko_head, stride_table,
    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    row = tl.load(positions_ptr + tok).to(tl.int64) * stride_table
    d = tl.arange(0, BLOCK_HALF)
    d_ok = d < half
    dtype = q_ptr.dtype.element_ty
    c1 = tl.load(cos_ptr + row + d, mask=d_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + row + half + d, mask=d_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + row + d, mask=d_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + row + half + d, mask=d_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    _rotate_heads(q_ptr + tok * stride_q_tok, q_out_ptr + tok * stride_qo_tok, num_q_heads, stride_q_head,
                  stride_qo_head, half, c1, c2, s1, s2, BLOCK_QH, BLOCK_HALF)
    _rotate_heads(k_ptr + tok * stride_k_tok, k_out_ptr + tok * stride_ko_tok, num_k_heads, stride_k_head,
                  stride_ko_head, half, c1, c2, s1, s2, BLOCK_KH, BLOCK_HALF)


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
    q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q_out = q · cos[p] + rotate_half(q) · sin[p], and the same for k, with p = positions[t].

    q, q_out: [T, H, D]; k, k_out: [T, H_kv, D]; heads of stride 1, one dtype; cos, sin: [P, D] with rows of
    stride 1 (float32 or the dtype); positions: [T] integers below P. Outputs are allocated when not given
    (passing q and k rotates in place); every element is written. Returns (q_out, k_out)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if q_out is None else q_out
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device) if k_out is None else k_out
    assert k.shape == k_out.shape == (num_tokens, num_k_heads, head_dim) and q_out.shape == q.shape
    assert k.dtype == q_out.dtype == k_out.dtype == q.dtype, f"q is {q.dtype} but k is {k.dtype}"
    assert head_dim % 2 == 0 and cos.shape == sin.shape and cos.shape[1] == head_dim, f"cos {tuple(cos.shape)}"
    assert cos.stride(0) == sin.stride(0) and cos.stride(1) == sin.stride(1) == 1
    assert q.stride(2) == k.stride(2) == q_out.stride(2) == k_out.stride(2) == 1, "heads must be contiguous"
    assert positions.shape == (num_tokens,)
    if num_tokens == 0:
        return q_out, k_out
    _rotary_kernel[(num_tokens,)](
        q, k, q_out, k_out, cos, sin, positions, num_q_heads, num_k_heads, head_dim // 2,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), q_out.stride(0), q_out.stride(1),
        k_out.stride(0), k_out.stride(1), cos.stride(0),
        BLOCK_QH=triton.next_power_of_2(num_q_heads), BLOCK_KH=triton.next_power_of_2(num_k_heads),
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2), num_warps=4, enable_fp_fusion=False,
    )
    return q_out, k_out
