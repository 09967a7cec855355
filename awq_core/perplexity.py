"""Perplexity the standard way: non-overlapping windows of up to 2048 tokens, mean NLL, exp."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_WINDOW = 2048


def window_length(model: nn.Module, requested: int | None = None) -> int:
    context = getattr(model.config, "max_position_embeddings", None) or MAX_WINDOW
    return min(requested or MAX_WINDOW, context, MAX_WINDOW)


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: torch.Tensor, window: int | None = None, max_windows: int | None = None) -> float:
    """Perplexity of `model` on a 1-D stream of token ids, scored in non-overlapping windows.

    Every token but the first of each window is predicted; the mean is over all predicted tokens,
    so fp and quantized models given the same ids are scored on exactly the same tokens.
    """
    assert token_ids.dim() == 1, f"expected a 1-D token stream, got shape {tuple(token_ids.shape)}"
    length = window_length(model, window)
    n = token_ids.numel() // length
    if max_windows is not None:
        n = min(n, max_windows)
    assert n > 0, f"need at least {length} tokens for one window, got {token_ids.numel()}"
    device = next(model.parameters()).device
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for i in range(n):
        ids = token_ids[i * length : (i + 1) * length].unsqueeze(0).to(device)  # (1, length)
        logits = model(input_ids=ids, use_cache=False).logits.float()  # (1, length, vocab)
        nll = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        if not torch.isfinite(nll):
            raise FloatingPointError(f"non-finite loss in window {i}: the model produced NaN/Inf logits")
        total_nll += float(nll)
        total_tokens += length - 1
    return math.exp(total_nll / total_tokens)
