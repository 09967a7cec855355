"""Calibration and evaluation text, tokenized into fixed-length blocks.

Sources:
- `auto` (the default): AutoAWQ's pile-val when the hub is reachable, else `builtin`;
- `builtin:<split>` (or plain `builtin`, the calibration split): English text that ships with Python
  itself, so a fresh machine with no hub access can calibrate and evaluate. Splits are disjoint:
  `calibration` and `heldout-reference` are alternating topics of the language reference
  (`pydoc_data.topics`); `heldout-docstrings` is the documentation of standard-library modules.
- a local `.txt` (one document per blank-line-separated paragraph block) or `.jsonl` file;
- any other string is a hub dataset name for `datasets.load_dataset`, e.g.
  `mit-han-lab/pile-val-backup` (AutoAWQ's default calibration set).
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import random
import urllib.request
import warnings
from pathlib import Path

import torch

from awq_core.config import CalibrationConfig

logger = logging.getLogger(__name__)

PILE_VAL = "mit-han-lab/pile-val-backup"  # AutoAWQ's default calibration set
HUB_PROBE_SECONDS = 3.0  # how long `auto` waits for the hub before using the builtin text
BUILTIN_SPLITS = ("calibration", "heldout-reference", "heldout-docstrings")
# Well-documented standard-library modules whose docstrings are the second held-out text.
DOCSTRING_MODULES = (
    "argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "email.message",
    "enum", "fractions", "functools", "heapq", "http.client", "inspect", "ipaddress", "itertools", "json",
    "logging", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics", "string", "subprocess",
    "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)


def _reference_topics(parity: int) -> list[str]:
    from pydoc_data.topics import topics

    # Several topic names share one text: deduplicate first so the two splits never overlap.
    texts = list(dict.fromkeys(topics[name] for name in sorted(topics)))
    return [text for i, text in enumerate(texts) if i % 2 == parity]


def _module_docstrings() -> list[str]:
    with warnings.catch_warnings():  # some modules warn when their deprecated members are touched
        warnings.simplefilter("ignore")
        return _collect_docstrings()


def _collect_docstrings() -> list[str]:
    docs = []
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        docs.append(inspect.getdoc(module) or "")
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                docs.append(f"{name}\n{doc}")
    return [d for d in docs if d]


def builtin_documents(split: str = "calibration") -> list[str]:
    if split == "calibration":
        return _reference_topics(0)
    if split == "heldout-reference":
        return _reference_topics(1)
    if split == "heldout-docstrings":
        return _module_docstrings()
    raise ValueError(f"unknown builtin text split {split!r}; choose one of {list(BUILTIN_SPLITS)}")


def _text_file_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [doc.strip() for doc in text.split("\n\n\n") if doc.strip()] or [text]


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(f"{endpoint}/api/datasets/{PILE_VAL}", timeout=timeout).close()
        return True
    except Exception:  # no route, DNS failure, timeout, HTTP error: all mean "use the offline text"
        return False


def resolve_source(source: str) -> str:
    """`auto` -> pile-val if the hub answers, else the builtin text; anything else as given."""
    if source != "auto":
        return source
    if hub_reachable():
        return PILE_VAL
    logger.warning("calibration: the hub is not reachable; using the builtin text shipped with Python")
    return "builtin"


def load_documents(source: str, split: str = "validation", text_column: str = "text") -> list[str]:
    """Documents of a text source (see the module docstring)."""
    source = resolve_source(source)
    if source == "builtin" or source.startswith("builtin:"):
        return builtin_documents(source.partition(":")[2] or "calibration")
    path = Path(source)
    if path.suffix in (".txt", ".jsonl", ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {source} does not exist")
        if path.suffix == ".txt":
            return _text_file_documents(path)
    import datasets  # imported here: a few seconds, and only this branch needs it

    if path.suffix in (".jsonl", ".json"):
        dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    else:
        dataset = datasets.load_dataset(source, split=split)
    if text_column not in dataset.column_names:
        raise ValueError(
            f"{source} has no column {text_column!r}; its columns are {dataset.column_names}: set text_column"
        )
    return [t for t in dataset[text_column] if isinstance(t, str) and t.strip()]


def token_stream(tokenizer, documents: list[str], seed: int | None) -> torch.Tensor:
    """Tokenize documents (shuffled with `seed`, or in order if None), joined by the EOS token: (tokens,)."""
    docs = list(documents)
    if seed is not None:
        random.Random(seed).shuffle(docs)
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
    return torch.tensor(ids, dtype=torch.long)


def split_blocks(stream: torch.Tensor, n_blocks: int | None, seqlen: int) -> torch.Tensor:
    """Non-overlapping (n_blocks, seqlen) windows from the start of the stream; all if n_blocks is None."""
    available = stream.numel() // seqlen
    if available == 0:
        raise ValueError(f"text has {stream.numel()} tokens, fewer than one block of seqlen={seqlen}")
    n = available if n_blocks is None else min(n_blocks, available)
    return stream[: n * seqlen].view(n, seqlen)


def calibration_blocks(tokenizer, config: CalibrationConfig) -> torch.Tensor:
    """(n_samples, seqlen) token ids, deterministic for a given seed.

    If the source holds fewer tokens than n_samples * seqlen, fewer samples come back (as in AutoAWQ).
    """
    docs = load_documents(config.source, config.split, config.text_column)
    stream = token_stream(tokenizer, docs, config.seed)
    return split_blocks(stream, config.n_samples, config.seqlen)
