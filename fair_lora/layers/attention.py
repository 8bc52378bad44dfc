import torch
from torch import nn

from fair_lora.kernels.attention.paged_attention import paged_attention, write_kv_cache
from fair_lora.layers.forward_batch import ForwardBatch
from fair_lora.layers.fused_projection import FusedProjection
from fair_lora.layers.lora_linear import LoRALinear
from fair_lora.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    """Grouped-query self-attention over the paged KV cache; q/k/v/o are LoRA-aware, q/k/v one fused GEMM."""

    def __init__(
        self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool, rotary: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = LoRALinear(hidden, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = LoRALinear(hidden, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = LoRALinear(hidden, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = LoRALinear(num_heads * head_dim, hidden, bias=False)
        self.qkv = FusedProjection(self.q_proj, self.k_proj, self.v_proj)
        self.rotary = rotary
        self.scale = head_dim**-0.5
        # Attached by the model runner once the cache is sized: [num_blocks, block_size, H_kv, D].
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(x, batch.lora)  # column views of one [T, (H + 2·H_kv)·D] output
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        write_kv_cache(k, v, self.k_cache, self.v_cache, batch.attn.slot_mapping)
        out = paged_attention(q, self.k_cache, self.v_cache, batch.attn, self.scale)
        return self.o_proj(out.reshape(t, -1), batch.lora)
