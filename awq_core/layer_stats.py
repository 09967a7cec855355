"""Statistics recorded per quantized linear, beyond its output error: how spread out a per-channel
vector is (AWQ's scales, the input's channel magnitudes) and how far the quantized weight moved.

They answer "where does a quantized model lose accuracy, and why": a projection whose input has a
few channels far above the mean is one AWQ's scaling must protect.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# A channel counts as an outlier above this multiple of the mean over channels. LLM activations have
# a handful of channels 10-100x the mean (LLM.int8, AWQ); 5x is well above the spread of ordinary
# channels and well below those, so the share of channels above it separates the two kinds of layers.
OUTLIER_FACTOR = 5.0


@dataclass
class Spread:
    mean: float
    max_over_mean: float
    outlier_share: float  # share of channels above OUTLIER_FACTOR x the mean


def spread(values: torch.Tensor) -> Spread:
    """The spread of a non-negative per-channel vector `values` (channels,)."""
    assert values.dim() == 1 and values.numel() > 0, f"expected a non-empty (channels,) vector, got {tuple(values.shape)}"
    v = values.float()
    mean = v.mean().clamp(min=1e-20)
    return Spread(float(mean), float(v.max() / mean), float((v > OUTLIER_FACTOR * mean).float().mean()))


def relative_weight_error(reference: torch.Tensor, weight: torch.Tensor) -> float:
    """||W - R||^2 / ||R||^2 for (out, in) weights."""
    assert reference.shape == weight.shape, f"weights differ in shape: {tuple(reference.shape)} vs {tuple(weight.shape)}"
    ref = reference.float()
    return float((weight.float() - ref).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-20))
