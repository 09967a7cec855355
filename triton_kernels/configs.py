"""Launch configurations, tuned per GPU and cached in `configs/<gpu name>.json`.

Keys are `"<kernel>/N=<n>/K=<k>/M=<bucket>"` with M rounded up to a power of two (`bucket_m`).
A lookup falls back, in order, to: the same kernel and shape at the nearest tuned M bucket, then a
heuristic default sized from the multiprocessor count. The JSON files are written by
`python benchmarks/kernels.py --autotune`.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MAX_BUCKET = 4096


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 64
    split_k: int = 4
    num_warps: int = 4
    num_stages: int = 2
    max_m: int = 8  # largest M (power of two) the register tile is sized for
    # 2: the block_n columns are two tiles sharing each activation load (4 columns per thread, see gemv.py)
    subtiles: int = 1
    # Issue the next block's loads before this block's arithmetic (more bytes in flight per thread)
    prefetch: bool = False
    # > 0: Triton's software pipeliner runs the block loop this many stages deep (cp.async copies
    # of later blocks into shared memory); 0: a plain loop
    loop_stages: int = 0
    # 128-row blocks loaded and multiplied per loop iteration: each thread keeps this many times more
    # bytes in flight (with `prefetch`, the next iteration's blocks load during this one's arithmetic)
    blocks_per_step: int = 1
    # Products in packed fp16 pairs (`half2.py`): half the instructions per weight. Used where possible
    # (fp16, groups of whole 128-row blocks, on a GPU); elsewhere the float32 path runs.
    half2: bool = False
    # > 1: each program splits its K range once more into this many slices, read by different warps
    # and summed in shared memory at the end (no global split-K epilogue for that factor)
    k_slices: int = 1
    # > 0: cap on registers per thread (Triton's `maxnreg`); 0 leaves it to the compiler
    max_registers: int = 0
    # Fused ops (`fusion.py`): the RMSNorm's 1 / rms and the residual are loaded before the block loop
    # (True) or in the epilogue, by the program that writes the tile (False). On a 7B layer's four fused
    # products the two differed by 0.1-0.3 us either way on the H100, within the runs' spread
    # (results/fused_products_<gpu>.json)
    fusion_loads_first: bool = True
    # Elements of x's row per load while summing its squares for the RMSNorm (a power of two)
    rms_chunk: int = 512


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 64
    block_n: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    # Swapped GEMM only (`gemm_swapped.py`): the group's scale multiplies the weight operand (one fp16
    # multiply a weight pair) and the MMA accumulates in place (True), or multiplies each block's float32
    # product, a (BLOCK_N, BLOCK_M) multiply-add a block (False): the second grows with BLOCK_M
    scale_operand: bool = False
    # Swapped GEMM with scale_operand only: each 128-row block's product as two depth-64 dots, the second
    # half dequantised while the first half's MMAs run, and a full MMA wait after the block (the one way
    # out of ptxas serialising every MMA, `gemm_swapped.py`). On the H100 1.00-1.37x faster than one product
    # on the 4-warp tiles and the 8-warp ones of up to 64 accumulator registers a thread, 0.90-1.03x on the
    # 8-warp 128-register ones (results/split_dot_<gpu>.json): tuned per entry
    split_dot: bool = False


COLUMNS_PER_WARPGROUP = 64  # weight columns an MMA warpgroup of the warp-specialised GEMM owns: the wgmma's M


@dataclass(frozen=True)
class WsConfig:
    """The warp-specialised Hopper GEMM (`gemm_ws.py`): tiles of block_m rows of x by `block_n` weight columns."""

    block_m: int = 256
    stages: int = 3  # shared buffers in the load warp's ring (a 256-row stage takes 72 KB: 3 fit)
    # One program per multiprocessor looping over tiles (the ring runs on from one tile into the next), or one
    # program a tile. H100: 128-row tiles 1.11-1.19x faster persistent, 256-row ones 0.93-1.05x
    # (benchmarks/results/gemm_ws_variants_<gpu>.json)
    persistent: bool = False
    # Registers a thread of each MMA warpgroup; None: the most the register file leaves them beside the load warp's
    # 40 (`gemm_ws.mma_register_budget`: 232 with 2 warpgroups, 152 with 3, 112 with 4)
    mma_registers: int | None = None
    # K split over this many programs a tile (fixed-order sum, `splitk.py`): for shapes of too few tiles to fill
    # the multiprocessors (N = 4096 at M <= 256)
    split_k: int = 1
    # Split only the tiles past the last whole wave of programs (one a multiprocessor), each other tile in one program
    # (stream-K's hybrid). The last wave's pieces spread over all programs (224 tiles on 132: 1.75 tile times with 4
    # splits instead of 2) as when every tile is split, but only those tiles pay for partial sums
    split_tail: bool = False
    # Whole tiles leave through shared memory and a TMA store, left in flight into the next tile, instead of 2-byte
    # stores from the MMA layout (y's rows then need N % 8 == 0; else the register stores). Costs (block_m, 128) fp16
    # of shared memory, so one ring stage fewer fits (`gemm_ws.shared_bytes`)
    tma_store: bool = False
    # Two blocks an iteration into two accumulators (the second dequantised while the first one's MMAs run), at
    # twice the accumulator registers. H100: 2-10% faster on 64-row tiles, within +-3% on 128-row ones
    # (benchmarks/results/gemm_ws_experiments_<gpu>.json)
    paired_blocks: bool = False
    # MMA warpgroups, each owning 64 weight columns of the tile: 2, 3 or 4 (tiles 128, 192 or 256 columns wide). More
    # warpgroups put more warps on each scheduler to hide the dequantisation's latency while the others' MMAs run, and
    # other tile widths fit other shapes into whole waves; their registers shrink (3: tiles of up to 128 rows, 4: 64)
    warpgroups: int = 2
    # The MMA warpgroups share one tile of 64 weight columns and take turns over its K blocks (the slices summed in
    # shared memory at the end of each work unit), instead of 64 columns each. Twice (with 2 warpgroups) the tiles of a
    # shape, so those that needed a K split across programs to fill the multiprocessors (N = 8192 at M <= 128, N = 4096
    # at M = 256) fill them whole: a split's partials through L2 took 3.2-6.2 us of a 22-36 us layer on the H100
    # (benchmarks/README.md)
    slice_k: bool = False
    # Stream-K's hybrid: the tiles of whole waves each in one program, the rest's K blocks laid end to end and cut
    # into one equal run a program, a run reaching into the next tile where a tile's blocks run out (the pieces meet as
    # split tiles do). Unlike `split_tail` every program gets the same work whatever the shape: 224 tiles on 132
    # programs take 1.70 tile times, with a tile's K in 4 splits 1.75, 2 unsplit
    stream_k: bool = False

    @property
    def parts(self) -> int:
        """A tile's 64-column parts: one a warpgroup, or one shared by all of them (`slice_k`)."""
        return 1 if self.slice_k else self.warpgroups

    @property
    def block_n(self) -> int:
        """Weight columns of a tile."""
        return COLUMNS_PER_WARPGROUP * self.parts


def bucket_m(m: int) -> int:
    """Round M up to a power of two, capped at MAX_BUCKET: the key of the config cache."""
    assert m >= 1, f"M must be positive, got {m}"
    bucket = 1
    while bucket < m and bucket < MAX_BUCKET:
        bucket *= 2
    return bucket


def gpu_tag(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3': the GPU's part of config and result file names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", gpu_name).strip("_")


def gpu_file_name(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3.json'."""
    return gpu_tag(gpu_name) + ".json"


def config_key(kernel: str, n: int, k: int, m: int) -> str:
    return f"{kernel}/N={n}/K={k}/M={bucket_m(m)}"


def table_path(gpu_name: str) -> Path:
    """The JSON file that holds this GPU's tuned entries (it may not exist)."""
    return CONFIG_DIR / gpu_file_name(gpu_name)


@functools.lru_cache(maxsize=None)
def load_table(gpu_name: str) -> dict[str, dict]:
    """The tuned entries for this GPU, or an empty table when none ship for it."""
    path = table_path(gpu_name)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    assert isinstance(data.get("entries"), dict), f"{path} has no 'entries' table"
    return data["entries"]


def save_table(gpu_name: str, entries: dict[str, dict], meta: dict) -> Path:
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    path = table_path(gpu_name)
    path.write_text(json.dumps({"gpu": gpu_name, **meta, "entries": dict(sorted(entries.items()))}, indent=1) + "\n")
    load_table.cache_clear()
    return path


def _nearest_entry(table: dict[str, dict], kernel: str, n: int, k: int, m: int) -> dict | None:
    prefix = f"{kernel}/N={n}/K={k}/M="
    buckets = [int(key[len(prefix):]) for key in table if key.startswith(prefix)]
    if not buckets:
        return None
    target = bucket_m(m)
    best = min(buckets, key=lambda b: (abs(b.bit_length() - target.bit_length()), b))
    return table[prefix + str(best)]


# The fallback GEMV (GPUs without tuned entries): 4-warp programs capped at 64 registers a thread, so that
# 8 of them share a multiprocessor (64K registers), and enough of them to fill every multiprocessor that
# way, without the prefetch (whose second block of words the cap would spill). On the H100 the cap won
# six of the seven tuned M=1 entries; this fallback against the one it replaced (4 programs a
# multiprocessor, no cap): benchmarks/README.md, results/gemv_pipeline_<gpu>_fallback.json.
FALLBACK_GEMV_PROGRAMS_PER_SM = 8
FALLBACK_GEMV_MAX_REGISTERS = 64


def default_gemv(n: int, k: int, m: int, sm_count: int) -> GemvConfig:
    """Enough programs to fill every multiprocessor, each reading whole 128-row blocks, with packed fp16
    products where they apply (they won on every shape tuned on the H100)."""
    block_n = 64 if n >= 2048 else 32
    programs_n = -(-n // block_n)
    blocks = -(-k // 128)
    split_k = max(1, min(blocks, (FALLBACK_GEMV_PROGRAMS_PER_SM * sm_count) // max(programs_n, 1)))
    return GemvConfig(block_n=block_n, split_k=split_k, num_warps=4, num_stages=2, max_m=8, half2=True,
                      max_registers=FALLBACK_GEMV_MAX_REGISTERS)


def default_gemm(n: int, k: int, m: int, sm_count: int) -> GemmConfig:
    """Tiles grow with M; split K only while the (M, N) tiles alone leave multiprocessors idle."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    block_n = 64 if m <= 64 else 128
    tiles = (-(-m // block_m)) * (-(-n // block_n))
    blocks = -(-k // 128)
    split_k = max(1, min(blocks // 4, (2 * sm_count) // max(tiles, 1)))
    warps = 4 if block_m * block_n <= 64 * 64 else 8
    return GemmConfig(block_m=block_m, block_n=block_n, split_k=split_k, num_warps=warps, num_stages=3)


# The fallback swapped GEMM from this M on: 256-row M tiles over 128 weight columns (8 warps), the scale
# inside the weight operand. On the H100 that tile won all seven shapes at M=1024 (the next best tile took
# 17-31% longer) and two at M=256 (70b_up_gate 256.4 against 329.1 us), and stayed within 4% on two more
# (results/autotune_<gpu>_scaled.json); below it, activations fill too few of its 256 rows.
WIDE_SWAPPED_M = 256


def default_gemm_swapped(n: int, k: int, m: int, sm_count: int) -> GemmConfig:
    """The weight-as-first-operand GEMM (`gemm_swapped.py`): M is the MMA's N side, one tile up to M = 128;
    64 columns a warpgroup; split K only while the tiles alone leave multiprocessors idle. From
    WIDE_SWAPPED_M on, the wide scaled tile."""
    if m >= WIDE_SWAPPED_M:
        block_m, block_n, scale_operand = 256, 128, True
    else:
        block_m, block_n, scale_operand = min(max(16, bucket_m(m)), 128), (64 if m <= 64 else 128), False
    tiles = (-(-m // block_m)) * (-(-n // block_n))
    blocks = -(-k // 128)
    split_k = max(1, min(blocks // 4, (2 * sm_count) // max(tiles, 1)))
    return GemmConfig(block_m=block_m, block_n=block_n, split_k=split_k, num_warps=block_n // 16, num_stages=3,
                      scale_operand=scale_operand)


# The fallback warp-specialised GEMM from this M on: 256-row tiles. On the H100 they beat the 128-row ones at M=1024
# on all seven shapes and at M=256 on 12288x4096 and 28672x8192 only (results/gemm_ws_variants_<gpu>.json); below
# it, 128-row tiles. Both on a persistent grid, which the TMA store's winners below mostly chose.
WIDE_WS_M = 512
# The fallback stores y through shared memory and TMA (`WsConfig.tma_store`), with the ring one stage shorter: on
# the H100 the tuning picked it at M=1024 on the five shapes of N*K <= 2^27 (1-8% less time than the best config
# without it, e.g. 12288x4096 148.6 -> 137.5 us: 256 rows, 2 stages, persistent), at M=256 on five shapes and at
# M=128 on four; the 70B MLP shapes at M=1024 kept 3 stages and register stores, 1-1.5% faster
# (results/autotune_<gpu>_tma_store.json)
WS_FALLBACK_STAGES = {128: 4, 256: 2}  # block_m -> ring stages beside the TMA store's y tiles


# K splits of the fallback: as many as whole waves of tiles fit the multiprocessors, each split at least this many
# 128-row blocks. On the H100 the tuned entries follow that rule wherever a split won: N = 4096 and 8192 at M = 128
# and 256 (32 or 64 tiles: 4 or 2 splits; 4096x11008 M=128 32.1 us against 64.0 unsplit, 8192x28672 101.7
# against 159.3) and none at 128 tiles (4096x4096 M=1024), results/autotune_<gpu>_ws_split.json
WS_MIN_SPLIT_BLOCKS = 4


# Past whole waves of tiles, the fallback splits the last partial wave's tiles (`WsConfig.split_tail`) when they
# fill at most this part of a wave, in as many splits as fit one wave, at most WS_TAIL_MAX_SPLIT. A split tile's
# partials cost memory traffic that the whole tiles do not pay, so a tail of more than half a wave gained nothing on
# the H100 (results/autotune_<gpu>_tail.json): 22016x4096 M=128 (40 tail tiles, 3 splits) 57.2 -> 50.0 us, M=1024
# (28 tail tiles of 256 rows, 2 or 3 splits) 297.0 -> 283.5 / 285.8; 12288x4096 M=1024 (120 tail tiles, no split
# fits) unsplit 150.9, 2 splits 175.7
WS_TAIL_MAX_FRACTION = 0.5
WS_TAIL_MAX_SPLIT = 3


# Where the two-warpgroup 128 x 128 tiles fill at most 1 / WS_SLICE_K_FILL of a wave, the fallback puts both warpgroups
# on K slices of 128 x 64 tiles (`WsConfig.slice_k`): twice the tiles, so the K splits across programs (partial sums
# through L2: 3.2-6.2 us of a 22-36 us layer on the H100) halve or go. The tuning chose that on the H100 for every such
# (shape, M) of the benchmark at M = 128 and 256 (results/autotune_<gpu>_slice_k.json): 4096x11008 M=256 44.9 ->
# 38.8 us (no split instead of 2), 4096x4096 M=256 24.0 -> 16.8, 8192x8192 M=128 37.0 -> 31.2, 8192x28672 M=128
# 99.8 -> 96.7 (no split instead of 3 on 192-column tiles); out of sample, on the 10 layers of Llama-3-8B and
# Qwen2.5-7B/14B at M = 128, 256 where it applies, it was the fastest option each time (results/ws_fallback_<gpu>.json)
WS_SLICE_K_FILL = 2


# Three MMA warpgroups' tiles (`WsConfig.warpgroups`: 128 rows by 192 columns, 4 ring stages beside the y tiles)
# where their waves of programs do at least WS_WIDE_MIN_FILL useful work (`wave_fill`) and at least as much as the
# two-warpgroup tiles' waves; against 256-row tiles, which carry their dequantisation over twice the MMAs of a
# 128-row one, WS_WIDE_MIN_GAIN more. On the H100 this picks the measured winner on the 19 of the 21 tuned (shape,
# M) at M = 128, 256 and 1024 where the two differed by more than 1.5% (results/autotune_<gpu>_warpgroups.json):
# three warpgroups on 22016x4096 at M=1024 (99% against 87%: 249.5 us against 262.0), M=256 (87% both: 72.3 against
# 79.9) and M=128 (87% against 65%: 39.1 against 50.5) and on 12288x4096 at M=256 (97% against 73%: 38.2 against
# 44.2); two where three lost by 2-39%, 12288x4096 at M=1024 among them (97% both, 256-row tiles: 136.6 against 142.2)
WS_WIDE_MIN_FILL = 0.85
WS_WIDE_MIN_GAIN = 0.1
WS_WIDE_CONFIG = WsConfig(block_m=128, stages=4, persistent=True, tma_store=True, warpgroups=3)


def wave_fill(m: int, n: int, block_m: int, block_n: int, sm_count: int) -> float:
    """The useful part of the work of an (m, n) output in (block_m, block_n) tiles, one program a multiprocessor:
    m n over whole waves of programs times a tile's outputs (partial tiles and the last wave's idle programs waste)."""
    tiles = -(-m // block_m) * -(-n // block_n)
    return m * n / (-(-tiles // sm_count) * sm_count * block_m * block_n)


def default_gemm_ws(n: int, k: int, m: int, sm_count: int) -> WsConfig:
    """The fallback warp-specialised config: three warpgroups' tiles where they fill the waves (above), else
    `two_warpgroup_gemm_ws`."""
    two = two_warpgroup_gemm_ws(n, k, m, sm_count)
    wide = WS_WIDE_CONFIG
    wide_fill = wave_fill(m, n, wide.block_m, wide.block_n, sm_count)
    gain = WS_WIDE_MIN_GAIN if two.block_m > wide.block_m else 0.0
    if wide_fill >= WS_WIDE_MIN_FILL and wide_fill >= wave_fill(m, n, two.block_m, two.block_n, sm_count) + gain:
        return wide
    return two


def two_warpgroup_gemm_ws(n: int, k: int, m: int, sm_count: int, k_slices: bool = True) -> WsConfig:
    """Two warpgroups' 128-column tiles of 256 rows from WIDE_WS_M, else 128, K split where the tiles fill under a
    wave or leave a short last one; under half a wave of 128-row tiles (and with `k_slices`), the two warpgroups on K
    slices of 64-column tiles (WS_SLICE_K_FILL)."""
    block_m = 256 if m >= WIDE_WS_M else 128
    base = dict(block_m=block_m, stages=WS_FALLBACK_STAGES[block_m], persistent=True, tma_store=True)
    tiles = -(-m // block_m) * -(-n // (2 * COLUMNS_PER_WARPGROUP))
    most_splits = -(-k // 128) // WS_MIN_SPLIT_BLOCKS
    if k_slices and block_m == 128 and tiles * WS_SLICE_K_FILL <= sm_count:  # twice the tiles, so fewer K splits
        return WsConfig(**base, slice_k=True, split_k=max(1, min(most_splits, sm_count // (2 * tiles))))
    if tiles <= sm_count:  # under one wave: every tile split
        return WsConfig(**base, split_k=max(1, min(most_splits, sm_count // tiles)))
    tail = tiles % sm_count
    split_tail = 0 < tail <= WS_TAIL_MAX_FRACTION * sm_count
    split_k = max(1, min(most_splits, sm_count // tail, WS_TAIL_MAX_SPLIT)) if split_tail else 1
    return WsConfig(**base, split_k=split_k, split_tail=split_tail and split_k > 1)


def gemv_config(gpu_name: str | None, n: int, k: int, m: int, sm_count: int) -> GemvConfig:
    entry = _nearest_entry(load_table(gpu_name), "gemv", n, k, m) if gpu_name else None
    return GemvConfig(**entry) if entry else default_gemv(n, k, m, sm_count)


def gemm_config(gpu_name: str | None, n: int, k: int, m: int, sm_count: int) -> GemmConfig:
    entry = _nearest_entry(load_table(gpu_name), "gemm", n, k, m) if gpu_name else None
    return GemmConfig(**entry) if entry else default_gemm(n, k, m, sm_count)


def gemm_swapped_config(gpu_name: str | None, n: int, k: int, m: int, sm_count: int) -> GemmConfig:
    entry = _nearest_entry(load_table(gpu_name), "gemm_swapped", n, k, m) if gpu_name else None
    return GemmConfig(**entry) if entry else default_gemm_swapped(n, k, m, sm_count)


def gemm_ws_config(gpu_name: str | None, n: int, k: int, m: int, sm_count: int) -> WsConfig:
    entry = _nearest_entry(load_table(gpu_name), "gemm_ws", n, k, m) if gpu_name else None
    return WsConfig(**entry) if entry else default_gemm_ws(n, k, m, sm_count)


def as_entry(config: GemvConfig | GemmConfig | WsConfig) -> dict:
    return asdict(config)
