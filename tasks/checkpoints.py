"""Checkpoint files of the pipeline: atomic safetensors writes, content digests, cache keys.

A task writes its tensors under the run directory and returns a `StageOutput`: paths and digests,
never tensors. Its cache key is a digest of what determines its output (checkpoints by their digest,
the config by the fields that matter to the stage), never of the run directory or run id.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors import safe_open
from safetensors.torch import save_file

STAGE_VERSION = 1  # bump when a stage's code changes what it writes: old cache entries then miss
KILL_AFTER_ENV = "AWQFLOW_KILL_AFTER"  # tests: SIGKILL the process right after writing a matching file
DIGEST_CHUNK = 1 << 22
METADATA_KEY = "awqflow"


class Checkpoint(BaseModel):
    path: str
    digest: str  # sha256 of the file's bytes

    def is_valid(self) -> bool:
        return Path(self.path).is_file() and file_digest(self.path) == self.digest


class StageOutput(BaseModel):
    stage: str
    block: int | None = None
    files: dict[str, Checkpoint] = {}
    info: dict[str, Any] = {}  # small JSON values only: metrics, counts

    def is_valid(self) -> bool:
        return all(c.is_valid() for c in self.files.values())


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(DIGEST_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_digest(text: str) -> str:
    return bytes_digest(text.encode())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Checkpoint:
    """Write a safetensors file atomically (temp file, then rename) and return its checkpoint record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per writer: two runs may share a file
    # One metadata entry: safetensors writes several in no fixed order, which would change the digest.
    meta = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True)}
    save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    checkpoint = Checkpoint(path=str(path), digest=file_digest(path))
    kill_if_requested(path)
    return checkpoint


def read_tensors(checkpoint: Checkpoint, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON metadata of a checkpoint file."""
    with safe_open(checkpoint.path, framework="pt", device=device) as f:
        meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def kill_if_requested(path: Path) -> None:
    marker = os.environ.get(KILL_AFTER_ENV)
    if marker and marker in path.as_posix():
        os.kill(os.getpid(), signal.SIGKILL)


def _canonical(value: Any) -> Any:
    if isinstance(value, Checkpoint):
        return value.digest
    if isinstance(value, BaseModel):
        return {k: _canonical(v) for k, v in value}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value.value if isinstance(value, Enum) else value


def stage_key(stage: str, parameters: dict[str, Any], config_fields: tuple[str, ...] = ()) -> str:
    """The cache key of one task run: its stage and parameters, the `config` reduced to `config_fields`."""
    parts: dict[str, Any] = {"stage": stage, "version": STAGE_VERSION}
    for name, value in parameters.items():
        if name == "run_dir":
            continue
        if name == "config":
            value = {f: getattr(value, f) for f in config_fields}
        parts[name] = _canonical(value)
    return text_digest(json.dumps(parts, sort_keys=True, default=str))


def stage_cache_key_fn(stage: str, config_fields: tuple[str, ...] = ()):
    """A Prefect `cache_key_fn` for a stage's task."""

    def cache_key(context, parameters: dict[str, Any]) -> str:
        return f"awqflow-{stage}-{stage_key(stage, parameters, config_fields)}"

    return cache_key


def stage_path(run_dir: str, name: str, key: str, block: int | None = None) -> Path:
    """Where a stage writes: `blocks/<block>/<name>-<key>.safetensors`, or `inputs/<name>-<key>...`."""
    folder = Path(run_dir) / "blocks" / f"{block:03d}" if block is not None else Path(run_dir) / "inputs"
    return folder / f"{name}-{key[:16]}.safetensors"
