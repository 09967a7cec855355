"""One table per GPU from the kernel result files, saying where each number comes from (no GPU needed).

    python benchmarks/kernels_summary.py   # -> prints a markdown table, writes results/kernels_summary_<gpu>.json

Sources, in order of preference for each (shape, M):
- `kernels_<gpu>_split_70b.json` and `kernels_<gpu>_split.json` (every shape and M, after the swapped GEMM's
  split product (`GemmConfig.split_dot`) and its retune at M = 64..1024, the device check in the run; the
  first run stopped at its call's time limit after 45 rows, within 8192x8192, the second timed the three 70B
  shapes), then `kernels_<gpu>_packed_m1.json` (all seven shapes at M=1, the GEMV retuned after the zero
  point and scale moved into one word), then `kernels_<gpu>_packed.json` (every shape and M, the same kernels
  before that M=1 retune, with the swapped GEMM retuned at M = 2..1024 and the device check in the run), then
  `kernels_<gpu>_scaled.json` (all seven shapes at M = 128, 256, 1024, after the swapped GEMM's scale moved
  into its weight operand where that measured faster, with its 256-row tiles and retune), then
  `kernels_<gpu>_flat_m2.json` (all seven shapes at M=2, after the swapped GEMM's M=2 tuning moved three
  shapes' dispatch to it), `kernels_<gpu>_flat_m1_checked.json` (M=1, the (column, 16 words) GEMV tile
  and its retune, with the device check in the run) and `kernels_<gpu>_flat.json` (M = 1, 2, the same
  kernels before the M=2 dispatch change), then
  `kernels_<gpu>_swapped_joined.json` (all seven shapes at M = 4..256, the swapped GEMM with one depth-128
  dot a block, and its tuning), then `kernels_<gpu>_swapped.json` (the same Ms, its first version),
  `kernels_<gpu>_half2.json` (all seven shapes at M = 1..16, after the packed-fp16 GEMV and its retune),
  then `kernels_<gpu>_current_7b.json` and `kernels_<gpu>_current_70b.json` (the 7B and the 70B shapes at
  every M, timed in two calls on the same GPU kind with the kernels and configs of then, unchanged since
  for M >= 32): a full benchmark row (ours as dispatched, fp16 cuBLAS, GemLite).
- ours, where that run's row timed another kernel than the shipped dispatch now picks: that row's
  column for the kernel picked; where the run has no row: the tuning logs `autotune_<gpu>_gemv.json` (newer) and
  `autotune_<gpu>_all.json`, timed the same way (ring of layers, CUDA graph, median), for the kernel
  that the shipped dispatch picks; a GEMM dispatched at M=1 without an M=1 timing shows its M=2 time
  (it pads M to 16 rows either way), marked "(M=2)".
- fp16 and GemLite, where that run has no row: the previous benchmark files `kernels_<gpu>_7b.json`
  and `kernels_<gpu>_70b.json` (same GPU model and timing method), marked "*".
The floor is recomputed with the newest run's copy bandwidth.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton_kernels.configs import gpu_tag  # noqa: E402
from triton_kernels.dispatch import select_kernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GPU = "NVIDIA H100 80GB HBM3"
CAPABILITY = (9, 0)
CURRENT = ("current_7b", "current_70b", "half2", "swapped", "swapped_joined", "flat", "flat_m1_checked", "flat_m2",
           "scaled", "packed", "packed_m1", "split", "split_70b", "ws", "ws_split",
           "ws_paired", "tail", "tma_store", "tma_store_m64", "warpgroups",
           "warpgroups_m1024", "slice_k", "stream_k", "stream_k_m1024")  # runs of the shipped kernels, oldest first


def _load(name: str) -> dict:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else {}


def tuned_times(logs: list[list[dict]]) -> dict:
    """(shape, M, kernel) -> microseconds; earlier logs in the list win."""
    times: dict = {}
    for log in reversed(logs):
        for entry in log:
            for kernel, us in entry.get("fastest", {}).items():
                times[(entry["shape"], entry["m"], kernel)] = us
    return times


def main() -> None:
    tag = gpu_tag(GPU)
    runs = [_load(f"kernels_{tag}_{name}.json") for name in CURRENT]
    rows = {(r["shape"], r["m"]): r for run in runs for r in run.get("rows", [])}  # later runs win
    previous = {(r["shape"], r["m"]): r for name in ("7b", "70b") for r in _load(f"kernels_{tag}_{name}.json").get("rows", [])}
    tuned = tuned_times([_load(f"autotune_{tag}_gemv.json") or [], _load(f"autotune_{tag}_all.json") or []])
    bandwidth = next(run["copy_bandwidth_Bps"] for run in reversed(runs) if run)
    shapes = {}
    for key in list(previous) + list(rows):
        src = rows.get(key) or previous[key]
        shapes[key[0]] = (src["n"], src["k"])
    out = []
    for (shape, m) in sorted(set(previous) | set(rows), key=lambda t: (list(shapes).index(t[0]), t[1])):
        n, k = shapes[shape]
        kernel = select_kernel(m, n, k, CAPABILITY, GPU).value
        row = rows.get((shape, m))
        note = ""
        if row is not None and row["dispatched"] == kernel:
            ours, fp16, gemlite = row["ours_us"], row["fp16_us"], row.get("gemlite_us")
        else:
            ours = row.get(f"{kernel}_us") if row is not None else None
            if ours is None:
                ours = tuned.get((shape, m, kernel))
            if ours is None and kernel == "gemm" and m == 1:
                ours, note = tuned.get((shape, 2, kernel)), " (M=2)"
            prev = row or previous[(shape, m)]
            fp16, gemlite = prev["fp16_us"], prev.get("gemlite_us")
            note += "" if row is not None else " *"
        groups = k // 128
        floor = (n * k // 2 + groups * n * 2 + groups * n // 2 + 2 * m * k + 2 * m * n) / bandwidth * 1e6
        out.append(dict(shape=f"{n}x{k}", name=shape, m=m, kernel=kernel, ours_us=ours, fp16_us=fp16,
                        gemlite_us=gemlite, floor_us=floor, note=note.strip()))
    print("| shape (N x K) | M | ours (kernel) | fp16 cuBLAS | GemLite | floor | floor / ours | vs fp16 | vs GemLite |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out:
        gl = r["gemlite_us"]
        print(f"| {r['shape']} | {r['m']} | {r['ours_us']:.1f} ({r['kernel']}){' ' + r['note'] if r['note'] else ''} | "
              f"{r['fp16_us']:.1f} | {gl:.1f} | {r['floor_us']:.1f} | {100 * r['floor_us'] / r['ours_us']:.0f}% | "
              f"{r['fp16_us'] / r['ours_us']:.2f}x | {gl / r['ours_us']:.2f}x |")
    path = RESULTS / f"kernels_summary_{tag}.json"
    path.write_text(json.dumps(dict(command="python benchmarks/kernels_summary.py", gpu=GPU, rows=out), indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
