"""Stage 2, per block: grid-search each scaling group's per-channel scales on the captured inputs."""
from __future__ import annotations

from prefect import task

from awq_core.awq import GroupScales, search_block_scales
from awq_core.config import QuantConfig
from tasks.capture import read_capture
from tasks.checkpoints import Checkpoint, StageOutput, read_tensors, stage_cache_key_fn, stage_key, stage_path, write_tensors
from tasks.model_ref import ModelRef
from tasks.session import float_block, loaded_model

STAGE = "scales"
CONFIG_FIELDS = ("method", "w_bit", "group_size", "zero_point", "n_grid", "duo_scaling")


def write_scales(path, scales: list[GroupScales]) -> Checkpoint:
    groups = [{"prev_op": s.prev_op, "linears": list(s.linears), "ratio": s.ratio, "loss": s.loss, "rtn_loss": s.rtn_loss} for s in scales]
    return write_tensors(path, {str(i): s.scales for i, s in enumerate(scales)}, {"groups": groups})


def read_scales(checkpoint: Checkpoint, device: str) -> list[GroupScales]:
    tensors, meta = read_tensors(checkpoint, device)
    return [
        GroupScales(g["prev_op"], tuple(g["linears"]), tensors[str(i)], g["ratio"], g["loss"], g["rtn_loss"])
        for i, g in enumerate(meta["groups"])
    ]


@task(name=STAGE, task_run_name="scales-block-{index}", cache_key_fn=stage_cache_key_fn(STAGE, CONFIG_FIELDS), persist_result=True)
def scales(
    ref: ModelRef, run_dir: str, index: int, config: QuantConfig, block_input: Checkpoint, calibration: Checkpoint,
    capture: Checkpoint, batch_size: int, device: str,
) -> StageOutput:
    key = stage_key(STAGE, locals(), CONFIG_FIELDS)  # locals() here are exactly the parameters
    block = float_block(ref, index, device)
    found = []
    if config.searches_scales:
        captured = read_capture(capture, block, ref, calibration, block_input, index, batch_size, device)
        found = search_block_scales(block, captured, loaded_model(ref).arch, config)
    return StageOutput(stage=STAGE, block=index, files={"scales": write_scales(stage_path(run_dir, "scales", key, index), found)})
