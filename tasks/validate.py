"""Stage 6: perplexity of the written checkpoint, loaded back through its quantized linears."""
from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from transformers import AutoTokenizer

from awq_core.checkpoint import load_quantized
from awq_core.compare import weights_size_on_disk
from awq_core.evaluate import EvalSettings, eval_tokens, evaluate
from tasks.checkpoints import Checkpoint, StageOutput, stage_cache_key_fn

STAGE = "validate"


@task(name=STAGE, cache_key_fn=stage_cache_key_fn(STAGE), persist_result=True)
def validate(checkpoint: dict[str, Checkpoint], texts: list[str], window: int | None, max_windows: int | None) -> StageOutput:
    directory = Path(next(iter(checkpoint.values())).path).parent
    model = load_quantized(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    settings = EvalSettings(tuple(texts), window, max_windows)
    perplexity = evaluate(model, eval_tokens(tokenizer, settings.texts), settings)
    return StageOutput(stage=STAGE, info={"perplexity": perplexity, "size_bytes": weights_size_on_disk(directory)})
