"""Packed fp16 (f16x2) dequantize-and-dot of one prepared word: half the GEMV's instructions per weight.

The float32 GEMV path (`nibbles.py`) spends three instructions on each weight: a LOP3 that makes the
nibble a float, an FADD that subtracts the zero point and an FFMA with the activation. Here every
instruction works on two weights at once, as a pair of fp16 values in one 32-bit register:

- `dequant_pairs`: one LOP3 turns two nibbles of a word, 16 bits apart, into the fp16 pair
  (1024 + q_a, 1024 + q_b) (0x6400 is fp16 1024, whose mantissa unit is 1); nibbles 4 bits higher
  give 1024 + 16 q. One HFMA2 scales and subtracts the zero point, exactly, to the pair
  ((q_a - z) / 16, (q_b - z) / 16). The 8 nibbles of a word are 4 pairs: 1 shift, 4 LOP3, 4 HFMA2.
- `pair_dot`: the 4 pairs times 4 activation pairs in a chain of HFMA2, the two fp16 lanes then
  added in float32: 7 instructions for 8 weights.

In the prepared layout nibble i of word j is K row 16 i + j (see `prepare.py`), so the pair (nibble
i, nibble i + 4) meets the activation pair (x[16 i + j], x[16 (i + 4) + j]); `pack_pairs` builds
those pairs once per block and thread, shared by every column the thread holds.

Range: the 8 products of a word are summed in fp16. The weights enter as (q - z) / 16 (the group's
scale is multiplied by 16 in float32), so the fp16 sums stay finite while |x| < 16 * 65504 / (4 * 15)
= 17467, far above what linear-layer inputs hold.
Rounding: each word's sum is rounded to fp16 (11 bits) before the float32 accumulation, an error
well inside the 1e-2 the kernels are tested to (tests/triton_kernels).

The instructions are inline PTX (sm_53 and up), which Triton's CPU interpreter cannot run: the
interpreter, bf16 weights and groups that do not cover whole 128-row blocks take the float32 path.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

WEIGHT_SCALE = 16.0  # the pairs hold (q - z) / 16: the group's scale is multiplied by this in float32


def interpreting() -> bool:
    """Whether Triton's CPU interpreter runs the kernels (it runs no inline PTX)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def half2_runs(weight, x: torch.Tensor) -> bool:
    """Whether the packed-fp16 arithmetic can run for this prepared weight and x: fp16 weight and
    activations, groups of whole 128-row blocks, a GPU, and not Triton's interpreter (no inline PTX)."""
    return (weight.dtype == torch.float16 and x.dtype == torch.float16 and weight.group_size % 128 == 0
            and x.is_cuda and not interpreting())


@triton.jit
def pack_pairs(lo, hi):
    """fp16 activations (x_a, x_b) -> int32 holding the fp16 pair (x_a, x_b), x_a in the low half. Two
    elements at a time, so each PRMT takes its halves straight from the registers x was loaded into."""
    return tl.inline_asm_elementwise(
        asm="""
        prmt.b32 $0, $2, $3, 0x5410;
        prmt.b32 $1, $2, $3, 0x7632;
        """,
        constraints="=r,=r,r,r",
        args=[lo, hi],
        dtype=tl.int32,
        is_pure=True,
        pack=2,
    )


@triton.jit
def zero_pairs(z):
    """Zero points (int32, 0..15) -> the fp16 pairs -(64 + z / 16) and -(4 + z / 16), as int32: what
    `dequant_pairs` adds to the nibbles read as 64 + q / 16 and 4 + q / 16."""
    low = 0xD400 + z  # fp16 bits of -(64 + z / 16): at 64 the mantissa unit is 1/16
    high = 0xC400 + (z << 4)  # fp16 bits of -(4 + z / 16): at 4 the unit is 1/256
    return low | (low << 16), high | (high << 16)


@triton.jit
def scale_pairs(s):
    """Scales (float32, already times WEIGHT_SCALE) -> the fp16 pair (s, s) as int32: what `scaled_slab_pairs`
    multiplies the pairs by."""
    bits = s.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def dequant_pairs(words, z64, z4):
    """Packed words -> 4 int32 tensors of fp16 pairs (q - z) / 16: nibbles (0, 4), (1, 5), (2, 6), (3, 7).
    Every step is exact: the LOP3 gives 1024 + q (or 1024 + 16 q), times 1/16 (or 1/256) is 64 + q / 16
    (or 4 + q / 16), both on the fp16 grid, and adding -(64 + z / 16) leaves (q - z) / 16."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 high, q0, q1, q2, q3, by16, by256;
        mov.b32 by16, 0x2c002c00;
        mov.b32 by256, 0x1c001c00;
        shr.u32 high, $4, 8;
        lop3.b32 q0, $4, 0x000f000f, 0x64006400, 0xea;
        lop3.b32 q1, $4, 0x00f000f0, 0x64006400, 0xea;
        lop3.b32 q2, high, 0x000f000f, 0x64006400, 0xea;
        lop3.b32 q3, high, 0x00f000f0, 0x64006400, 0xea;
        fma.rn.f16x2 $0, q0, by16, $5;
        fma.rn.f16x2 $1, q1, by256, $6;
        fma.rn.f16x2 $2, q2, by16, $5;
        fma.rn.f16x2 $3, q3, by256, $6;
        }""",
        constraints="=r,=r,=r,=r,r,r,r",
        args=[words, z64, z4],
        dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
        is_pure=True,
        pack=1,
    )


@triton.jit
def pair_dot(q0, q1, q2, q3, x0, x1, x2, x3):
    """sum over the 4 pairs of q_p * x_p (fp16 pairs as int32) -> float32: the word's 8 products."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 acc;
        .reg .b16 lo, hi;
        .reg .f32 flo, fhi;
        mul.rn.f16x2 acc, $1, $5;
        fma.rn.f16x2 acc, $2, $6, acc;
        fma.rn.f16x2 acc, $3, $7, acc;
        fma.rn.f16x2 acc, $4, $8, acc;
        mov.b32 {lo, hi}, acc;
        cvt.f32.f16 flo, lo;
        cvt.f32.f16 fhi, hi;
        add.f32 $0, flo, fhi;
        }""",
        constraints="=f,r,r,r,r,r,r,r,r",
        args=[q0, q1, q2, q3, x0, x1, x2, x3],
        dtype=tl.float32,
        is_pure=True,
        pack=1,
    )


def _slab_pairs_asm(scaled: bool, halves: tuple[str, ...] = ("lo", "hi")) -> str:
    """PTX of `slab_pairs` (scaled: each pair then times the scale pair, one HMUL2), for the slabs of `halves`:
    "lo" gives slabs 0..3, "hi" slabs 4..7, 4 outputs each. With pack=2 each argument fills two operands, one
    per word, and both words of a pair belong to one column: after the outputs come the two words, the first
    word's zero-point pairs (z64, z4) and its scale pair."""
    first = 4 * len(halves)  # the operand number of the first input
    word_a, word_b, z64, z4, scale = (f"${first + i}" for i in (0, 1, 2, 4, 6))
    lines = [
        f"prmt.b32 lo, {word_a}, {word_b}, 0x5410;", f"prmt.b32 hi, {word_a}, {word_b}, 0x7632;",
        "shr.u32 lo8, lo, 8;", "shr.u32 hi8, hi, 8;",
    ]
    sources = [src for half in halves for src in (half, half + "8")]
    for out, (src, mask, mult, zero) in enumerate(
        (src, mask, mult, zero) for src in sources
        for mask, mult, zero in (("0x000f000f", "by16", z64), ("0x00f000f0", "by256", z4))
    ):
        lines.append(f"lop3.b32 t, {src}, {mask}, 0x64006400, 0xea;")
        if scaled:
            lines += [f"fma.rn.f16x2 t, t, {mult}, {zero};", f"mul.rn.f16x2 ${out}, t, {scale};"]
        else:
            lines.append(f"fma.rn.f16x2 ${out}, t, {mult}, {zero};")
    body = "\n        ".join(lines)
    return f"""{{
        .reg .b32 lo, hi, lo8, hi8, t, by16, by256;
        mov.b32 by16, 0x2c002c00;
        mov.b32 by256, 0x1c001c00;
        {body}
        }}"""


SLAB_PAIRS_ASM = tl.constexpr(_slab_pairs_asm(scaled=False))
SCALED_SLAB_PAIRS_ASM = tl.constexpr(_slab_pairs_asm(scaled=True))
SCALED_LOW_PAIRS_ASM = tl.constexpr(_slab_pairs_asm(scaled=True, halves=("lo",)))
SCALED_HIGH_PAIRS_ASM = tl.constexpr(_slab_pairs_asm(scaled=True, halves=("hi",)))


@triton.jit
def slab_pairs(words, z64, z4):
    """Packed words (int32, two neighbouring elements a time) -> the 8 slabs of their 128-row block as fp16
    (q - z) / 16, one tensor per nibble i, each shaped like `words`: the GEMM's tensor-core operands.

    The tensor cores take a slab's operand as fp16 pairs of neighbouring words (K rows 16 i + j, 16 i + j + 1,
    see `prepare.py`), so two words are read at once (pack=2): one PRMT gathers their low halves (nibbles
    0..3 of both), one their high halves (nibbles 4..7); from there each pair of slab values costs one LOP3
    and one HFMA2, exact as in `dequant_pairs`. 2 PRMT, 2 shifts, 8 LOP3 and 8 HFMA2 for 16 weights.
    `z64`, `z4` are `zero_pairs(z)`, one group (whole 128-row blocks) for all 8 slabs."""
    return tl.inline_asm_elementwise(
        asm=SLAB_PAIRS_ASM,
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r",
        args=[words, z64, z4],
        dtype=(tl.float16,) * 8,
        is_pure=True,
        pack=2,
    )


@triton.jit
def scaled_slab_pairs(words, z64, z4, scale16):
    """`slab_pairs` times the group's scale: the 8 slabs as fp16 (q - z) * s, one more HMUL2 a pair.
    `scale16` holds the fp16 pair (16 s, 16 s) as int32; the exact (q - z) / 16 times 16 s is rounded once,
    so each weight is the fp16 value a dequantise-then-multiply path gives (`dequant.py`)."""
    return tl.inline_asm_elementwise(
        asm=SCALED_SLAB_PAIRS_ASM,
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r",
        args=[words, z64, z4, scale16],
        dtype=(tl.float16,) * 8,
        is_pure=True,
        pack=2,
    )


@triton.jit
def scaled_half_pairs(words, z64, z4, scale16, HIGH: tl.constexpr):
    """Slabs 0..3 (HIGH False) or 4..7 of `scaled_slab_pairs`, the same values: the swapped GEMM's
    split product (`gemm_swapped.py`) dequantises one half while the other half's MMAs run."""
    return tl.inline_asm_elementwise(asm=SCALED_HIGH_PAIRS_ASM if HIGH else SCALED_LOW_PAIRS_ASM,
                                     constraints="=r,=r,=r,=r,r,r,r,r,r,r,r,r", args=[words, z64, z4, scale16],
                                     dtype=(tl.float16,) * 4, is_pure=True, pack=2)
