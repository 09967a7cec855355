import math

import pytest
import torch

from awq_core.awq import quantize_model
from awq_core.config import ClipConfig, Method, QuantConfig
from awq_core.layer_stats import OUTLIER_FACTOR, relative_weight_error, spread
from test_awq import calib_ids, with_outlier_channels
from tiny_models import tiny_model


def test_spread_counts_channels_above_the_outlier_factor():
    values = torch.ones(100)
    values[:2] = 50.0  # mean 1.98: both are above 5x the mean, the 98 ones are not
    s = spread(values)
    assert s.mean == pytest.approx(1.98)
    assert s.max_over_mean == pytest.approx(50 / 1.98)
    assert s.outlier_share == pytest.approx(0.02)
    flat = spread(torch.full((10,), 3.0))
    assert (flat.max_over_mean, flat.outlier_share) == (pytest.approx(1.0), 0.0)
    assert OUTLIER_FACTOR * flat.mean > 3.0


def test_relative_weight_error():
    w = torch.randn(8, 16)
    assert relative_weight_error(w, w) == 0.0
    assert relative_weight_error(w, 1.1 * w) == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(AssertionError, match="shape"):
        relative_weight_error(w, w.T)


def metrics(method: Method):
    model = with_outlier_channels(tiny_model("llama"))
    config = QuantConfig(method=method, group_size=32, n_grid=10, clip=ClipConfig(n_grid=10, n_sample_tokens=64))
    return quantize_model(model, calib_ids(model), config, batch_size=2).metrics


def test_awq_records_scale_spread_weight_error_and_clips():
    rows = metrics(Method.AWQ)
    assert len(rows) == 14
    for m in rows:
        assert 0 <= m.input_outlier_share <= 1 and m.input_max_over_mean >= 1
        assert m.rtn_weight_error > 0 and m.weight_error > 0
        assert m.scale_max_over_mean is None or m.scale_max_over_mean >= 1
    # The norms feed q/k/v and gate/up, whose first 4 channels were made 30x larger.
    fed_by_norm = [m for m in rows if m.name.endswith(("q_proj", "up_proj"))]
    assert all(m.input_outlier_share > 0 for m in fed_by_norm), [(m.name, m.input_outlier_share) for m in fed_by_norm]
    clipped = [m for m in rows if m.clip_share is not None]
    assert clipped and not any(m.name.endswith(("q_proj", "k_proj")) for m in clipped)  # skipped by the clip config
    assert all(0 <= m.clip_share <= 1 and 0.5 <= m.clip_ratio_min <= m.clip_ratio_mean <= 1 for m in clipped)


def test_rtn_weight_error_is_the_final_one_without_scales_or_clips():
    for m in metrics(Method.RTN):
        assert m.scale_mean is None and m.clip_share is None
        assert math.isclose(m.weight_error, m.rtn_weight_error, rel_tol=1e-6), m.name
