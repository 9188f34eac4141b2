"""A training run's scalars (JSON lines, one object per step or evaluation) and the curves drawn from them."""

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..utils.extras import require

if TYPE_CHECKING:
    import accelerate

logger = logging.getLogger(__name__)

SCALARS_FILE = "scalars.jsonl"
CURVES_FILE = "curves.png"

# Training losses are drawn raw and as a moving average over this many steps.
SMOOTHING_STEPS = 25


class ScalarLog:
    """The run's scalars as JSON lines in `<output_dir>/scalars.jsonl` (one object per step or evaluation, with
    its `step`), written by the main process beside the configured tracker: readable without a tracker, and the
    source of `curves.png`. On resume, entries after the resumed step (and a line cut by a kill) are dropped, so the
    file equals an uninterrupted run's."""

    def __init__(self, output_dir: Path, resumed_step: int, enabled: bool):
        self.path = output_dir / SCALARS_FILE
        self.enabled = enabled
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_step and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("step", math.inf) <= resumed_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def log(self, accelerator: "accelerate.Accelerator", values: dict[str, float], step: int) -> None:
        accelerator.log(values, step=step)
        if self.enabled:
            with open(self.path, "a") as file:
                file.write(json.dumps({"step": step, **values}) + "\n")


def read_scalars(path: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """`{name: (steps, values)}` from a `scalars.jsonl` file, in step order; a later entry for the same step and name
    (a re-evaluation after BatchNorm recomputation) replaces the earlier one. A truncated last line (a run killed
    while writing it) is left out with a warning; a bad line elsewhere is an error that names it."""
    series: dict[str, dict[int, float]] = {}
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            step = entry.pop("step")
            values = {name: float(value) for name, value in entry.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            if number == len(lines):
                logger.warning("%s: left out its truncated last line %d (%s).", path, number, error)
                break
            raise ValueError(f"{path}, line {number}: not a scalars entry ({error}): {line[:80]!r}") from None
        for name, value in values.items():
            series.setdefault(name, {})[step] = value
    return {name: (sorted(values), [values[s] for s in sorted(values)]) for name, values in series.items()}


def _moving_average(values: list[float], window: int) -> np.ndarray:
    cumulative = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(len(values)) + 1 - counts]) / counts


def plot_training_curves(scalars_path: str | os.PathLike, output_path: str | os.PathLike | None = None) -> Path:
    """
    Draw a run's curves from its `scalars.jsonl` to a PNG (default: `curves.png` beside it): the training loss and
    its terms (raw and smoothed), the learning rate, and the evaluation metrics if the run evaluated. Returns the path.
    """
    figure_module = require("matplotlib.figure", "train", "Drawing training curves")
    scalars_path = Path(scalars_path)
    if scalars_path.is_dir():
        scalars_path = scalars_path / SCALARS_FILE
    if not scalars_path.is_file():
        raise FileNotFoundError(f"No {SCALARS_FILE} at {scalars_path}: pass a training run folder or its scalars.")
    series = read_scalars(scalars_path)
    if "train/loss" not in series:
        raise ValueError(f"{scalars_path} holds no training step (no train/loss entry).")
    losses = [name for name in series if name.startswith("train/loss")]
    metrics = [name for name in series if name.startswith("eval/")]
    panels = [("training loss", losses), ("learning rate", ["train/lr"])]
    if metrics:
        panels.append(("evaluation", metrics))
    # A Figure without pyplot: no global backend or state is touched in the caller's process.
    figure = figure_module.Figure(figsize=(5 * len(panels), 4), layout="constrained")
    for axes, (title, names) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            steps, values = series[name]
            label = name.split("/", 1)[1]
            if title == "training loss":
                line = axes.plot(steps, _moving_average(values, SMOOTHING_STEPS), label=label)[0]
                axes.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
            else:
                axes.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
        if title == "training loss":
            axes.set_yscale("log")
        axes.set(title=title, xlabel="step")
        if len(names) > 1:
            axes.legend(fontsize="small")
    output_path = Path(output_path) if output_path is not None else scalars_path.with_name(CURVES_FILE)
    figure.savefig(output_path, dpi=100)
    return output_path
