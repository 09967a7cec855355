"""Stage 1, per block: run the float block on its checkpointed input; write every linear's input and
the block's float output (the next block's input)."""
from __future__ import annotations

import torch
import torch.nn as nn
from prefect import task

from awq_core.awq import BlockCapture, capture_block, prefix_of
from awq_core.capture import capture_block_features
from awq_core.registry import active_groups
from tasks.checkpoints import Checkpoint, StageOutput, read_tensors, stage_cache_key_fn, stage_key, stage_path, write_tensors
from tasks.model_ref import ModelRef
from tasks.session import block_kwargs, float_block, loaded_model

STAGE = "capture"


def read_hidden(checkpoint: Checkpoint, device: str) -> torch.Tensor:
    return read_tensors(checkpoint, device)[0]["hidden"]  # (n, seqlen, hidden)


def write_feats(path, feats: dict[str, torch.Tensor]) -> Checkpoint:
    """Linears fed by one tensor (q/k/v, gate/up) share it: write it once, record the aliases."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in feats.items():
        owner = next((n for n, t in unique.items() if t is tensor), None)
        if owner is None:
            unique[name] = tensor
        else:
            aliases[name] = owner
    return write_tensors(path, unique, {"aliases": aliases})


def read_feats(checkpoint: Checkpoint, device: str) -> dict[str, torch.Tensor]:
    feats, meta = read_tensors(checkpoint, device)
    feats.update({name: feats[owner] for name, owner in meta["aliases"].items()})
    return feats


def read_capture(
    checkpoint: Checkpoint, block: nn.Module, ref: ModelRef, calibration: Checkpoint, block_input: Checkpoint,
    index: int, batch_size: int, device: str,
) -> BlockCapture:
    """A capture from disk, with the inspect calls rebuilt on `block` by running it on one sample."""
    feats = read_feats(checkpoint, device)
    arch = loaded_model(ref).arch
    sample = read_hidden(block_input, device)[:1]  # (1, seqlen, hidden): the calls' kwargs do not depend on it
    inspect = [g.inspect for g in active_groups(block, arch)]
    _, _, calls = capture_block_features(block, sample, block_kwargs(ref, calibration, index, device), inspect, batch_size)
    return BlockCapture(None, feats, calls)


@task(name=STAGE, task_run_name="capture-block-{index}", cache_key_fn=stage_cache_key_fn(STAGE), persist_result=True)
def capture(
    ref: ModelRef, run_dir: str, index: int, block_input: Checkpoint, calibration: Checkpoint, batch_size: int, device: str
) -> StageOutput:
    key = stage_key(STAGE, locals())  # locals() here are exactly the parameters
    block = float_block(ref, index, device)
    arch = loaded_model(ref).arch
    kwargs = block_kwargs(ref, calibration, index, device)
    result = capture_block(block, read_hidden(block_input, device), kwargs, arch, batch_size, prefix_of(arch, index))
    return StageOutput(
        stage=STAGE,
        block=index,
        files={
            "capture": write_feats(stage_path(run_dir, "capture", key, index), result.feats),
            "output": write_tensors(stage_path(run_dir, "output", key, index), {"hidden": result.output}),
        },
    )
