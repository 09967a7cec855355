"""Programmatic dependent launch (Hopper, sm_90 and up): a kernel's programs start while the kernel
before it in the stream still runs, and wait for its results only where they need them.

At batch 1 a W4 GEMV streams its weights at well under the copy bandwidth: a program has a few
loads in flight behind a chain of dependent round trips, and each launch pays a fixed start-up
cost (benchmarks/README.md). The weights, though, are written by no kernel. So a GEMV launched as a
programmatic dependent asks for its whole slice of words and scales to be brought into L2
(`prefetch_l2`, a hint that holds no registers and returns nothing) and only then waits
(`gdc_wait`) for the previous kernel's grid to finish and its writes to be visible.
While that kernel runs, its weights stream in; its loop then reads them from L2.

This pays only behind a kernel that lets dependents start early: our GEMV and decode attention
call `gdc_launch_dependents` first thing, so the next PDL launch may start as soon as
all their programs are running. Behind any other kernel a PDL launch starts when that kernel ends,
as a plain launch would.

The rules a dependent keeps (`gemv.py`, `decode_attention.py`): before the wait it reads nothing
that a kernel writes (not even the weights into registers, as the L2 hint cannot be stale but a
register load could, right after the weights were prepared) and writes nothing at all: the
previous kernel may still read its buffers, the split-K counters included. Every program waits, so
a dependent's completion implies its predecessor's, and a plain launch after it is ordered as usual.

The prefetch is inline PTX and the grid-dependency instructions are GPU-only; Triton's CPU
interpreter runs neither. There, and before sm_90, kernels are launched plainly (`enabled` is False). `AWQFLOW_PDL=0` turns it off, to compare.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401  (re-exported)

MIN_CAPABILITY = (9, 0)  # griddepcontrol: Hopper and later


def enabled(device: torch.device, capability: tuple[int, int] | None) -> bool:
    """Whether kernels on `device` (of this compute capability) launch as programmatic dependents."""
    if device.type != "cuda" or capability is None or tuple(capability) < MIN_CAPABILITY:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return os.environ.get("AWQFLOW_PDL", "1") != "0"


def launch_options(pdl: bool) -> dict:
    """The extra launch arguments of a kernel launched as a programmatic dependent (none otherwise)."""
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def prefetch_l2(ptrs):
    """Bring the 128-byte lines holding `ptrs` into L2: a hint, with no result and no register held."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )
