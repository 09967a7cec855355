"""The dispatch table's choices."""
import logging

import pytest

from triton_kernels import dispatch
from triton_kernels.dispatch import DISPATCH_TABLE, KernelChoice, select_kernel

H100 = (9, 0)


def test_table_is_ordered_and_explained():
    limits = [rule.max_m for rule in DISPATCH_TABLE]
    assert limits == sorted(limits)
    general = [rule.max_m for rule in DISPATCH_TABLE if rule.capability_major is None]
    assert len(set(general)) == len(general)  # one rule for any GPU per M range, after the GPU-specific ones
    for i, rule in enumerate(DISPATCH_TABLE):
        if rule.capability_major is not None:  # followed by a rule for the other GPUs of the same range
            assert DISPATCH_TABLE[i + 1].max_m == rule.max_m and DISPATCH_TABLE[i + 1].capability_major is None
    assert all(len(rule.reason) > 20 for rule in DISPATCH_TABLE)
    assert {rule.choice for rule in DISPATCH_TABLE} == {KernelChoice.GEMV, KernelChoice.GEMM_SWAPPED,
                                                     KernelChoice.GEMM_WS, KernelChoice.DEQUANT_CUBLAS}


@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 64, 256, 257, 1024, 8192])
def test_choice_follows_table(m):
    for capability in (H100, (8, 0)):
        expected = next(rule.choice for rule in DISPATCH_TABLE
                        if m <= rule.max_m and rule.capability_major in (None, capability[0]))
        assert select_kernel(m, 4096, 4096, capability) is expected


def test_regimes():
    assert select_kernel(1, 12288, 4096, H100) is KernelChoice.GEMV
    assert select_kernel(64, 12288, 4096, H100) is KernelChoice.GEMM_SWAPPED
    assert select_kernel(4096, 12288, 4096, H100) is KernelChoice.DEQUANT_CUBLAS


def test_no_cuda_or_old_gpu_falls_back_to_torch_with_one_notice(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_notified", False)
    with caplog.at_level(logging.WARNING, logger="triton_kernels.dispatch"):
        assert select_kernel(1, 64, 64, None) is KernelChoice.TORCH
        assert select_kernel(1, 64, 64, (7, 0)) is KernelChoice.TORCH
        assert select_kernel(1, 64, 64, (7, 5)) is not KernelChoice.TORCH
    assert len([r for r in caplog.records if "PyTorch reference" in r.getMessage()]) == 1


def test_measured_per_shape_choice_overrides_the_table(monkeypatch):
    """A "dispatch/..." entry of the GPU's tuned JSON wins for its shape and M bucket only."""
    from triton_kernels import configs

    table = {configs.config_key("dispatch", 4096, 4096, 2): {"kernel": "gemm", "reason": "measured"}}
    monkeypatch.setattr(configs, "load_table", lambda name: table if name == "Some GPU" else {})
    assert select_kernel(2, 4096, 4096, H100) is KernelChoice.GEMV  # no GPU name: the table
    assert select_kernel(2, 4096, 4096, H100, "Some GPU") is KernelChoice.GEMM
    assert select_kernel(2, 4096, 11008, H100, "Some GPU") is KernelChoice.GEMV  # other shape
    assert select_kernel(8, 4096, 4096, H100, "Some GPU") is KernelChoice.GEMM_SWAPPED  # other bucket: the table
    assert select_kernel(1, 4096, 4096, None, "Some GPU") is KernelChoice.TORCH  # no CUDA: still the fallback


def test_gpu_names_become_file_names():
    """The config file and every benchmark result file name a GPU by the same tag."""
    from triton_kernels import configs

    assert configs.gpu_tag("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"
    assert configs.gpu_tag(" NVIDIA A100-SXM4-40GB ") == "NVIDIA_A100-SXM4-40GB"
    assert configs.gpu_file_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3.json"
    assert configs.table_path("NVIDIA H100 80GB HBM3").name == "NVIDIA_H100_80GB_HBM3.json"


@pytest.mark.parametrize("m", [1, 3, 16, 100, 128, 255, 256, 300, 1024])
def test_swapped_gemm_default_config_fits_the_kernel(m):
    """Untuned shapes: one M tile up to 128 rows (at least 16, tl.dot's minimum), a warpgroup per 64 columns,
    split K only where the tiles leave multiprocessors idle, never beyond a block a split; from
    WIDE_SWAPPED_M on, 256-row tiles with the scale inside the operand."""
    from triton_kernels import configs

    for n, k in ((512, 1024), (12288, 4096), (4096, 11008)):
        c = configs.default_gemm_swapped(n, k, m, 132)
        wide = m >= configs.WIDE_SWAPPED_M
        assert c.block_m == (256 if wide else min(max(16, configs.bucket_m(m)), 128))
        assert c.scale_operand == wide
        assert c.num_warps * 16 == c.block_n
        assert 1 <= c.split_k <= max(1, -(-k // 128) // 4)


def test_swapped_gemm_shipped_entries_are_found():
    from triton_kernels import configs

    name = "NVIDIA H100 80GB HBM3"
    table = configs.load_table(name)
    entry = table[configs.config_key("gemm_swapped", 28672, 8192, 64)]
    assert configs.gemm_swapped_config(name, 28672, 8192, 64, 132) == configs.GemmConfig(**entry)
    assert configs.gemm_swapped_config(name, 28672, 8192, 60, 132) == configs.GemmConfig(**entry)  # same bucket
    assert select_kernel(64, 28672, 8192, H100, name) is KernelChoice.GEMM_SWAPPED
    assert select_kernel(256, 28672, 8192, H100, name) is KernelChoice.GEMM_WS
    assert select_kernel(64, 22016, 4096, H100, name) is KernelChoice.GEMM_SWAPPED
    # 4096x4096 at M=256: 64 tiles of 128 x 128, but 128 of 128 x 64 with the warpgroups on K slices
    assert select_kernel(256, 4096, 4096, H100, name) is KernelChoice.GEMM_WS
    # M=1024 and 2048: the warp-specialised GEMM measured fastest on all seven shapes (the table's entries);
    # M=4096 (and above: the largest bucket) dequant+cuBLAS on all but 8192x28672
    # 22016x4096 in 128-row tiles of three warpgroups' 192 columns: 920 tiles, 6.97 waves of 132 programs
    for n, k, tile in ((28672, 8192, (256, 2)), (22016, 4096, (128, 3)), (4096, 4096, (256, 2))):
        assert select_kernel(1024, n, k, H100, name) is KernelChoice.GEMM_WS
        assert select_kernel(1500, n, k, H100, name) is KernelChoice.GEMM_WS
        ws = configs.gemm_ws_config(name, n, k, 1024, 132)
        assert (ws.block_m, ws.warpgroups) == tile
        assert select_kernel(4096, n, k, H100, name) is KernelChoice.DEQUANT_CUBLAS
    assert select_kernel(8192, 22016, 4096, H100, name) is KernelChoice.DEQUANT_CUBLAS
    assert select_kernel(4096, 8192, 28672, H100, name) is KernelChoice.GEMM_WS
    # the measured winner at M=256: the block in two products (split_dot), one M tile of 128 rows
    wide = configs.gemm_swapped_config(name, 28672, 8192, 256, 132)
    assert (wide.block_m, wide.block_n, wide.scale_operand, wide.split_dot) == (128, 128, True, True)
