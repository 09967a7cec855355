"""awqflow: activation-aware 4-bit weight quantization of Hugging Face causal LMs.

The algorithms live in `awq_core`, the kernels in `triton_kernels`; this package is the front door:
the `awqflow` command and the Python API (`AutoQuantForCausalLM`, alias `AutoAWQForCausalLM`).
"""
__version__ = "0.1.0"

__all__ = ["AutoAWQForCausalLM", "AutoQuantForCausalLM", "from_quantized"]


def __getattr__(name):
    # Imported on first use: `awqflow --help` should not pay for importing torch and transformers.
    if name in ("AutoQuantForCausalLM", "AutoAWQForCausalLM"):
        from awqflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'awqflow' has no attribute {name!r}")


def from_quantized(model_dir, device="cpu", dtype=None, **options):
    """Load an AutoAWQ-layout checkpoint (ours or another tool's) as a transformers model; `options`
    are `AutoQuantForCausalLM.from_quantized`'s (kernel, fuse_layers, fast_decode, attn_implementation)."""
    import torch

    from awqflow.api import AutoQuantForCausalLM

    return AutoQuantForCausalLM.from_quantized(model_dir, device=device, dtype=dtype or torch.float16, **options)
