"""Where split-K partial sums meet: atomic adds into a zero-initialised output.

fp16 outputs take the adds directly (hardware fp16 atomics). bf16 partial sums go through a
float32 buffer that the caller casts back: bf16 atomics are missing before sm_90 and in Triton's
CPU interpreter, and each bf16 add would round to 8 bits of mantissa.
"""
from __future__ import annotations

import torch


def split_output(m: int, n: int, x: torch.Tensor, atomic: bool) -> torch.Tensor:
    """(M, N) output buffer: uninitialised for a single split, zeros (fp32 for bf16) for atomic adds."""
    if not atomic:
        return torch.empty((m, n), device=x.device, dtype=x.dtype)
    dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    return torch.zeros((m, n), device=x.device, dtype=dtype)
