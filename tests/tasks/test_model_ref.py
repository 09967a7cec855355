import os

from tasks.model_ref import model_ref


def test_identity_follows_the_weights_not_the_call(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0" * 64)
    first = model_ref(str(tmp_path))
    assert model_ref(str(tmp_path)).identity == first.identity
    assert model_ref(str(tmp_path), dtype="bfloat16").identity != first.identity
    os.utime(weights, ns=(1, 1))  # a rewritten weight file: new mtime
    assert model_ref(str(tmp_path)).identity != first.identity
    touched = model_ref(str(tmp_path)).identity
    (tmp_path / "config.json").write_text('{"model_type": "llama", "x": 1}')
    assert model_ref(str(tmp_path)).identity != touched


def test_gguf_file_is_stamped_by_size_and_mtime(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = model_ref(str(gguf)).identity
    gguf.write_bytes(b"GGUF" * 2)
    assert model_ref(str(gguf)).identity != first
