"""The float model, loaded at most once per process and only when a stage has to compute.

Tasks never receive tensors: each one that needs weights takes a fresh copy of a float block from
here, so the in-memory model stays the float model for every later stage and every later run.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from awq_core.capture import capture_block_kwargs, to_device
from awq_core.models import load_model
from awq_core.registry import Architecture, detect_architecture, get_blocks
from tasks.checkpoints import Checkpoint, read_tensors
from tasks.model_ref import ModelRef


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    arch: Architecture
    block_kwargs: dict[str, list[dict]] = field(default_factory=dict)  # by calibration digest


_loaded: dict[str, LoadedModel] = {}


def loaded_model(ref: ModelRef) -> LoadedModel:
    if ref.identity not in _loaded:
        _loaded.clear()  # one model at a time
        model, tokenizer = load_model(ref.name_or_path, getattr(torch, ref.dtype), ref.revision, ref.trust_remote_code)
        _loaded[ref.identity] = LoadedModel(model, tokenizer, detect_architecture(model.config))
    return _loaded[ref.identity]


def calibration_ids(calibration: Checkpoint) -> torch.Tensor:
    return read_tensors(calibration)[0]["input_ids"]  # (n_samples, seqlen)


def block_kwargs(ref: ModelRef, calibration: Checkpoint, index: int, device: str) -> dict:
    """The keyword arguments block `index` is called with (rotary tables, masks), on `device`."""
    loaded = loaded_model(ref)
    if calibration.digest not in loaded.block_kwargs:
        ids = calibration_ids(calibration)
        loaded.block_kwargs[calibration.digest] = capture_block_kwargs(loaded.model, loaded.arch, ids[:1])
    return to_device(loaded.block_kwargs[calibration.digest][index], device)


def float_block(ref: ModelRef, index: int, device: str) -> nn.Module:
    """A copy of float block `index` on `device`, free to be modified."""
    loaded = loaded_model(ref)
    return copy.deepcopy(get_blocks(loaded.model, loaded.arch)[index]).to(device)


def take_model(ref: ModelRef) -> LoadedModel:
    """The loaded model, handed over for good (to be modified): the next user loads it again."""
    loaded = loaded_model(ref)
    _loaded.clear()
    return loaded
