"""Interleaved timing: every repeat runs each model once, so that ratios compare runs under the same machine load."""

import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from transformers_pem import PEMImageProcessor
from transformers_pem.inference.allocator import tune_glibc_malloc
from transformers_pem.inference.precision import precision_autocast

from .models import Scenario, build_model
from .workloads import (
    TrainingStep,
    confident_outputs,
    end_to_end_processor,
    post_process,
    random_image,
    segment,
    synchronize,
    training_batch,
)

# Keys that identify a setting: entries with equal settings are compared with each other.
SETTING_KEYS = ("height", "width", "num_labels", "batch_size", "precision")


def log(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "values": values}


def setting(scenario: Scenario, batch_size: int, precision: str) -> dict[str, Any]:
    return {
        "height": scenario.height,
        "width": scenario.width,
        "num_labels": scenario.num_labels,
        "batch_size": batch_size,
        "precision": precision,
    }


def _clock(device: torch.device) -> float:
    """`time.perf_counter()` once the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def time_interleaved(
    steps: dict[Any, Callable[[int], Any]], device: torch.device, repeats: int, warmup: int, label: str
) -> dict[Any, list[float]]:
    """The benchmark's timing loop: `warmup` untimed rounds, then `repeats` timed ones; every round runs each step
    once, in order (`step(repeat)`, the round's index, negative in warm-up), so that the steps of different models
    run under the same machine load. Returns each step's times of the timed rounds."""
    times = {key: [] for key in steps}
    for repeat in range(-warmup, repeats):
        log(f"{label}: " + ("warm-up" if repeat < 0 else f"run {repeat + 1}/{repeats}"))
        for key, step in steps.items():
            start = _clock(device)
            step(repeat)
            elapsed = _clock(device) - start
            if repeat >= 0:
                times[key].append(elapsed)
    return times


def time_inference(
    models: dict[str, nn.Module],
    processors: dict[str, Any] | None,
    scenario: Scenario,
    batch_size: int,
    precision: str,
    device: torch.device,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
    baselines: dict[str, str] | None = None,
    references: dict[str, nn.Module] | None = None,
) -> list[dict[str, Any]]:
    """Interleaved inference: each repeat runs every model once. The post-processing (skipped if `processors` is None)
    is timed apart on the same outputs; the time with post-processing is the sum of both. A model with a baseline
    (`baselines[name]`, among `models` or `references`: models run once, untimed, on the last input) is compared with
    it on the last run's outputs: the largest |output - baseline| / max(1, |baseline|) over the class and mask
    logits."""
    references = references or {}
    available = set(models) | set(references)
    baselines = {name: base for name, base in (baselines or {}).items() if name in models and base in available}
    compared = set(baselines) | set(baselines.values())
    pixel_values = torch.randn(batch_size, 3, scenario.height, scenario.width, generator=generator).to(device)
    held, last_outputs = {}, {}

    def run_forward(name: str, repeat: int) -> None:
        with torch.inference_mode(), precision_autocast(device, precision):
            held[name] = models[name](pixel_values=pixel_values)

    def run_post_processing(name: str, repeat: int) -> None:
        outputs = held.pop(name)
        if processors is not None:
            with torch.inference_mode(), precision_autocast(device, precision):
                post_process(processors[name], outputs, scenario.height, scenario.width)
        if name in compared and repeat == repeats - 1:
            last_outputs[name] = (outputs.class_queries_logits, outputs.masks_queries_logits)

    steps = {}
    for name in models:
        steps[name, "forward"] = partial(run_forward, name)
        steps[name, "post_processing"] = partial(run_post_processing, name)
    times = time_interleaved(steps, device, repeats, warmup, f"inference {scenario} {precision}")
    for name in compared - set(models):
        with torch.inference_mode(), precision_autocast(device, precision):
            outputs = references[name](pixel_values=pixel_values)
        last_outputs[name] = (outputs.class_queries_logits, outputs.masks_queries_logits)
    forward_times = {name: times[name, "forward"] for name in models}
    post_processing_times = {name: times[name, "post_processing"] for name in models}
    results = []
    for name in models:
        forward = _summary(forward_times[name])
        entry = {"model": name, **setting(scenario, batch_size, precision)}
        entry.update(forward_s=forward, forward_images_per_s=batch_size / forward["median"])
        entry.update(with_post_processing_s=None, with_post_processing_images_per_s=None)
        entry["max_relative_difference"] = None
        if name in baselines:
            entry["max_relative_difference"] = max(
                ((output.float() - reference.float()).abs() / reference.float().abs().clamp(min=1)).max().item()
                for output, reference in zip(last_outputs[name], last_outputs[baselines[name]])
            )
        if processors is not None:
            total = _summary([a + b for a, b in zip(forward_times[name], post_processing_times[name])])
            entry.update(with_post_processing_s=total, with_post_processing_images_per_s=batch_size / total["median"])
        results.append(entry)
    return results


# Post-processing tasks timed on `confident_outputs`, and the batch sizes of the throughput measurement.
POST_PROCESSING_TASKS = ("semantic", "panoptic", "instance")


THROUGHPUT_BATCH_SIZES = (1, 4, 8)


# Larger inputs are not measured in batches (batch 8 at 1024x2048 takes minutes per run on a CPU).
MAX_THROUGHPUT_PIXELS = 512 * 1024


def measure_throughput(
    model_class: type[nn.Module],
    config: PreTrainedConfig,
    processor: PEMImageProcessor,
    scenario: Scenario,
    device: str,
    repeats: int,
    warmup: int,
    threads: int | None,
    seed: int = 0,
    tune_malloc: bool = False,
) -> dict[str, float]:
    """Images/s (median of `repeats` runs after `warmup`) of processor + model + semantic post-processing on batches
    of `THROUGHPUT_BATCH_SIZES` images of the scenario's size, by batch size. `run_benchmark` calls it in a fresh
    process on CPU: large batches leave the allocator holding their peak, and a process holding every benchmarked
    model would run out of memory. `tune_malloc`: apply `tune_glibc_malloc()` there, as in the calling process."""
    if tune_malloc:
        tune_glibc_malloc()
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device)
    model = build_model(model_class, config, device, seed)
    processor = end_to_end_processor(processor)
    generator = torch.Generator().manual_seed(seed)
    images = [random_image(scenario, generator) for _ in range(max(THROUGHPUT_BATCH_SIZES))]

    def run(batch: int, repeat: int) -> None:
        with torch.inference_mode():
            segment(model, processor, images[:batch], device)

    steps = {batch: partial(run, batch) for batch in THROUGHPUT_BATCH_SIZES}
    times = time_interleaved(steps, device, repeats, warmup, f"throughput {scenario}")
    return {str(batch): batch / statistics.median(values) for batch, values in times.items()}


def measure_throughput_isolated(device: torch.device, **kwargs) -> dict[str, float]:
    if device.type == "cuda":
        return measure_throughput(device=str(device), **kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
        return executor.submit(measure_throughput, device=str(device), **kwargs).result()


def time_end_to_end(
    models: dict[str, nn.Module],
    processors: dict[str, PEMImageProcessor],
    scenario: Scenario,
    device: torch.device,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
    seed: int,
) -> list[dict[str, Any]]:
    """Image in, segments out, interleaved across models, each step timed apart on one PIL image: the processor, the
    forward pass, the three post-processings on outputs shaped like a trained model's (`confident_outputs`: random
    weights give flat masks that keep nothing), the processor + model + semantic post-processing called by hand, and
    the `image-segmentation` pipeline (semantic) doing the same."""
    from transformers import pipeline

    image = random_image(scenario, generator)
    size = (scenario.height, scenario.width)
    processors = {name: end_to_end_processor(processors[name]) for name in models}
    pipes = {
        name: pipeline("image-segmentation", model=model, image_processor=processors[name], device=device)
        for name, model in models.items()
    }
    confident = {}
    for name, model in models.items():
        config = model.config
        outputs = confident_outputs(1, config.num_queries, config.num_labels, (size[0] // 4, size[1] // 4), seed)
        confident[name] = SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits.to(device),
            masks_queries_logits=outputs.masks_queries_logits.to(device),
        )

    inputs = {name: processors[name](images=[image], return_tensors="pt").to(device) for name in models}
    steps: dict[str, Callable[[str], Any]] = {
        "preprocess_s": lambda name: processors[name](images=[image], return_tensors="pt"),
        "forward_s": lambda name: models[name](**inputs[name]),
        **{
            f"{task}_post_processing_s": (
                lambda name, task=task: getattr(processors[name], f"post_process_{task}_segmentation")(
                    confident[name], target_sizes=[size]
                )
            )
            for task in POST_PROCESSING_TASKS
        },
        "by_hand_s": lambda name: segment(models[name], processors[name], [image], device),
        "pipeline_s": lambda name: pipes[name](image, subtask="semantic"),
    }

    def run(step: Callable[[str], Any], name: str, repeat: int) -> None:
        with torch.inference_mode():
            step(name)

    timed = {(name, key): partial(run, step, name) for name in models for key, step in steps.items()}
    measured = time_interleaved(timed, device, repeats, warmup, f"end to end {scenario}")
    times = {name: {key: measured[name, key] for key in steps} for name in models}
    results = []
    for name in models:
        entry = {"model": name, **setting(scenario, 1, "fp32")}
        entry.update({key: _summary(values) for key, values in times[name].items()})
        forward = entry["forward_s"]["median"]
        entry["post_processing_over_forward"] = {
            task: entry[f"{task}_post_processing_s"]["median"] / forward for task in POST_PROCESSING_TASKS
        }
        entry["pipeline_over_by_hand"] = entry["pipeline_s"]["median"] / entry["by_hand_s"]["median"]
        results.append(entry)
    return results


def time_training(
    models: dict[str, nn.Module],
    scenario: Scenario,
    batch_size: int,
    precision: str,
    device: torch.device,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
) -> list[dict[str, Any]]:
    """Interleaved training steps of every model on the same synthetic batch. The models are trained (and changed)."""
    batch = training_batch(scenario, batch_size, device, generator)
    steps = {name: TrainingStep(model, batch, precision) for name, model in models.items()}
    step_times = time_interleaved(
        {name: lambda repeat, step=step: step() for name, step in steps.items()},
        device,
        repeats,
        warmup,
        f"training {scenario} {precision}",
    )
    results = []
    for name in models:
        step = _summary(step_times[name])
        entry = {"model": name, **setting(scenario, batch_size, precision), "step_s": step}
        entry.update(steps_per_s=1 / step["median"], images_per_s=batch_size / step["median"])
        results.append(entry)
    return results


def add_speedups(entries: list[dict[str, Any]], time_keys: tuple[str, ...], reference: str) -> None:
    """Set `speedup_vs_reference[key]`: the median time of the reference model divided by the entry's median time, in
    the same setting (None without a reference entry)."""
    references = {tuple(e[k] for k in SETTING_KEYS): e for e in entries if e["model"] == reference}
    for entry in entries:
        reference_entry = references.get(tuple(entry[k] for k in SETTING_KEYS), {})
        entry["speedup_vs_reference"] = {
            key: reference_entry[key]["median"] / entry[key]["median"]
            if entry[key] is not None and reference_entry.get(key) is not None
            else None
            for key in time_keys
        }
