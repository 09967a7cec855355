"""One-token decode attention on a GPU: our split-slot kernel against PyTorch's SDPA, per layer.

    python benchmarks/attention.py [--out DIR]   # -> benchmarks/results/attention_<gpu>.json

What a decode step's attention sees with a static KV cache: one query token per sequence, keys and
values of `slots` cache slots of which the first `filled` are written (the mask allows those), fp16,
head_dim 128. Shapes: Llama-2-7B (32 heads, no GQA) and Llama-70B (64 query heads on 8 kv heads). Each
case is timed the way `kernels.py` times products: a ring of distinct layers' caches over 4x the L2,
replayed from one CUDA graph, median microseconds per layer. Rows:
- ours: `triton_kernels.decode_attention` (what `awq_core.attention` runs);
- sdpa: `F.scaled_dot_product_attention` with the boolean mask, the backend PyTorch picks (what
  transformers' SDPA attention runs; for grouped-query heads with `enable_gqa`);
- sdpa_efficient: the same, restricted to the memory-efficient backend.
- ours_new_token: the kernel as a fused decoder layer's one-token step runs it (`NewToken`): it also
  rotates q and the new key, writes the new key and value at slot `filled - 1` and attends to them;
  its error is against float64 with the same rotation and write.
With `--sweep 1,4,8` the kernel is also timed with other split targets (programs per SM, see
`decode_attention.PROGRAMS_PER_SM`); with `--warps 4,8`, plain and with the new token, at those warps
a program (`decode_attention.warps_for`). The floor is the filled slots' keys and values over the measured copy bandwidth. Every case is also
checked against a float64 softmax (relative error of the output).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402  (ring timing, copy bandwidth, result writer)

import triton_kernels  # noqa: E402
from triton_kernels.decode_attention import (  # noqa: E402
    BLOCK_S, PROGRAMS_PER_SM, NewToken, decode_attention, split_count, warps_for,
)
from triton_kernels import configs  # noqa: E402

HEAD_DIM = 128
# (name, batch, heads, kv_heads, slots, filled): the decode benchmark's cache (prompt 128 + 256 tokens)
# at its mid-point and at its end, batch 1, 8 and 32; a 4096-slot cache a quarter filled; the 70B heads.
CASES = (
    ("7b", 1, 32, 32, 384, 256),
    ("7b", 1, 32, 32, 384, 384),
    ("7b", 8, 32, 32, 384, 256),
    ("7b", 32, 32, 32, 384, 256),
    ("7b", 1, 32, 32, 4096, 1024),
    ("70b", 1, 64, 8, 384, 256),
    ("70b", 8, 64, 8, 4096, 1024),
)


def sdpa(q, layer, backend=None):
    k, v, mask = layer
    gqa = q.shape[1] != k.shape[1]
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def ours(q, layer):
    k, v, mask = layer
    return triton_kernels.decode_attention(q, k, v, mask, HEAD_DIM**-0.5)


def sm_count() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def ours_with(programs_per_sm: int, warps: int | None = None):
    """The kernel with another split target (`decode_attention.PROGRAMS_PER_SM`) or warps, for the sweeps."""
    sms = sm_count()

    def run(q, layer):
        k, v, mask = layer
        return decode_attention(q, k, v, mask, HEAD_DIM**-0.5, sms=sms, programs_per_sm=programs_per_sm,
                                num_warps=warps)  # fmt: skip

    return run


def ours_new_token(new, warps: int | None = None):
    sms = sm_count()

    def run(q, layer):
        k, v, mask = layer
        return decode_attention(q, k, v, mask, HEAD_DIM**-0.5, sms=sms, new=new, num_warps=warps)

    return run


def new_token(batch, kv_heads, slot, gen) -> NewToken:
    k = torch.randn(batch, kv_heads, 1, HEAD_DIM, device="cuda", dtype=torch.float16, generator=gen)
    angles = torch.rand(batch, 1, HEAD_DIM // 2, device="cuda", generator=gen) * 6.3
    cos, sin = (torch.cat([f(angles), f(angles)], dim=-1).half() for f in (torch.cos, torch.sin))
    return NewToken(k, torch.randn_like(k), torch.tensor(slot, device="cuda"), cos, sin)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x.double() * cos.double().unsqueeze(1) + rotated.double() * sin.double().unsqueeze(1)


def new_token_error(q, layer, new) -> float:
    """Relative error of the new-token call on a copy of `layer` against float64 (rotation, write, attention)."""
    k, v, mask = (t.clone() for t in layer)
    keys, values = k.double(), v.double()
    slot = int(new.slot)
    keys[:, :, slot], values[:, :, slot] = rotate(new.k, new.cos, new.sin)[:, :, 0], new.v[:, :, 0].double()
    expected = reference(rotate(q, new.cos, new.sin), keys, values, mask)
    out = ours_new_token(new)(q, (k, v, mask))
    return float((out.double() - expected).abs().max() / expected.abs().max())


def reference(q, k, v, mask):
    group = q.shape[1] // k.shape[1]
    keys, values = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    scores = (q.double() @ keys.transpose(-1, -2) * HEAD_DIM**-0.5).masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ values).transpose(1, 2)  # (B, 1, H, D)


def slots_per_program(batch, kv_heads, slots) -> int:
    split = split_count(batch, kv_heads, slots, sm_count())
    return triton.cdiv(triton.cdiv(slots, split), BLOCK_S) * BLOCK_S


def run_case(name, batch, heads, kv_heads, slots, filled, bandwidth, sweep=(), warps_sweep=()) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, heads, 1, HEAD_DIM, device="cuda", dtype=torch.float16, generator=gen)
    mask = (torch.arange(slots, device="cuda") < filled).view(1, 1, 1, slots).expand(batch, 1, 1, slots)
    layer_bytes = 2 * batch * kv_heads * slots * HEAD_DIM * 2
    ring = []
    for _ in range(kb.ring_length(layer_bytes)):
        k = torch.randn(batch, kv_heads, slots, HEAD_DIM, device="cuda", dtype=torch.float16, generator=gen)
        ring.append((k, torch.randn_like(k), mask))
    k, v, _ = ring[0]
    expected = reference(q, k, v, mask)
    error = lambda out: float((out.double() - expected).abs().max() / expected.abs().max())  # noqa: E731
    sdpa_out = sdpa(q, ring[0]).transpose(1, 2)  # (B, 1, H, D)
    row = dict(shape=name, batch=batch, heads=heads, kv_heads=kv_heads, slots=slots, filled=filled,
               ours_error=error(ours(q, ring[0])), sdpa_error=error(sdpa_out))  # fmt: skip
    new = new_token(batch, kv_heads, filled - 1, gen)
    row["ours_new_token_error"] = new_token_error(q, ring[0], new)
    row["ours_us"] = kb.time_ring(ours, ring, q)
    row["ours_new_token_us"] = kb.time_ring(ours_new_token(new), ring, q)
    row["ours_new_token_warps"] = warps_for(True, slots_per_program(batch, kv_heads, slots))
    row["sdpa_us"] = kb.time_ring(sdpa, ring, q)
    for warps in warps_sweep:
        row[f"ours_{warps}_warps_us"] = kb.time_ring(ours_with(PROGRAMS_PER_SM, warps), ring, q)
        row[f"ours_new_token_{warps}_warps_us"] = kb.time_ring(ours_new_token(new, warps), ring, q)
    for programs in sweep:
        row[f"ours_split_{programs}_per_sm_us"] = kb.time_ring(ours_with(programs), ring, q)
        row[f"ours_split_{programs}_per_sm_chunks"] = split_count(batch, kv_heads, slots, sm_count(), programs)
    try:
        row["sdpa_efficient_us"] = kb.time_ring(lambda x, layer: sdpa(x, layer, SDPBackend.EFFICIENT_ATTENTION), ring, q)
    except RuntimeError as e:  # the backend refused these inputs
        row["sdpa_efficient_us"], row["sdpa_efficient_error"] = float("nan"), str(e).splitlines()[0][:200]
    row["floor_us"] = 1e6 * 2 * batch * kv_heads * filled * HEAD_DIM * 2 / bandwidth
    row["ours_fraction_of_floor"] = row["floor_us"] / row["ours_us"]
    row["sdpa_over_ours"] = row["sdpa_us"] / row["ours_us"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the result file here")
    parser.add_argument("--sweep", default="", help="also time ours with these programs-per-SM split targets, e.g. 1,4,8")
    parser.add_argument("--warps", default="", help="also time ours, plain and with the new token, at these warps, e.g. 4,8")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    args = parser.parse_args()
    sweep = tuple(int(p) for p in args.sweep.split(",") if p)
    warps_sweep = tuple(int(w) for w in args.warps.split(",") if w)
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    gpu = torch.cuda.get_device_name()
    bandwidth = kb.copy_bandwidth()
    print(f"{gpu}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    header = f"{'shape':<6}{'batch':>6}{'heads':>7}{'kv':>4}{'slots':>7}{'filled':>7}{'ours us':>9}{'+new us':>9}{'sdpa us':>9}"
    print(header + f"{'effic. us':>10}{'floor us':>9}{'floor %':>8}{'sdpa/ours':>10}{'err ours':>10}{'err sdpa':>10}")
    tag = f"_{args.tag}" if args.tag else ""
    path = Path(__file__).resolve().parent / "results" / f"attention_{configs.gpu_tag(gpu)}{tag}.json"
    result = dict(command="python " + " ".join(sys.argv), gpu=gpu, torch=torch.__version__,
                  copy_bandwidth_bytes_per_s=bandwidth, rows=[])  # fmt: skip
    start = time.time()
    for case in CASES:
        r = run_case(*case, bandwidth, sweep, warps_sweep)
        result["rows"].append(r)
        print(f"{r['shape']:<6}{r['batch']:>6}{r['heads']:>7}{r['kv_heads']:>4}{r['slots']:>7}{r['filled']:>7}"
              f"{r['ours_us']:>9.1f}{r['ours_new_token_us']:>9.1f}{r['sdpa_us']:>9.1f}{r['sdpa_efficient_us']:>10.1f}{r['floor_us']:>9.1f}"
              f"{r['ours_fraction_of_floor']:>8.0%}{r['sdpa_over_ours']:>9.2f}x{r['ours_error']:>10.1e}"
              f"{r['sdpa_error']:>10.1e}" + "".join(f"  {p}/SM: {r[f'ours_split_{p}_per_sm_us']:.1f}" for p in sweep)
              + "".join(f"  {w}w: {r[f'ours_{w}_warps_us']:.1f}/{r[f'ours_new_token_{w}_warps_us']:.1f}" for w in warps_sweep),
              flush=True)  # fmt: skip
        kb.write_result(path, result, args.out)
    result["seconds"] = time.time() - start
    result["passed"] = all(max(r["ours_error"], r["ours_new_token_error"]) < 1e-2 for r in result["rows"])
    kb.write_result(path, result, args.out)
    print(f"{'PASSED' if result['passed'] else 'FAILED'} (ours within 1e-2 of float64) -> {path}")
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
