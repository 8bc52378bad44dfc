"""The Llama-family decoder (Llama, Mistral, Qwen2), named like transformers' modules so checkpoints and PEFT
adapters map onto it by name. Input is a flat token batch: [T] ids and positions plus one ForwardBatch."""
from dataclasses import dataclass

import torch
from torch import nn

from fair_lora.layers.attention import Attention
from fair_lora.layers.forward_batch import ForwardBatch
from fair_lora.layers.fused_projection import FusedProjection, LoRAGroup
from fair_lora.layers.lora_linear import LoRALinear
from fair_lora.layers.mlp import GatedMLP
from fair_lora.layers.rms_norm import RMSNorm
from fair_lora.layers.rotary import RotaryEmbedding


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    qkv_bias: bool
    tie_word_embeddings: bool


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(
            args.hidden_size, args.num_heads, args.num_kv_heads, args.head_dim, args.qkv_bias, rotary
        )
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the last block's output, not yet in the residual stream; residual: the stream (None in the first
        layer, whose x is the embeddings); [T, H] each. Returns the same pair for the next layer. vLLM's residual
        flow: each norm first adds the pending output into the stream, so add and norm are one GPU kernel."""
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, positions, batch)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h, batch.lora), residual


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.rotary = rotary
        self.layers = nn.ModuleList(DecoderLayer(args, rotary) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, batch)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    def __init__(self, args: ModelArgs, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args, rotary)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """input_ids, positions: [T]. Returns float32 logits [B_sample, V] of batch.logits_rows."""
        hidden = self.model(input_ids, positions, batch)
        return self.lm_head(hidden[batch.logits_rows]).float()

    def lora_linears(self) -> dict[str, LoRALinear]:
        """Every LoRA-aware projection by its transformers module path, e.g. 'model.layers.0.self_attn.q_proj'."""
        return {name: m for name, m in self.named_modules() if isinstance(m, LoRALinear)}

    def fuse_projections(self) -> None:
        """Stack q/k/v and gate/up weights into their fused projections; once, after the weights are loaded."""
        for m in self.modules():
            if isinstance(m, FusedProjection):
                m.fuse()

    def lora_groups(self) -> list[LoRAGroup]:
        """Every LoRA-aware projection in exactly one group: a fused projection's members, or itself alone."""
        linears = self.lora_linears()
        path = {id(m): name for name, m in linears.items()}
        fused = [m for m in self.modules() if isinstance(m, FusedProjection)]
        grouped = {id(p) for f in fused for p in f.parts}
        return [LoRAGroup(f, {path[id(p)]: p for p in f.parts}) for f in fused] + [
            LoRAGroup(m, {name: m}) for name, m in linears.items() if id(m) not in grouped
        ]
