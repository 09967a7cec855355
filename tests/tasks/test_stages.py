"""The stage tasks' functions (`task.fn`, no Prefect) chained by hand reproduce `quantize_block`."""
import copy

import pytest
import torch

from awq_core.awq import quantize_block
from awq_core.capture import capture_block_kwargs, capture_first_block_inputs
from awq_core.config import CalibrationConfig, ClipConfig, QuantConfig
from awq_core.registry import get_blocks
from tasks.capture import capture, read_hidden
from tasks.clip import clip
from tasks.fuse import fuse, read_fused
from tasks.load import load
from tasks.model_ref import model_ref
from tasks.scales import read_scales, scales
from tasks.session import calibration_ids, loaded_model
from tiny_models import save_tiny_model

CONFIG = QuantConfig(group_size=32, n_grid=5, clip=ClipConfig(n_grid=10, n_sample_tokens=64),
                     calibration=CalibrationConfig(n_samples=4, seqlen=32))  # fmt: skip


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return model_ref(str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")))


@pytest.mark.parametrize("quantized_inputs", [False, True])
def test_stages_chained_by_hand_equal_quantize_block(ref, tmp_path, quantized_inputs):
    config = CONFIG.model_copy(update={"sequential_quantized_inputs": quantized_inputs})
    run_dir, common = str(tmp_path), dict(ref=ref, run_dir=str(tmp_path), device="cpu")
    loaded = load.fn(ref, run_dir, config, batch_size=2)
    calib, hidden = loaded.files["calibration"], loaded.files["block_input"]
    assert loaded.info["n_blocks"] == 2 and loaded.is_valid()
    captured = capture.fn(**common, index=0, block_input=hidden, calibration=calib, batch_size=2)
    inputs = dict(**common, index=0, config=config, capture=captured.files["capture"])
    found = scales.fn(**inputs, block_input=hidden, calibration=calib, batch_size=2)
    clips = clip.fn(**inputs, scales=found.files["scales"])
    done = fuse.fn(**inputs, block_input=hidden, calibration=calib, scales=found.files["scales"],
                   clips=clips.files["clips"], batch_size=2)  # fmt: skip

    model = loaded_model(ref)
    ids = calibration_ids(calib)
    block = copy.deepcopy(get_blocks(model.model, model.arch)[0])
    expected_hidden = capture_first_block_inputs(model.model, model.arch, ids, 2)
    assert torch.equal(read_hidden(hidden, "cpu"), expected_hidden)
    kwargs = capture_block_kwargs(model.model, model.arch, ids[:1])[0]
    result, next_hidden = quantize_block(block, 0, "model.layers.0", expected_hidden, kwargs, model.arch, config, 2)

    output = done.files["output"] if quantized_inputs else captured.files["output"]
    assert torch.equal(read_hidden(output, "cpu"), next_hidden)
    ratios = {m.name: m.scale_ratio for m in result.metrics}
    assert all(s.ratio == ratios[f"model.layers.0.{s.linears[0]}"] for s in read_scales(found.files["scales"], "cpu"))
    tensors, quantized = read_fused(done.files["fused"])
    assert set(quantized) == {n.removeprefix("model.layers.0.") for n in result.quantized}
    for name, qw in quantized.items():
        expected = result.quantized[f"model.layers.0.{name}"]
        assert torch.equal(qw.q, expected.q) and torch.equal(qw.scales, expected.scales) and torch.equal(qw.zeros, expected.zeros)
    state = block.state_dict()
    assert all(torch.equal(t, state[k]) for k, t in tensors.items()), "fused norms must match"
    assert [m["final_error"] for m in done.info["metrics"]] == [m.final_error for m in result.metrics]
