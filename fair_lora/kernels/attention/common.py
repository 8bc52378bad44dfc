"""What the two attention kernels share: interpreter-safe reductions and the online-softmax loop over key tiles
gathered through the block table."""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # softmax runs in base 2 (exp2), with the scale folded into q·k
# attend's key masks (constexpr: jit code may read them as globals)
NO_MASK, BOUNDS, CAUSAL = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@triton.jit
def reduce_max(x, AXIS: tl.constexpr):
    # tl.max and tl.sum are @triton.jit wrappers, compiled-only when triton was imported before TRITON_INTERPRET
    # was set (as in the test session); tl.reduce is a builtin and runs in the interpreter either way.
    return tl.reduce(x, AXIS, tl.standard._elementwise_max)


@triton.jit
def reduce_sum(x, AXIS: tl.constexpr):
    return tl.reduce(x, AXIS, tl.standard._sum_combine)


@triton.jit
def attend(q, m, l, acc, k_cache_ptr, v_cache_ptr, table, kv_head, pos, k_lo, k_hi, block_size,
           stride_c_block, stride_c_slot, stride_c_head, scale_log2, d, d_ok,
           BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over keys k_lo..k_hi of one kv head, gathered BLOCK_N at a time through the block table
    `table`; returns (m, l, acc) updated. MASK: NO_MASK (whole tiles below every row's position), BOUNDS (keys
    from k_hi on are masked) or CAUSAL (also keys past each row's position `pos`)."""
    for n0 in range(k_lo, k_hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < k_hi
        block = tl.load(table + n // block_size, mask=n_ok, other=0).to(tl.int64)
        rows = block * stride_c_block + (n % block_size) * stride_c_slot + kv_head * stride_c_head
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        if MASK == CAUSAL:
            s = tl.where(n_ok[None, :] & (n[None, :] <= pos[:, None]), s, float("-inf"))
        elif MASK == BOUNDS:
            s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, reduce_max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + reduce_sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    return m, l, acc
