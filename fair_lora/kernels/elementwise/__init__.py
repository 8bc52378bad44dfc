"""The decoder layer's fused elementwise ops: residual add + RMSNorm, rotary, SiLU·up."""
