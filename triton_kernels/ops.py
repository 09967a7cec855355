"""The public entries, each registered as a torch custom op: `w4a16_linear` (`awqflow::w4a16_linear`, and
`awqflow::w4a16_linear_fused` when it takes in the ops around it, see `fusion.py`) and `decode_attention`
(`awqflow::decode_attention`, and `awqflow::decode_attention_new_token` when it also writes the step's
token into the cache).

Being a custom op with a fake (meta) implementation, it traces under `torch.compile` without graph
breaks and replays inside CUDA graphs. The kernel choice ("auto": `dispatch.select_kernel`) is made
inside the op, at run time, so a compiled graph holds no device queries or table lookups. On CPU, or
on GPUs older than `dispatch.MIN_CAPABILITY`, it runs the PyTorch reference: dequantise (same
arithmetic as `awq_layout.dequantize_awq_gemm`), then matmul.
"""
from __future__ import annotations

import functools

import torch

from . import configs
from .decode_attention import NewToken
from .decode_attention import decode_attention as _decode_attention
from .dequant import dequant_matmul
from .dispatch import KernelChoice, select_kernel
from .fusion import LinearFusion, reference_fusion
from .gemm import gemm
from .gemm_swapped import gemm_swapped
from .gemv import gemv
from .half2 import interpreting
from .prepare import PreparedWeight, dequantize_prepared

try:  # Gluon (Triton's explicit-layout language) ships with Triton from 3.4 on
    from . import gemm_ws
except ImportError:  # an older Triton: the swapped GEMM takes the warp-specialised GEMM's calls
    gemm_ws = None


@functools.lru_cache(maxsize=None)
def _device_info(index: int) -> tuple[str, tuple[int, int], int]:
    props = torch.cuda.get_device_properties(index)
    return props.name, (props.major, props.minor), props.multi_processor_count


def _cuda_info(device: torch.device) -> tuple[str, tuple[int, int], int]:
    """(name, compute capability, multiprocessors) of a CUDA device; no index: the current one."""
    return _device_info(device.index if device.index is not None else torch.cuda.current_device())


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA device, None for anything else."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return _cuda_info(device)[1]


def device_name(device: torch.device) -> str | None:
    """Name of a CUDA device (the key of its tuned configs), None for anything else."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return _cuda_info(device)[0]


def _kernel_target(device: torch.device, what: str) -> tuple[str | None, int]:
    """(GPU name for the tuned configs, multiprocessors) where a kernel runs; under Triton's CPU
    interpreter no name (default configs) and a small pretend GPU."""
    if device.type == "cuda":
        name, _, sms = _cuda_info(device)
        return name, sms
    assert interpreting(), f"{what} on {device} needs TRITON_INTERPRET=1"
    return None, 4


AUTO = "auto"  # the op's `kernel` argument that lets `select_kernel` decide


def _run(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, kernel: KernelChoice) -> torch.Tensor:
    """x (M, K) -> (M, N) with the named kernel."""
    m, n, k = x.shape[0], weight.out_features, weight.in_features
    if kernel is KernelChoice.TORCH:
        w = dequantize_prepared(weight)  # (K, N)
        y = x @ w
        return y + bias if bias is not None else y
    name, sms = _kernel_target(x.device, f"kernel {kernel.value}")
    if kernel is KernelChoice.DEQUANT_CUBLAS:
        return dequant_matmul(x, weight, bias)
    if kernel is KernelChoice.GEMV:
        return gemv(x, weight, bias, configs.gemv_config(name, n, k, m, sms))
    if kernel is KernelChoice.GEMM_WS:
        if gemm_ws is not None and gemm_ws.runs(weight, x):
            return gemm_ws.gemm_ws(x, weight, bias, configs.gemm_ws_config(name, n, k, m, sms))
        kernel = KernelChoice.GEMM_SWAPPED  # bf16, groups under 128 rows, K % 8 or no Hopper: the nearest kernel
    if kernel is KernelChoice.GEMM_SWAPPED:
        return gemm_swapped(x, weight, bias, configs.gemm_swapped_config(name, n, k, m, sms))
    assert kernel is KernelChoice.GEMM, f"unknown kernel {kernel}"
    return gemm(x, weight, bias, configs.gemm_config(name, n, k, m, sms))


def _choice(x: torch.Tensor, weight: PreparedWeight, kernel: str) -> KernelChoice:
    if kernel == AUTO:
        return select_kernel(x.shape[0], weight.out_features, weight.in_features, device_capability(x.device),
                             device_name(x.device))  # fmt: skip
    return KernelChoice(kernel)


def _run_fused(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, kernel: KernelChoice,
               fusion: LinearFusion) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (M, N or N / 2) with the ops of `fusion` around the product: in the GEMV's epilogue, as
    separate PyTorch ops around the other kernels; with a scaled output, (y, y times its weight)."""
    if kernel is KernelChoice.GEMV:
        name, sms = _kernel_target(x.device, "kernel gemv")
        return gemv(x, weight, bias, configs.gemv_config(name, weight.out_features, weight.in_features, x.shape[0],
                                                         sms), fusion)  # fmt: skip
    return reference_fusion(x, lambda normed: _run(normed, weight, bias, kernel), fusion)


@torch.library.custom_op("awqflow::w4a16_linear", mutates_args=())
def _w4a16_linear_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    zero_scales: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    in_features: int,
    kernel: str,
) -> torch.Tensor:
    weight = PreparedWeight(qweight, zero_scales, x.dtype, group_size, in_features, qweight.shape[1])
    return _run(x, weight, bias, _choice(x, weight, kernel))


@_w4a16_linear_op.register_fake
def _(x, qweight, zero_scales, bias, group_size, in_features, kernel):
    return x.new_empty((x.shape[0], qweight.shape[1]))


@torch.library.custom_op("awqflow::w4a16_linear_fused", mutates_args=())
def _w4a16_linear_fused_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    zero_scales: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    in_features: int,
    kernel: str,
    norm_weight: torch.Tensor | None,
    eps: float,
    glu: bool,
    residual: torch.Tensor | None,
    rms_of: torch.Tensor | None,
    scaled_output_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    weight = PreparedWeight(qweight, zero_scales, x.dtype, group_size, in_features, qweight.shape[1])
    fusion = LinearFusion(norm_weight, eps, glu, residual, rms_of, scaled_output_weight)
    out = _run_fused(x, weight, bias, _choice(x, weight, kernel), fusion)
    return out if isinstance(out, tuple) else (out, out.new_empty(0))  # (y, its scaled copy or nothing)


@_w4a16_linear_fused_op.register_fake
def _(x, qweight, zero_scales, bias, group_size, in_features, kernel, norm_weight, eps, glu, residual, rms_of,
      scaled_output_weight):
    y = x.new_empty((x.shape[0], qweight.shape[1] // 2 if glu else qweight.shape[1]))
    return y, (torch.empty_like(y) if scaled_output_weight is not None else x.new_empty(0))


def w4a16_linear(
    x: torch.Tensor,
    weight: PreparedWeight,
    bias: torch.Tensor | None = None,
    kernel: KernelChoice | None = None,
    fusion: LinearFusion | None = None,
) -> torch.Tensor:
    """y (..., N) = x (..., K) @ dequantised weight (K, N) [+ bias]. `kernel` None: `select_kernel` decides.
    `fusion`: the RMSNorm before, silu(gate) * up and the residual after it (`fusion.py`); its residual
    has y's leading shape, its `rms_of` x's. With its `scaled_output_weight`: (y, y times that weight)."""
    assert x.shape[-1] == weight.in_features, f"x has K={x.shape[-1]}, weight expects {weight.in_features}"
    assert x.dtype == weight.dtype, f"x dtype {x.dtype} != weight dtype {weight.dtype}"
    assert x.device == weight.device, f"x on {x.device}, weight on {weight.device}"
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weight.in_features)  # (M, K)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) != weight.in_features):
        x2 = x2.contiguous()
    name = AUTO if kernel is None else kernel.value
    if fusion is None:
        if x2.shape[0] == 0:
            return x.new_empty((*lead, weight.out_features))
        y = torch.ops.awqflow.w4a16_linear(
            x2, weight.qweight, weight.zero_scales, bias, weight.group_size, weight.in_features, name,
        )
        return y.reshape(*lead, weight.out_features)
    n_out = fusion.out_features(weight.out_features)
    if x2.shape[0] == 0:
        empty = x.new_empty((*lead, n_out))
        return empty if fusion.scaled_output_weight is None else (empty, empty.clone())
    for vector in (fusion.norm_weight, fusion.scaled_output_weight):
        assert vector is None or vector.dtype == x.dtype, f"a norm weight in {vector.dtype}, x in {x.dtype}"
    residual, rms_of = fusion.residual, fusion.rms_of
    if residual is not None:
        assert residual.shape == (*lead, n_out), f"residual of shape {tuple(residual.shape)}, y is {(*lead, n_out)}"
        residual = residual.reshape(-1, n_out).contiguous()  # (M, N out)
    if rms_of is not None:
        assert rms_of.shape == x.shape, f"rms_of of shape {tuple(rms_of.shape)}, x is {tuple(x.shape)}"
        rms_of = rms_of.reshape(-1, weight.in_features).contiguous()  # (M, K)
    y, scaled = torch.ops.awqflow.w4a16_linear_fused(
        x2, weight.qweight, weight.zero_scales, bias, weight.group_size, weight.in_features, name,
        fusion.norm_weight, fusion.eps, fusion.glu, residual, rms_of, fusion.scaled_output_weight,
    )
    y = y.reshape(*lead, n_out)
    return y if fusion.scaled_output_weight is None else (y, scaled.reshape(*lead, n_out))


@torch.library.custom_op("awqflow::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    return _decode_attention(q, k, v, mask, scale, sms=_kernel_target(q.device, "decode attention")[1])


def _attention_output_like(q: torch.Tensor) -> torch.Tensor:
    return q.new_empty((q.shape[0], 1, q.shape[1], q.shape[3]))  # (B, 1, H, D) from q (B, H, 1, D)


@_decode_attention_op.register_fake
def _(q, k, v, mask, scale):
    return _attention_output_like(q)


@torch.library.custom_op("awqflow::decode_attention_new_token", mutates_args=("k", "v"))
def _decode_attention_new_token_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
    new_k: torch.Tensor, new_v: torch.Tensor, slot: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
) -> torch.Tensor:
    new = NewToken(new_k, new_v, slot, cos, sin)
    return _decode_attention(q, k, v, mask, scale, sms=_kernel_target(q.device, "decode attention")[1], new=new)


@_decode_attention_new_token_op.register_fake
def _(q, k, v, mask, scale, new_k, new_v, slot, cos, sin):
    return _attention_output_like(q)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
    new: NewToken | None = None,
) -> torch.Tensor:
    """One query token per sequence: q (B, H, 1, D), k and v (B, H_kv, S, D), mask None or bool
    (B or 1, 1, 1, S) -> (B, 1, H, D). With `new`, the step's own token is rotated, written into k and v
    at its slot and attended to (`awqflow::decode_attention_new_token`, which mutates k and v). See
    `decode_attention.py`."""
    if new is None:
        return torch.ops.awqflow.decode_attention(q, k, v, mask, scale)
    return torch.ops.awqflow.decode_attention_new_token(q, k, v, mask, scale, new.k, new.v, new.slot, new.cos,
                                                        new.sin)  # fmt: skip
