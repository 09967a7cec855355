"""Quantization settings: one frozen pydantic model that round-trips through JSON."""
from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Method(str, Enum):
    AWQ = "awq"  # scale search + clip search
    RTN = "rtn"  # round to nearest: the same path with both searches off; the baseline
    GPTQ = "gptq"  # Hessian-based column-by-column rounding with error feedback; GPTQ checkpoint format


class Version(str, Enum):
    """The AutoAWQ checkpoint layout."""

    GEMM = "gemm"  # qweight (in, out / 8): what transformers and vLLM load
    GEMV = "gemv"  # qweight (out, in / 8): AutoAWQ's batch-1 layout

    @classmethod
    def parse(cls, value: "Version | str") -> "Version":
        """Accept an enum (ours or any str enum with the same values) or "gemm" / "GEMM" / "gemv"."""
        text = value.value if isinstance(value, Enum) else str(value)
        try:
            return cls(text.lower())
        except ValueError:
            raise ValueError(f"unsupported AWQ version {value!r}: expected one of {[v.value for v in cls]}") from None


SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128)


def is_excluded(module_path: str, modules_to_not_convert: tuple[str, ...] | list[str]) -> bool:
    """Substring match, as AutoAWQ and transformers do: "gate" keeps every "...mlp.gate" in float."""
    return any(key in module_path for key in modules_to_not_convert)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CalibrationConfig(_Frozen):
    # "auto": AutoAWQ's pile-val when the hub is reachable, else "builtin" (offline text shipped with
    # Python itself); or a hub dataset name, or a local .txt / .jsonl path.
    source: str = "auto"
    split: str = "validation"
    text_column: str = "text"
    n_samples: int = Field(128, ge=1, le=4096)
    seqlen: int = Field(512, ge=16, le=32768)
    seed: int = 0


class ClipConfig(_Frozen):
    enabled: bool = True
    max_shrink: float = Field(0.5, gt=0.0, lt=1.0)  # search clip ratios in [1 - max_shrink, 1]
    n_grid: int = Field(20, ge=2, le=200)
    n_sample_tokens: int = Field(512, ge=16)  # tokens used to measure clip error
    skip: tuple[str, ...] = ("q_proj", "k_proj", "query", "key", "Wqkv")  # attention scores absorb q/k error


class GPTQConfig(_Frozen):
    """Settings only GPTQ reads (names as in AutoGPTQ's quantize_config.json)."""

    # Dampening: this fraction of the Hessian's mean diagonal is added to its diagonal. Raised (doubled)
    # and retried when the Cholesky factorization fails; the value used is recorded per layer.
    damp_percent: float = Field(0.01, gt=0.0, lt=1.0)
    desc_act: bool = False  # act-order: quantize columns by decreasing Hessian diagonal (stores g_idx)
    static_groups: bool = False  # with desc_act: group ranges from the weights before any update
    block_size: int = Field(128, ge=1, le=4096)  # columns per lazy batch update
    true_sequential: bool = True  # inside a block: attention inputs, then o_proj, then gate/up, then down


class QuantConfig(_Frozen):
    method: Method = Method.AWQ
    w_bit: Literal[2, 3, 4, 8] = 4
    group_size: Literal[-1, 32, 64, 128] = 128
    zero_point: bool = True
    version: Version = Version.GEMM
    n_grid: int = Field(20, ge=1, le=200)  # points of the scale-ratio grid r in [0, 1)
    duo_scaling: bool = True  # s = x^r / w^(1-r) (True) or s = x^r (False)
    clip: ClipConfig = ClipConfig()
    gptq: GPTQConfig = GPTQConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    modules_to_not_convert: tuple[str, ...] = ("lm_head",)
    # False: the next block sees the unquantized block's output (AutoAWQ); True: the quantized one's.
    # GPTQ always feeds the next block the quantized block's output.
    sequential_quantized_inputs: bool = False

    @field_validator("w_bit", "group_size", mode="before")
    @classmethod
    def _int_like(cls, value):
        # Accept "64" from a CLI or env var but keep the Literal check for the value itself.
        return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else value

    @property
    def searches_scales(self) -> bool:
        return self.method is Method.AWQ

    @property
    def searches_clip(self) -> bool:
        return self.method is Method.AWQ and self.clip.enabled

    @property
    def is_gptq(self) -> bool:
        return self.method is Method.GPTQ

    def hf_quantization_config(self) -> dict:
        """The `quantization_config` block of config.json that transformers and vLLM read."""
        if self.is_gptq:
            return self.gptq_quantize_config()
        if self.w_bit != 4:
            raise ValueError(
                f"w_bit={self.w_bit}: the AutoAWQ checkpoint layout stores 4-bit weights only; "
                "use w_bit=4, or method=gptq for 2, 3 and 8 bits"
            )
        return {
            "quant_method": "awq",
            "bits": self.w_bit,
            "group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": self.version.value,
            "modules_to_not_convert": list(self.modules_to_not_convert),
        }

    def gptq_quantize_config(self) -> dict:
        """GPTQ's settings as transformers (GPTQConfig), vLLM and AutoGPTQ (quantize_config.json) read them."""
        return {
            "quant_method": "gptq",
            "bits": self.w_bit,
            "group_size": self.group_size,
            "desc_act": self.gptq.desc_act,
            "sym": not self.zero_point,
            "damp_percent": self.gptq.damp_percent,
            "static_groups": self.gptq.static_groups,
            "true_sequential": self.gptq.true_sequential,
            "checkpoint_format": "gptq",  # v1: qzeros store zero - 1
            "lm_head": False,
            "modules_to_not_convert": list(self.modules_to_not_convert),
        }

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "QuantConfig":
        return cls.model_validate_json(text)
