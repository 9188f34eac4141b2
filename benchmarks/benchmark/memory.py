"""Peak memory of one inference or training step, in a fresh process on CPU."""

import contextlib
import gc
import resource
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from transformers_pem.inference.precision import precision_autocast

from .models import Scenario, build_model
from .workloads import TrainingStep, post_process, training_batch


def _process_memory_kb(field: str) -> int | None:
    """`VmRSS` (resident set) or `VmHWM` (its peak) of this process in kB, from /proc (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset `VmHWM` to the current resident set (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return _process_memory_kb("VmHWM") is not None


class PeakMemory:
    """`with tracker.measure(): ...` sets `baseline_mb` (memory before the block), `peak_mb` (peak during the block)
    and `method`."""

    def __init__(self, device: torch.device):
        self.device = device

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        gc.collect()
        if self.device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated (tensors)"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            yield
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif reset_peak_rss():
            self.method = (
                "peak resident set size (VmHWM reset before the step) in a fresh process, with the C library's "
                "allocator settings (`tune_glibc_malloc()` is not applied there)"
            )
            self.baseline_mb = _process_memory_kb("VmRSS") / 1024
            yield
            self.peak_mb = _process_memory_kb("VmHWM") / 1024
        else:
            # ru_maxrss cannot be reset, so the peak may come from building the model. kB on Linux, bytes on macOS.
            self.method = "peak resident set size of the whole process (ru_maxrss) in a fresh process"
            unit = 1 if sys.platform == "darwin" else 1024
            self.baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
            yield
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20


def measure_peak_memory(
    model_class: type[nn.Module],
    config: PreTrainedConfig,
    processor: Any,
    mode: str,
    scenario: Scenario,
    batch_size: int,
    device: str,
    precision: str,
    threads: int | None,
    seed: int = 0,
    optimization: str | None = None,
) -> dict[str, Any]:
    """Peak memory (MB) of one inference (the forward pass, then `processor`'s post-processing unless it is None) or
    one training step of a newly built model. It measures in the calling process; `run_benchmark` calls it in a fresh
    process on CPU."""
    if mode not in ("inference", "training"):
        raise ValueError(f"mode must be 'inference' or 'training', got {mode!r}.")
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device)
    model = build_model(model_class, config, device, seed, optimization)
    generator = torch.Generator().manual_seed(seed)
    tracker = PeakMemory(device)
    result = {}
    if mode == "inference":
        pixel_values = torch.randn(batch_size, 3, scenario.height, scenario.width, generator=generator).to(device)
        with tracker.measure(), torch.inference_mode(), precision_autocast(device, precision):
            outputs = model(pixel_values=pixel_values)
        result.update(baseline_mb=tracker.baseline_mb, peak_mb=tracker.peak_mb)
        if processor is not None:
            with tracker.measure(), torch.inference_mode(), precision_autocast(device, precision):
                post_process(processor, outputs, scenario.height, scenario.width)
            result["with_post_processing_peak_mb"] = max(result["peak_mb"], tracker.peak_mb)
    else:
        step = TrainingStep(model, training_batch(scenario, batch_size, device, generator), precision)
        with tracker.measure():
            step()
        result.update(baseline_mb=tracker.baseline_mb, peak_mb=tracker.peak_mb)
    result["increase_mb"] = result["peak_mb"] - result["baseline_mb"]
    result["method"] = tracker.method
    return result


def measure_peak_memory_isolated(device: torch.device, **kwargs) -> dict[str, Any]:
    """`measure_peak_memory` in a new spawned process on CPU (so nothing is left from earlier runs), here on CUDA."""
    if device.type == "cuda":
        return measure_peak_memory(device=str(device), **kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
        return executor.submit(measure_peak_memory, device=str(device), **kwargs).result()
