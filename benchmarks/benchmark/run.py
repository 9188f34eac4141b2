"""`run_benchmark`: every measurement over the models, sizes and precisions, with the machine it ran on."""

import contextlib
import gc
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torchvision
import transformers
from torch import nn

from transformers_pem import PEMForUniversalSegmentation
from transformers_pem.inference.allocator import glibc_malloc_tuned
from transformers_pem.inference.precision import PRECISIONS

from .complexity import count_gmacs, count_parameters
from .memory import measure_peak_memory_isolated
from .models import (
    ONNX_OPTIMIZATIONS,
    OPENVINO_OPTIMIZATIONS,
    OUTSIDE_TORCH,
    REFERENCE_MODEL,
    TRAINING_VARIANTS,
    ModelSpec,
    Scenario,
    build_model,
)
from .timing import (
    MAX_THROUGHPUT_PIXELS,
    SETTING_KEYS,
    THROUGHPUT_BATCH_SIZES,
    add_speedups,
    log,
    measure_throughput_isolated,
    setting,
    time_end_to_end,
    time_inference,
    time_training,
)


def _git_revision() -> str | None:
    """`git describe --always --dirty` of the checkout this module lives in (None outside a git checkout)."""
    try:
        completed = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


# The instruction sets that decide int8 and bf16 speed (machines of one model name differ in them).
_CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _environment(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        lines = cpuinfo.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_features": [feature for feature in _CPU_FEATURES if feature in flags],
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "transformers_pem_revision": _git_revision(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "glibc_malloc_tuned": glibc_malloc_tuned(),
        "malloc_environment": {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")},
    }


def run_benchmark(
    specs: list[ModelSpec],
    sizes: list[Scenario],
    train_sizes: list[Scenario],
    *,
    repeats: int = 5,
    warmup: int = 1,
    batch_size: int = 1,
    train_batch_size: int = 2,
    device: str = "cpu",
    precisions: tuple[str, ...] = ("fp32",),
    post_processing: bool = True,
    end_to_end: bool = True,
    gmacs: bool = True,
    memory: bool = True,
    threads: int | None = None,
    seed: int = 0,
    reference: str = REFERENCE_MODEL,
) -> dict[str, Any]:
    """Run the benchmark; returns the results as a JSON-serialisable dict, which `format_markdown` renders.

    Args:
        specs: the models; speed-ups are relative to the one named `reference` (None if it is not among them).
        sizes: inference input sizes and class counts.
        train_sizes: training crops and class counts (empty: no training measurement).
        repeats, warmup: timed and untimed runs of every model, interleaved across models.
        batch_size, train_batch_size: images per inference run and per training step.
        device: "cpu" or "cuda[:index]".
        precisions: "fp32" and/or "amp" (autocast to float16 on CUDA, bfloat16 on CPU).
        post_processing, gmacs, memory: whether to time the post-processing, count GMACs, measure peak memory.
        end_to_end: whether to time image in -> segments out step by step, the pipeline, and batched throughput.
        threads: `torch.set_num_threads` (default: PyTorch's choice).
        seed: seed of the random weights and inputs.

    On CPU, `memory=True` measures in processes started with multiprocessing's "spawn" method, which re-imports the
    calling script: call `run_benchmark` under `if __name__ == "__main__":` in scripts.
    """
    _check_settings(specs, train_sizes, repeats, warmup, batch_size, train_batch_size, precisions, device, threads)
    torch_device = torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    results = {
        "environment": _environment(torch_device),
        "settings": {
            "models": [spec.name for spec in specs],
            "reference": reference,
            "sizes": [str(size) for size in sizes],
            "train_sizes": [str(size) for size in train_sizes],
            "repeats": repeats,
            "warmup": warmup,
            "batch_size": batch_size,
            "train_batch_size": train_batch_size,
            "precisions": list(precisions),
            "post_processing": "semantic" if post_processing else None,
            "seed": seed,
            "memory_method": None,
        },
        "parameters": [],
        "complexity": [],
        "inference": [],
        "retimed": [],
        "end_to_end": [],
        "training": [],
        "memory": [],
    }
    run = _Run(specs, torch_device, repeats, warmup, precisions, seed, torch.Generator().manual_seed(seed), results)
    # Models are built once per class count and shared by all settings with that count.
    for num_labels in dict.fromkeys(scenario.num_labels for scenario in [*sizes, *train_sizes]):
        group_sizes = [scenario for scenario in sizes if scenario.num_labels == num_labels]
        group_train_sizes = [scenario for scenario in train_sizes if scenario.num_labels == num_labels]
        configs = {spec.name: spec.make_config(num_labels) for spec in specs}
        processors = {spec.name: spec.make_processor(num_labels) for spec in specs}
        models = {
            spec.name: build_model(spec.model_class, configs[spec.name], torch_device, seed, spec.optimization)
            for spec in specs
        }
        for name, model in models.items():
            if name not in run.outside_torch | run.training_only:
                results["parameters"].append({"model": name, "num_labels": num_labels, **count_parameters(model)})
        for scenario in group_sizes:
            if gmacs:
                run.count_gmacs(models, processors, scenario)
            run.time_inference(models, processors if post_processing else None, scenario, batch_size)
            if end_to_end:
                run.time_end_to_end(models, configs, processors, scenario)
        trainable = {spec.name: models[spec.name] for spec in specs if spec.optimization in (None, *TRAINING_VARIANTS)}
        for scenario in group_train_sizes:
            for precision in precisions:
                results["training"] += time_training(
                    trainable, scenario, train_batch_size, precision, torch_device, repeats, warmup, run.generator
                )
        del models, trainable
        gc.collect()
        if memory:
            runs = [("inference", scenario, batch_size) for scenario in group_sizes]
            runs += [("training", scenario, train_batch_size) for scenario in group_train_sizes]
            run.measure_memory(runs, configs, processors, post_processing)

    add_speedups(results["inference"], ("forward_s", "with_post_processing_s"), reference)
    add_speedups(results["training"], ("step_s",), reference)
    add_baseline_ratios(results, {spec.name: spec.baseline for spec in specs if spec.baseline})
    return results


def add_baseline_ratios(results: dict[str, Any], baselines: dict[str, str]) -> None:
    """For the variants of a baseline model, in the baseline's setting of the same run: `speedup_vs_baseline` of
    a training step (baseline median time / the variant's), `peak_vs_baseline` of memory (the variant's peak / the
    baseline's); None for other entries or without the baseline."""
    steps = {(e["model"], *(e[k] for k in SETTING_KEYS)): e["step_s"]["median"] for e in results["training"]}
    for entry in results["training"]:
        baseline = steps.get((baselines.get(entry["model"]), *(entry[k] for k in SETTING_KEYS)))
        entry["speedup_vs_baseline"] = None if baseline is None else baseline / entry["step_s"]["median"]
    peaks = {(e["model"], e["mode"], *(e[k] for k in SETTING_KEYS)): e["peak_mb"] for e in results["memory"]}
    for entry in results["memory"]:
        baseline = peaks.get((baselines.get(entry["model"]), entry["mode"], *(entry[k] for k in SETTING_KEYS)))
        entry["peak_vs_baseline"] = None if baseline is None else entry["peak_mb"] / baseline


def _check_settings(
    specs: list[ModelSpec],
    train_sizes: list[Scenario],
    repeats: int,
    warmup: int,
    batch_size: int,
    train_batch_size: int,
    precisions: tuple[str, ...],
    device: str,
    threads: int | None,
) -> None:
    """Refuse settings `run_benchmark` cannot measure, before any model is built."""
    if not specs:
        raise ValueError("Pass at least one model to benchmark.")
    if repeats < 1 or warmup < 0 or batch_size < 1 or train_batch_size < 1:
        raise ValueError("repeats, batch_size and train_batch_size must be >= 1, warmup >= 0.")
    if warmup < 1 and any(spec.optimization == "compiled" for spec in specs):
        raise ValueError("Compiled models compile in their first run of every size: use warmup >= 1.")
    if train_sizes and train_batch_size < 2 and any(spec.model_class is PEMForUniversalSegmentation for spec in specs):
        raise ValueError(
            "PEM cannot train on one image per batch (BatchNorm on pooled maps): use train_batch_size >= 2."
        )
    if not precisions or not set(precisions) <= set(PRECISIONS):
        raise ValueError(f"precisions must be a non-empty subset of {PRECISIONS}, got {precisions}.")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available: use device='cpu'.")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")


class _Run:
    """The sections of one `run_benchmark` call for the models of one class count; each adds its entries to
    `results`."""

    def __init__(
        self,
        specs: list[ModelSpec],
        device: torch.device,
        repeats: int,
        warmup: int,
        precisions: tuple[str, ...],
        seed: int,
        generator: torch.Generator,
        results: dict[str, Any],
    ):
        self.specs, self.device, self.repeats, self.warmup = specs, device, repeats, warmup
        self.precisions, self.seed, self.generator, self.results = precisions, seed, generator, results
        # Models run outside PyTorch: no parameters, GMACs or memory, fp32 only.
        self.outside_torch = {spec.name for spec in specs if spec.optimization in OUTSIDE_TORCH}
        self.openvino = {spec.name for spec in specs if spec.optimization in OPENVINO_OPTIMIZATIONS}
        self.training_only = {spec.name for spec in specs if spec.optimization in TRAINING_VARIANTS}

    def count_gmacs(self, models: dict[str, nn.Module], processors: dict[str, Any], scenario: Scenario) -> None:
        pixel_values = torch.randn(1, 3, scenario.height, scenario.width, generator=self.generator)
        for spec in self.specs:
            # A compiled model counts as the default one; models outside PyTorch and training variants are not counted.
            if spec.optimization == "compiled" or spec.name in self.outside_torch | self.training_only:
                continue
            log(f"GMACs {spec.name} {scenario}")
            entry = {"model": spec.name, **setting(scenario, 1, "fp32")}
            self.results["complexity"].append(
                entry | count_gmacs(models[spec.name], processors[spec.name], pixel_values.to(self.device))
            )

    def time_inference(
        self, models: dict[str, nn.Module], processors: dict[str, Any] | None, scenario: Scenario, batch_size: int
    ) -> None:
        """Interleaved timing of the models, then of the OpenVINO ones in a phase of their own (their threads spin
        on after each run and would slow whatever runs next), then the first model again: its second time, recorded
        in `retimed`, shows whether the OpenVINO phase left the machine slower."""
        baselines = {spec.name: spec.baseline for spec in self.specs if spec.baseline}
        for precision in self.precisions:
            # Models outside PyTorch are float32: they do not take part in autocast runs.
            # Training variants infer as the plain model.
            timed = {
                n: m
                for n, m in models.items()
                if (precision == "fp32" or n not in self.outside_torch) and n not in self.training_only
            }
            first_phase = {n: m for n, m in timed.items() if n not in self.openvino}
            openvino_phase = {n: m for n, m in timed.items() if n in self.openvino}
            timing = (scenario, batch_size, precision, self.device, self.repeats, self.warmup, self.generator)
            entries = time_inference(first_phase, processors, *timing, baselines) if first_phase else []
            if openvino_phase:
                references = {baselines[n]: models[baselines[n]] for n in openvino_phase if baselines.get(n) in models}
                entries += time_inference(openvino_phase, processors, *timing, baselines, references)
                if first_phase:
                    first = entries[0]
                    (again,) = time_inference({first["model"]: models[first["model"]]}, processors, *timing)
                    self.results["retimed"].append(
                        {"model": first["model"], **setting(scenario, batch_size, precision)}
                        | {"before_s": first["forward_s"], "after_openvino_s": again["forward_s"]}
                    )
            self.results["inference"] += entries

    def time_end_to_end(
        self,
        models: dict[str, nn.Module],
        configs: dict[str, Any],
        processors: dict[str, Any],
        scenario: Scenario,
    ) -> None:
        # The default PEM models: what pipeline and `predict` users run.
        end_to_end_models = {
            spec.name: models[spec.name]
            for spec in self.specs
            # OpenVINO's models are left out: they would run interleaved with the others (see `time_inference`).
            if spec.model_class is PEMForUniversalSegmentation and spec.optimization in (None, *ONNX_OPTIMIZATIONS)
        }
        if not end_to_end_models:
            return
        entries = time_end_to_end(
            end_to_end_models, processors, scenario, self.device, self.repeats, self.warmup, self.generator, self.seed
        )
        for entry in entries:
            entry["images_per_s"] = dict.fromkeys(map(str, THROUGHPUT_BATCH_SIZES))
            if scenario.height * scenario.width <= MAX_THROUGHPUT_PIXELS:
                log(f"throughput {entry['model']} {scenario}")
                entry["images_per_s"] = measure_throughput_isolated(
                    self.device,
                    model_class=PEMForUniversalSegmentation,
                    config=configs[entry["model"]],
                    processor=processors[entry["model"]],
                    scenario=scenario,
                    repeats=self.repeats,
                    warmup=self.warmup,
                    threads=torch.get_num_threads(),
                    seed=self.seed,
                    tune_malloc=glibc_malloc_tuned(),
                )
        self.results["end_to_end"] += entries

    def measure_memory(
        self,
        runs: list[tuple[str, Scenario, int]],
        configs: dict[str, Any],
        processors: dict[str, Any],
        post_processing: bool,
    ) -> None:
        for (mode, scenario, batch), precision, spec in (
            (run, precision, spec)
            for run in runs
            for precision in self.precisions
            for spec in self.specs
            # Compiling would dominate a compiled model's peak; optimised models are not trained; ONNX Runtime's
            # memory is not measured; training variants only train.
            if spec.optimization in ((None, "unfolded") if run[0] == "inference" else (None, *TRAINING_VARIANTS))
        ):
            log(f"peak memory {spec.name} {mode} {scenario} {precision}")
            measured = measure_peak_memory_isolated(
                self.device,
                model_class=spec.model_class,
                config=configs[spec.name],
                processor=processors[spec.name] if post_processing and mode == "inference" else None,
                mode=mode,
                scenario=scenario,
                batch_size=batch,
                precision=precision,
                threads=torch.get_num_threads(),
                seed=self.seed,
                optimization=spec.optimization,
            )
            self.results["settings"]["memory_method"] = measured.pop("method")
            entry = {"model": spec.name, "mode": mode, **setting(scenario, batch, precision)}
            self.results["memory"].append(entry | {"with_post_processing_peak_mb": None} | measured)
