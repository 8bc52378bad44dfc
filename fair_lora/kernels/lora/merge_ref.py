"""Pure-torch reference of the hot merge: W' = W + s·B·A, one GEMM with W as the added input."""
import torch


def lora_merge_ref(out: torch.Tensor, w: torch.Tensor, b_t: torch.Tensor, a: torch.Tensor, scale: float) -> None:
    """out, w: [H_out, H_in]; b_t: [r, H_out] (B transposed, as the slots store it); a: [r, H_in]."""
    torch.addmm(w, b_t.t(), a, alpha=scale, out=out)
