"""Stage 4, per block: fuse the scales into the float block (norms, preceding linears), clip, and
quantize every linear; write the block's new float tensors and its integer weights."""
from __future__ import annotations

import torch
import torch.nn as nn
from prefect import task

from awq_core.awq import BlockCapture, fuse_and_quantize_block, prefix_of
from awq_core.capture import run_block
from awq_core.config import QuantConfig
from awq_core.quantizer import QuantizedWeight
from tasks.capture import read_feats, read_hidden
from tasks.checkpoints import Checkpoint, StageOutput, read_tensors, stage_cache_key_fn, stage_key, stage_path, write_tensors
from tasks.clip import read_clips
from tasks.model_ref import ModelRef
from tasks.scales import read_scales
from tasks.session import block_kwargs, float_block, loaded_model

STAGE = "fuse"
CONFIG_FIELDS = ("w_bit", "group_size", "zero_point", "modules_to_not_convert", "sequential_quantized_inputs")


def write_fused(path, block: nn.Module, prefix: str, quantized: dict[str, QuantizedWeight]) -> Checkpoint:
    """The block's float tensors (fused norms, biases, excluded linears) and each quantized linear's
    integers, by path inside the block."""
    names = {name.removeprefix(f"{prefix}.") for name in quantized}
    tensors = {k: v for k, v in block.state_dict().items() if k.removesuffix(".weight") not in names}
    for name in names:
        qw = quantized[f"{prefix}.{name}"]
        assert qw.w_bit <= 8, f"{name}: w_bit={qw.w_bit} does not fit the uint8 checkpoint"
        tensors[f"{name}.q"] = qw.q.to(torch.uint8)  # (out, in)
        tensors[f"{name}.zeros"] = qw.zeros.to(torch.uint8)  # (out, in / g)
        tensors[f"{name}.scales"] = qw.scales  # (out, in / g) float32, fp16-exact
        if qw.g_idx is not None:  # GPTQ act-order: each column's group
            tensors[f"{name}.g_idx"] = qw.g_idx.to(torch.int32)  # (in,)
    meta = {"quantized": sorted(names), "w_bit": next(iter(quantized.values())).w_bit if quantized else None,
            "group_sizes": {n: quantized[f"{prefix}.{n}"].group_size for n in names}}  # fmt: skip
    return write_tensors(path, tensors, meta)


def read_fused(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    """(float tensors by path inside the block, quantized weights by path inside the block)."""
    tensors, meta = read_tensors(checkpoint)
    quantized = {
        name: QuantizedWeight(
            tensors.pop(f"{name}.q").to(torch.int32), tensors.pop(f"{name}.scales"),
            tensors.pop(f"{name}.zeros").to(torch.int32), meta["w_bit"], meta["group_sizes"][name],
            tensors.pop(f"{name}.g_idx", None),
        )  # fmt: skip
        for name in meta["quantized"]
    }
    return tensors, quantized


@task(name=STAGE, task_run_name="fuse-block-{index}", cache_key_fn=stage_cache_key_fn(STAGE, CONFIG_FIELDS), persist_result=True)
def fuse(
    ref: ModelRef, run_dir: str, index: int, config: QuantConfig, block_input: Checkpoint, calibration: Checkpoint,
    capture: Checkpoint, scales: Checkpoint, clips: Checkpoint, batch_size: int, device: str,
) -> StageOutput:
    key = stage_key(STAGE, locals(), CONFIG_FIELDS)  # locals() here are exactly the parameters
    block = float_block(ref, index, device)
    arch = loaded_model(ref).arch
    prefix = prefix_of(arch, index)
    captured = BlockCapture(None, read_feats(capture, device), {})
    result = fuse_and_quantize_block(
        block, captured, read_scales(scales, device), read_clips(clips, device), arch, index, prefix, config
    )
    files = {"fused": write_fused(stage_path(run_dir, "fused", key, index), block, prefix, result.quantized)}
    if config.sequential_quantized_inputs:  # the next block sees this quantized block's output
        hidden = run_block(block, read_hidden(block_input, device), block_kwargs(ref, calibration, index, device), batch_size)
        files["output"] = write_tensors(stage_path(run_dir, "quantized-output", key, index), {"hidden": hidden})
    return StageOutput(stage=STAGE, block=index, files=files, info={"metrics": [m.to_dict() for m in result.metrics]})
