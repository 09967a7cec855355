"""Save and load AutoAWQ- and GPTQ-format checkpoints: safetensors shards + config.json's
`quantization_config` (+ AutoGPTQ's quantize_config.json for GPTQ).

Loading accepts what AutoAWQ and other tools write, not only what `save_quantized` writes:
old key names (`w_bit`, `q_group_size`), upper-case versions, `modules_to_not_convert: null`,
one `model.safetensors` or shards with `model.safetensors.index.json`. Only safetensors are read:
never pickles.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from awq_core.config import QuantConfig, is_excluded
from awq_core.fused_linear import is_fused
from awq_core.gptq_linear import GPTQLinear
from awq_core.gptq_packing import GPTQ_BITS
from awq_core.packing import AWQ_BITS, Version
from awq_core.qlinear import WQLinear
from awq_core.quantizer import QuantizedWeight

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GPTQ_CONFIG_FILE = "quantize_config.json"  # AutoGPTQ reads its settings from here


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file or tensor and the fix."""


@dataclass(frozen=True)
class AwqSettings:
    """`quantization_config` normalized over the spellings that different tools write."""

    bits: int
    group_size: int
    zero_point: bool
    version: Version
    modules_to_not_convert: tuple[str, ...]


@dataclass(frozen=True)
class GptqSettings:
    """A GPTQ checkpoint's `quantization_config` (or quantize_config.json)."""

    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    modules_to_not_convert: tuple[str, ...]


def parse_quantization_config(raw: dict | None, source: str = CONFIG_FILE) -> AwqSettings | GptqSettings:
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{source}: no `quantization_config` block; this is not a quantized checkpoint "
            f"(load it with transformers, or quantize it first)"
        )
    method = str(raw.get("quant_method", "")).lower()
    if method == "gptq":
        return parse_gptq_config(raw, source)
    if method != "awq":
        raise CheckpointError(
            f"{source}: quant_method={raw.get('quant_method')!r} is not supported; 'awq' and 'gptq' are"
        )
    bits = raw.get("bits", raw.get("w_bit"))
    if bits != AWQ_BITS:
        raise CheckpointError(f"{source}: bits={bits!r}; the AutoAWQ GEMM/GEMV layouts store 4-bit weights only")
    group_size = _group_size_of(raw, source)
    try:
        version = Version.parse(raw.get("version", "gemm"))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}; other AWQ variants (exllama, marlin, ipex) are not supported") from None
    return AwqSettings(
        bits=bits,
        group_size=group_size,
        zero_point=bool(raw.get("zero_point", True)),
        version=version,
        modules_to_not_convert=tuple(raw.get("modules_to_not_convert") or ()),
    )


def _group_size_of(raw: dict, source: str) -> int:
    group_size = raw.get("group_size", raw.get("q_group_size"))
    if not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
        raise CheckpointError(f"{source}: group_size={group_size!r} must be a positive integer or -1")
    return group_size


def parse_gptq_config(raw: dict, source: str) -> GptqSettings:
    bits = raw.get("bits")
    if bits not in GPTQ_BITS:
        raise CheckpointError(f"{source}: bits={bits!r}; the GPTQ layout stores {GPTQ_BITS}-bit weights")
    fmt = str(raw.get("checkpoint_format", raw.get("format", "gptq"))).lower()  # transformers 5 writes "format" too
    if fmt != "gptq":
        raise CheckpointError(
            f"{source}: checkpoint_format={fmt!r} is not supported; only 'gptq' (zeros stored minus one) is: "
            "convert the checkpoint to the gptq format"
        )
    if raw.get("lm_head"):
        raise CheckpointError(f"{source}: lm_head=true (a quantized output layer) is not supported")
    return GptqSettings(
        bits=bits,
        group_size=_group_size_of(raw, source),
        desc_act=bool(raw.get("desc_act", False)),
        sym=bool(raw.get("sym", True)),
        modules_to_not_convert=tuple(raw.get("modules_to_not_convert") or ()),
    )


# ---- module surgery ------------------------------------------------------------------------------


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


GPTQ_LAYOUT = "gptq"  # `replace_linears(..., GPTQ_LAYOUT)`: GPTQLinear instead of an AWQ version


def layout_of(config: QuantConfig) -> Version | str:
    """What `replace_linears` packs a config's weights into: GPTQ's layout, or the AWQ version."""
    return GPTQ_LAYOUT if config.is_gptq else config.version


def replace_linears(model: nn.Module, quantized: dict[str, QuantizedWeight], version: Version | str) -> nn.Module:
    """Swap each `nn.Linear` named in `quantized` for a packed layer, in place: a `WQLinear` of the AWQ
    `version` (gemm / gemv), or a `GPTQLinear` for `version="gptq"`."""
    gptq = str(getattr(version, "value", version)).lower() == GPTQ_LAYOUT
    for name, qw in quantized.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise KeyError(f"quantized weight for {name!r}, but the model has no module of that name") from None
        assert isinstance(linear, nn.Linear), f"{name} is a {type(linear).__name__}, not an nn.Linear"
        layer = GPTQLinear.from_linear(linear, qw) if gptq else WQLinear.from_linear(linear, qw, version)
        _set_submodule(model, name, layer)
    return model


def _empty_layer(module: nn.Linear, settings: AwqSettings | GptqSettings, dtype: torch.dtype) -> nn.Module:
    if isinstance(settings, GptqSettings):
        return GPTQLinear.empty(
            module.in_features, module.out_features, module.bias is not None, settings.bits, settings.group_size, dtype
        )
    return WQLinear.empty(
        module.in_features, module.out_features, module.bias is not None,
        settings.bits, settings.group_size, settings.version, dtype,
    )  # fmt: skip


def _convert_to_empty(model: nn.Module, settings: AwqSettings | GptqSettings, dtype: torch.dtype) -> None:
    """Replace the linears that the checkpoint stores quantized by empty (meta) `WQLinear`s."""
    # Tools never quantize the output embedding, whether or not they list it (transformers adds it too).
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module is output or is_excluded(name, settings.modules_to_not_convert):
            continue
        try:
            layer = _empty_layer(module, settings, dtype)
        except ValueError as e:
            raise CheckpointError(
                f"layer {name}: {e}; if the checkpoint stores it unquantized, list it in modules_to_not_convert"
            ) from None
        _set_submodule(model, name, layer)


@contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device but buffers for real.

    Non-persistent buffers (rotary `inv_freq`) are computed in `__init__` and are not in the checkpoint,
    so they must exist; parameters come from the checkpoint, so allocating (and initializing) them is waste.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and not param.is_meta:  # an already-meta param is a tie: keep its identity
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings): a checkpoint stores one of each group."""
    names_by_param = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param[id(param)].append(name)
    return [names for names in names_by_param.values() if len(names) > 1]


def _set_submodule_param(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, param)


def _retie(model: nn.Module, groups: list[list[str]], loaded: set[str]) -> None:
    # load_state_dict(assign=True) gives each name its own new tensor: share the loaded one again.
    for names in groups:
        source = model.get_parameter(next(n for n in names if n in loaded))
        for name in names:
            _set_submodule_param(model, name, source)


# ---- save ----------------------------------------------------------------------------------------


def _pairs(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _check_layers_match(model: nn.Module, settings: AwqSettings | GptqSettings) -> None:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WQLinear)]
    if not layers:
        raise CheckpointError("the model has no WQLinear layers: call replace_linears before save_quantized")
    gptq = isinstance(settings, GptqSettings)
    for name, layer in layers:
        if gptq != isinstance(layer, GPTQLinear):
            raise CheckpointError(
                f"layer {name} is a {type(layer).__name__} but quantization_config says quant_method="
                f"{'gptq' if gptq else 'awq'}: replace_linears with the matching layout"
            )
        group_size = layer.in_features if settings.group_size == -1 else settings.group_size
        has = {"w_bit": layer.w_bit, "group_size": layer.group_size}
        says = {"bits": settings.bits, "group_size": group_size}
        if not gptq:  # the AWQ layout also has a version (GEMM / GEMV)
            has["version"], says["version"] = layer.version.value, settings.version.value
        if list(has.values()) != list(says.values()):
            raise CheckpointError(
                f"layer {name} has {_pairs(has)} but quantization_config says {_pairs(says)}: loaders would misread it"
            )


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the staged files into `out_dir`, each with an atomic rename; config.json goes last."""
    files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    files.sort(key=lambda rel: rel.name == CONFIG_FILE)  # a reader that sees the new config sees new weights
    new_weights = {rel.name for rel in files}
    for rel in files:
        if rel.name == CONFIG_FILE:
            # Weights of an earlier save that this one did not overwrite would shadow or confuse loaders
            # (a stale model.safetensors wins over a new index): drop them before the commit point.
            for stale in [*out_dir.glob("*.safetensors"), out_dir / INDEX_FILE]:
                if stale.is_file() and stale.name not in new_weights:
                    stale.unlink()
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, out_dir / rel)


def save_quantized(
    model: nn.Module,
    out_dir: str | os.PathLike,
    quantization_config: dict,
    tokenizer=None,
    max_shard_size: int | str = "2GB",
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Write safetensors shards, config.json with `quantization_config`, and the tokenizer if given.

    The float tensors (embeddings, norms, unquantized layers) are stored as `dtype`, fp16 as in AutoAWQ
    checkpoints: the model is cast in place (None keeps its dtype).
    """
    if is_fused(model):
        raise CheckpointError(
            "the model's q/k/v and gate/up projections are fused for inference, which no checkpoint layout "
            "stores: save the model before fusing, or load the checkpoint with fuse_layers=False"
        )
    settings = parse_quantization_config(quantization_config, source="quantization_config argument")
    _check_layers_match(model, settings)
    if dtype is not None:
        model.to(dtype)  # int32 qweight/qzeros buffers are not floating point and stay as they are
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-save-", dir=out))  # same filesystem: renames are atomic
    try:
        # transformers drops the tied lm_head.weight and writes the shards and their index.
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        config_path = staging / CONFIG_FILE
        config = json.loads(config_path.read_text())
        config["quantization_config"] = dict(quantization_config)
        _write_json_atomic(config_path, config)
        if isinstance(settings, GptqSettings):
            _write_json_atomic(staging / GPTQ_CONFIG_FILE, dict(quantization_config))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# ---- load ----------------------------------------------------------------------------------------


def _read_config(model_dir: Path) -> dict:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint directory needs config.json with a quantization_config")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); restore the file or save the model again") from None


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{index}: unreadable or without a weight_map ({e!r}); save the model again"
            ) from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: listed in {INDEX_FILE} but missing; download or copy the missing shard")
        return files
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    has_bin = any(model_dir.glob("*.bin"))
    raise CheckpointError(
        f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}"
        + ("; pickled .bin weights are never loaded: convert them to safetensors" if has_bin else "")
    )


def _read_tensors(files: list[Path], device: str) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of the shards, and the file each came from (for error messages)."""
    tensors, sources = {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device=device) as f:
                for key in f.keys():
                    if key in tensors:
                        raise CheckpointError(
                            f"{path}: tensor {key} also appears in {sources[key]}; the shards conflict"
                        )
                    tensors[key], sources[key] = f.get_tensor(key), path
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises SafetensorError, OSError or others on a bad header
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); it is truncated or corrupt: "
                f"download or save it again"
            ) from None
    return tensors, sources


def _summarize(names: list[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_keys(expected: dict[str, torch.Tensor], tensors: dict, groups: list[list[str]], model_dir: Path) -> None:
    tied = {name: names for names in groups for name in names}
    missing = [
        k for k in expected
        if k not in tensors and expected[k].is_meta  # real buffers keep their computed values
        and not any(alias in tensors for alias in tied.get(k, ()))
    ]  # fmt: skip
    unexpected = [k for k in tensors if k not in expected]
    if not missing and not unexpected:
        return
    hint = "the checkpoint does not match this model's architecture or its quantization_config"
    if any(k.endswith(".qweight") and k[: -len("qweight")] + "weight" in tensors for k in missing):
        hint = "some layers are stored unquantized: list them in quantization_config.modules_to_not_convert"
    elif any(k.endswith(".weight") and k[: -len("weight")] + "qweight" in tensors for k in missing):
        hint = "some layers are stored quantized but modules_to_not_convert excludes them: fix modules_to_not_convert"
    parts = [f"missing tensors: {_summarize(missing)}"] if missing else []
    parts += [f"unexpected tensors: {_summarize(unexpected)}"] if unexpected else []
    raise CheckpointError(f"{model_dir}: {'; '.join(parts)}; {hint}")


def _conform(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], sources: dict[str, Path]
) -> dict[str, torch.Tensor]:
    """Check each tensor's shape and dtype class against the model; cast floats to the model's dtype."""
    out = {}
    for key, tensor in tensors.items():
        want = expected[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{sources[key]}: tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(want.shape)}; "
                f"the config.json (model sizes, group_size, version) does not match the weights"
            )
        if want.dtype.is_floating_point != tensor.dtype.is_floating_point or (
            not want.dtype.is_floating_point and tensor.dtype != want.dtype
        ):
            raise CheckpointError(
                f"{sources[key]}: tensor {key} has dtype {tensor.dtype}, expected {want.dtype}; "
                f"packed tensors (qweight, qzeros, g_idx) are int32 and the others floating point"
            )
        out[key] = tensor.to(want.dtype)
    return out


def _quantization_config_of(model_dir: Path, raw_config: dict) -> tuple[dict | None, str]:
    """config.json's `quantization_config`; for older GPTQ checkpoints, quantize_config.json beside it."""
    if "quantization_config" in raw_config or not (model_dir / GPTQ_CONFIG_FILE).is_file():
        return raw_config.get("quantization_config"), str(model_dir / CONFIG_FILE)
    path = model_dir / GPTQ_CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); restore the file") from None
    return {"quant_method": "gptq", **raw} if isinstance(raw, dict) else raw, str(path)


def load_quantized(
    model_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16
) -> nn.Module:
    """Build the model from config.json, swap in `WQLinear`s (AWQ) or `GPTQLinear`s (GPTQ), and fill
    everything from safetensors."""
    model_dir = Path(model_dir)
    raw_config = _read_config(model_dir)
    settings = parse_quantization_config(*_quantization_config_of(model_dir, raw_config))
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{model_dir / CONFIG_FILE}: transformers cannot build a config from it ({e})") from None
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _convert_to_empty(model, settings, dtype)
    groups = _tied_groups(model)
    expected = model.state_dict()  # meta parameters and WQLinear buffers: what the files must provide
    tensors, sources = _read_tensors(_weight_files(model_dir), str(device))
    _check_keys(expected, tensors, groups, model_dir)
    model.load_state_dict(_conform(tensors, expected, sources), strict=False, assign=True)
    _retie(model, groups, set(tensors))
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not still_meta, f"not loaded (still on the meta device): {_summarize(still_meta)}"
    return model.to(device).eval()
