"""Stage 5: put every block's fused tensors and packed integer weights into the model and write the
checkpoint (safetensors + config.json + tokenizer) under the run directory: the AutoAWQ layout, or
the GPTQ layout (+ quantize_config.json) for method gptq."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from prefect import task

from awq_core.awq import prefix_of
from awq_core.checkpoint import layout_of, replace_linears, save_quantized
from awq_core.config import QuantConfig
from awq_core.registry import get_blocks
from tasks.checkpoints import Checkpoint, StageOutput, file_digest, stage_cache_key_fn, stage_key
from tasks.fuse import read_fused
from tasks.model_ref import ModelRef
from tasks.session import take_model

STAGE = "pack"
CONFIG_FIELDS = ("method", "w_bit", "group_size", "zero_point", "version", "modules_to_not_convert", "gptq")


def directory_checkpoints(directory: Path) -> dict[str, Checkpoint]:
    return {p.name: Checkpoint(path=str(p), digest=file_digest(p)) for p in sorted(directory.iterdir()) if p.is_file()}


@task(name=STAGE, cache_key_fn=stage_cache_key_fn(STAGE, CONFIG_FIELDS), persist_result=True)
def pack(ref: ModelRef, run_dir: str, config: QuantConfig, fused: list[Checkpoint]) -> StageOutput:
    key = stage_key(STAGE, locals(), CONFIG_FIELDS)  # locals() here are exactly the parameters
    loaded = take_model(ref)
    blocks = get_blocks(loaded.model, loaded.arch)
    assert len(fused) == len(blocks), f"{len(fused)} fused blocks for a model of {len(blocks)}"
    quantized = {}
    for index, checkpoint in enumerate(fused):
        tensors, block_quantized = read_fused(checkpoint)
        blocks[index].load_state_dict(tensors, strict=False)
        prefix = prefix_of(loaded.arch, index)
        quantized.update({f"{prefix}.{name}": qw for name, qw in block_quantized.items()})
    replace_linears(loaded.model, quantized, layout_of(config))
    out = Path(run_dir) / f"checkpoint-{key[:16]}"
    staging = Path(tempfile.mkdtemp(prefix=".tmp-pack-", dir=run_dir))
    try:
        save_quantized(loaded.model, staging, config.hf_quantization_config(), tokenizer=loaded.tokenizer)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)  # the whole directory appears at once
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StageOutput(stage=STAGE, files=directory_checkpoints(out), info={"checkpoint": str(out)})
