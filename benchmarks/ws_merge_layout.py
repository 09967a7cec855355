"""Split tiles' partials in the warp-specialised GEMM: the package's layout against an earlier copy of the kernel.

Needs a Hopper GPU. The earlier `gemm_ws.py` comes from git with its relative imports made absolute, e.g. the
partials in the tile's (column, row) order before they took the accumulator's register order:

    git show c1eb71f:triton_kernels/gemm_ws.py \\
        | sed 's/^from \\.\\([a-z_0-9]*\\) import/from triton_kernels.\\1 import/' > /tmp/gemm_ws_before.py
    python benchmarks/ws_merge_layout.py --before /tmp/gemm_ws_before.py --out /tmp/out

Per (shape, M, config), the shipped entry and stream-K candidates: both kernels' y must be the same bits (the partials
meet in the same order whatever their layout), then each is timed twice, alternating, with the ring of layers and
CUDA-graph replay of `kernels.py`. Writes `results/ws_merge_layout_<gpu>.json`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernels import SHAPES, prepared_ring, time_ring  # noqa: E402
from triton_kernels import configs  # noqa: E402
from triton_kernels import gemm_ws as after  # noqa: E402
from triton_kernels.configs import WsConfig  # noqa: E402

SK = dict(stream_k=True)
# (shape, M, configs): None is the shipped entry. The split entries, and stream-K where the tiles leave a partial wave
CASES = [
    ("70b_down", 256, [None, WsConfig(256, 3, False, **SK)]),
    ("70b_up_gate", 256, [None, WsConfig(256, 3, True, **SK), WsConfig(256, 2, True, tma_store=True, **SK)]),
    ("7b_up_gate", 256, [None, WsConfig(128, 4, True, tma_store=True, warpgroups=3, **SK),
                         WsConfig(256, 2, True, tma_store=True, **SK)]),
    ("70b_o", 256, [None, WsConfig(256, 2, False, tma_store=True, **SK),
                    WsConfig(128, 4, True, tma_store=True, warpgroups=3, **SK)]),
    ("7b_qkv", 256, [None, WsConfig(256, 2, True, tma_store=True, **SK)]),
    ("7b_o", 256, [None, WsConfig(256, 2, False, tma_store=True, **SK)]),
    ("70b_up_gate", 1024, [None, WsConfig(256, 3, False, **SK), WsConfig(256, 2, True, tma_store=True, **SK)]),
    ("70b_up_gate", 128, [None]), ("70b_down", 64, [None]),
    ("7b_o", 64, [None]), ("7b_o", 128, [None]), ("7b_down", 64, [None]), ("7b_down", 128, [None]),
]


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("gemm_ws_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="an earlier gemm_ws.py, imports made absolute")
    parser.add_argument("--out", type=Path, default=None, help="also copy the result file here")
    args = parser.parse_args()
    assert torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] == 9, "needs a Hopper GPU"
    before = load_module(args.before)
    gpu = torch.cuda.get_device_name(0)
    entries = configs.load_table(gpu)
    rows = []
    for shape, m, cands in CASES:
        n, k = SHAPES[shape]
        ring = prepared_ring(n, k)
        x = torch.randn((m, k), device="cuda", dtype=torch.float16)
        for cand in cands:
            config = cand or WsConfig(**entries[configs.config_key("gemm_ws", n, k, m)])
            assert torch.equal(before.gemm_ws(x, ring[0], None, config), after.gemm_ws(x, ring[0], None, config)), (
                f"{shape} M={m} {config}: the two layouts gave different bits")
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(2):
                for name, module in (("before", before), ("after", after)):
                    times[name].append(time_ring(lambda xx, ww, f=module.gemm_ws, c=config: f(xx, ww, None, c), ring,
                                                 x, replays=5))
            rows.append(dict(shape=shape, m=m, config=configs.as_entry(config), shipped=cand is None, **times))
            print(f"{shape:12s} {m:5d} {'entry' if cand is None else 'cand':5s} before {min(times['before']):7.1f} "
                  f"after {min(times['after']):7.1f} us  {config}", flush=True)
        del ring
        torch.cuda.empty_cache()
    path = Path(__file__).resolve().parent / "results" / f"ws_merge_layout_{configs.gpu_tag(gpu)}.json"
    path.write_text(json.dumps(dict(command="python " + " ".join(sys.argv), gpu=gpu, rows=rows), indent=1) + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / path.name).write_text(path.read_text())
    print("wrote", path)


if __name__ == "__main__":
    main()
