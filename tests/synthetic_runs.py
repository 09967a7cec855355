"""Run directories with synthetic per-layer metrics, shaped like real ones: for dashboard tests of
model sizes that the CPU cannot quantize in a test (32 and 80 blocks)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from awq_core.config import QuantConfig
from flows.records import LAYERS_FILE, MANIFEST_FILE, REPORT_FILE, RUN_FILE, RunSettings

LINEARS = {  # linear type -> (typical RTN error, typical input max/mean): down_proj's inputs are the most skewed
    "q_proj": (2e-3, 12.0), "k_proj": (2e-3, 12.0), "v_proj": (3e-3, 12.0), "o_proj": (4e-3, 4.0),
    "gate_proj": (2.5e-3, 9.0), "up_proj": (2.5e-3, 9.0), "down_proj": (6e-3, 40.0),
}  # fmt: skip


def synthetic_layers(n_blocks: int, method: str = "awq", seed: int = 0, prefix: str = "model.layers") -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for block in range(n_blocks):
        depth = 1 + 2 * block / max(1, n_blocks - 1)  # later blocks lose more
        for name, (rtn, spread) in LINEARS.items():
            rtn_error = rtn * depth * rng.lognormvariate(0, 0.4)
            gain = {"awq": rng.uniform(1.2, 2.5), "rtn": 1.0, "gptq": rng.uniform(1.5, 3.0)}[method]
            row = {
                "name": f"{prefix}.{block}.{'self_attn' if name[0] in 'qkvo' else 'mlp'}.{name}", "block": block,
                "rtn_error": rtn_error, "final_error": rtn_error / gain, "seconds": rng.uniform(0.05, 0.3),
                "input_max_over_mean": spread * rng.lognormvariate(0, 0.5), "input_outlier_share": rng.uniform(0, 0.02),
                "rtn_weight_error": rtn_error * 0.8, "weight_error": rtn_error * 0.8 / gain ** 0.5,
            }  # fmt: skip
            if method == "awq":
                row.update(scale_ratio=rng.choice([0.3, 0.45, 0.5, 0.6]), scale_mean=1.0,
                           scale_max_over_mean=rng.uniform(2, 20), scale_outlier_share=rng.uniform(0, 0.01))  # fmt: skip
                if name not in ("q_proj", "k_proj"):
                    row.update(clip_ratio_mean=rng.uniform(0.9, 1.0), clip_ratio_min=0.6, clip_share=rng.uniform(0.1, 0.5))
            if method == "gptq":
                row.update(damp=0.01, gptq_loss=rtn_error * 50)
            rows.append(row)
    return rows


def write_synthetic_run(run_dir: Path, n_blocks: int, method: str = "awq", model: str = "synthetic/llama-like",
                        seed: int = 0, layers: list[dict] | None = None, complete: bool = True) -> Path:  # fmt: skip
    """A run directory as the flow leaves it (run.json, manifest.json, layers.jsonl, report.json)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = RunSettings(model=model, out=str(run_dir / "out"), config=QuantConfig(group_size=128)).model_dump(mode="json")
    settings["config"]["method"] = method  # written raw: a method this version may not know (gptq) still loads
    (run_dir / RUN_FILE).write_text(json.dumps(settings))
    layers = synthetic_layers(n_blocks, method, seed) if layers is None else layers
    (run_dir / LAYERS_FILE).write_text("".join(json.dumps(row) + "\n" for row in layers))
    (run_dir / MANIFEST_FILE).write_text(json.dumps({"blocks_total": n_blocks, "blocks_done": n_blocks if complete else 1,
                                                     "complete": complete, "checkpoints": []}))  # fmt: skip
    if complete:
        report = {"model": model, "method": method, "w_bit": 4, "group_size": 128, "size_bytes": 3.9e9, "float_bytes": 13.5e9,
                  "perplexity": {"builtin:heldout-reference": 6.1 + 0.1 * seed}, "float_perplexity": {"builtin:heldout-reference": 5.9},
                  "seconds": 1234.5, "n_layers": len(layers), "stages": {}}  # fmt: skip
        (run_dir / REPORT_FILE).write_text(json.dumps(report))
    return run_dir
