import json

import pytest
import torch

from awq_core.calibration import builtin_documents, calibration_blocks, load_documents, split_blocks, token_stream
from awq_core.config import CalibrationConfig


class CharTokenizer:
    """A stand-in tokenizer: one id per character."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 250) for c in text]}


def test_builtin_splits_are_disjoint_and_nonempty():
    cal, ref, doc = (set(builtin_documents(s)) for s in ("calibration", "heldout-reference", "heldout-docstrings"))
    assert min(len(cal), len(ref), len(doc)) > 30
    assert not cal & ref and not cal & doc


def test_blocks_have_the_requested_shape_and_depend_on_the_seed():
    tok = CharTokenizer()
    a = calibration_blocks(tok, CalibrationConfig(n_samples=8, seqlen=64, seed=0))
    b = calibration_blocks(tok, CalibrationConfig(n_samples=8, seqlen=64, seed=0))
    c = calibration_blocks(tok, CalibrationConfig(n_samples=8, seqlen=64, seed=1))
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_local_txt_and_jsonl(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first document " * 20 + "\n\n\n" + "second document " * 20)
    assert len(load_documents(str(txt))) == 2
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"line {i} " * 30}) for i in range(5)))
    docs = load_documents(str(jsonl), text_column="body")
    assert len(docs) == 5 and docs[0].startswith("line 0")
    with pytest.raises(ValueError, match="no column 'text'"):
        load_documents(str(jsonl))
    blocks = calibration_blocks(CharTokenizer(), CalibrationConfig(source=str(jsonl), text_column="body", n_samples=4, seqlen=32))
    assert blocks.shape == (4, 32)


def test_missing_file_and_too_short_text(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="fewer than one block"):
        split_blocks(torch.arange(10), 4, 64)


def test_fewer_tokens_than_asked_gives_fewer_samples():
    stream = token_stream(CharTokenizer(), ["x" * 300], seed=None)
    assert split_blocks(stream, 100, 64).shape == (4, 64)


def test_auto_source_uses_pile_val_only_when_the_hub_answers(monkeypatch):
    from awq_core import calibration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert calibration.resolve_source("auto") == "builtin"
    assert not calibration.hub_reachable()
    monkeypatch.setattr(calibration, "hub_reachable", lambda: True)
    assert calibration.resolve_source("auto") == calibration.PILE_VAL == "mit-han-lab/pile-val-backup"
    assert calibration.resolve_source("data.jsonl") == "data.jsonl"
    assert CalibrationConfig().source == "auto"
