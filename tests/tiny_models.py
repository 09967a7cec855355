"""Tiny random causal LMs built from transformers configs: the unit tests' models (no hub needed)."""
from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=128,
    max_position_embeddings=256,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2),
    "llama-mha": lambda: LlamaConfig(**COMMON, num_key_value_heads=4),  # v_proj -> o_proj group applies
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=32),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),  # q/k/v have biases
    "qwen3": lambda: Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=16),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=2, head_dim=16),
    "gemma2": lambda: Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=32),
    "gemma3_text": lambda: Gemma3TextConfig(
        **COMMON, num_key_value_heads=2, head_dim=16, sliding_window=32, layer_types=["sliding_attention", "full_attention"]
    ),
}


def tiny_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[kind](), dtype=dtype)
    # Random init leaves norms at exactly 1 (or 0 for Gemma's 1 + w): perturb them so that fusing
    # a scale into a norm is really exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_tokenizer(vocab_size: int = 128):
    """A byte-level BPE tokenizer trained on the builtin calibration text, small enough for tiny models."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    from awq_core.calibration import builtin_documents

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<eos>"], show_progress=False)
    tok.train_from_iterator(builtin_documents("calibration")[:40], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def save_tiny_model(directory, kind: str = "llama"):
    """A tiny model directory as a hub download looks: config.json, safetensors weights, tokenizer."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(kind)
    assert len(tokenizer) <= model.config.vocab_size
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
