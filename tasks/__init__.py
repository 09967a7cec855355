"""Thin Prefect tasks over awq_core, one pipeline stage a module."""
