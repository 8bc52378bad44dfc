"""Several small integer tables sent to the device as one array, each starting on a 16-byte boundary.

Triton compiles a kernel variant per pointer argument's 16-byte alignment (besides its integer arguments'
value classes). Packed back to back, a table's start would move with the lengths of the tables before it, so
batches of different shapes would compile new variants while serving, after the warm-up. Padding every
table to a multiple of ALIGN elements keeps each one aligned, whatever the batch.
"""
import numpy as np
import torch

ALIGN = 4  # elements: 16 bytes of int32 (the int64 region is 32-byte aligned, more than enough)


def padded_len(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(fields: list, dtype=np.int64) -> np.ndarray:
    """The fields (1-D array-likes) one after the other in `dtype`, each zero-padded to a multiple of ALIGN."""
    out = np.zeros(sum(padded_len(len(f)) for f in fields), dtype=dtype)
    at = 0
    for f in fields:
        out[at : at + len(f)] = np.asarray(f, dtype=dtype).reshape(-1)
        at += padded_len(len(f))
    return out


def unpack(packed: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Views of the fields `pack` laid out in `packed` (which may be a longer array's aligned start)."""
    parts = packed[: sum(padded_len(n) for n in sizes)].split([padded_len(n) for n in sizes])
    return [p[:n] for p, n in zip(parts, sizes)]
