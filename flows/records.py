"""A run directory's records: its settings, the manifest of checkpoints, per-layer metrics, the report.

    <run_dir>/run.json        what was asked for (RunSettings): `awqflow resume` re-reads it
    <run_dir>/manifest.json   every checkpoint the run uses: path, digest, stage, block; and progress
    <run_dir>/layers.jsonl    one line of metrics per quantized linear
    <run_dir>/report.json     perplexity, sizes, times, cache hits: written when the run completes
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pydantic import BaseModel

from awq_core.config import QuantConfig
from awq_core.evaluate import DEFAULT_EVAL_TEXTS
from tasks.checkpoints import StageOutput, text_digest

RUN_FILE, MANIFEST_FILE, LAYERS_FILE, REPORT_FILE = "run.json", "manifest.json", "layers.jsonl", "report.json"
DEFAULT_RUNS_ROOT = "runs"
BLOCK_DONE_STAGES = ("fuse", "gptq")  # the last per-block stage of AWQ/RTN and of GPTQ


class RunSettings(BaseModel):
    model: str
    out: str
    config: QuantConfig = QuantConfig()
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    device: str = "cpu"
    batch_size: int = 8
    eval_texts: list[str] = list(DEFAULT_EVAL_TEXTS)
    eval_window: int | None = None
    eval_windows: int | None = None
    cache_dir: str | None = None  # Prefect's result records (the cache); None: <runs root>/.cache


def model_slug(model: str) -> str:
    """`smollm2-135m`, `org-name` for a hub id, the directory or file name for a local path."""
    path = Path(model)
    name = path.stem if path.suffix == ".gguf" else path.name if path.is_dir() else model
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def default_run_dir(settings: RunSettings, root: str = DEFAULT_RUNS_ROOT) -> Path:
    """`<root>/<model-slug>-<digest of the settings that change the checkpoint>`."""
    what = {"config": settings.config.model_dump(mode="json"), "revision": settings.revision, "dtype": settings.dtype}
    return Path(root) / f"{model_slug(settings.model)}-{text_digest(json.dumps(what, sort_keys=True))[:10]}"


def cache_dir_of(settings: RunSettings, run_dir: Path) -> Path:
    return Path(settings.cache_dir) if settings.cache_dir else Path(run_dir).resolve().parent / ".cache"


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RunRecords:
    def __init__(self, run_dir: str | Path, settings: RunSettings):
        self.dir, self.settings = Path(run_dir), settings
        self.entries: dict[str, dict] = {}  # by "<stage>/<block>/<file>"
        self.progress = {"blocks_total": None, "blocks_done": 0, "complete": False}

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / RUN_FILE, self.settings.model_dump(mode="json"))
        (self.dir / LAYERS_FILE).write_text("")
        (self.dir / REPORT_FILE).unlink(missing_ok=True)

    def blocks(self, total: int) -> None:
        self.progress["blocks_total"] = total
        self.write_manifest()

    def add(self, output: StageOutput) -> None:
        for name, checkpoint in output.files.items():
            self.entries[f"{output.stage}/{output.block}/{name}"] = {
                "path": checkpoint.path, "digest": checkpoint.digest, "stage": output.stage, "block": output.block, "file": name,
            }  # fmt: skip
        if output.stage in BLOCK_DONE_STAGES:
            self.progress["blocks_done"] += 1
        self.write_manifest()

    def write_manifest(self) -> None:
        write_json_atomic(self.dir / MANIFEST_FILE, {**self.progress, "checkpoints": list(self.entries.values())})

    def append_layers(self, metrics: list[dict]) -> None:
        with open(self.dir / LAYERS_FILE, "a") as f:
            for row in metrics:
                f.write(json.dumps(row) + "\n")

    def finish(self, report: dict) -> None:
        self.progress["complete"] = True
        self.write_manifest()
        write_json_atomic(self.dir / REPORT_FILE, report)


def read_settings(run_dir: str | Path) -> RunSettings:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not an awqflow run directory")
    return RunSettings.model_validate_json(path.read_text())


def run_state(run_dir: Path) -> str:
    """"complete", "<done>/<total> blocks" or "started"."""
    manifest = run_dir / MANIFEST_FILE
    if not manifest.is_file():
        return "started"
    data = json.loads(manifest.read_text())
    if data.get("complete"):
        return "complete"
    total = data.get("blocks_total")
    return f"{data.get('blocks_done', 0)}/{total} blocks" if total else "started"


def list_runs(root: str | Path = DEFAULT_RUNS_ROOT) -> list[tuple[Path, str]]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [(d, run_state(d)) for d in sorted(root.iterdir()) if (d / RUN_FILE).is_file()]
