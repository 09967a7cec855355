"""Decode speed on a GPU: fp16 against our W4 g128, through one harness.

    python benchmarks/decode.py [--out DIR]                  # -> benchmarks/results/decode_<gpu>.json
    python benchmarks/decode.py --shape tiny --device cpu    # a smoke test of the harness

A Llama-2-7B-shaped model with random weights is built on the GPU in fp16 (no CPU-side init) and
timed; then its linears (all but lm_head) are RTN-quantized on the GPU to 4 bits, group 128, packed
as `WQLinear`, and timed again. Both models fuse q/k/v and gate/up (`awq_core.fused_linear`); fp16
is also timed unfused at batch 1, as transformers runs it. The W4 model's decoder layers run one-token
steps with their norms, activation and residual adds inside the products (`awq_core.fused_decoder`, as
`enable_fast_decode` sets up); the forced-kernel rows at batch 1 (GEMV, GEMM) run the model's own layers,
so they compare the kernels alone, and the GEMV row is the W4 step without the fused layers.

The harness, for each batch size: prefill a random prompt into a static KV cache (time to first
token), then decode greedily, one token per step, each step replayed as a CUDA graph
(`awq_core.decode.GraphedDecodeStep`; eager if capture fails, and the table says which). With
`--compile` the captured step is the torch.compile'd forward, for every model. Every model's one-token
steps attend through `awq_core.attention`'s split-slot kernel (`--attention sdpa`: transformers' SDPA). Each row is
timed after a short warm-up run on the same cache (Triton compiles, the graph is captured). Peak
memory is `torch.cuda.max_memory_allocated` over the row's warm-up and timed runs: weights (for W4
also the kernels' repacked copy), KV cache, graph pool and prefill activations.

The bandwidth floor of a decode step is the bytes it must read (every weight once, plus the live
KV cache) divided by the measured device-to-device copy bandwidth (bytes read + written per second).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig, LlamaForCausalLM, StaticCache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402  (benchmarks/kernels.py: the copy-bandwidth probe, the result writer)

from awq_core.attention import ATTENTION, use_decode_attention  # noqa: E402
from awq_core.checkpoint import replace_linears  # noqa: E402
from awq_core.decode import GraphedDecodeStep, enable_fast_decode  # noqa: E402
from awq_core.fused_decoder import fuse_decoder_layers, unfuse_decoder_layers  # noqa: E402
from awq_core.fused_linear import fuse_linears  # noqa: E402
from awq_core.qlinear import WQLinear, set_kernel  # noqa: E402
from awq_core.quantizer import quantize  # noqa: E402
from triton_kernels import configs  # noqa: E402

SHAPES = {
    # Llama-2-7B: 32 layers of hidden 4096, intermediate 11008, 32 heads (no GQA), vocab 32000.
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1024, max_position_embeddings=1024),
}  # fmt: skip
GROUP_SIZE = 128
WARMUP_TOKENS = 4  # enough to compile every kernel and capture the decode graph
GENERATE_TOKENS = 64  # the generate() check: eager decoding of a 7B model is slow
CHECK_STEPS = 16  # decode steps compared between graph replay and eager decoding
LOGITS_RTOL = 1e-2  # graph replay against eager decoding: the same kernels, Inductor's fusions apart
# Both W4 checks compare two ways of computing the same logits whose fp16 sums round differently: the
# compiled step against the eager one (Inductor fuses and reorders the ops around the products), and
# generate() against one full forward (M = 1 decode steps against an M = prompt + tokens forward, other
# kernels). The fp16 model's own difference in the same check, measured in the same run, is that rounding
# on this random-weight model: W4's may be at most this many times it (or LOGITS_RTOL). A wrong kernel or
# graph would differ by the logits' own size, not by a few percent.
NOISE_FACTOR = 2.0


@dataclass
class Row:
    model: str  # fp16, fp16-unfused, w4
    kernel: str  # auto / gemv / gemm for w4; cublas for fp16
    batch: int
    prompt: int
    new_tokens: int
    ttft_ms: float  # prefill + first token
    decode_ms_per_step: float
    decode_tokens_per_s: float  # batch * decode steps / decode time
    peak_memory_gib: float
    graphed: bool
    floor_ms_per_step: float
    fraction_of_floor: float
    warmup_s: float  # the warm-up run: kernel compiles, graph capture, and with --compile torch.compile
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: str, device: torch.device) -> nn.Module:
    config = LlamaConfig(**SHAPES[shape])
    with torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, dtype=torch.float16, attn_implementation="sdpa")
    return model.eval()


@torch.no_grad()
def quantize_in_place(model: nn.Module) -> float:
    """RTN W4 g128 of every linear but lm_head, one at a time (fused ones as one): seconds taken."""
    start = time.perf_counter()
    head = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and m is not head]
    for name in names:
        linear = model.get_submodule(name)
        replace_linears(model, {name: quantize(linear.weight, 4, GROUP_SIZE)}, "gemm")
    sync(next(model.parameters()).device)
    return time.perf_counter() - start


def weight_bytes(model: nn.Module) -> int:
    """Bytes a decode step reads from the weights: everything but the embedding table (one row per token)."""
    embedding = model.get_input_embeddings().weight
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()] if t.data_ptr() != embedding.data_ptr()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def kv_bytes_per_step(config: LlamaConfig, batch: int, prompt: int, new_tokens: int) -> float:
    """Mean live KV cache read per decode step (keys and values of every layer, fp16)."""
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
    mean_length = prompt + (new_tokens - 1) / 2
    return batch * per_token * mean_length


class Harness:
    """Prefill, then greedy decode with a static cache; the same code times every model."""

    def __init__(self, model: nn.Module, batch: int, prompt: int, new_tokens: int, use_graphs: bool,
                 compile: bool = False, share_counter: bool = True):
        self.model, self.batch, self.prompt, self.new_tokens = model, batch, prompt, new_tokens
        self.device = next(model.parameters()).device
        self.max_len = prompt + new_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        self.step = GraphedDecodeStep(model, use_graphs, compile, share_counter=share_counter)
        self.positions = torch.arange(self.max_len, device=self.device)  # (max_len,)
        gen = torch.Generator(device="cpu").manual_seed(batch)
        vocab = model.config.vocab_size
        self.prompt_ids = torch.randint(0, vocab, (batch, prompt), generator=gen).to(self.device)  # (batch, prompt)

    def mask(self, position: int) -> torch.Tensor:
        """(batch, 1, 1, max_len) bool: the new token at `position` sees keys 0..position."""
        return (self.positions <= position).view(1, 1, 1, -1).expand(self.batch, 1, 1, -1)

    @torch.no_grad()
    def run(self, new_tokens: int) -> tuple[torch.Tensor, float, float]:
        """(tokens (batch, new_tokens), time to first token s, decode time s)."""
        self.cache.reset()  # in place: the tensors (and a captured graph) stay valid
        sync(self.device)
        start = time.perf_counter()
        out = self.model(input_ids=self.prompt_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
        sync(self.device)
        ttft = time.perf_counter() - start
        tokens = [token]
        start = time.perf_counter()
        for i in range(1, new_tokens):
            logits = self.step(
                input_ids=token, attention_mask=self.mask(self.prompt + i - 1), past_key_values=self.cache, use_cache=True
            ).logits
            token = logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
            tokens.append(token)
        sync(self.device)
        return torch.cat(tokens, dim=1), ttft, time.perf_counter() - start


    @torch.no_grad()
    def forced_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, steps, vocab) float32 of each decode step fed `tokens` (batch, steps + 1):
        teacher forcing, so two paths can be compared step by step even where their argmax differ."""
        self.cache.reset()
        self.model(input_ids=self.prompt_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        logits = []
        for i in range(1, tokens.shape[1]):
            out = self.step(
                input_ids=tokens[:, i - 1 : i], attention_mask=self.mask(self.prompt + i - 1),
                past_key_values=self.cache, use_cache=True,
            )  # fmt: skip
            logits.append(out.logits[:, -1].float())
        return torch.stack(logits, dim=1)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: how far two logit tensors are apart, on the logits' own scale."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def graph_checks(model: nn.Module, prompt: int, compile: bool, steps: int = CHECK_STEPS) -> dict:
    """Graph replay (of the compiled step with `compile`) against eager decoding at batch 1: greedy tokens,
    and the logits of each step fed the same tokens (greedy tokens may part where logits nearly tie).
    Eager runs repeat exactly (the split-K sums have a fixed order); a compiled step fuses and reorders
    the fp16 arithmetic of the ops around the products, so its logits differ slightly from eager ones."""
    graphed, eager = Harness(model, 1, prompt, steps, True, compile), Harness(model, 1, prompt, steps, False)
    tokens, _, _ = graphed.run(steps)
    eager_tokens, _, _ = eager.run(steps)
    again, _, _ = eager.run(steps)
    forced = torch.cat([tokens, tokens[:, -1:]], dim=1)  # (1, steps + 1)
    graph_logits, eager_logits = graphed.forced_logits(forced), eager.forced_logits(forced)
    eager_again_logits = eager.forced_logits(forced)  # the kernels' own run-to-run spread, for scale
    return dict(
        steps=steps, graphed=graphed.step.graphed, compiled=graphed.step.compiled,
        fallback_reason=graphed.step.fallback_reason, graph_tokens_equal_eager=bool(torch.equal(tokens, eager_tokens)),
        eager_tokens_equal_eager_again=bool(torch.equal(eager_tokens, again)),
        logits_relative_difference=relative_difference(graph_logits, eager_logits),
        eager_run_to_run_logits_relative_difference=relative_difference(eager_again_logits, eager_logits),
    )  # fmt: skip


def measure(model, label, kernel, batch, args, bandwidth, use_graphs=True) -> tuple[Row, torch.Tensor]:
    label = f"{label}+compile" if args.compile else label
    device = next(model.parameters()).device
    gc.collect()  # the previous row's cache and graph are garbage now: free them before this row's peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)  # the peak covers this row's cache, graph and prefill
    harness = Harness(model, batch, args.prompt, args.new_tokens, use_graphs, args.compile)
    start = time.perf_counter()
    harness.run(WARMUP_TOKENS)  # compiles (Triton, and with --compile the model), captures the graph
    warmup = time.perf_counter() - start
    tokens, ttft, decode = harness.run(args.new_tokens)
    steps = args.new_tokens - 1
    peak = torch.cuda.max_memory_allocated(harness.device) / 2**30 if harness.device.type == "cuda" else float("nan")
    floor = (weight_bytes(model) + kv_bytes_per_step(model.config, batch, args.prompt, args.new_tokens)) / bandwidth
    per_step = decode / steps
    row = Row(
        label, kernel, batch, args.prompt, args.new_tokens, 1e3 * ttft, 1e3 * per_step, batch * steps / decode,
        peak, harness.step.graphed, 1e3 * floor, floor / per_step, warmup, harness.step.fallback_reason or "",
    )  # fmt: skip
    return row, tokens


@torch.no_grad()
def generate_check(model: nn.Module, prompt: int, new_tokens: int, compile: bool) -> dict:
    """The user-facing path at batch 1: `generate()` with `enable_fast_decode` (static cache, graphed
    decode steps) against the same static cache decoded eagerly, and the default dynamic cache. The model
    is left as it came: its fast-decode step (and graph) dropped, its cache setting restored."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(7)).to(device)
    common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, pad_token_id=0)  # fmt: skip

    def timed(**kwargs) -> tuple[torch.Tensor, float]:
        model.generate(ids, **{**common, **kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up, capture
        sync(device)
        start = time.perf_counter()
        tokens = model.generate(ids, **common, **kwargs)
        sync(device)
        return tokens, new_tokens / (time.perf_counter() - start)

    _, dynamic_rate = timed()
    cache_implementation = model.generation_config.cache_implementation
    step = enable_fast_decode(model, compile=compile, attention=model.config._attn_implementation == ATTENTION,
                              fused_decoder=False)  # the model's layers as the caller set them
    try:
        _, static_rate = timed(disable_compile=True)  # static cache, decode steps not handed to our step
        _, fast_rate = timed()
        # What fast decoding computed against one plain forward over the whole sequence (no cache).
        out = model.generate(ids, **common, output_logits=True, return_dict_in_generate=True)
        generated = torch.stack(out.logits, dim=1)  # (1, new_tokens, vocab) float32
        full = model(out.sequences[:, :-1], use_cache=False).logits[:, prompt - 1 :].float()  # (1, new_tokens, vocab)
    finally:  # undo enable_fast_decode
        model.generation_config.cache_implementation = cache_implementation
        for attr in ("get_compiled_call", "fast_decode_step"):
            model.__dict__.pop(attr, None)
    difference = relative_difference(generated, full)
    return dict(
        new_tokens=new_tokens, dynamic_cache_tokens_per_s=dynamic_rate, static_cache_eager_tokens_per_s=static_rate,
        fast_decode_tokens_per_s=fast_rate, fast_decode_graphed=step.graphed, fallback_reason=step.fallback_reason,
        logits_relative_difference_to_full_forward=difference,
    )  # fmt: skip


def print_row(row: Row) -> None:
    print(f"{row.model:<17}{row.kernel:<7}{row.batch:>6}{row.ttft_ms:>10.1f}{row.decode_ms_per_step:>10.2f}"
          f"{row.decode_tokens_per_s:>11.1f}{row.peak_memory_gib:>9.2f}{str(row.graphed):>8}"
          f"{row.floor_ms_per_step:>9.2f}{row.fraction_of_floor:>8.0%}{row.warmup_s:>8.1f}  {row.note}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-graphs", action="store_true", help="decode eagerly (no CUDA graphs)")
    parser.add_argument("--compile", action="store_true",
                        help="decode steps run the torch.compile'd forward (inside the CUDA graph) for every model")
    parser.add_argument("--attention", choices=("kernel", "sdpa"), default="kernel",
                        help="kernel: one-token steps attend through awq_core.attention's split-slot kernel (every "
                             "model); sdpa: transformers' SDPA throughout")
    parser.add_argument("--no-fused-layers", dest="fused_layers", action="store_false",
                        help="the W4 model runs its own decoder layers (awq_core.fused_decoder not applied)")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--out", type=Path, help="also write the result file here")
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    use_graphs = not args.no_graphs
    # One compile per model and batch size (plus the forced-kernel rows): above Dynamo's default limit.
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.recompile_limit = 64
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    bandwidth = kb.copy_bandwidth(device) if device.type == "cuda" else 100e9  # CPU: a nominal figure
    print(f"{gpu}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    name = configs.gpu_tag(gpu)
    results = Path(__file__).resolve().parent / "results" if device.type == "cuda" else Path(tempfile.mkdtemp())
    path = results / f"decode_{name}{'_compile' if args.compile else ''}{'_' + args.tag if args.tag else ''}.json"
    import transformers
    import triton

    result = dict(gpu=gpu, command="python " + " ".join(sys.argv), torch=torch.__version__,
                  transformers=transformers.__version__, triton=triton.__version__,
                  shape=SHAPES[args.shape], group_size=GROUP_SIZE, attention=args.attention, copy_bandwidth_bytes_per_s=bandwidth,
                  rows=[], checks={})  # fmt: skip

    def record(row: Row) -> None:
        print_row(row)
        result["rows"].append(asdict(row))
        kb.write_result(path, result, args.out)

    print(f"{'model':<17}{'kernel':<7}{'batch':>6}{'TTFT ms':>10}{'ms/step':>10}{'tokens/s':>11}{'peak GiB':>9}"
          f"{'graph':>8}{'floor ms':>9}{'floor %':>8}{'warm s':>8}", flush=True)  # fmt: skip
    model = build_model(args.shape, device)
    if args.attention == "kernel":
        assert use_decode_attention(model), "the model did not take the decode attention"
    record(measure(model, "fp16-unfused", "cublas", 1, args, bandwidth, use_graphs)[0])
    fuse_linears(model)

    def measure_batches(label: str, kernel: str) -> dict[int, Row]:
        """Every batch size's row, then the graph-vs-eager check at batch 1, for the model as it is now."""
        rows = {}
        for batch in batches:
            rows[batch], _ = measure(model, label, kernel, batch, args, bandwidth, use_graphs)
            record(rows[batch])
        result["checks"][f"{label}_graph_vs_eager"] = graph_checks(model, args.prompt, args.compile)
        print(f"{label} graph vs eager: {result['checks'][f'{label}_graph_vs_eager']}", flush=True)
        return rows

    fp16_rows = measure_batches("fp16", "cublas")
    result["checks"]["fp16_generate_batch1"] = generate_check(model, args.prompt, GENERATE_TOKENS, args.compile)
    print(f"fp16 generate() at batch 1: {result['checks']['fp16_generate_batch1']}", flush=True)

    seconds = quantize_in_place(model)
    n_layers = sum(isinstance(m, WQLinear) for m in model.modules())
    result["quantize_seconds"], result["w4_layers"] = seconds, n_layers
    print(f"quantized {n_layers} (fused) linears to W4 g{GROUP_SIZE} in {seconds:.1f} s", flush=True)
    result["w4_fused_decoder_layers"] = fuse_decoder_layers(model) if args.fused_layers else 0
    w4_rows = measure_batches("w4", "auto")
    unfuse_decoder_layers(model)  # the kernels alone, in the model's own layers
    for kernel in ("gemv", "gemm") if device.type == "cuda" else ():  # single-query latency at M = 1
        set_kernel(model, kernel)
        record(measure(model, "w4-own-layers", kernel, 1, args, bandwidth, use_graphs)[0])
    set_kernel(model, "auto")
    if args.fused_layers:
        fuse_decoder_layers(model)

    result["checks"]["w4_generate_batch1"] = generate_check(model, args.prompt, GENERATE_TOKENS, args.compile)
    print(f"generate() at batch 1: {result['checks']['w4_generate_batch1']}", flush=True)

    speedups = {b: w4_rows[b].decode_tokens_per_s / fp16_rows[b].decode_tokens_per_s for b in batches}
    result["w4_over_fp16_decode_tokens_per_s"] = speedups
    unfused = result["rows"][0]["decode_tokens_per_s"]
    result["w4_over_fp16_unfused_batch1"] = w4_rows[batches[0]].decode_tokens_per_s / unfused
    checks = result["checks"]
    fp16_generate = checks["fp16_generate_batch1"]["logits_relative_difference_to_full_forward"]
    fp16_graph = checks["fp16_graph_vs_eager"]["logits_relative_difference"]
    result["w4_generate_bound"] = max(LOGITS_RTOL, NOISE_FACTOR * fp16_generate)
    result["w4_graph_bound"] = max(LOGITS_RTOL, NOISE_FACTOR * fp16_graph) if args.compile else LOGITS_RTOL
    result["passed"] = bool(
        (checks["fp16_graph_vs_eager"]["graph_tokens_equal_eager"] or (args.compile and fp16_graph < LOGITS_RTOL))
        and checks["w4_graph_vs_eager"]["logits_relative_difference"] < result["w4_graph_bound"]
        and checks["w4_generate_batch1"]["logits_relative_difference_to_full_forward"] < result["w4_generate_bound"]
    )  # fmt: skip
    kb.write_result(path, result, args.out)
    print("W4 / fp16 decode tokens/s: " + ", ".join(f"batch {b}: {s:.2f}x" for b, s in speedups.items()))
    print(f"{'PASSED' if result['passed'] else 'FAILED'} checks -> {path}")
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
