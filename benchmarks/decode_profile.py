"""Where a batch-1 decode step's time goes: kernel times by kind, fp16 against W4 (needs a CUDA GPU).

    python benchmarks/decode_profile.py [--out DIR]   # -> benchmarks/results/decode_profile_<gpu>.json

The model and harness of `decode.py` (Llama-2-7B shape, random weights, fused q/k/v and gate/up,
static cache, the torch.compile'd step replayed as a CUDA graph). W4 is profiled twice: in the model's
own decoder layers ("w4-own-layers") and with the layers whose norms, activation and residual adds run
inside the products ("w4", `awq_core.fused_decoder`, as `decode.py` times it). After the warm-up, `--steps`
decode steps (after an unprofiled prefill) run under torch.profiler; every CUDA kernel is put in
one kind by its name (table `KINDS`) and its time summed. Per step: the time between CUDA events
around the loop, the kernels' sum by kind, and the rest (idle: gaps between kernels, where the GPU
runs nothing, and the host-side work of a step that the GPU waits for).

`--bound norms,activation` times upper bounds of W4-only fusions, on a W4 model whose decoder layers
compute something else (timings only, the outputs mean nothing): `norms` makes every decoder layer's two
RMSNorms identities (what a GEMV that normalised its own input would leave: the residual adds, without
the norm kernels), `activation` makes the MLP `down_proj(gate_proj(x))` (what a gate/up product writing
silu(gate) * up itself would leave: no activation kernel). The fp16 model is timed unchanged.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# transformers probes for a package named `kernels` on import: load it before benchmarks/ (which holds
# kernels.py) goes on the path, as decode.py does.
from transformers import LlamaConfig  # noqa: E402, F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode as db  # noqa: E402  (benchmarks/decode.py: model, quantization and harness)

from awq_core.attention import use_decode_attention  # noqa: E402
from awq_core.fused_decoder import fuse_decoder_layers  # noqa: E402
from awq_core.fused_linear import fuse_linears  # noqa: E402
from triton_kernels import configs  # noqa: E402

# (kind, substrings of the kernel name), first match wins; the names are those the H100 run showed.
KINDS = (
    ("w4a16 products (ours)", ("gemv_kernel", "gemm_kernel", "dequant")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
    ("fused elementwise (Inductor)", ("triton_",)),
    ("cuBLAS products", ("gemm", "gemv", "sm90", "cutlass", "xmma", "ampere", "nvjet")),
)
OTHER = "other"
BOUNDS = ("norms", "activation")  # what `--bound` may drop from the W4 model (see the module docstring)


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(k in lowered for k in keys)), OTHER)


def _gate_only_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.gate_proj(x))  # (..., hidden): no activation, no product with up


def drop_for_bound(model, bounds: list[str]) -> None:
    """Remove the named per-layer ops from `model` (timings only: the model then computes something else)."""
    for layer in model.model.layers:
        if "norms" in bounds:
            layer.input_layernorm = torch.nn.Identity()
            layer.post_attention_layernorm = torch.nn.Identity()
        if "activation" in bounds:  # a subclass, not an instance attribute: Dynamo then inlines it like any forward
            mlp = layer.mlp
            mlp.__class__ = type("GateOnly" + type(mlp).__name__, (type(mlp),), {"forward": _gate_only_forward})


@torch.no_grad()
def profile_step(model, label: str, steps: int, prompt: int, share_counter: bool = True) -> dict:
    """Kernel time per decode step by kind, over `steps` steps of the harness's decode loop."""
    harness = db.Harness(model, 1, prompt, steps + 1, use_graphs=True, compile=True, share_counter=share_counter)
    harness.run(db.WARMUP_TOKENS)  # compile, capture
    harness.cache.reset()
    out = model(input_ids=harness.prompt_ids, past_key_values=harness.cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        start.record()
        for i in range(1, steps + 1):  # the loop of `Harness.run`, decode steps only
            logits = harness.step(input_ids=token, attention_mask=harness.mask(prompt + i - 1),
                                  past_key_values=harness.cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        end.record()
        torch.cuda.synchronize()
    by_name: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_name.setdefault(event.name, []).append(event.device_time)
    rows = [dict(name=name[:160], kind=kind_of(name), launches_per_step=len(t) / steps, us_per_step=sum(t) / steps)
            for name, t in by_name.items()]
    rows.sort(key=lambda r: -r["us_per_step"])
    by_kind: dict[str, float] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0.0) + r["us_per_step"]
    step_us = 1e3 * start.elapsed_time(end) / steps
    kernels_us = sum(by_kind.values())
    return dict(model=label, steps=steps, step_us=step_us, kernels_us_per_step=kernels_us,
                idle_us_per_step=step_us - kernels_us, kernels_by_kind_us_per_step=by_kind,
                launches_per_step=sum(r["launches_per_step"] for r in rows), top_kernels=rows[:25])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--attention", choices=("kernel", "sdpa"), default="kernel",
                        help="one-token attention: awq_core.attention's kernel, or transformers' SDPA")
    parser.add_argument("--per-layer-counters", action="store_true",
                        help="keep transformers' position counter per cache layer (awq_core/static_cache.py not applied)")
    parser.add_argument("--bound", default="", help=f"comma-separated of {BOUNDS}: W4 fusion upper bounds (see above)")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--out", type=Path, help="also write the result file here")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this profile needs a CUDA GPU"
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.recompile_limit = 64
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    model = db.build_model("7b", device)
    if args.attention == "kernel":
        assert use_decode_attention(model), "the model did not take the decode attention"
    fuse_linears(model)
    t0 = time.time()
    share = not args.per_layer_counters
    results = [profile_step(model, "fp16", args.steps, args.prompt, share)]
    db.quantize_in_place(model)
    bounds = [b for b in args.bound.split(",") if b]
    assert all(b in BOUNDS for b in bounds), f"--bound takes {BOUNDS}, got {bounds}"
    drop_for_bound(model, bounds)
    if bounds:  # the bounds drop ops from the model's own layers
        results.append(profile_step(model, "w4", args.steps, args.prompt, share))
    else:
        results.append(profile_step(model, "w4-own-layers", args.steps, args.prompt, share))
        fuse_decoder_layers(model)
        results.append(profile_step(model, "w4", args.steps, args.prompt, share))
    for result in results:
        print(f"{result['model']}: step {result['step_us']:.0f} us (under the profiler), kernels "
              f"{result['kernels_us_per_step']:.0f} us, idle {result['idle_us_per_step']:.0f} us, "
              f"{result['launches_per_step']:.0f} launches; by kind: "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["kernels_by_kind_us_per_step"].items(),
                                                              key=lambda kv: -kv[1])), flush=True)
    path = Path(__file__).resolve().parent / "results" / f"decode_profile_{configs.gpu_tag(gpu)}{'_' + args.tag if args.tag else ''}.json"
    data = dict(command="python " + " ".join(sys.argv), gpu=gpu, attention=args.attention, torch=torch.__version__, seconds=time.time() - t0,
                shared_counter=share, w4_bound=bounds, results=results)
    db.kb.write_result(path, data, args.out)
    print("wrote", path)


if __name__ == "__main__":
    main()
