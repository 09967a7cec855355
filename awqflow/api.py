"""The Python API: the four calls users of AutoAWQ and AutoGPTQ know, on the same flow as `awqflow quantize`.

    from awqflow import AutoQuantForCausalLM

    model = AutoQuantForCausalLM.from_pretrained("smollm2-135m")
    tokenizer = model.tokenizer
    model.quantize(tokenizer, quant_config={"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})
    model.save_quantized("smollm2-awq")

    model = AutoQuantForCausalLM.from_quantized("smollm2-awq", device="cuda", fuse_layers=True, fast_decode=True)
    model.generate(**tokenizer("Hello", return_tensors="pt").to("cuda"), max_new_tokens=32)

`from_quantized` returns a transformers `PreTrainedModel`, so `generate()`, `pipeline("text-generation")`
and chat templates work as on any model. `quantize()` runs the resumable Prefect flow: the same
command run twice resumes from the cached stages.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from awq_core.config import CalibrationConfig, QuantConfig

# AutoAWQ's (and transformers' quantization_config) key names -> QuantConfig fields.
AUTOAWQ_KEYS = {
    "w_bit": "w_bit",
    "bits": "w_bit",
    "q_group_size": "group_size",
    "quant_method": "method",
}
# AutoGPTQ's BaseQuantizeConfig keys (and transformers' GPTQConfig): QuantConfig.gptq's fields. A dict that
# uses them without naming a method means GPTQ.
GPTQ_KEYS = ("desc_act", "static_groups", "damp_percent", "true_sequential", "block_size")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KERNELS = ("auto", "gemv", "gemm", "torch")
FAST_DECODE = ("compile", "graphs")  # fast_decode=True means "compile"


def fast_decode_compiles(fast_decode: bool | str) -> bool:
    """Whether a truthy `fast_decode` value asks for the compiled step; an unknown value is an error."""
    if fast_decode is True or fast_decode in FAST_DECODE:
        return fast_decode != "graphs"
    raise ValueError(f"fast_decode={fast_decode!r}: expected False, True, 'compile' or 'graphs'")


def parse_quant_config(value: QuantConfig | dict | None) -> QuantConfig:
    """A QuantConfig, or a dict with AutoAWQ's keys ({"zero_point", "q_group_size", "w_bit", "version"}),
    AutoGPTQ's ({"bits", "group_size", "desc_act", "sym", "damp_percent", ...}), transformers'
    (`bits`, `group_size`, `quant_method`) or QuantConfig's own field names."""
    if value is None:
        return QuantConfig()
    if isinstance(value, QuantConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"quant_config must be a QuantConfig or a dict, got {type(value).__name__}")
    fields: dict[str, Any] = {}
    value = dict(value)
    gptq = {k: value.pop(k) for k in GPTQ_KEYS if k in value}
    if "sym" in value:
        value.setdefault("zero_point", not value.pop("sym"))
    if gptq:
        fields["gptq"] = {**dict(value.pop("gptq", {})), **gptq}
        fields["method"] = "gptq"
    for key, item in value.items():
        name = AUTOAWQ_KEYS.get(key, key)
        if name not in QuantConfig.model_fields:
            accepted = sorted(set(QuantConfig.model_fields) | set(AUTOAWQ_KEYS) | set(GPTQ_KEYS) | {"sym"})
            raise ValueError(f"quant_config: unknown key {key!r}; accepted keys: {', '.join(accepted)}")
        if name in fields and fields[name] != item:
            raise ValueError(f"quant_config: {key}={item!r} contradicts an earlier key for {name}={fields[name]!r}")
        fields[name] = item.lower() if name in ("version", "method") and isinstance(item, str) else item
    return QuantConfig.model_validate(fields)


def calibration_file(texts: list[str], root: Path) -> Path:
    """Write a list of texts where the calibration loader reads them (a .txt, documents separated by
    two blank lines), named by content so that the same texts give the same file and the run resumes."""
    assert texts and all(isinstance(t, str) for t in texts), "calib_data must be a non-empty list of strings"
    docs = [re.sub(r"\n{3,}", "\n\n", t.strip()) for t in texts if t.strip()]
    body = "\n\n\n".join(docs) + "\n"
    path = root / ".calibration" / f"{hashlib.sha256(body.encode()).hexdigest()[:16]}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text(body, encoding="utf-8")
    return path


def with_calibration(config: QuantConfig, calib_data, n_samples: int | None, seqlen: int | None, root: Path) -> QuantConfig:
    """Apply AutoAWQ's calibration arguments: calib_data (a source name or path, or a list of texts)."""
    update: dict[str, Any] = {}
    if isinstance(calib_data, (list, tuple)):
        update["source"] = str(calibration_file(list(calib_data), root).resolve())
    elif isinstance(calib_data, (str, os.PathLike)):
        update["source"] = str(calib_data)
    elif calib_data is not None:
        raise TypeError(
            f"calib_data must be a source ('auto', 'builtin', a .txt/.jsonl path, a hub dataset) or a list of "
            f"texts, got {type(calib_data).__name__}"
        )
    if n_samples is not None:
        update["n_samples"] = n_samples
    if seqlen is not None:
        update["seqlen"] = seqlen
    if not update:
        return config
    calibration = CalibrationConfig.model_validate({**config.calibration.model_dump(), **update})
    return config.model_copy(update={"calibration": calibration})


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {list(DTYPES)} or a torch.dtype")
    return DTYPES[dtype]


class QuantizableModel:
    """A float model to quantize: what `from_pretrained` returns.

    The float weights are loaded only when used (`.model`, `generate`): `quantize()` runs the flow,
    which loads its own copy block by block. After `quantize()`, `.model` is the quantized model.
    Other attributes (`generate`, `config`, `device`, ...) are the current model's.
    """

    def __init__(self, source: str, dtype: str = "float32", revision: str | None = None, trust_remote_code: bool = False):
        resolve_dtype(dtype)
        self.source, self.dtype, self.revision, self.trust_remote_code = source, dtype, revision, trust_remote_code
        self.quantized_dir: Path | None = None  # the flow's published checkpoint
        self.quant_config: QuantConfig | None = None
        self.report: dict | None = None  # the flow's report: perplexity, sizes, stage timings
        self._tokenizer = None
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from awq_core.models import load_model

            self._model, tokenizer = load_model(self.source, resolve_dtype(self.dtype), self.revision, self.trust_remote_code)
            if self._tokenizer is None:
                self._tokenizer = tokenizer
        return self._model

    @property
    def tokenizer(self):
        """The model's own tokenizer (loaded on first use), or the one given to `quantize()`."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from awq_core.models import resolve_source

            source, gguf_file = resolve_source(self.source)
            extra = {"gguf_file": gguf_file} if gguf_file else {}
            self._tokenizer = AutoTokenizer.from_pretrained(
                source, revision=self.revision, trust_remote_code=self.trust_remote_code, **extra
            )
        return self._tokenizer

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def quantize(
        self,
        tokenizer=None,
        quant_config: QuantConfig | dict | None = None,
        calib_data: str | list[str] | None = None,
        *,
        n_samples: int | None = None,
        seqlen: int | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        out_dir: str | os.PathLike | None = None,
        run_dir: str | os.PathLike | None = None,
        eval_windows: int | None = None,
        progress_bars: bool = False,
    ) -> "QuantizableModel":
        """Quantize with the `awqflow quantize` flow, then load the result as `.model`.

        The calibration text is tokenized with the model's own tokenizer, as the command does, so both
        give the same checkpoint; `tokenizer` (AutoAWQ's first argument) is kept and written by
        `save_quantized`. `calib_data`: a source ('auto', 'builtin', a .txt/.jsonl file, a hub dataset)
        or a list of texts; `n_samples`/`seqlen` override the config's calibration size.
        """
        from flows.quantize import run_quantize
        from flows.records import DEFAULT_RUNS_ROOT, RunSettings, default_run_dir

        runs_root = Path(run_dir).parent if run_dir else Path(DEFAULT_RUNS_ROOT)
        config = with_calibration(parse_quant_config(quant_config), calib_data, n_samples, seqlen, runs_root)
        out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="awqflow-quantized-"))
        settings = RunSettings(
            model=self.source, out=str(out), config=config, revision=self.revision, dtype=self.dtype,
            trust_remote_code=self.trust_remote_code, device=device, batch_size=batch_size, eval_windows=eval_windows,
        )  # fmt: skip
        self.report = run_quantize(settings, run_dir or default_run_dir(settings), progress_bars=progress_bars)
        self.quantized_dir, self.quant_config = out, config
        if tokenizer is not None:
            self._tokenizer = tokenizer
        self._model = AutoQuantForCausalLM.from_quantized(out, device=device, dtype=resolve_dtype(self.dtype))
        return self

    def save_quantized(self, save_dir: str | os.PathLike) -> Path:
        """Write the quantized checkpoint (safetensors, config.json, tokenizer, the run's layer metrics)."""
        if self.quantized_dir is None:
            raise RuntimeError("nothing to save: call quantize() first (a float model is saved with model.save_pretrained)")
        from awq_core.checkpoint import _publish  # atomic per-file moves, config.json last

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-save-", dir=save_dir))
        try:
            for file in self.quantized_dir.iterdir():
                if file.is_file():
                    shutil.copyfile(file, staging / file.name)
            if self._tokenizer is not None:  # the one given to quantize() (the flow saved the model's own)
                self._tokenizer.save_pretrained(staging)
            _publish(staging, save_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return save_dir


class AutoQuantForCausalLM:
    """Entry point for quantizing and loading causal LMs: `from_pretrained` -> `quantize` ->
    `save_quantized`, and `from_quantized` for inference.

    Why this name: it follows transformers' `AutoModelForCausalLM` (a factory of class methods that
    picks the architecture from config.json), and "Quant" rather than "AWQ" because one class serves
    every method the flow runs (AWQ, RTN, and GPTQ through `quant_config`'s `method`).
    `AutoAWQForCausalLM` is the same class, for code written against AutoAWQ.
    """

    def __init__(self):
        raise TypeError("use AutoQuantForCausalLM.from_pretrained(...) or AutoQuantForCausalLM.from_quantized(...)")

    @staticmethod
    def from_pretrained(
        model_path: str | os.PathLike,
        dtype: torch.dtype | str = "float32",
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> QuantizableModel:
        """A float model to quantize: a hub id, a local directory, a .gguf file or an embedded model name."""
        if isinstance(dtype, torch.dtype):
            dtype = next(name for name, d in DTYPES.items() if d == dtype)
        return QuantizableModel(str(model_path), dtype, revision, trust_remote_code)

    @staticmethod
    def from_quantized(
        quant_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        kernel: str = "auto",
        dtype: torch.dtype | str = torch.float16,
        fuse_layers: bool = False,
        fast_decode: bool | str = False,
        attn_implementation: str = "sdpa",
    ):
        """Load a quantized checkpoint (ours or AutoAWQ's layout) as a transformers `PreTrainedModel`.

        kernel: "auto" (Triton W4A16 kernels chosen by batch size on a CUDA GPU, torch elsewhere), or
            "gemv" / "gemm" / "torch" to force one path.
        fuse_layers: fuse q/k/v and gate/up into one quantized linear each (faster decoding).
        fast_decode: `generate()` uses a static KV cache and, on CUDA, replays each decode step as a
            CUDA graph. True or "compile": the graph holds the torch.compile'd step (Inductor fuses
            the small per-layer ops; the first decode of each batch size compiles, about half a minute
            for a 7B model); "graphs": the eager step. False: transformers' default decoding. With
            "sdpa" attention, one-token decode steps then attend through our split-slot kernel
            (`awq_core.attention`; the model's attn_implementation reads "awqflow_decode"). With
            `fuse_layers` as well, Llama, Mistral and Qwen2 decoder layers run one-token steps with
            their RMSNorms, silu(gate) * up and residual adds inside the W4 products, and their
            rotary embedding and cache write inside the decode attention kernel
            (`awq_core.fused_decoder`).
        attn_implementation: transformers' attention backend ("sdpa", "eager", ...).
        """
        from awq_core.checkpoint import load_quantized
        from awq_core.decode import enable_fast_decode
        from awq_core.fused_linear import fuse_linears
        from awq_core.qlinear import set_kernel

        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: expected one of {list(KERNELS)}")
        compile_step = fast_decode_compiles(fast_decode) if fast_decode is not False else False
        model = load_quantized(quant_path, device=device, dtype=resolve_dtype(dtype))
        model.set_attn_implementation(attn_implementation)
        if fuse_layers:
            fuse_linears(model)
        set_kernel(model, kernel)
        if fast_decode:
            enable_fast_decode(model, compile=compile_step)
        return model


AutoAWQForCausalLM = AutoQuantForCausalLM
