import pytest
from pydantic import ValidationError

from awq_core.config import ClipConfig, Method, QuantConfig, Version


def test_defaults_are_autoawq_defaults():
    c = QuantConfig()
    assert (c.method, c.w_bit, c.group_size, c.zero_point, c.version) == (Method.AWQ, 4, 128, True, Version.GEMM)
    assert c.modules_to_not_convert == ("lm_head",)
    assert c.calibration.n_samples == 128 and c.calibration.seqlen == 512


def test_round_trips_through_json():
    c = QuantConfig(group_size=64, method="rtn", clip=ClipConfig(enabled=False, n_grid=10), version="gemv")
    assert QuantConfig.from_json(c.to_json()) == c


def test_is_frozen():
    with pytest.raises(ValidationError):
        QuantConfig().group_size = 64


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        (dict(group_size=100), "group_size", "-1, 32, 64 or 128"),
        (dict(w_bit=5), "w_bit", "2, 3, 4 or 8"),
        (dict(version="marlin"), "version", "'gemm' or 'gemv'"),
        (dict(method="smoothquant"), "method", "'awq', 'rtn' or 'gptq'"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValidationError) as err:
        QuantConfig(**kwargs)
    assert field in str(err.value) and allowed in str(err.value)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValidationError, match="group_sz"):
        QuantConfig.from_json('{"group_sz": 64}')


def test_nested_bounds():
    with pytest.raises(ValidationError, match="clip.max_shrink"):
        QuantConfig(clip={"max_shrink": 1.5})


def test_hf_quantization_config():
    q = QuantConfig(group_size=64).hf_quantization_config()
    assert q == {
        "quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["lm_head"],
    }
    with pytest.raises(ValueError, match="4-bit"):
        QuantConfig(w_bit=3).hf_quantization_config()


def test_version_parse_accepts_other_spellings():
    assert Version.parse("GEMM") is Version.GEMM
    with pytest.raises(ValueError, match="exllama"):
        Version.parse("exllama")
