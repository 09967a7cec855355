"""awqflow: activation-aware 4-bit weight quantization of Hugging Face causal LMs.

The algorithms live in `awq_core`, the kernels in `triton_kernels`; this package is the front door:
the `awqflow` command and `awqflow.from_quantized(dir)`.
"""
__version__ = "0.1.0"


def from_quantized(model_dir, device="cpu", dtype=None):
    """Load an AutoAWQ-layout checkpoint (ours or another tool's) as a transformers model."""
    import torch

    from awq_core.checkpoint import load_quantized

    return load_quantized(model_dir, device=device, dtype=dtype or torch.float16)
