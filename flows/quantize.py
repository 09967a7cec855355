"""The quantization pipeline as one Prefect flow of cached tasks:

    AWQ / RTN:  load -> per block [capture -> scales -> clip -> fuse] -> pack -> validate
    GPTQ:       load -> per block [gptq (Hessians, GPTQ, quantized output)] -> pack -> validate

Every task writes its tensors under the run directory and returns paths and digests; its cache key
is what determines its output (see tasks/checkpoints.py), so re-running the same command resumes:
finished tasks come back from the cache (their files re-checked against their digests), the rest
compute. Block i+1 always reads block i's output from its checkpoint file, so a resumed run computes
exactly what an uninterrupted one does.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from awq_core.checkpoint import _publish  # atomic per-file moves, config.json last
from flows.dashboard.report import REPORT_HTML, write_report  # the run's page, next to its records
from flows.progress import BLOCK_STAGES, GPTQ_BLOCK_STAGES, Progress, timed
from flows.records import LAYERS_FILE, RunRecords, RunSettings, cache_dir_of, default_run_dir
from tasks.capture import capture
from tasks.checkpoints import StageOutput
from tasks.clip import clip
from tasks.fuse import fuse
from tasks.gptq import gptq
from tasks.load import load
from tasks.model_ref import model_ref
from tasks.pack import pack
from tasks.scales import scales
from tasks.validate import validate

SEED = 0


class StageRunner:
    """Runs one task, re-runs it when a cached result's files are missing or changed, records it."""

    def __init__(self, records: RunRecords, progress: Progress):
        self.records, self.progress = records, progress

    def __call__(self, stage_task, **params) -> StageOutput:
        elapsed = timed()
        state = stage_task(**params, return_state=True)
        output: StageOutput = state.result()
        cached = state.name == "Cached"
        if cached and not output.is_valid():  # a checkpoint was deleted or changed on disk: never trust it
            output = stage_task.with_options(refresh_cache=True)(**params)
            cached = False
        self.records.add(output)
        self.progress.done(output.stage, cached, elapsed())
        return output


def publish(checkpoint: StageOutput, records: RunRecords, out: Path) -> None:
    """Copy the checkpoint and the run's records into `out`, each file replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-publish-", dir=out))
    try:
        for name, file in checkpoint.files.items():
            shutil.copyfile(file.path, staging / name)
        shutil.copyfile(records.dir / LAYERS_FILE, staging / "awqflow_layers.jsonl")
        (staging / "awqflow_config.json").write_text(records.settings.config.to_json())
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The per-layer table in the Prefect UI; keys a method does not record are left empty.
ARTIFACT_COLUMNS = ("name", "rtn_error", "final_error", "weight_error", "scale_ratio", "scale_max_over_mean",
                    "input_max_over_mean", "clip_ratio_mean", "damp", "seconds")  # fmt: skip


def publish_artifacts(layers: list[dict], report: dict, page: Path) -> None:
    rows = [{k: layer.get(k) for k in ARTIFACT_COLUMNS} for layer in layers]
    create_table_artifact(rows, key="awqflow-layer-errors", description="per-layer relative output error: RTN vs final")
    fp = report.get("float_perplexity") or {}
    ppl = "\n".join(f"| {text} | {value:.3f} | {fp[text]:.3f} |" if text in fp else f"| {text} | {value:.3f} | |"
                    for text, value in report["perplexity"].items())  # fmt: skip
    stages = "\n".join(f"| {s} | {v['computed']} | {v['cached']} | {v['seconds']:.1f} |" for s, v in report["stages"].items())
    create_markdown_artifact(
        f"# awqflow: {report['model']}\n\ncheckpoint `{report['out']}`, {report['size_bytes'] / 1e6:.1f} MB "
        f"(float16 {report['float_bytes'] / 1e6:.1f} MB), {report['seconds']:.1f} s\n\n"
        f"| text | perplexity | float |\n|---|---|---|\n{ppl}\n\n| stage | computed | cached | seconds |\n|---|---|---|---|\n{stages}\n\n"
        f"Per-layer errors: [{page.name}]({page.resolve().as_uri()}) (`{page}`), or `awqflow dashboard {report['run_dir']}`\n",
        key="awqflow-summary",
    )


def awq_block(run: StageRunner, common: dict, index: int, config, hidden, calibration, batch_size: int):
    """capture -> scales -> clip -> fuse for one block; returns the fuse output and the next block's input."""
    captured = run(capture, **common, index=index, block_input=hidden, calibration=calibration, batch_size=batch_size)
    inputs = dict(**common, index=index, config=config, capture=captured.files["capture"])
    found = run(scales, **inputs, block_input=hidden, calibration=calibration, batch_size=batch_size)
    clips = run(clip, **inputs, scales=found.files["scales"])
    done = run(fuse, **inputs, block_input=hidden, calibration=calibration, scales=found.files["scales"],
               clips=clips.files["clips"], batch_size=batch_size)  # fmt: skip
    return done, done.files["output"] if config.sequential_quantized_inputs else captured.files["output"]


@flow(name="awq-quantize", log_prints=False)
def quantize_flow(settings: RunSettings, run_dir: str, progress_bars: bool = True, float_perplexity: dict | None = None) -> dict:
    start = time.perf_counter()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True, warn_only=True)
    records = RunRecords(run_dir, settings)
    records.start()
    progress = Progress(progress_bars, artifact=True)
    run = StageRunner(records, progress)
    config, device, batch_size = settings.config, settings.device, settings.batch_size
    ref = model_ref(settings.model, settings.revision, settings.dtype, settings.trust_remote_code)

    loaded = run(load, ref=ref, run_dir=run_dir, config=config, batch_size=batch_size)
    calibration, hidden = loaded.files["calibration"], loaded.files["block_input"]
    n_blocks = loaded.info["n_blocks"]
    records.blocks(n_blocks)
    progress.blocks(n_blocks, GPTQ_BLOCK_STAGES if config.is_gptq else BLOCK_STAGES)
    fused, layers = [], []
    common = dict(ref=ref, run_dir=run_dir, device=device)
    for index in range(n_blocks):
        if config.is_gptq:
            done = run(gptq, **common, index=index, config=config, block_input=hidden, calibration=calibration,
                       batch_size=batch_size)  # fmt: skip
            hidden = done.files["output"]
        else:
            done, hidden = awq_block(run, common, index, config, hidden, calibration, batch_size)
        fused.append(done.files["fused"])
        records.append_layers(done.info["metrics"])
        layers.extend(done.info["metrics"])
    progress.close()

    packed = run(pack, ref=ref, run_dir=run_dir, config=config, fused=fused)
    publish(packed, records, Path(settings.out))
    checked = run(validate, checkpoint=packed.files, texts=settings.eval_texts, window=settings.eval_window,
                  max_windows=settings.eval_windows)  # fmt: skip
    report = {
        "model": settings.model, "run_dir": str(run_dir), "out": settings.out, "method": config.method.value,
        "w_bit": config.w_bit, "group_size": config.group_size, **checked.info,
        "float_bytes": loaded.info["float_bytes"], "n_layers": len(layers),
        "seconds": time.perf_counter() - start, "stages": progress.summary(),
    }  # fmt: skip
    if float_perplexity:  # measured by the caller (--compare): the page shows fp vs quantized
        report["float_perplexity"] = float_perplexity
    records.finish(report)
    page = Path(run_dir) / REPORT_HTML
    try:
        write_report([run_dir], page)
    except Exception as e:  # the checkpoint is published: a page that fails to render must not fail the run
        get_run_logger().warning(f"could not write {page}: {type(e).__name__}: {e}; `awqflow report {run_dir}` retries")
    publish_artifacts(layers, report, page)
    return report


def run_quantize(settings: RunSettings, run_dir: str | Path | None = None, progress_bars: bool = True,
                 float_perplexity: dict | None = None) -> dict:  # fmt: skip
    """Run (or resume) the flow; the cache of task results lives on disk next to the run directories."""
    run_dir = (Path(run_dir) if run_dir else default_run_dir(settings)).resolve()
    cache = cache_dir_of(settings, run_dir)
    cache.mkdir(parents=True, exist_ok=True)
    flow_ = quantize_flow.with_options(result_storage=cache)
    return flow_(settings=settings, run_dir=str(run_dir), progress_bars=progress_bars, float_perplexity=float_perplexity)
