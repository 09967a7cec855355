"""Quantization algorithms and model handling in plain torch (no Prefect)."""
