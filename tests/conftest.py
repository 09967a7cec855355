"""Test-wide settings. Set before any test module imports transformers or triton."""
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a CUDA device the Triton kernels run on Triton's CPU interpreter. The variable is read
# when triton is first imported, and any package import may pull triton in, so it is set here.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py
