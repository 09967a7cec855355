"""The warp-specialised Hopper GEMM (`gemm_ws.py`): when it runs, its configs, and on a Hopper GPU its results
against a float64 reference. Gluon has no CPU interpreter, so the kernel itself runs only on the GPU tests."""
import dataclasses

import pytest
import torch

from triton_kernels import KernelChoice, configs, w4a16_linear
from triton_kernels.dispatch import select_kernel
from triton_kernels.half2 import interpreting
from triton_kernels.prepare import PreparedWeight, dequantize_prepared, prepare
from triton_kernels.splitk import arrival_counters
from triton_kernels.testing import RTOL, random_awq_layer, relative_error

gemm_ws = pytest.importorskip("triton_kernels.gemm_ws", reason="this Triton has no Gluon")

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] == 9
SHARED_BYTES = gemm_ws.MAX_SHARED_BYTES  # an H100 program's shared memory: 227 KB


def _weight(k: int, n: int, group: int, dtype=torch.float16, device="cpu") -> PreparedWeight:
    layer = random_awq_layer(k, n, group, dtype, device=device, seed=k + n + group)
    return prepare(layer.qweight, layer.qzeros, layer.scales, group)


def test_dispatch_takes_it_on_hopper_only():
    for m in (257, 512, 1024):
        assert select_kernel(m, 4096, 4096, (9, 0)) is KernelChoice.GEMM_WS
        assert select_kernel(m, 4096, 4096, (8, 0)) is KernelChoice.GEMM_SWAPPED
        assert select_kernel(m, 4096, 4096, (10, 0)) is KernelChoice.GEMM_SWAPPED
    assert select_kernel(256, 4096, 4096, (9, 0)) is KernelChoice.GEMM_SWAPPED
    assert select_kernel(2048, 4096, 4096, (9, 0)) is KernelChoice.GEMM_WS  # it beat dequant+cuBLAS at M=2048
    assert select_kernel(1025, 4096, 4096, (8, 0)) is KernelChoice.DEQUANT_CUBLAS
    assert select_kernel(2049, 4096, 4096, (9, 0)) is KernelChoice.DEQUANT_CUBLAS


def test_fits_only_what_the_kernel_takes():
    w = _weight(256, 128, 128)
    x = torch.randn(300, 256, dtype=torch.float16)
    assert gemm_ws.fits((9, 0), w, x)
    assert not gemm_ws.fits((8, 9), w, x) and not gemm_ws.fits((10, 0), w, x)  # wgmma and setmaxnreg: sm_90
    assert not gemm_ws.fits((9, 0), _weight(256, 128, 64), x)  # a group inside a 128-row block
    assert not gemm_ws.fits((9, 0), _weight(256, 128, 128, torch.bfloat16), x.bfloat16())  # fp16 pairs only
    x_odd = torch.randn(300, 260, dtype=torch.float16)[:, :256]  # rows 520 bytes apart: not 16-byte aligned
    assert not gemm_ws.fits((9, 0), w, x_odd)
    assert not gemm_ws.fits((9, 0), w, torch.randn(256, 300, dtype=torch.float16).t())  # column stride 300
    assert not gemm_ws.runs(w, x)  # on the CPU


def test_op_hands_calls_it_cannot_take_to_the_swapped_gemm():
    """The kernel choice GEMM_WS on a call the kernel cannot take (here: the CPU interpreter) runs the swapped
    GEMM with its own config, giving its exact result."""
    if not torch.cuda.is_available() and not interpreting():
        pytest.skip("the kernels need a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    w = _weight(384, 96, 64, device=device)  # groups of 64: never the warp-specialised kernel
    x = torch.randn(70, 384, dtype=torch.float16, device=device)
    ws = w4a16_linear(x, w, kernel=KernelChoice.GEMM_WS)
    swapped = w4a16_linear(x, w, kernel=KernelChoice.GEMM_SWAPPED)
    assert torch.equal(ws, swapped)
    ref = (x.double() @ dequantize_prepared(w).double()).cpu()
    assert relative_error(ws, ref) < RTOL


@pytest.mark.parametrize("m", [64, 128, 256, 300, 512, 1024, 4096])
def test_default_config_fits_shared_memory(m):
    c = configs.default_gemm_ws(4096, 4096, m, 132)
    assert c.block_m == (256 if m >= configs.WIDE_WS_M else 128)
    assert gemm_ws.shared_bytes(c) <= SHARED_BYTES, f"{c} overflows shared memory"
    registers = c.mma_registers or gemm_ws.mma_register_budget(c.warpgroups)
    assert registers % 8 == 0 and c.warpgroups * registers + 40 <= 512  # setmaxnreg: the register file's share


def test_mma_register_budget_shares_the_register_file():
    """64K registers over 128-thread warpgroups: 512 a thread summed over the MMA warpgroups and the load warp's 40,
    in multiples of 8 (the budgets the kernel compiled without spills at, sm_90a)."""
    assert [gemm_ws.mma_register_budget(w) for w in (2, 3, 4)] == [232, 152, 112]
    for w in (2, 3, 4):
        budget = gemm_ws.mma_register_budget(w)
        assert w * budget + gemm_ws.LOAD_REGISTERS <= 512 < w * (budget + 8) + gemm_ws.LOAD_REGISTERS


@pytest.mark.parametrize("slice_k", [False, True], ids=["columns", "k_slices"])
def test_deepest_ring_is_the_most_stages_that_fit(slice_k):
    for w, block_ms in ((2, (32, 64, 128, 256)), (3, (32, 64, 128)), (4, (32, 64))):
        for block_m in (b for b in block_ms if b <= 128 or not slice_k):
            for tma in (False, True):
                stages = gemm_ws.deepest_ring(block_m, w, tma, slice_k)
                fitting = configs.WsConfig(block_m, stages, warpgroups=w, tma_store=tma, slice_k=slice_k)
                assert stages >= 1 and gemm_ws.shared_bytes(fitting) <= gemm_ws.BUFFER_BYTES < SHARED_BYTES
                deeper = configs.WsConfig(block_m, stages + (w if slice_k else 1), warpgroups=w, tma_store=tma,
                                          slice_k=slice_k)
                assert gemm_ws.shared_bytes(deeper) > gemm_ws.BUFFER_BYTES
                gemm_ws.check_config(fitting)
                with pytest.raises(AssertionError, match="fewer stages"):
                    gemm_ws.check_config(deeper)
    assert gemm_ws.deepest_ring(128, 3, True) == 4  # 4 x 44 KB of ring beside three (128, 64) fp16 y tiles
    # K slices: one word box a stage (36 KB), one y tile (16 KB) and a (64, 128) float32 slice sum (32 KB) a warpgroup
    # but the first; and on K slices a multiple of the warpgroups
    assert gemm_ws.deepest_ring(128, 2, True, True) == 4 and gemm_ws.deepest_ring(128, 3, True, True) == 3


def test_k_slices_share_one_64_column_tile():
    sliced = configs.WsConfig(128, 4, warpgroups=3, tma_store=True, slice_k=True)
    assert sliced.block_n == 64 and configs.WsConfig(128, 4, warpgroups=3).block_n == 192
    ring = 4 * (2 * 128 * 64 * 2 + 64 * 16 * 4)
    assert gemm_ws.shared_bytes(sliced) == ring + 128 * 64 * 2 + 2 * 64 * 128 * 4


@pytest.mark.parametrize("config, message", [
    (configs.WsConfig(256, 1, warpgroups=3), "tiles of up to 128 rows"),
    (configs.WsConfig(128, 2, warpgroups=4), "tiles of up to 64 rows"),
    (configs.WsConfig(64, 2, warpgroups=5), "warpgroups must be one of"),
    (configs.WsConfig(256, 2, slice_k=True), "on K slices take tiles of up to 128 rows"),
    (configs.WsConfig(128, 5, slice_k=True), "stages must be a multiple of 2"),
    (configs.WsConfig(128, 3, warpgroups=3, paired_blocks=True, slice_k=True), "stages must be at least 6"),
    (configs.WsConfig(128, 4, split_k=2, stream_k=True), "leave split_k at 1 and split_tail off"),
], ids=["3wg_256rows", "4wg_128rows", "5wg", "sliced_256rows", "sliced_odd_ring", "sliced_paired_short_ring",
        "stream_k_and_split"])
def test_check_config_names_what_to_change(config, message):
    with pytest.raises(AssertionError, match=message):
        gemm_ws.check_config(config)


@pytest.mark.parametrize("n, k, m, three", [
    (22016, 4096, 1024, True),  # 920 tiles of 192 columns: 99% of 7 waves, against 688 of 128 at 87% of 6
    (22016, 4096, 256, True),  # 230 tiles, 87% of 2 waves, against 344 128-row tiles at 87% of 3
    (22016, 4096, 128, True),  # 115 tiles: 87% of a wave, against 172 at 65% of 2
    (12288, 4096, 256, True),  # 128 tiles, 97%, against 192 at 73%
    (12288, 4096, 1024, False),  # 97% both, against 256-row tiles
    *[(n, k, 1024, False) for n, k in ((4096, 4096), (4096, 11008), (8192, 8192), (28672, 8192), (8192, 28672))],
    *[(n, k, 256, False) for n, k in ((4096, 4096), (4096, 11008), (8192, 8192), (28672, 8192), (8192, 28672))],
    *[(n, k, 128, False) for n, k in ((12288, 4096), (4096, 4096), (4096, 11008), (8192, 8192))],
])
def test_default_config_takes_three_warpgroups_where_they_fill_the_waves(n, k, m, three):
    """The fallback's choice against what the tuning measured fastest on the H100's 132 multiprocessors: the 19 of
    the 21 (shape, M) at M = 128, 256, 1024 where two and three warpgroups differed by more than 1.5% (three won on
    28672x8192 and 8192x28672 at M=128 by 1.5% and 1.3%)."""
    c = configs.default_gemm_ws(n, k, m, 132)
    assert (c.warpgroups == 3) is three, c
    gemm_ws.check_config(c)
    if three:
        assert (c.block_m, c.split_k) == (128, 1)


def test_wave_fill_counts_idle_programs_and_partial_tiles():
    assert configs.wave_fill(1024, 128 * 132, 1024, 128, 132) == 1.0  # one whole wave
    assert configs.wave_fill(1024, 128 * 66, 1024, 128, 132) == 0.5  # half the programs idle
    assert configs.wave_fill(1024, 128 * 132, 1024, 256, 132) == 0.5  # 66 tiles, half of each past N
    # 22016x4096 at M=1024: 920 tiles of 128 x 192 (the last column of tiles 2/3 used) in 7 waves
    assert configs.wave_fill(1024, 22016, 128, 192, 132) == pytest.approx(1024 * 22016 / (7 * 132 * 128 * 192))


@pytest.mark.parametrize("n, k, m, split, sliced", [
    (4096, 4096, 300, 1, False),  # 96 tiles of 128 rows: under one wave of 132 multiprocessors, but 2 would need 192
    (4096, 11008, 128, 2, True),  # 32 tiles: 64 of 64 columns on K slices, 2 splits of those
    (4096, 11008, 256, 1, True),  # 64 tiles: 128 on K slices
    (8192, 28672, 128, 1, True),  # 64 tiles
    (4096, 4096, 1024, 1, False),  # 128 tiles of 256 rows
    (4096, 384, 128, 1, True),  # 3 blocks of K: too few to split
    (1024, 1024, 512, 2, False),  # 16 tiles of 256 rows would take 8 splits, but 8 blocks make only 2 of 4 blocks
])
def test_default_config_splits_k_only_for_too_few_tiles(n, k, m, split, sliced):
    c = configs.default_gemm_ws(n, k, m, 132)
    assert (c.split_k, c.split_tail, c.slice_k) == (split, False, sliced), c
    gemm_ws.check_config(c)


@pytest.mark.parametrize("n, k, m, split, split_tail", [
    (20480, 4096, 128, 3, True),  # 160 tiles: 28 past the whole wave, 3 splits fit it (3 at most)
    (13824, 5120, 1024, 3, True),  # 432 tiles of 256 rows: 36 past 3 waves
    (12288, 4096, 1024, 1, False),  # 384 tiles: 120 past 2 waves, more than half a wave
    (28672, 8192, 256, 2, True),  # 448 tiles: 52 past 3 waves, 2 splits fit one wave
    (8192, 8192, 1280, 2, True),  # 5 x 64 = 320 tiles of 256 rows: 56 past 2 waves, 2 splits fit one wave
    (16896, 4096, 128, 1, False),  # 132 tiles: whole waves only
    (20480, 384, 128, 1, False),  # 3 blocks of K: too few to split
])
def test_default_config_splits_the_last_partial_wave(n, k, m, split, split_tail):
    c = configs.default_gemm_ws(n, k, m, 132)
    assert (c.split_k, c.split_tail) == (split, split_tail), c


@pytest.mark.parametrize("tiles, split_k, split_tail, whole, units", [
    (688, 4, True, 660, 660 + 28 * 4),  # 22016x4096 at M=1024 in 256-row tiles: 5.2 waves, the last 28 split
    (688, 4, False, 0, 688 * 4),  # every tile split
    (264, 3, True, 264, 264),  # whole waves only: nothing split
    (96, 2, True, 0, 192),  # under one wave: every tile split
    (688, 1, True, 0, 688),  # one split: nothing to split
])
def test_split_layout_splits_only_the_last_partial_wave(tiles, split_k, split_tail, whole, units):
    assert gemm_ws.split_layout(tiles, split_k, split_tail, 132) == (whole, units)


def test_split_layout_balances_the_last_wave():
    """Work per program, in tile times, of 224 tiles on 132 programs: 2 unsplit, 1.75 with K in 4 splits. Splitting
    only the tiles past the whole wave balances as well as splitting all of them, with 92 x 4 units writing
    partials instead of 224 x 4."""
    def longest_program(tiles: int, split_k: int, split_tail: bool, wave: int = 132) -> tuple[float, int]:
        whole, units = gemm_ws.split_layout(tiles, split_k, split_tail, wave)
        work = [0.0] * wave
        for unit in range(units):  # a persistent grid: program p takes units p, p + wave, ...
            work[unit % wave] += 1.0 if unit < whole else 1.0 / split_k
        assert sum(work) == pytest.approx(tiles)
        return max(work), units - whole
    assert longest_program(224, 1, False) == (2, 224)
    assert longest_program(224, 4, True) == (pytest.approx(1.75), 92 * 4)
    assert longest_program(224, 4, False) == (pytest.approx(1.75), 224 * 4)


@pytest.mark.parametrize("tiles, n_blocks, whole, units, span, slots", [
    (224, 64, 132, 132 + 131, 45, 3),  # 28672x8192 M=256 in 256 x 128 tiles: 92 tiles' 5888 blocks in runs of 45
    (230, 32, 132, 132 + 131, 24, 3),  # 22016x4096 M=256 in 128 x 192 tiles
    (64, 224, 0, 132, 109, 4),  # fewer tiles than programs: every tile's blocks in the runs
    (264, 32, 264, 264, 32, 1),  # whole waves only: nothing cut
    (150, 1, 132, 150, 1, 1),  # one block a tile: every run holds whole tiles
])
def test_stream_k_layout_gives_every_program_one_run(tiles, n_blocks, whole, units, span, slots):
    assert gemm_ws.stream_k_layout(tiles, n_blocks, 132) == (whole, units, span, slots)


@pytest.mark.parametrize("tiles, n_blocks", [(224, 64), (230, 32), (64, 224), (150, 16), (133, 11), (7, 3), (896, 64)])
def test_stream_k_runs_cover_each_tile_once_within_its_slots(tiles, n_blocks):
    """The units as `gemm_ws._unit_blocks` lays them out: whole tiles, then runs of `span` blocks of the rest laid end
    to end. Every K block of every tile falls in exactly one unit, no tile meets more runs than its partials have
    slots, and with a persistent grid (program p takes units p, p + 132, ...) no program has more than a whole wave's
    share of blocks plus one block."""
    wave = 132
    whole, units, span, slots = gemm_ws.stream_k_layout(tiles, n_blocks, wave)
    covered = [[0] * n_blocks for _ in range(tiles)]
    runs_of_tile = [set() for _ in range(tiles)]
    work = [0] * wave
    for unit in range(units):
        if unit < whole:
            lo, hi = unit * n_blocks, (unit + 1) * n_blocks
        else:
            lo = whole * n_blocks + (unit - whole) * span
            hi = min(lo + span, tiles * n_blocks)
        assert lo < hi, f"unit {unit} is empty"
        work[unit % wave] += hi - lo
        for block in range(lo, hi):
            covered[block // n_blocks][block % n_blocks] += 1
            runs_of_tile[block // n_blocks].add(unit)
    assert all(c == 1 for row in covered for c in row)
    assert max(len(r) for r in runs_of_tile) <= slots
    assert max(work) <= -(-tiles * n_blocks // wave) + 1
    if tiles == 224:  # 1.70 tile times a program, against 1.75 with the tail's K in 4 splits and 2 unsplit
        assert max(work) / n_blocks == pytest.approx(1.70, abs=0.01)


def test_shared_bytes_count_the_tma_store_tiles():
    plain, tma = configs.WsConfig(256, 2), configs.WsConfig(256, 2, tma_store=True)
    assert gemm_ws.shared_bytes(tma) - gemm_ws.shared_bytes(plain) == 2 * 256 * 64 * 2  # two (256, 64) fp16 tiles
    assert gemm_ws.shared_bytes(tma) <= SHARED_BYTES < gemm_ws.shared_bytes(configs.WsConfig(256, 3, tma_store=True))


def test_shipped_entries_are_configs():
    name = "NVIDIA H100 80GB HBM3"
    entries = {k: v for k, v in configs.load_table(name).items() if k.startswith("gemm_ws/")}
    for key, entry in entries.items():
        c = configs.WsConfig(**entry)
        gemm_ws.check_config(c)
        assert gemm_ws.shared_bytes(c) <= SHARED_BYTES, key


CONFIGS = [configs.WsConfig(256, 3, False), configs.WsConfig(128, 4, True), configs.WsConfig(256, 3, True),
           configs.WsConfig(128, 5, False), configs.WsConfig(64, 6, False, split_k=3),
           configs.WsConfig(32, 8, True, split_k=4), configs.WsConfig(128, 5, True, split_k=2),
           configs.WsConfig(64, 6, True, split_k=3, paired_blocks=True),
           configs.WsConfig(128, 4, False, paired_blocks=True),
           # the tail split: 4096x4096 M=1000 is 256 tiles of 128 rows, 1024 of 32 (one wave whole, the rest split)
           configs.WsConfig(128, 4, True, split_k=3, split_tail=True),
           configs.WsConfig(32, 8, False, split_k=2, split_tail=True, paired_blocks=True),
           # y through shared memory and TMA (one ring stage fewer), with split tiles and paired blocks too
           configs.WsConfig(256, 2, False, tma_store=True), configs.WsConfig(128, 4, True, tma_store=True),
           configs.WsConfig(64, 8, True, split_k=3, split_tail=True, paired_blocks=True, tma_store=True),
           # three and four MMA warpgroups (tiles 192 and 256 columns wide), whole and split, register and TMA stores
           configs.WsConfig(128, 4, True, tma_store=True, warpgroups=3),
           configs.WsConfig(128, 5, False, split_k=2, split_tail=True, warpgroups=3),
           configs.WsConfig(64, 7, True, split_k=3, paired_blocks=True, tma_store=True, warpgroups=3),
           configs.WsConfig(64, 6, True, split_k=2, tma_store=True, warpgroups=4),
           configs.WsConfig(32, 9, False, split_k=3, split_tail=True, paired_blocks=True, warpgroups=4),
           # warpgroups on K slices of one 64-column tile: whole and split, paired, TMA, 3 and 4 of them (at K = 256,
           # two blocks, warpgroups 2 and 3 have no block and add zeros)
           configs.WsConfig(128, 4, False, slice_k=True),
           configs.WsConfig(64, 8, True, split_k=2, paired_blocks=True, tma_store=True, slice_k=True),
           configs.WsConfig(128, 3, True, split_k=3, split_tail=True, tma_store=True, warpgroups=3, slice_k=True),
           configs.WsConfig(32, 8, False, split_k=2, paired_blocks=True, warpgroups=4, slice_k=True),
           # stream-K's runs across tiles: persistent or not, TMA, paired, three warpgroups, K slices
           configs.WsConfig(128, 4, True, stream_k=True), configs.WsConfig(256, 2, False, tma_store=True, stream_k=True),
           configs.WsConfig(64, 8, True, paired_blocks=True, tma_store=True, stream_k=True),
           configs.WsConfig(128, 4, True, tma_store=True, warpgroups=3, stream_k=True),
           configs.WsConfig(128, 4, False, tma_store=True, slice_k=True, stream_k=True)]


def _config_id(c: configs.WsConfig) -> str:
    return (f"{c.block_m}x{c.stages}{'p' if c.persistent else ''}" + (f"s{c.split_k}" if c.split_k > 1 else "")
            + ("t" if c.split_tail else "") + ("x2" if c.paired_blocks else "") + ("tma" if c.tma_store else "")
            + (f"w{c.warpgroups}" if c.warpgroups != 2 else "") + ("k" if c.slice_k else "")
            + ("sk" if c.stream_k else ""))


@pytest.mark.skipif(not HOPPER, reason="the warp-specialised kernel needs a Hopper GPU")
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("n, k, m, group, bias", [
    (256, 512, 256, 128, False),
    (200, 1152, 300, 128, True),  # N not a multiple of 128 (nor K of 256), M not of the tile, a bias
    (384, 384, 17, 128, False),  # fewer rows than a tile
    (128, 4096, 1024, -1, False),  # one group over all of K
    (4096, 4096, 1000, 128, True),  # more tiles than multiprocessors: several a persistent program
    (2048, 1408, 1000, 128, False),  # ... of 11 blocks: the ring positions of a program's later units start odd
    (136, 256, 64, 256, False),
])
def test_matches_float64_reference(config, n, k, m, group, bias):
    torch.manual_seed(n + k + m)
    w = _weight(k, n, group, device="cuda")
    x = torch.randn((m, k), device="cuda", dtype=torch.float16)
    b = torch.randn(n, device="cuda", dtype=torch.float16) if bias else None
    ref = (x.double() @ dequantize_prepared(w).double() + (b.double() if bias else 0)).cpu()  # (M, N)
    y = gemm_ws.gemm_ws(x, w, b, config)
    assert y.shape == (m, n) and y.dtype == torch.float16
    assert relative_error(y, ref) < RTOL
    # through the op, with the config it looks up for this shape
    assert relative_error(w4a16_linear(x, w, b, kernel=KernelChoice.GEMM_WS), ref) < RTOL


@pytest.mark.skipif(not HOPPER, reason="the warp-specialised kernel needs a Hopper GPU")
@pytest.mark.parametrize("config, n", [
    (configs.WsConfig(64, 6, True, split_k=4), 640),
    (configs.WsConfig(32, 8, True, split_k=4, split_tail=True), 6400),  # 150 tiles: 132 whole, 18 split
    (configs.WsConfig(32, 8, True, split_k=3, split_tail=True, warpgroups=3), 9600),  # 150 tiles of 192 columns
    (configs.WsConfig(64, 6, True, split_k=4, tma_store=True), 640),  # the sums through TMA
    (configs.WsConfig(64, 9, True, split_k=3, tma_store=True, warpgroups=3, slice_k=True), 640),  # and of K slices
    # stream-K: 150 tiles of 32 x 128, 18 past the wave: their 288 blocks in runs of 3 across the 16-block tiles
    (configs.WsConfig(32, 8, True, stream_k=True), 6400),
    (configs.WsConfig(64, 8, False, tma_store=True, slice_k=True, stream_k=True), 640),  # 20 tiles in runs of 3
])
def test_split_k_gives_the_same_bits_every_run(config, n):
    """The splits' partials meet in a fixed order (`splitk.py`), whichever program finishes first."""
    w = _weight(2048, n, 128, device="cuda")
    x = torch.randn((96, 2048), device="cuda", dtype=torch.float16)
    first = gemm_ws.gemm_ws(x, w, None, config)
    for _ in range(5):
        assert torch.equal(gemm_ws.gemm_ws(x, w, None, config), first)
    assert not arrival_counters(x.device).any(), "each tile's last program resets its counter"
    ref = (x.double() @ dequantize_prepared(w).double()).cpu()
    assert relative_error(first, ref) < RTOL


@pytest.mark.skipif(not HOPPER, reason="the warp-specialised kernel needs a Hopper GPU")
@pytest.mark.parametrize("config", [configs.WsConfig(64, 6, True, split_k=4),
                                    configs.WsConfig(128, 4, False, split_k=2, warpgroups=3),
                                    configs.WsConfig(32, 8, True, split_k=3, split_tail=True, paired_blocks=True)],
                         ids=_config_id)
def test_split_sums_leave_through_tma_with_the_same_bits(config):
    """A split tile's last program sums the partials in split order whoever it is (its own partial from its
    registers when it is split 0 or 1), then stores y from registers or through TMA: the same bits either way,
    with rows past M and columns past N (N = 200 is no whole tile of 128 or 192 columns) clipped."""
    w = _weight(2048, 200, 128, device="cuda")
    x = torch.randn((100, 2048), device="cuda", dtype=torch.float16)
    registers = gemm_ws.gemm_ws(x, w, None, config)
    tma = gemm_ws.gemm_ws(x, w, None, dataclasses.replace(config, tma_store=True))
    assert torch.equal(tma, registers)
    ref = (x.double() @ dequantize_prepared(w).double()).cpu()
    assert relative_error(tma, ref) < RTOL


@pytest.mark.skipif(not HOPPER, reason="the warp-specialised kernel needs a Hopper GPU")
@pytest.mark.parametrize("config", [configs.WsConfig(128, 4, True), configs.WsConfig(64, 6, False, split_k=3),
                                    configs.WsConfig(32, 8, True, split_k=2, split_tail=True),
                                    configs.WsConfig(64, 8, True, split_k=2, slice_k=True),
                                    configs.WsConfig(32, 8, True, stream_k=True)], ids=_config_id)
def test_runs_inside_a_cuda_graph(config):
    w = _weight(1024, 512, 128, device="cuda")
    x = torch.randn((512, 1024), device="cuda", dtype=torch.float16)
    eager = gemm_ws.gemm_ws(x, w, None, config)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gemm_ws.gemm_ws(x, w, None, config)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(eager, captured)
