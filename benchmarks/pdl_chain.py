"""Chains of decode kernels with and without programmatic dependent launch (needs an sm_90+ GPU).

    python benchmarks/pdl_chain.py [--out DIR]   # -> benchmarks/results/pdl_chain_<gpu>.json

A decode step at batch 1 is a chain of short kernels, each waiting for the one before. With PDL
(`triton_kernels/pdl.py`) a GEMV launched behind one of our kernels starts early, hints its weights
into L2 and waits only for the activations. The chains are the pairs of a Llama-2-7B layer in which
one of our kernels follows another, and the layer's kernels end to end:
- attention -> o: decode attention (32 heads, 256 of 384 slots) then the 4096x4096 output projection;
- gate/up -> down: the 22016x4096 GEMV then the 4096x11008 one, reading the first 11008 outputs (the
  layout of a fused gate/up whose activation is computed in its epilogue);
- layer: qkv, attention, o, gate/up, down (no norms, rotary embedding or activation between them);
and each kernel alone. Timing as in `kernels.py`: a ring of distinct layers over 4x the L2, one CUDA
graph, median microseconds per chain. `AWQFLOW_PDL=0` during capture gives the plain launches.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402  (ring timing, random layers, result writer)

import triton_kernels  # noqa: E402

HIDDEN, INTER, HEADS, HEAD_DIM, SLOTS, FILLED = 4096, 11008, 32, 128, 384, 256


def random_layer() -> dict:
    k = torch.randn((1, HEADS, SLOTS, HEAD_DIM), device="cuda", dtype=torch.float16)
    mask = torch.zeros((1, 1, 1, SLOTS), dtype=torch.bool, device="cuda")
    mask[..., :FILLED] = True
    return dict(qkv=kb.random_prepared(3 * HIDDEN, HIDDEN), o=kb.random_prepared(HIDDEN, HIDDEN),
                gate_up=kb.random_prepared(2 * INTER, HIDDEN), down=kb.random_prepared(HIDDEN, INTER),
                k=k, v=torch.randn_like(k), mask=mask)


def layer_bytes(layer: dict) -> int:
    weights = sum(kb.prepared_bytes(layer[n]) for n in ("qkv", "o", "gate_up", "down"))
    return weights + 2 * layer["k"].numel() * 2


def attention(q, layer):
    return triton_kernels.decode_attention(q, layer["k"], layer["v"], layer["mask"], HEAD_DIM**-0.5)


def attention_o(x, layer):
    q = x[:, :HIDDEN].view(1, HEADS, 1, HEAD_DIM)
    return triton_kernels.w4a16_linear(attention(q, layer).reshape(1, HIDDEN), layer["o"])


def gate_up_down(x, layer):
    y = triton_kernels.w4a16_linear(x[:, :HIDDEN], layer["gate_up"])  # (1, 2 * INTER)
    return triton_kernels.w4a16_linear(y[:, :INTER], layer["down"])


def whole_layer(x, layer):
    qkv = triton_kernels.w4a16_linear(x[:, :HIDDEN], layer["qkv"])  # (1, 3 * HIDDEN)
    h = attention_o(qkv, layer)
    return gate_up_down(h, layer)


CHAINS = {
    "attention": lambda x, layer: attention(x[:, :HIDDEN].view(1, HEADS, 1, HEAD_DIM), layer),
    "o": lambda x, layer: triton_kernels.w4a16_linear(x[:, :HIDDEN], layer["o"]),
    "attention -> o": attention_o,
    "gate_up": lambda x, layer: triton_kernels.w4a16_linear(x[:, :HIDDEN], layer["gate_up"]),
    "down": lambda x, layer: triton_kernels.w4a16_linear(x[:, :INTER], layer["down"]),
    "gate_up -> down": gate_up_down,
    "qkv": lambda x, layer: triton_kernels.w4a16_linear(x[:, :HIDDEN], layer["qkv"]),
    "layer": whole_layer,
}


def time_chain(fn, ring: list, x: torch.Tensor, pdl: bool) -> float:
    os.environ["AWQFLOW_PDL"] = "1" if pdl else "0"  # read at every launch, so at capture
    try:
        return kb.time_ring(fn, ring, x, replays=25)
    finally:
        os.environ.pop("AWQFLOW_PDL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="also copy the result file here")
    parser.add_argument("--passes", type=int, default=2, help="timing passes (the fewer of each is kept)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    name = torch.cuda.get_device_name(0)
    started = time.time()
    layer0 = random_layer()
    ring = [layer0] + [random_layer() for _ in range(kb.ring_length(layer_bytes(layer0)) - 1)]
    x = torch.randn((1, INTER), device="cuda", dtype=torch.float16) * 0.1
    print(f"{name}: ring of {len(ring)} layers, {layer_bytes(layer0) / 2**20:.0f} MiB each", flush=True)
    rows = []
    for chain, fn in CHAINS.items():
        times = {}
        for pdl in (False, True):
            times[pdl] = min(time_chain(fn, ring, x, pdl) for _ in range(args.passes))
        rows.append(dict(chain=chain, plain_us=times[False], pdl_us=times[True]))
        print(f"{chain:16s} plain {times[False]:7.1f} us   pdl {times[True]:7.1f} us   "
              f"({times[False] - times[True]:+.1f})", flush=True)
    # Same outputs either way (the PDL path changes when kernels start, not what they compute).
    outs = {}
    for pdl in (False, True):
        os.environ["AWQFLOW_PDL"] = "1" if pdl else "0"
        outs[pdl] = whole_layer(x, ring[0])
        torch.cuda.synchronize()
    os.environ.pop("AWQFLOW_PDL")
    same = bool(torch.equal(outs[False], outs[True]))
    print(f"layer output identical with and without PDL: {same}")
    command = "python benchmarks/pdl_chain.py" + (" --out DIR" if args.out else "")
    data = dict(command=command, gpu=name, torch=torch.__version__, seconds=time.time() - started,
                ring=len(ring), identical_outputs=same, rows=rows)
    path = Path(__file__).resolve().parent / "results" / f"pdl_chain_{name.replace(' ', '_')}.json"
    kb.write_result(path, data, args.out)


if __name__ == "__main__":
    main()
