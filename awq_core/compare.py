"""Quantize one float model several ways and score each on the same held-out tokens.

Used by `awqflow quantize --compare` and by `benchmarks/quality.py`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from awq_core.awq import BlockResult, quantize_model
from awq_core.checkpoint import layout_of, replace_linears, save_quantized
from awq_core.config import QuantConfig
from awq_core.evaluate import EvalSettings, evaluate


@dataclass
class MethodResult:
    method: str  # "fp", "rtn", "awq" or "gptq"
    w_bit: int | None
    group_size: int | None
    quant_seconds: float
    perplexity: dict[str, float]
    size_bytes: int  # weights on disk (safetensors); fp: the float weights as fp16
    checkpoint: str | None = None
    layer_metrics: list[dict] = field(default_factory=list)

    def to_dict(self, with_layers: bool = False) -> dict:
        data = asdict(self)
        if not with_layers:
            data.pop("layer_metrics")
        return data


def float_bytes(model: nn.Module) -> int:
    """Bytes of the float weights as fp16 (how fp checkpoints are shipped), tied weights once."""
    return sum(p.numel() * 2 for p in {id(p): p for p in model.parameters()}.values())


def weights_size_on_disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))


def float_result(model: nn.Module, eval_tokens: dict[str, torch.Tensor], settings: EvalSettings) -> MethodResult:
    return MethodResult("fp", None, None, 0.0, evaluate(model, eval_tokens, settings), float_bytes(model))


def quantized_result(
    model: nn.Module,
    tokenizer,
    config: QuantConfig,
    calib_ids: torch.Tensor,
    eval_tokens: dict[str, torch.Tensor],
    settings: EvalSettings,
    out_dir: Path | None,
    device: str = "cpu",
    progress: Callable[[BlockResult], None] | None = None,
) -> MethodResult:
    """Quantize a copy of `model` with `config`, score it, and save the checkpoint to `out_dir` (None: do
    not save, e.g. RTN at a width only the GPTQ layout stores; the size is then 0)."""
    work = copy.deepcopy(model)
    start = time.perf_counter()
    result = quantize_model(work, calib_ids, config, device=device, progress=progress)
    seconds = time.perf_counter() - start
    ppl = evaluate(work, eval_tokens, settings)
    size = 0
    if out_dir is not None:
        replace_linears(work, result.quantized, layout_of(config))
        save_quantized(work, out_dir, config.hf_quantization_config(), tokenizer=tokenizer)
        size = weights_size_on_disk(out_dir)
    return MethodResult(
        config.method.value, config.w_bit, config.group_size, seconds, ppl, size, None if out_dir is None else str(out_dir),
        [m.to_dict() for m in result.metrics],
    )  # fmt: skip
