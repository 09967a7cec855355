"""Stage 0: load the model, check it against the config, tokenize the calibration text, and capture
the hidden states entering block 0."""
from __future__ import annotations

from prefect import task

from awq_core.awq import check_model
from awq_core.calibration import calibration_blocks
from awq_core.capture import capture_first_block_inputs
from awq_core.compare import float_bytes
from awq_core.config import QuantConfig
from awq_core.registry import get_blocks
from tasks.checkpoints import StageOutput, stage_cache_key_fn, stage_key, stage_path, write_tensors
from tasks.model_ref import ModelRef
from tasks.session import loaded_model

STAGE = "load"
CONFIG_FIELDS = ("calibration", "group_size", "modules_to_not_convert")  # what is tokenized and what is checked


@task(name=STAGE, cache_key_fn=stage_cache_key_fn(STAGE, CONFIG_FIELDS), persist_result=True)
def load(ref: ModelRef, run_dir: str, config: QuantConfig, batch_size: int) -> StageOutput:
    key = stage_key(STAGE, locals(), CONFIG_FIELDS)  # locals() here are exactly the parameters
    loaded = loaded_model(ref)
    check_model(loaded.model, config)
    ids = calibration_blocks(loaded.tokenizer, config.calibration)  # (n_samples, seqlen)
    hidden = capture_first_block_inputs(loaded.model, loaded.arch, ids, batch_size)  # (n, seqlen, hidden)
    return StageOutput(
        stage=STAGE,
        files={
            "calibration": write_tensors(stage_path(run_dir, "calibration", key), {"input_ids": ids}),
            "block_input": write_tensors(stage_path(run_dir, "block-input", key), {"hidden": hidden}),
        },
        info={
            "n_blocks": len(get_blocks(loaded.model, loaded.arch)),
            "n_samples": int(ids.shape[0]),
            "seqlen": int(ids.shape[1]),
            "float_bytes": float_bytes(loaded.model),
        },
    )
