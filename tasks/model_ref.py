"""Which model a run quantizes, and a digest of its weights that changes when they change."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from awq_core.models import resolve_source
from tasks.checkpoints import bytes_digest, text_digest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt")


class ModelRef(BaseModel):
    name_or_path: str  # hub id, local directory, .gguf file or embedded name
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    identity: str  # digest of the weights: part of every cache key


def file_stamp(path: Path) -> dict:
    """Size and modification time: a cheap stand-in for a content hash of a large weight file."""
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def directory_stamp(directory: Path) -> list[dict]:
    """Small files (configs, index, tokenizer) by content, weight files by size and mtime."""
    stamps = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        small = path.suffix in (".json", ".txt", ".model") and path.stat().st_size < (1 << 24)
        stamps.append({"name": path.name, "digest": bytes_digest(path.read_bytes())} if small else file_stamp(path))
    return stamps


def hub_stamp(repo_id: str, revision: str | None) -> dict:
    """A hub model: its id, revision and, when it is in the local hub cache, the commit it resolves to."""
    from huggingface_hub.constants import HF_HUB_CACHE

    ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    return {"hub_id": repo_id, "revision": revision, "commit": ref.read_text().strip() if ref.is_file() else None}


def model_ref(name_or_path: str, revision: str | None = None, dtype: str = "float32", trust_remote_code: bool = False) -> ModelRef:
    source, gguf_file = resolve_source(name_or_path)
    if gguf_file:
        stamp = {"gguf": file_stamp(Path(source) / gguf_file)}
    elif os.path.isdir(source):
        stamp = {"directory": directory_stamp(Path(source))}
    else:
        stamp = hub_stamp(source, revision)
    identity = text_digest(json.dumps({"model": name_or_path, "dtype": dtype, **stamp}, sort_keys=True))
    return ModelRef(name_or_path=name_or_path, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code, identity=identity)
