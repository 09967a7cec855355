"""awqflow: activation-aware 4-bit weight quantization of Hugging Face causal LMs.

The algorithms live in `awq_core`, the kernels in `triton_kernels`; this package is the front door
(the `awqflow` command).
"""
__version__ = "0.1.0"
