"""The exact int4 -> float trick every kernel shares: q - z for every nibble position, code and zero point."""
import torch
import triton
import triton.language as tl

from triton_kernels.nibbles import FLOAT_2_23_BITS, high_word, nibble_float, zero_float

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter (conftest.py)


@triton.jit
def _q_minus_z_kernel(w_ptr, z_ptr, out_ptr, base_bits, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    words = tl.load(w_ptr + offs)
    z = tl.load(z_ptr + offs)
    high = high_word(words)
    for i in tl.static_range(8):
        tl.store(out_ptr + i * BLOCK + offs, nibble_float(words, high, base_bits, i) - zero_float(z, base_bits, i))


def test_every_nibble_code_and_zero_point_is_exact():
    q = torch.arange(256).remainder(16)[:, None].repeat(1, 8)  # (256, 8): every code at every position ...
    q[:, 7] = torch.arange(256) // 16  # ... and the top nibble (the sign bit) takes every code too
    z = torch.arange(256, dtype=torch.int32).remainder(16).flip(0)  # paired with every zero point
    words = (q.to(torch.int64) << (4 * torch.arange(8))).sum(1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # as int32 bits
    out = torch.empty((8, 256), dtype=torch.float32, device=DEVICE)
    _q_minus_z_kernel[(1,)](words.to(DEVICE), z.to(DEVICE), out, FLOAT_2_23_BITS, BLOCK=256)
    expected = (q.t() - z[None, :]).float()  # (8, 256)
    assert torch.equal(out.cpu(), expected)
