"""In-register int4 -> float32 for the prepared layout: one AND-OR per weight, exact, no conversion.

A nibble at bit position p of a word, OR-ed into the mantissa of the float 2**(23 - p), reads as
the float 2**(23 - p) + q exactly (the mantissa's unit there is 2**-p, and q << p stays below 2**23
while p <= 16). Subtracting the same construction of the zero point, 2**(23 - p) + z, gives q - z
exactly. So every nibble that sits at p in {0, 4, 8, 12, 16} costs one LOP3 (mask and OR) and
one FADD; the three at 20, 24, 28 come from one extra shift of the word by 12 (to 8, 12, 16).

The float bits of 2**(23 - p) are passed in from the host (`FLOAT_2_23_BITS`) and derived here, so
the compiler keeps them in registers instead of re-materialising a constant for every LOP3.
Shared by the GEMV and the GEMM (see `gemv.py`, `gemm.py`).
"""
from __future__ import annotations

import triton
import triton.language as tl

FLOAT_2_23_BITS = 0x4B000000  # float32 bits of 2**23: exponent 150, empty mantissa

HIGH_SHIFT = tl.constexpr(12)  # nibbles 5..7 (bits 20..31) move to bits 8..19 of the shifted word


@triton.jit
def nibble_position(i: tl.constexpr):
    """Bit position of nibble `i` in the word it is read from (the word itself for i < 5, else word >> 12)."""
    return 4 * i if i < 5 else 4 * i - HIGH_SHIFT


@triton.jit
def magic_bits(base_bits, i: tl.constexpr):
    """float32 bits of 2**(23 - p) for nibble `i` at position p, from the bits of 2**23 (a runtime value)."""
    return base_bits - (nibble_position(i) << 23)


@triton.jit
def nibble_float(words, high, base_bits, i: tl.constexpr):
    """Nibble `i` of each word as the exact float32 2**(23 - p) + q (one LOP3)."""
    src = words if i < 5 else high
    return ((src & (tl.constexpr(0xF) << nibble_position(i))) | magic_bits(base_bits, i)).to(tl.float32, bitcast=True)


@triton.jit
def zero_float(z, base_bits, i: tl.constexpr):
    """Zero point z (int32) in the same form as `nibble_float`'s nibble `i`: 2**(23 - p) + z, exact."""
    return ((z << nibble_position(i)) | magic_bits(base_bits, i)).to(tl.float32, bitcast=True)


@triton.jit
def q_minus_z(words, high, z, base_bits, i: tl.constexpr):
    """Nibble slab `i` of the words minus the zero point: exact float32 q - z (one LOP3 and one FADD)."""
    return nibble_float(words, high, base_bits, i) - zero_float(z, base_bits, i)


@triton.jit
def high_word(words):
    """The shifted copy of the words that nibbles 5..7 are read from."""
    return words >> HIGH_SHIFT
