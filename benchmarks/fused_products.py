"""What the ops fused into the GEMV cost it: a 7B decoder layer's four M=1 products, plain and fused.

    python benchmarks/fused_products.py [--out DIR]   # -> benchmarks/results/fused_products_<gpu>.json

`awq_core.fused_decoder` runs a one-token step's RMSNorms, silu(gate) * up and residual adds inside the
products (`triton_kernels/fusion.py`): qkv reads x times the norm's weight and multiplies its sums by the
row's 1 / rms ("norm"); o adds the residual and also writes its output times the next norm's weight
("scaled"); gate/up reads that and multiplies by 1 / rms of o's output ("rms_of"), and writes
silu(gate) * up ("glu"); down adds the residual. "norm" on gate/up is the same norm with x * w inside
the product, for comparison. Each product is
timed as the kernel benchmark times it (`kernels.time_ring`: a ring of distinct layers over 4x the L2,
one CUDA graph, median), with the dispatched GEMV config, plain and with its fusions, for each way of
reading the epilogue's inputs (`GemvConfig.fusion_loads_first`: the 1 / rms and the residual loaded before
the block loop or in the epilogue; `GemvConfig.rms_chunk`: elements of x per load while summing its
squares). The separate kernels that the fusions replace are timed in the decode profile
(`decode_profile.py`), not here.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402  (benchmarks/kernels.py: ring timing, random layers, result writer)

from triton_kernels import LinearFusion, configs  # noqa: E402
from triton_kernels.gemv import gemv  # noqa: E402

# name: (N, K, what the layer fuses into it)
PRODUCTS = [
    ("qkv", 12288, 4096, "norm"),
    ("o", 4096, 4096, "residual,scaled"),
    ("gate_up", 22016, 4096, "rms_of,glu"),
    ("gate_up", 22016, 4096, "norm,glu"),
    ("gate_up", 22016, 4096, "glu"),
    ("down", 4096, 11008, "residual"),
]
# (fusion_loads_first, rms_chunk): the ways of reading the epilogue's inputs that are timed
READS = [(False, 512), (True, 512), (True, 4096)]


def fusion_for(what: str, n: int, k: int, device: torch.device) -> LinearFusion:
    parts = what.split(",")
    glu = "glu" in parts
    n_out = n // 2 if glu else n
    return LinearFusion(
        norm_weight=(torch.rand(k, device=device) + 0.5).half() if "norm" in parts else None,
        eps=1e-5, glu=glu,
        residual=torch.randn((1, n_out), device=device).half() if "residual" in parts else None,
        rms_of=torch.randn((1, k), device=device).half() if "rms_of" in parts else None,
        scaled_output_weight=(torch.rand(n_out, device=device) + 0.5).half() if "scaled" in parts else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--out", type=Path, help="also write the result file here")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    rows = []
    print(f"{'product':<9}{'N x K':>13}{'fusions':>17}{'loads first':>13}{'rms chunk':>11}{'us':>8}{'plain us':>10}"
          f"{'+us':>7}", flush=True)  # fmt: skip
    for name, n, k, what in PRODUCTS:
        base = configs.gemv_config(gpu, n, k, 1, sms)
        ring = [kb.random_prepared(n, k) for _ in range(kb.ring_length(kb.prepared_bytes(kb.random_prepared(n, k))))]
        x = torch.randn((1, k), device=device).half()
        plain = kb.time_ring(lambda x, w: gemv(x, w, None, base), ring, x)
        fusion = fusion_for(what, n, k, device)
        reads = READS if fusion.rms_rows else [r for r in READS if r[1] == READS[0][1]]
        for first, chunk in reads:
            config = replace(base, fusion_loads_first=first, rms_chunk=chunk)
            fused = kb.time_ring(lambda x, w, config=config: gemv(x, w, None, config, fusion), ring, x)
            rows.append(dict(product=name, n=n, k=k, fusions=what, fusion_loads_first=first, rms_chunk=chunk,
                             fused_us=fused, plain_us=plain, config=asdict(base)))  # fmt: skip
            print(f"{name:<9}{f'{n}x{k}':>13}{what:>17}{str(first):>13}{chunk:>11}{fused:>8.1f}{plain:>10.1f}"
                  f"{fused - plain:>7.1f}", flush=True)  # fmt: skip
        del ring
    path = Path(__file__).resolve().parent / "results" / f"fused_products_{configs.gpu_tag(gpu)}{'_' + args.tag if args.tag else ''}.json"
    kb.write_result(path, dict(command="python " + " ".join(sys.argv), gpu=gpu, torch=torch.__version__, m=1,
                               rows=rows), args.out)  # fmt: skip
    print("wrote", path)


if __name__ == "__main__":
    main()
