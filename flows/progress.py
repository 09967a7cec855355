"""Progress of a run: one bar per per-block stage, each advancing as blocks finish (cached or computed),
and a progress artifact in the Prefect UI: the percent of the run's stages done."""
from __future__ import annotations

import time
from collections import Counter

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm.auto import tqdm

BLOCK_STAGES = ("capture", "scales", "clip", "fuse")
GPTQ_BLOCK_STAGES = ("gptq",)
RUN_STAGES = ("load", "pack", "validate")  # once a run
PROGRESS_KEY = "awqflow-progress"


class Progress:
    def __init__(self, enabled: bool = True, artifact: bool = False):
        self.enabled, self.artifact = enabled, artifact  # tqdm bars; the Prefect artifact (inside a flow run only)
        self.artifact_id = None
        self.steps, self.total_steps = 0, None
        self.bars: dict[str, tqdm] = {}
        self.cached: Counter = Counter()
        self.computed: Counter = Counter()
        self.seconds: Counter = Counter()

    def blocks(self, total: int, stages: tuple[str, ...] = BLOCK_STAGES) -> None:
        for position, stage in enumerate(stages):
            self.bars[stage] = tqdm(total=total, desc=f"{stage:>8}", unit="block", position=position, disable=not self.enabled, leave=True)
        self.total_steps = len(stages) * total + len(RUN_STAGES)
        if self.artifact:
            self.artifact_id = create_progress_artifact(self.percent(), key=PROGRESS_KEY, description="stages done, cached ones included")

    def percent(self) -> float:
        return 100.0 * min(self.steps, self.total_steps) / self.total_steps if self.total_steps else 0.0

    def done(self, stage: str, cached: bool, seconds: float) -> None:
        self.steps += 1
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, self.percent())
        (self.cached if cached else self.computed)[stage] += 1
        self.seconds[stage] += seconds
        if stage in self.bars:
            self.bars[stage].update(1)
            self.bars[stage].set_postfix(cached=self.cached[stage], refresh=False)
        elif self.enabled:
            tqdm.write(f"{stage:>8}: {'cached' if cached else f'{seconds:.1f} s'}")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def summary(self) -> dict:
        stages = sorted(set(self.cached) | set(self.computed))
        return {s: {"cached": self.cached[s], "computed": self.computed[s], "seconds": round(self.seconds[s], 3)} for s in stages}


def timed():
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
