import torch

from awq_core.config import ClipConfig, QuantConfig
from tasks.checkpoints import Checkpoint, read_tensors, stage_key, write_tensors


def test_write_is_atomic_and_digest_detects_any_change(tmp_path):
    path = tmp_path / "blocks" / "000" / "x.safetensors"
    checkpoint = write_tensors(path, {"a": torch.arange(6.0).view(2, 3)}, {"names": ["a"]})
    assert checkpoint.is_valid() and [p.name for p in path.parent.iterdir()] == ["x.safetensors"]
    tensors, meta = read_tensors(checkpoint)
    assert torch.equal(tensors["a"], torch.arange(6.0).view(2, 3)) and meta == {"names": ["a"]}
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert not checkpoint.is_valid()
    path.unlink()
    assert not checkpoint.is_valid()


def test_stage_key_is_what_determines_the_output():
    ckpt = Checkpoint(path="/a/run1/x.safetensors", digest="d1")
    params = dict(run_dir="/a/run1", index=0, capture=ckpt, config=QuantConfig(group_size=64))
    key = stage_key("clip", params, ("group_size", "clip"))
    moved = dict(params, run_dir="/b/run2", capture=Checkpoint(path="/b/run2/x.safetensors", digest="d1"))
    assert stage_key("clip", moved, ("group_size", "clip")) == key, "run directory and paths are not part of the key"
    other_grid = dict(params, config=QuantConfig(group_size=64, n_grid=7))
    assert stage_key("clip", other_grid, ("group_size", "clip")) == key, "fields the stage does not read are ignored"
    for changed in (
        dict(params, config=QuantConfig(group_size=32)),
        dict(params, config=QuantConfig(group_size=64, clip=ClipConfig(n_grid=7))),
        dict(params, capture=Checkpoint(path=ckpt.path, digest="d2")),
        dict(params, index=1),
    ):
        assert stage_key("clip", changed, ("group_size", "clip")) != key
    assert stage_key("fuse", params, ("group_size", "clip")) != key
