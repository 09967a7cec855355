"""GPTQ for one linear layer (Frantar et al., 2022), as in the paper's algorithm box:

    H = 2/n * sum_x x x^T                               from the layer's calibration inputs
    dead columns (H_jj = 0): H_jj = 1, W_:j = 0
    act-order: permute columns by decreasing H_jj
    U = cholesky(inverse(H + damp * mean(diag H) * I)), upper
    for each block of `block_size` columns:
        for each column j of the block:
            at a group's first column: scales and zeros from the (error-updated) weights of the group
            q_j = quantize(w_j);  e_j = (w_j - dequant(q_j)) / U_jj
            w_k -= e_j * U_jk                          for the block's later columns k
        W[:, after the block] -= E @ U[block, after the block]     (the lazy batch update)

The result is an ordinary `QuantizedWeight` (integers in [0, 2**bits), fp16-exact scales, zeros),
with `g_idx` when act-order put the columns of a group out of their natural order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from awq_core.config import GPTQConfig
from awq_core.quantizer import SCALE_DTYPE, QuantizedWeight, check_group_size

DAMP_GROWTH = 2.0  # a failed Cholesky doubles the dampening ...
DAMP_LIMIT = 1.0  # ... until it would reach the mean diagonal itself: then the Hessian is unusable


class HessianError(ValueError):
    """A Hessian GPTQ cannot use: no inputs, non-finite values, or not positive definite at any damping."""


class Hessian:
    """Accumulates H = 2/n * sum x x^T in float32 over batches of a layer's inputs."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)  # (in, in)
        self.abs_sum = torch.zeros(in_features, dtype=torch.float32, device=device)  # (in,) for the metrics
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        self.sum.addmm_(x.T, x)
        self.abs_sum += x.abs().sum(dim=0)
        self.count += x.shape[0]

    def channel_mean_abs(self) -> torch.Tensor:
        """(in,) mean |x| of each input channel over the calibration tokens."""
        return self.abs_sum / max(self.count, 1)

    def value(self) -> torch.Tensor:
        if self.count == 0:
            raise HessianError("no calibration inputs reached this layer: its Hessian is empty")
        return self.sum * (2.0 / self.count)


@dataclass
class GPTQResult:
    weight: QuantizedWeight
    damp: float  # the dampening fraction that made the Cholesky factorization succeed
    loss: float  # GPTQ's own objective: sum over columns of (w - q)^2 / U_jj^2 / 2
    perm: torch.Tensor | None  # (in,) the column order used (act-order), None for natural order


def hessian_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - W^) H (W - W^)^T): the summed squared output error over the calibration tokens, times 2/n."""
    delta = (w.float() - w_hat.float())  # (out, in)
    return float(((delta @ h) * delta).sum())


def relative_hessian_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """||X (W - W^)^T||^2 / ||X W^T||^2 over all calibration tokens, computed from H alone."""
    return hessian_error(w, w_hat, h) / max(hessian_error(w, torch.zeros_like(w), h), 1e-20)


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, raising `damp` until it succeeds."""
    if not torch.isfinite(h).all():
        raise HessianError("the Hessian has NaN or Inf entries: the calibration activations are not finite")
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    while damp < DAMP_LIMIT:
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper, damp
        damp *= DAMP_GROWTH
    raise HessianError(
        f"the Hessian is not positive definite even with dampening {damp / DAMP_GROWTH:.3g} x its mean diagonal: "
        "use more calibration samples or a larger damp_percent"
    )


def gptq_group_range(w: torch.Tensor, w_bit: int, zero_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale (fp16-exact) and zero of `w` (rows, group), GPTQ's convention.

    The range always contains 0. Asymmetric zeros are kept >= 1: the GPTQ (v1) checkpoint stores
    `zero - 1`, so a zero of 0 would be unreadable; a group of non-negative weights therefore spans
    [0, max] with zero 1. Symmetric: scale = 2 * max|w| / (2**bits - 1), zero = 2**(bits - 1).
    """
    max_q = 2**w_bit - 1
    w_min = w.amin(dim=1, keepdim=True).clamp(max=0)  # (rows, 1)
    w_max = w.amax(dim=1, keepdim=True).clamp(min=0)
    if zero_point:
        scales = ((w_max - w_min) / max_q).clamp(min=1e-5)
        zeros = torch.round(-w_min / scales)
        positive = zeros < 1  # all weights >= 0: give up one level to keep zero at 1
        scales = torch.where(positive, (w_max / (max_q - 1)).clamp(min=1e-5), scales)
        zeros = zeros.clamp(1, max_q)
    else:
        scales = (2 * torch.maximum(-w_min, w_max) / max_q).clamp(min=1e-5)
        zeros = torch.full_like(scales, 2 ** (w_bit - 1))
    return scales.to(SCALE_DTYPE).float(), zeros


def _static_group_params(w: torch.Tensor, g: int, w_bit: int, zero_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zeros (out, groups) of the natural groups of the weights before any update."""
    out_features, in_features = w.shape
    scales, zeros = gptq_group_range(w.reshape(-1, g), w_bit, zero_point)  # (out * groups, 1)
    return scales.reshape(out_features, in_features // g), zeros.reshape(out_features, in_features // g)


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, w_bit: int, group_size: int, zero_point: bool, config: GPTQConfig) -> GPTQResult:
    """Quantize a `(out, in)` weight with GPTQ given its Hessian `(in, in)`."""
    assert w.dim() == 2 and h.shape == (w.shape[1], w.shape[1]), (
        f"weight {tuple(w.shape)} and Hessian {tuple(h.shape)} do not match: expected H of (in, in)"
    )
    assert torch.isfinite(w).all(), "weight has NaN or Inf values: quantization needs finite weights"
    out_features, in_features = w.shape
    g = check_group_size(group_size, in_features)
    max_q = 2**w_bit - 1
    W = w.detach().float().clone()  # (out, in), updated in place as columns are quantized
    H = h.detach().float().clone()  # (in, in)
    dead = torch.diag(H) == 0  # inputs that are always zero: any weight works, zero is simplest
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = _static_group_params(W, g, w_bit, zero_point) if config.static_groups else None

    perm = None
    if config.desc_act:
        perm = torch.argsort(torch.diag(H), descending=True)  # (in,) most active inputs first
        W, H = W[:, perm], H[perm][:, perm]
    U, damp = inverse_hessian_factor(H, config.damp_percent)  # (in, in) upper

    n_groups = in_features // g
    device = W.device
    Q = torch.zeros_like(W, dtype=torch.int32)  # (out, in) integers, in the quantization order
    scales = torch.zeros(out_features, n_groups, device=device)  # (out, groups)
    zeros = torch.zeros(out_features, n_groups, device=device)
    order_group = torch.zeros(in_features, dtype=torch.int32, device=device)  # group of each column, in quantization order
    losses = torch.zeros(out_features, device=device)
    scale = zero = None
    for i1 in range(0, in_features, config.block_size):
        i2 = min(i1 + config.block_size, in_features)
        W1 = W[:, i1:i2].clone()  # (out, b) the block, updated column by column
        E1 = torch.zeros_like(W1)  # (out, b) scaled errors, for the lazy update of later blocks
        U1 = U[i1:i2, i1:i2]  # (b, b)
        for i in range(i2 - i1):
            column = i1 + i
            original = int(perm[column]) if perm is not None else column
            if static is not None:  # the natural group of this column, fixed before any update
                group = original // g
                scale, zero = static[0][:, group : group + 1], static[1][:, group : group + 1]
            elif column % g == 0:  # a new group: its range from the weights as updated so far
                group = column // g
                ahead = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]  # (out, g)
                scale, zero = gptq_group_range(ahead, w_bit, zero_point)  # (out, 1) each
            scales[:, group], zeros[:, group] = scale[:, 0], zero[:, 0]
            order_group[column] = group
            w_col = W1[:, i]  # (out,)
            q = (torch.round(w_col / scale[:, 0]) + zero[:, 0]).clamp(0, max_q)  # (out,)
            Q[:, column] = q.to(torch.int32)
            error = (w_col - (q - zero[:, 0]) * scale[:, 0]) / U1[i, i]  # (out,)
            losses += error.pow(2) / 2
            W1[:, i:] -= error.unsqueeze(1) * U1[i, i:].unsqueeze(0)  # (out, b - i)
            E1[:, i] = error
        W[:, i2:] -= E1 @ U[i1:i2, i2:]  # (out, in - i2)

    g_idx = None
    if perm is not None:
        inverse = torch.argsort(perm)
        Q = Q[:, inverse]
        order_group = order_group[inverse]  # (in,) group of each column in its natural position
    natural = torch.arange(in_features, dtype=torch.int32, device=device) // g
    if not torch.equal(order_group, natural):
        g_idx = order_group
    weight = QuantizedWeight(Q.contiguous(), scales, zeros.to(torch.int32), w_bit, g, g_idx)
    return GPTQResult(weight, damp, float(losses.sum()), perm)
