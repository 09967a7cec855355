"""Held-out perplexity of a model on named text sources, the same tokens for every model compared."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from awq_core.calibration import load_documents, token_stream
from awq_core.perplexity import perplexity

# Disjoint from the builtin calibration split (see awq_core.calibration).
DEFAULT_EVAL_TEXTS = ("builtin:heldout-reference", "builtin:heldout-docstrings")


@dataclass(frozen=True)
class EvalSettings:
    texts: tuple[str, ...] = DEFAULT_EVAL_TEXTS
    window: int | None = None  # None: the model's context, at most 2048
    max_windows: int | None = None  # None: the whole text


def eval_tokens(tokenizer, texts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tokenize each eval text once, in document order (no shuffling: same tokens every time)."""
    return {text: token_stream(tokenizer, load_documents(text), seed=None) for text in texts}


def evaluate(model: nn.Module, tokens: dict[str, torch.Tensor], settings: EvalSettings) -> dict[str, float]:
    return {
        text: perplexity(model, ids, window=settings.window, max_windows=settings.max_windows)
        for text, ids in tokens.items()
    }
