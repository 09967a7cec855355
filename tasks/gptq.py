"""GPTQ, per block: the block's Hessians, GPTQ of each linear, and the quantized block's output.

One task per block, not capture + quantize: with true-sequential GPTQ the inputs of o_proj, gate/up
and down_proj are those of the block whose earlier linears are already quantized, so each Hessian
exists only inside this stage. What a resumed run needs is checkpointed: the block's integer weights
(the same file format as the AWQ fuse stage, plus g_idx) and its output, the next block's input.
"""
from __future__ import annotations

from prefect import task

from awq_core.awq import prefix_of
from awq_core.config import QuantConfig
from awq_core.gptq_block import quantize_block_gptq
from tasks.capture import read_hidden
from tasks.checkpoints import Checkpoint, StageOutput, stage_cache_key_fn, stage_key, stage_path, write_tensors
from tasks.fuse import write_fused
from tasks.model_ref import ModelRef
from tasks.session import block_kwargs, float_block, loaded_model

STAGE = "gptq"
CONFIG_FIELDS = ("method", "w_bit", "group_size", "zero_point", "modules_to_not_convert", "gptq")


@task(name=STAGE, task_run_name="gptq-block-{index}", cache_key_fn=stage_cache_key_fn(STAGE, CONFIG_FIELDS), persist_result=True)
def gptq(
    ref: ModelRef, run_dir: str, index: int, config: QuantConfig, block_input: Checkpoint, calibration: Checkpoint,
    batch_size: int, device: str,
) -> StageOutput:
    key = stage_key(STAGE, locals(), CONFIG_FIELDS)  # locals() here are exactly the parameters
    block = float_block(ref, index, device)
    prefix = prefix_of(loaded_model(ref).arch, index)
    kwargs = block_kwargs(ref, calibration, index, device)
    result, hidden = quantize_block_gptq(block, index, prefix, read_hidden(block_input, device), kwargs, config, batch_size)
    files = {
        "fused": write_fused(stage_path(run_dir, "gptq", key, index), block, prefix, result.quantized),
        "output": write_tensors(stage_path(run_dir, "quantized-output", key, index), {"hidden": hidden}),
    }
    return StageOutput(stage=STAGE, block=index, files=files, info={"metrics": [m.to_dict() for m in result.metrics]})
