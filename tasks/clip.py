"""Stage 3, per block: search per-group clipping ratios of each linear, with the block's scales fused."""
from __future__ import annotations

from prefect import task

from awq_core.awq import BlockCapture, apply_block_scales, prefix_of, search_block_clips
from awq_core.clip_search import ClipResult
from awq_core.config import QuantConfig
from tasks.capture import read_feats
from tasks.checkpoints import Checkpoint, StageOutput, read_tensors, stage_cache_key_fn, stage_key, stage_path, write_tensors
from tasks.model_ref import ModelRef
from tasks.scales import read_scales
from tasks.session import float_block, loaded_model

STAGE = "clip"
CONFIG_FIELDS = ("method", "w_bit", "group_size", "zero_point", "clip", "modules_to_not_convert")


def write_clips(path, clips: dict[str, ClipResult]) -> Checkpoint:
    tensors = {}
    for name, clip in clips.items():
        tensors[f"{name}.max_val"], tensors[f"{name}.ratios"] = clip.max_val, clip.ratios  # (out, groups) each
    return write_tensors(path, tensors, {"linears": list(clips)})


def read_clips(checkpoint: Checkpoint, device: str) -> dict[str, ClipResult]:
    tensors, meta = read_tensors(checkpoint, device)
    return {name: ClipResult(tensors[f"{name}.max_val"], tensors[f"{name}.ratios"]) for name in meta["linears"]}


@task(name=STAGE, task_run_name="clip-block-{index}", cache_key_fn=stage_cache_key_fn(STAGE, CONFIG_FIELDS), persist_result=True)
def clip(
    ref: ModelRef, run_dir: str, index: int, config: QuantConfig, capture: Checkpoint, scales: Checkpoint, device: str
) -> StageOutput:
    key = stage_key(STAGE, locals(), CONFIG_FIELDS)  # locals() here are exactly the parameters
    block = float_block(ref, index, device)
    arch = loaded_model(ref).arch
    found = {}
    if config.searches_clip:
        captured = BlockCapture(None, read_feats(capture, device), {})
        group_scales = read_scales(scales, device)
        apply_block_scales(block, group_scales, arch)
        found = search_block_clips(block, captured, group_scales, prefix_of(arch, index), config)
    return StageOutput(stage=STAGE, block=index, files={"clips": write_clips(stage_path(run_dir, "clips", key, index), found)})
