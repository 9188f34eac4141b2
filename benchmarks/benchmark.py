"""Speed, complexity and memory of PEM against transformers' Mask2Former-R50, measured in one process.

For every setting the models run interleaved (one run of each model in turn, after warm-up runs), so that the
ratios to Mask2Former compare runs made under the same machine load. Measured:

- inference latency and images/s of the forward pass, and of the forward pass followed by the model's own semantic
  post-processing (`PEMImageProcessor` / `Mask2FormerImageProcessor.post_process_semantic_segmentation`, to the input
  size), timed on the same outputs;
- training step time (forward with the loss, backward, AdamW step) on synthetic targets, steps/s and images/s;
- parameters and GMACs per component (one multiply-add = one: fvcore's `FlopCountAnalysis` with its default
  handles, as detectron2's `analyze_model` uses it, plus handles for the attention and deformable-convolution ops that
  fvcore does not count);
- peak memory. On CPU each measurement runs in a fresh spawned process: the peak resident set size (`VmHWM`, reset
  through `/proc/self/clear_refs` right before the measured step) minus the resident set before the step. It covers
  everything the step allocates (tensors, oneDNN scratch space, allocator overhead) and nothing that an earlier model
  left in the allocator. `tracemalloc` would miss PyTorch's allocations. On CUDA: `torch.cuda.max_memory_allocated`.

Command line: `python scripts/benchmark.py --output-dir benchmark_results` (see `--help`). It first tunes
glibc's allocator (`tune_glibc_malloc()`; `--allocator default` leaves it alone): with the defaults, how often a model
page-faults depends on what ran before it in the process, which moved Mask2Former-R50's time by 40 % between runs.
"""

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import PIL.Image
import torch
import torchvision
import transformers
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
    PreTrainedConfig,
    ResNetConfig,
)

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor
from transformers_pem.cli.options import add_allocator_argument, apply_allocator_argument
from transformers_pem.inference.allocator import glibc_malloc_tuned, tune_glibc_malloc
from transformers_pem.inference.precision import PRECISIONS, precision_autocast
from transformers_pem.labels_pem import DATASET_LABELS
from transformers_pem.modeling_pem import PEMModulatedDeformConv

REFERENCE_MODEL = "mask2former-r50"
RESNET_STAGES = ["stage1", "stage2", "stage3", "stage4"]
# The dataset of each class count of the official presets.
DATASET_OF_NUM_LABELS = {len(labels): dataset for dataset, labels in DATASET_LABELS.items()}
DEFAULT_SIZES = ("512x1024:19", "1024x2048:19", "512x512:150")
DEFAULT_TRAIN_SIZES = ("512x1024:19",)
# Module names (the same in PEMForUniversalSegmentation and Mask2FormerForUniversalSegmentation) of each component.
COMPONENTS = {
    "backbone": ("model.pixel_level_module.encoder",),
    "pixel_decoder": ("model.pixel_level_module.decoder",),
    "transformer_decoder": ("model.transformer_module", "class_predictor"),
}
# Ops without multiply-adds (elementwise ops, reductions, comparisons, pooling): not counted, as in detectron2's
# `analyze_model`, and declared so that `uncounted_ops` lists only ops whose multiply-adds would be missing.
IGNORED_OPS = (
    "aten::_unique2", "aten::add", "aten::add_", "aten::addcmul", "aten::all", "aten::argmax", "aten::avg_pool2d",
    "aten::clamp_min", "aten::maximum", "aten::minimum",
    "aten::cos", "aten::div", "aten::expand_as", "aten::linalg_vector_norm", "aten::linspace", "aten::lt",
    "aten::masked_fill", "aten::masked_fill_", "aten::max_pool2d", "aten::mean", "aten::meshgrid", "aten::mul",
    "aten::mul_", "aten::ne", "aten::numel", "aten::pow", "aten::repeat", "aten::repeat_interleave", "aten::rsub",
    "aten::sigmoid", "aten::sigmoid_", "aten::sin", "aten::softmax", "aten::sub", "aten::sum", "aten::where",
)  # fmt: skip
# Keys that identify a setting: entries with equal settings are compared with each other.
SETTING_KEYS = ("height", "width", "num_labels", "batch_size", "precision")


@dataclass(frozen=True)
class Scenario:
    """An input size and the number of classes of the models run on it."""

    height: int
    width: int
    num_labels: int

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        """Parse `HEIGHTxWIDTH:CLASSES`, e.g. `512x1024:19`."""
        try:
            size, num_labels = text.split(":")
            height, width = size.lower().split("x")
            scenario = cls(int(height), int(width), int(num_labels))
        except ValueError:
            raise ValueError(f"Size {text!r} must read HEIGHTxWIDTH:CLASSES, e.g. 512x1024:19.") from None
        if min(scenario.height, scenario.width, scenario.num_labels) <= 0:
            raise ValueError(f"Size {text!r}: height, width and classes must be positive.")
        return scenario

    def __str__(self) -> str:
        return f"{self.height}x{self.width}:{self.num_labels}"


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: its class, and its configuration and post-processor for a number of classes."""

    name: str
    model_class: type[nn.Module]
    make_config: Callable[[int], PreTrainedConfig]
    make_processor: Callable[[int], Any]
    # Inference optimisation (optimised models are not trained): None, the default (inference runs a BatchNorm-folded
    # copy); "unfolded", `fold_for_inference = False` (the model as trained); "compiled", `fold_batch_norm()`, then
    # `torch.compile` with inductor's freezing (weights as constants: pre-packed, conv + ReLU fused);
    # "onnx", exported (`export_pem.export_onnx`, folded) and run by ONNX Runtime on CPU; "onnx-int8", that graph with
    # static int8 quantization (QDQ, per-channel weights) calibrated on random inputs.
    optimization: str | None = None
    # The eager, unoptimised model of the same architecture whose outputs the optimised one is compared with.
    baseline: str | None = None


def pem_config(backbone: str, num_labels: int) -> PEMConfig:
    """The official semantic preset of `backbone` ("r50", "stdc1", "stdc2") for Cityscapes (19 classes) or ADE20K
    (150 classes); for another class count, the Cityscapes preset with generic labels."""
    if num_labels in DATASET_OF_NUM_LABELS:
        return PEMConfig.from_preset(f"pem-{backbone}-{DATASET_OF_NUM_LABELS[num_labels]}-semantic")
    labels = {index: f"class_{index}" for index in range(num_labels)}
    return PEMConfig.from_preset(f"pem-{backbone}-cityscapes-semantic", id2label=labels, thing_ids=None)


def pem_processor(backbone: str, num_labels: int) -> PEMImageProcessor:
    if num_labels in DATASET_OF_NUM_LABELS:
        return PEMImageProcessor.from_preset(f"pem-{backbone}-{DATASET_OF_NUM_LABELS[num_labels]}-semantic")
    return PEMImageProcessor()


def mask2former_r50_config(num_labels: int) -> Mask2FormerConfig:
    """transformers' Mask2Former with its default pixel and transformer decoders on a ResNet-50 backbone."""
    return Mask2FormerConfig(backbone_config=ResNetConfig(out_features=RESNET_STAGES), num_labels=num_labels)


def _pem_spec(backbone: str, optimization: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=f"pem-{backbone}" + (f"-{optimization}" if optimization else ""),
        model_class=PEMForUniversalSegmentation,
        make_config=lambda num_labels: pem_config(backbone, num_labels),
        make_processor=lambda num_labels: pem_processor(backbone, num_labels),
        optimization=optimization,
        baseline=f"pem-{backbone}" if optimization else None,
    )


# Optimisations whose model runs outside PyTorch: no parameters, GMACs or memory measured, fp32 only.
ONNX_OPTIMIZATIONS = ("onnx", "onnx-int8")
# Random inputs that calibrate the int8 activation ranges: they set the accuracy, not the speed, of the graph.
CALIBRATION_INPUTS = 4
CALIBRATION_SIZE = (256, 512)


MODELS = {
    spec.name: spec
    for spec in (
        _pem_spec("r50"),
        _pem_spec("stdc1"),
        _pem_spec("stdc2"),
        _pem_spec("r50", "unfolded"),
        _pem_spec("stdc1", "unfolded"),
        _pem_spec("stdc2", "unfolded"),
        _pem_spec("r50", "compiled"),
        _pem_spec("stdc1", "compiled"),
        _pem_spec("stdc2", "compiled"),
        _pem_spec("r50", "onnx"),
        _pem_spec("stdc1", "onnx"),
        _pem_spec("stdc2", "onnx"),
        _pem_spec("r50", "onnx-int8"),
        _pem_spec("stdc1", "onnx-int8"),
        _pem_spec("stdc2", "onnx-int8"),
        ModelSpec(
            name=REFERENCE_MODEL,
            model_class=Mask2FormerForUniversalSegmentation,
            make_config=mask2former_r50_config,
            make_processor=lambda num_labels: Mask2FormerImageProcessor(),
        ),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and steps
# ---------------------------------------------------------------------------------------------------------------------


def synthetic_targets(
    batch_size: int, height: int, width: int, num_labels: int, generator: torch.Generator
) -> tuple[list[Tensor], list[Tensor]]:
    """Per image, a semantic map of 4x8 rectangles of random classes, as `mask_labels` (one binary (H, W) mask per
    class present) and `class_labels`."""
    mask_labels, class_labels = [], []
    for _ in range(batch_size):
        coarse = torch.randint(num_labels, (1, 1, 4, 8), generator=generator).float()
        semantic = F.interpolate(coarse, size=(height, width), mode="nearest")[0, 0].long()
        classes = semantic.unique()
        mask_labels.append((semantic[None] == classes[:, None, None]).float())
        class_labels.append(classes)
    return mask_labels, class_labels


def confident_outputs(
    batch_size: int,
    num_queries: int,
    num_labels: int,
    mask_size: tuple[int, int],
    seed: int = 0,
    object_fraction: float = 0.5,
) -> SimpleNamespace:
    """Model outputs shaped like a trained model's, for timing and testing post-processing (random weights give flat
    masks and no confident class, so post-processing would keep nothing): `object_fraction` of the queries each
    predict one class with high confidence and own one region of a Voronoi partition of the mask grid (logits +6
    inside, -6 outside, blurred borders, noise); the others predict "no object" and repeat an object query's mask."""
    generator = torch.Generator().manual_seed(seed)
    height, width = mask_size
    num_objects = max(1, int(num_queries * object_fraction))
    rows, cols = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    class_logits, mask_logits = [], []
    for _ in range(batch_size):
        labels = torch.randint(num_labels, (num_queries,), generator=generator)
        labels[num_objects:] = num_labels  # no object
        logits = torch.randn(num_queries, num_labels + 1, generator=generator)
        logits[torch.arange(num_queries), labels] += 8.0
        centres = torch.rand(num_objects, 2, generator=generator) * torch.tensor([height, width])
        distances = (rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2
        region = distances.argmin(dim=0)  # (height, width) object query of each mask position
        repeated = torch.randint(num_objects, (num_queries - num_objects,), generator=generator)
        owner = torch.cat([torch.arange(num_objects), repeated])
        masks = torch.where(region == owner[:, None, None], 6.0, -6.0)
        masks = F.avg_pool2d(masks[None], 5, stride=1, padding=2, count_include_pad=False)[0]
        class_logits.append(logits)
        mask_logits.append(masks + 0.5 * torch.randn(num_queries, height, width, generator=generator))
    return SimpleNamespace(
        class_queries_logits=torch.stack(class_logits), masks_queries_logits=torch.stack(mask_logits)
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _post_process(processor: Any, outputs: Any, height: int, width: int) -> list[Tensor]:
    target_sizes = [(height, width)] * outputs.class_queries_logits.shape[0]
    return processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)


def _build_model(
    model_class: type[nn.Module],
    config: PreTrainedConfig,
    device: torch.device,
    seed: int,
    optimization: str | None = None,
) -> nn.Module:
    torch.manual_seed(seed)
    model = model_class(config).to(device).eval()
    if optimization in ONNX_OPTIMIZATIONS:
        return _onnx_model(model, optimization, seed)
    if optimization == "unfolded":
        model.fold_for_inference = False
    if optimization == "compiled":
        model.fold_batch_norm()
    if optimization == "compiled":
        # Compiled at the first call of every input size (in the warm-up runs).
        model.compile(dynamic=False, options={"freezing": True})
    return model


def _onnx_model(model: PEMForUniversalSegmentation, optimization: str, seed: int) -> nn.Module:
    """The model exported to ONNX (int8 with "onnx-int8") and loaded with `PEMOnnxModel`'s default session: as many
    threads as PyTorch, not spinning between runs."""
    from transformers_pem.deploy.onnx_export import ONNX_FILE, export_onnx, quantize_onnx
    from transformers_pem.deploy.onnx_model import PEMOnnxModel

    with tempfile.TemporaryDirectory() as directory:
        path = export_onnx(model, Path(directory) / ONNX_FILE)
        model.config.save_pretrained(directory)
        if optimization == "onnx-int8":
            generator = torch.Generator().manual_seed(seed)
            calibration = [
                torch.randn(1, 3, *CALIBRATION_SIZE, generator=generator) for _ in range(CALIBRATION_INPUTS)
            ]
            path = quantize_onnx(path, Path(directory) / "model_int8.onnx", calibration)
        return PEMOnnxModel.from_pretrained(directory, file_name=path.name)


class _TrainingStep:
    """Training steps of one model on a fixed batch: forward with the loss, backward, AdamW (official lr and weight
    decay); with "amp" on CUDA, a gradient scaler."""

    def __init__(self, model: nn.Module, batch: tuple[Tensor, list[Tensor], list[Tensor]], precision: str):
        self.model = model.train()
        self.batch = batch
        self.device = batch[0].device
        self.precision = precision
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        use_scaler = self.device.type == "cuda" and precision == "amp"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def __call__(self) -> None:
        pixel_values, mask_labels, class_labels = self.batch
        self.optimizer.zero_grad(set_to_none=True)
        with precision_autocast(self.device, self.precision):
            loss = self.model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


def _training_batch(
    scenario: Scenario, batch_size: int, device: torch.device, generator: torch.Generator
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    pixel_values = torch.randn(batch_size, 3, scenario.height, scenario.width, generator=generator)
    mask_labels, class_labels = synthetic_targets(
        batch_size, scenario.height, scenario.width, scenario.num_labels, generator
    )
    return (
        pixel_values.to(device),
        [masks.to(device) for masks in mask_labels],
        [classes.to(device) for classes in class_labels],
    )


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and GMACs
# ---------------------------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters in total and per component (backbone, pixel decoder, transformer decoder with the class head)."""
    counts = {"total": sum(parameter.numel() for parameter in model.parameters())}
    for component, prefixes in COMPONENTS.items():
        counts[component] = sum(
            parameter.numel()
            for name, parameter in model.named_parameters()
            if any(name.startswith(prefix + ".") for prefix in prefixes)
        )
    return counts


def _deform_conv2d_macs(inputs: list, outputs: list) -> int:
    """`torchvision::deform_conv2d(input, weight, offset, mask, ...)`: like a dense convolution, one multiply-add per
    output element, input channel (of its group) and kernel tap, plus one multiply per sampled value for the DCNv2
    modulation when a mask is given. The bilinear sampling is not counted."""
    from fvcore.nn.jit_handles import get_shape

    batch_size, out_channels, out_height, out_width = get_shape(outputs[0])
    _, in_channels_per_group, kernel_height, kernel_width = get_shape(inputs[1])
    taps = kernel_height * kernel_width
    macs = batch_size * out_height * out_width * out_channels * in_channels_per_group * taps
    if len(get_shape(inputs[3])) == 4:  # a modulation mask (B, offset_groups * taps, H_out, W_out)
        macs += batch_size * out_height * out_width * get_shape(inputs[0])[1] * taps
    return macs


def _mm_macs(inputs: list, outputs: list) -> int:
    """`mm(a (n, m), b (m, p))`, also with `out=` (a third input, which fvcore's own handle rejects): n * m * p."""
    from fvcore.nn.jit_handles import get_shape

    rows, inner = get_shape(inputs[0])
    return rows * inner * get_shape(inputs[1])[1]


def _embedding_bag_macs(inputs: list, outputs: list) -> int:
    """`embedding_bag(weight (N, C), indices (bags, n), ..., per_sample_weights)` in sum mode: one multiply-add per
    gathered value (PEM's deformable convolution gathers the 4 bilinear corners of every tap this way)."""
    from fvcore.nn.jit_handles import get_shape

    num_indices = 1
    for size in get_shape(inputs[1]):
        num_indices *= size
    return num_indices * get_shape(inputs[0])[1]


def _scaled_dot_product_attention_macs(inputs: list, outputs: list) -> int:
    """`query @ key^T`, then `weights @ value`: (..., Lq, D) x (..., Lk, D) and (..., Lq, Lk) x (..., Lk, Dv)."""
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(tensor) for tensor in inputs[:3])
    batch = 1
    for size in query[:-2]:
        batch *= size
    return batch * query[-2] * key[-2] * (query[-1] + value[-1])


def _baddbmm_macs(inputs: list, outputs: list) -> int:
    """`baddbmm(input, batch1 (b, n, m), batch2 (b, m, p))`: b * n * m * p (adding `input` is not counted)."""
    from fvcore.nn.jit_handles import get_shape

    batch, rows, inner = get_shape(inputs[1])
    return batch * rows * inner * get_shape(inputs[2])[-1]


# fvcore handles of the ops with multiply-adds that fvcore does not count by default.
MAC_HANDLES = {
    "torchvision::deform_conv2d": _deform_conv2d_macs,
    "aten::scaled_dot_product_attention": _scaled_dot_product_attention_macs,
    "aten::baddbmm": _baddbmm_macs,
    "aten::embedding_bag": _embedding_bag_macs,
    "aten::mm": _mm_macs,
}


class _ForwardAndPostProcess(nn.Module):
    """Tensor-only wrapper for tracing: the logits and the post-processed maps."""

    def __init__(self, model: nn.Module, processor: Any):
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(pixel_values=pixel_values)
        maps = _post_process(self.processor, outputs, *pixel_values.shape[-2:])
        return outputs.class_queries_logits, outputs.masks_queries_logits, torch.stack(maps)


def count_gmacs(model: nn.Module, processor: Any, pixel_values: Tensor) -> dict[str, Any]:
    """GMACs of a forward pass in total and per component, of the semantic post-processing, and of PEM's deformable
    convolutions (part of the pixel decoder, but left out of the paper's count: detectron2's deformable convolution is
    a Python autograd function that fvcore cannot trace). `uncounted_ops` (name -> calls) lists the traced ops that
    have no handle."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore uses the deprecated torch.jit.script at import
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise ValueError("Counting GMACs needs fvcore: `pip install fvcore`, or pass --no-gmacs.") from None
    # The model as it is: its inference would run a folded copy, which is not one of its modules.
    folds, model.fold_for_inference = getattr(model, "fold_for_inference", False), False
    analysis = FlopCountAnalysis(_ForwardAndPostProcess(model, processor).eval(), (pixel_values,))
    analysis.set_op_handle(**dict.fromkeys(IGNORED_OPS))
    analysis.set_op_handle(**MAC_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        by_module = analysis.by_module()
        uncounted = dict(analysis.unsupported_ops())
    model.fold_for_inference = folds
    gmacs = {"total": by_module["model"] / 1e9}
    for component, prefixes in COMPONENTS.items():
        gmacs[component] = sum(by_module.get(f"model.{prefix}", 0) for prefix in prefixes) / 1e9
    gmacs["post_processing"] = (by_module[""] - by_module["model"]) / 1e9
    gmacs["deform_conv"] = (
        sum(
            by_module.get(f"model.{name}", 0)
            for name, module in model.named_modules()
            if isinstance(module, PEMModulatedDeformConv)
        )
        / 1e9
    )
    return {"gmacs": gmacs, "uncounted_ops": uncounted}


# ---------------------------------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------------------------------


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


def _reset_peak_rss() -> bool:
    """Reset `VmHWM` to the current resident set (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return _process_memory_kb("VmHWM") is not None


class _PeakMemory:
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
        elif _reset_peak_rss():
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
    model = _build_model(model_class, config, device, seed, optimization)
    generator = torch.Generator().manual_seed(seed)
    tracker = _PeakMemory(device)
    result = {}
    if mode == "inference":
        pixel_values = torch.randn(batch_size, 3, scenario.height, scenario.width, generator=generator).to(device)
        with tracker.measure(), torch.inference_mode(), precision_autocast(device, precision):
            outputs = model(pixel_values=pixel_values)
        result.update(baseline_mb=tracker.baseline_mb, peak_mb=tracker.peak_mb)
        if processor is not None:
            with tracker.measure(), torch.inference_mode(), precision_autocast(device, precision):
                _post_process(processor, outputs, scenario.height, scenario.width)
            result["with_post_processing_peak_mb"] = max(result["peak_mb"], tracker.peak_mb)
    else:
        step = _TrainingStep(model, _training_batch(scenario, batch_size, device, generator), precision)
        with tracker.measure():
            step()
        result.update(baseline_mb=tracker.baseline_mb, peak_mb=tracker.peak_mb)
    result["increase_mb"] = result["peak_mb"] - result["baseline_mb"]
    result["method"] = tracker.method
    return result


def _measure_peak_memory_isolated(device: torch.device, **kwargs) -> dict[str, Any]:
    """`measure_peak_memory` in a new spawned process on CPU (so nothing is left from earlier runs), here on CUDA."""
    if device.type == "cuda":
        return measure_peak_memory(device=str(device), **kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
        return executor.submit(measure_peak_memory, device=str(device), **kwargs).result()


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "values": values}


def _setting(scenario: Scenario, batch_size: int, precision: str) -> dict[str, Any]:
    return {
        "height": scenario.height,
        "width": scenario.width,
        "num_labels": scenario.num_labels,
        "batch_size": batch_size,
        "precision": precision,
    }


def _clock(device: torch.device) -> float:
    """`time.perf_counter()` once the device has finished its queued work."""
    _synchronize(device)
    return time.perf_counter()


def _time_inference(
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
) -> list[dict[str, Any]]:
    """Interleaved inference: each repeat runs every model once. The post-processing (skipped if `processors` is None)
    is timed apart on the same outputs; the time with post-processing is the sum of both. A model with a baseline
    (`baselines[name]`, among `models`) is compared with it on the last run's outputs: the largest
    |output - baseline| / max(1, |baseline|) over the class and mask logits."""
    baselines = {name: base for name, base in (baselines or {}).items() if name in models and base in models}
    compared = set(baselines) | set(baselines.values())
    last_outputs = {}
    pixel_values = torch.randn(batch_size, 3, scenario.height, scenario.width, generator=generator).to(device)
    forward_times = {name: [] for name in models}
    post_processing_times = {name: [] for name in models}
    for repeat in range(-warmup, repeats):
        _log(f"inference {scenario} {precision}: " + ("warm-up" if repeat < 0 else f"run {repeat + 1}/{repeats}"))
        for name, model in models.items():
            with torch.inference_mode(), precision_autocast(device, precision):
                start = _clock(device)
                outputs = model(pixel_values=pixel_values)
                forward_end = _clock(device)
                if processors is not None:
                    _post_process(processors[name], outputs, scenario.height, scenario.width)
                end = _clock(device)
            if name in compared and repeat == repeats - 1:
                last_outputs[name] = (outputs.class_queries_logits, outputs.masks_queries_logits)
            del outputs
            if repeat >= 0:
                forward_times[name].append(forward_end - start)
                post_processing_times[name].append(end - forward_end)
    results = []
    for name in models:
        forward = _summary(forward_times[name])
        entry = {"model": name, **_setting(scenario, batch_size, precision)}
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


def _random_image(scenario: Scenario, generator: torch.Generator) -> PIL.Image.Image:
    pixels = torch.randint(0, 256, (scenario.height, scenario.width, 3), dtype=torch.uint8, generator=generator)
    return PIL.Image.fromarray(pixels.numpy())


def _end_to_end_processor(processor: PEMImageProcessor) -> PEMImageProcessor:
    """The model's processor without its resize, so that the model sees the benchmark's input size."""
    processor = copy.deepcopy(processor)
    processor.do_resize = False
    return processor


def _segment(model: nn.Module, processor: PEMImageProcessor, images: list, device: torch.device) -> list[Tensor]:
    """Processor, model and semantic post-processing to the image sizes, called by hand."""
    inputs = processor(images=images, return_tensors="pt").to(device)
    outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1] for image in images])


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
    model = _build_model(model_class, config, device, seed)
    processor = _end_to_end_processor(processor)
    generator = torch.Generator().manual_seed(seed)
    images = [_random_image(scenario, generator) for _ in range(max(THROUGHPUT_BATCH_SIZES))]
    times = {batch: [] for batch in THROUGHPUT_BATCH_SIZES}
    for repeat in range(-warmup, repeats):
        for batch in THROUGHPUT_BATCH_SIZES:
            with torch.inference_mode():
                start = _clock(device)
                _segment(model, processor, images[:batch], device)
                elapsed = _clock(device) - start
            if repeat >= 0:
                times[batch].append(elapsed)
    return {str(batch): batch / statistics.median(values) for batch, values in times.items()}


def _measure_throughput_isolated(device: torch.device, **kwargs) -> dict[str, float]:
    if device.type == "cuda":
        return measure_throughput(device=str(device), **kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
        return executor.submit(measure_throughput, device=str(device), **kwargs).result()


def _time_end_to_end(
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

    image = _random_image(scenario, generator)
    size = (scenario.height, scenario.width)
    processors = {name: _end_to_end_processor(processors[name]) for name in models}
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
        "by_hand_s": lambda name: _segment(models[name], processors[name], [image], device),
        "pipeline_s": lambda name: pipes[name](image, subtask="semantic"),
    }
    times = {name: {key: [] for key in steps} for name in models}
    for repeat in range(-warmup, repeats):
        _log(f"end to end {scenario}: " + ("warm-up" if repeat < 0 else f"run {repeat + 1}/{repeats}"))
        for name in models:
            for key, step in steps.items():
                with torch.inference_mode():
                    start = _clock(device)
                    step(name)
                    elapsed = _clock(device) - start
                if repeat >= 0:
                    times[name][key].append(elapsed)

    results = []
    for name in models:
        entry = {"model": name, **_setting(scenario, 1, "fp32")}
        entry.update({key: _summary(values) for key, values in times[name].items()})
        forward = entry["forward_s"]["median"]
        entry["post_processing_over_forward"] = {
            task: entry[f"{task}_post_processing_s"]["median"] / forward for task in POST_PROCESSING_TASKS
        }
        entry["pipeline_over_by_hand"] = entry["pipeline_s"]["median"] / entry["by_hand_s"]["median"]
        results.append(entry)
    return results


def _time_training(
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
    batch = _training_batch(scenario, batch_size, device, generator)
    steps = {name: _TrainingStep(model, batch, precision) for name, model in models.items()}
    step_times = {name: [] for name in models}
    for repeat in range(-warmup, repeats):
        _log(f"training {scenario} {precision}: " + ("warm-up" if repeat < 0 else f"step {repeat + 1}/{repeats}"))
        for name, step in steps.items():
            start = _clock(device)
            step()
            if repeat >= 0:
                step_times[name].append(_clock(device) - start)
    results = []
    for name in models:
        step = _summary(step_times[name])
        entry = {"model": name, **_setting(scenario, batch_size, precision), "step_s": step}
        entry.update(steps_per_s=1 / step["median"], images_per_s=batch_size / step["median"])
        results.append(entry)
    return results


def _add_speedups(entries: list[dict[str, Any]], time_keys: tuple[str, ...], reference: str) -> None:
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


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------------------------


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


def _environment(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
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
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available: use device='cpu'.")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}.")
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
        "end_to_end": [],
        "training": [],
        "memory": [],
    }
    generator = torch.Generator().manual_seed(seed)
    # Models are built once per class count and shared by all settings with that count.
    for num_labels in dict.fromkeys(scenario.num_labels for scenario in [*sizes, *train_sizes]):
        group_sizes = [scenario for scenario in sizes if scenario.num_labels == num_labels]
        group_train_sizes = [scenario for scenario in train_sizes if scenario.num_labels == num_labels]
        configs = {spec.name: spec.make_config(num_labels) for spec in specs}
        processors = {spec.name: spec.make_processor(num_labels) for spec in specs}
        models = {
            spec.name: _build_model(spec.model_class, configs[spec.name], torch_device, seed, spec.optimization)
            for spec in specs
        }
        trainable = {spec.name: models[spec.name] for spec in specs if spec.optimization is None}
        outside_torch = {spec.name for spec in specs if spec.optimization in ONNX_OPTIMIZATIONS}
        for name, model in models.items():
            if name not in outside_torch:
                results["parameters"].append({"model": name, "num_labels": num_labels, **count_parameters(model)})

        for scenario in group_sizes:
            if gmacs:
                pixel_values = torch.randn(1, 3, scenario.height, scenario.width, generator=generator)
                for spec in specs:
                    if spec.optimization == "compiled" or spec.name in outside_torch:  # the default model's count
                        continue
                    _log(f"GMACs {spec.name} {scenario}")
                    entry = {"model": spec.name, **_setting(scenario, 1, "fp32")}
                    results["complexity"].append(
                        entry | count_gmacs(models[spec.name], processors[spec.name], pixel_values.to(torch_device))
                    )
            timed_processors = processors if post_processing else None
            baselines = {spec.name: spec.baseline for spec in specs if spec.baseline}
            for precision in precisions:
                # ONNX Runtime graphs are float32: they do not take part in autocast runs.
                timed = {n: m for n, m in models.items() if precision == "fp32" or n not in outside_torch}
                results["inference"] += _time_inference(
                    timed,
                    timed_processors,
                    scenario,
                    batch_size,
                    precision,
                    torch_device,
                    repeats,
                    warmup,
                    generator,
                    baselines,
                )
            if end_to_end:
                # The default PEM models: what pipeline and `predict` users run.
                end_to_end_models = {
                    spec.name: models[spec.name]
                    for spec in specs
                    if spec.model_class is PEMForUniversalSegmentation
                    and spec.optimization in (None, *ONNX_OPTIMIZATIONS)
                }
                if end_to_end_models:
                    entries = _time_end_to_end(
                        end_to_end_models, processors, scenario, torch_device, repeats, warmup, generator, seed
                    )
                    for entry in entries:
                        entry["images_per_s"] = dict.fromkeys(map(str, THROUGHPUT_BATCH_SIZES))
                        if scenario.height * scenario.width <= MAX_THROUGHPUT_PIXELS:
                            _log(f"throughput {entry['model']} {scenario}")
                            entry["images_per_s"] = _measure_throughput_isolated(
                                torch_device,
                                model_class=PEMForUniversalSegmentation,
                                config=configs[entry["model"]],
                                processor=processors[entry["model"]],
                                scenario=scenario,
                                repeats=repeats,
                                warmup=warmup,
                                threads=torch.get_num_threads(),
                                seed=seed,
                                tune_malloc=glibc_malloc_tuned(),
                            )
                    results["end_to_end"] += entries
        for scenario in group_train_sizes:
            for precision in precisions:
                results["training"] += _time_training(
                    trainable, scenario, train_batch_size, precision, torch_device, repeats, warmup, generator
                )
        del models
        gc.collect()

        if memory:
            runs = [("inference", scenario, batch_size) for scenario in group_sizes]
            runs += [("training", scenario, train_batch_size) for scenario in group_train_sizes]
            for (mode, scenario, batch), precision, spec in (
                (run, precision, spec)
                for run in runs
                for precision in precisions
                for spec in specs
                # Compiling would dominate a compiled model's peak; optimised models are not trained; ONNX Runtime's
                # memory is not measured.
                if spec.optimization not in ("compiled", *ONNX_OPTIMIZATIONS)
                and not (run[0] == "training" and spec.optimization)
            ):
                _log(f"peak memory {spec.name} {mode} {scenario} {precision}")
                measured = _measure_peak_memory_isolated(
                    torch_device,
                    model_class=spec.model_class,
                    config=configs[spec.name],
                    processor=processors[spec.name] if post_processing and mode == "inference" else None,
                    mode=mode,
                    scenario=scenario,
                    batch_size=batch,
                    precision=precision,
                    threads=torch.get_num_threads(),
                    seed=seed,
                    optimization=spec.optimization,
                )
                results["settings"]["memory_method"] = measured.pop("method")
                entry = {"model": spec.name, "mode": mode, **_setting(scenario, batch, precision)}
                results["memory"].append(entry | {"with_post_processing_peak_mb": None} | measured)

    _add_speedups(results["inference"], ("forward_s", "with_post_processing_s"), reference)
    _add_speedups(results["training"], ("step_s",), reference)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _timing(summary: dict[str, Any] | None) -> str:
    return "–" if summary is None else f"{summary['median']:.3f} ({summary['min']:.3f})"


def _size(entry: dict[str, Any]) -> str:
    return f"{entry['height']}×{entry['width']}"


def _table(columns: list[tuple[str, Callable[[dict[str, Any]], str]]], entries: list[dict[str, Any]]) -> list[str]:
    """A markdown table with one row per entry; `columns` are (header, cell of an entry) pairs."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(entry) for _, cell in columns) + " |" for entry in entries]


INFERENCE_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Precision", lambda e: e["precision"]),
    ("Forward (s)", lambda e: _timing(e["forward_s"])),
    ("Images/s", lambda e: _number(e["forward_images_per_s"])),
    ("× ref", lambda e: _number(e["speedup_vs_reference"]["forward_s"], suffix="×")),
    ("With post-processing (s)", lambda e: _timing(e["with_post_processing_s"])),
    ("Images/s", lambda e: _number(e["with_post_processing_images_per_s"])),
    ("× ref", lambda e: _number(e["speedup_vs_reference"]["with_post_processing_s"], suffix="×")),
    (
        "max rel. Δ to eager",
        lambda e: "–" if e.get("max_relative_difference") is None else f"{e['max_relative_difference']:.1e}",
    ),
]


def _share(entry: dict[str, Any], task: str) -> str:
    return f"{_timing(entry[f'{task}_post_processing_s'])} ({entry['post_processing_over_forward'][task]:.0%})"


END_TO_END_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Preprocess (s)", lambda e: _timing(e["preprocess_s"])),
    ("Forward (s)", lambda e: _timing(e["forward_s"])),
    *(
        (f"{task.capitalize()} post (s, % of forward)", lambda e, t=task: _share(e, t))
        for task in POST_PROCESSING_TASKS
    ),
    ("By hand (s)", lambda e: _timing(e["by_hand_s"])),
    ("Pipeline (s)", lambda e: _timing(e["pipeline_s"])),
    ("Pipeline / by hand", lambda e: _number(e["pipeline_over_by_hand"])),
]
THROUGHPUT_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    *((f"Images/s, batch {b}", lambda e, b=b: _number(e["images_per_s"][str(b)])) for b in THROUGHPUT_BATCH_SIZES),
    (
        "Batch 4 / batch 1",
        lambda e: (
            _number(e["images_per_s"]["4"] / e["images_per_s"]["1"], suffix="×") if e["images_per_s"]["1"] else "–"
        ),
    ),
]
TRAINING_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Crop", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Batch", lambda e: str(e["batch_size"])),
    ("Precision", lambda e: e["precision"]),
    ("Step (s)", lambda e: _timing(e["step_s"])),
    ("Steps/s", lambda e: _number(e["steps_per_s"], 3)),
    ("Images/s", lambda e: _number(e["images_per_s"], 3)),
    ("× ref", lambda e: _number(e["speedup_vs_reference"]["step_s"], suffix="×")),
]
PARAMETER_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Total", lambda e: _number(e["total"] / 1e6)),
    ("Backbone", lambda e: _number(e["backbone"] / 1e6)),
    ("Pixel decoder", lambda e: _number(e["pixel_decoder"] / 1e6)),
    ("Transformer decoder", lambda e: _number(e["transformer_decoder"] / 1e6)),
]
COMPLEXITY_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Total", lambda e: _number(e["gmacs"]["total"], 1)),
    ("Backbone", lambda e: _number(e["gmacs"]["backbone"], 1)),
    ("Pixel decoder", lambda e: _number(e["gmacs"]["pixel_decoder"], 1)),
    ("Transformer decoder", lambda e: _number(e["gmacs"]["transformer_decoder"], 1)),
    ("Deform. conv", lambda e: _number(e["gmacs"]["deform_conv"], 1)),
    ("Post-processing", lambda e: _number(e["gmacs"]["post_processing"], 1)),
    ("Uncounted ops", lambda e: ", ".join(sorted(e["uncounted_ops"])) or "–"),
]
MEMORY_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Mode", lambda e: e["mode"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Batch", lambda e: str(e["batch_size"])),
    ("Precision", lambda e: e["precision"]),
    ("Before", lambda e: _number(e["baseline_mb"], 0)),
    ("Peak", lambda e: _number(e["peak_mb"], 0)),
    ("Increase", lambda e: _number(e["increase_mb"], 0)),
    ("Peak with post-processing", lambda e: _number(e["with_post_processing_peak_mb"], 0)),
]


def _allocator_description(environment: dict[str, Any]) -> str:
    if environment.get("glibc_malloc_tuned"):
        return "glibc, tuned with `tune_glibc_malloc()` (no fresh memory maps, nothing returned to the system)"
    settings = " ".join(f"{name}={value}" for name, value in environment.get("malloc_environment", {}).items())
    return f"the C library's, with {settings}" if settings else "the C library's defaults"


def format_markdown(results: dict[str, Any]) -> str:
    """The results of `run_benchmark` as markdown tables, headed by the machine and the settings."""
    environment, settings = results["environment"], results["settings"]
    reference = settings["reference"]
    machine = environment["gpu"] or f"{environment['cpu']} ({environment['usable_cpus']} usable CPUs)"
    lines = [
        f"# PEM vs {reference}",
        "",
        f"Measured {environment['date']} on {machine} with {environment['torch_threads']} PyTorch threads: "
        f"torch {environment['torch']}, torchvision {environment['torchvision']}, "
        f"transformers {environment['transformers']}, Python {environment['python']}, {environment['platform']}; "
        f"transformers-pem revision {environment['transformers_pem_revision']}. Memory allocator: "
        + _allocator_description(environment)
        + ".",
        "",
        f"Random weights. Times in seconds, median (min) of {settings['repeats']} runs per model, interleaved across "
        f"models, after {settings['warmup']} warm-up run(s). `× ref`: median time of {reference} / median time of "
        "the model, in the same run (higher is faster).",
    ]
    if results["inference"]:
        lines += ["", f"## Inference (batch {settings['batch_size']})", ""]
        lines += [
            "With post-processing: the forward pass, then the model's own semantic post-processing to the input "
            "size (Mask2Former's resizes the mask logits to 384×384 first, PEM's to the input size, as officially). "
            "`max rel. Δ to eager`: the largest |output - eager| / max(1, |eager|) over the class and mask logits, "
            "against the unoptimised eager model of the same architecture on the same input. `-onnx`: ONNX Runtime "
            "(CPU provider, as many threads as PyTorch); `-onnx-int8`: its static int8 quantization.",
            "",
        ]
        lines += _table(INFERENCE_COLUMNS, results["inference"])
    if results.get("end_to_end"):
        lines += [
            "",
            "## End to end (image in, segments out)",
            "",
            "One PIL image of the input size, each step timed apart: the processor (without its resize), the forward "
            "pass, the semantic, panoptic and instance post-processing to the input size on outputs shaped like a "
            "trained model's (`confident_outputs`: one confident class and one region per object query; random "
            "weights give flat masks that panoptic post-processing would drop), with their share of the forward "
            "time; processor + model + semantic post-processing called by hand, and "
            '`pipeline("image-segmentation", subtask="semantic")` doing the same (its masks as PIL images '
            "included). The random model's own outputs are post-processed there.",
            "",
        ]
        lines += _table(END_TO_END_COLUMNS, results["end_to_end"])
        throughput = [e for e in results["end_to_end"] if e["images_per_s"]["1"] is not None]
        if throughput:
            lines += [
                "",
                "### Batched throughput",
                "",
                "Images/s through processor + model + semantic post-processing, images of the input size.",
                "",
            ]
            lines += _table(THROUGHPUT_COLUMNS, throughput)
    if results["training"]:
        lines += ["", "## Training step (forward with the loss, backward, AdamW; synthetic targets)", ""]
        lines += _table(TRAINING_COLUMNS, results["training"])
    lines += ["", "## Parameters (millions)", ""]
    lines += _table(PARAMETER_COLUMNS, results["parameters"])
    if results["complexity"]:
        lines += [
            "",
            "## GMACs (batch 1)",
            "",
            "fvcore `FlopCountAnalysis` (one multiply-add = one), default handles as in detectron2's `analyze_model`, "
            "plus attention and deformable-convolution handles. `Total` is the forward pass; `Deform. conv` is part "
            "of the pixel decoder and missing from the paper's counts (fvcore cannot trace detectron2's deformable "
            "convolution); the post-processing is not in `Total`.",
            "",
        ]
        lines += _table(COMPLEXITY_COLUMNS, results["complexity"])
    if results["memory"]:
        lines += [
            "",
            "## Peak memory (MB)",
            "",
            f"Method: {settings['memory_method']}. `Before`: with the model and its inputs loaded (on CPU including "
            "the Python and PyTorch runtime); `Peak`: during the forward pass or training step; `Increase`: Peak - "
            "Before; `Peak with post-processing`: the peak of the forward pass followed by the post-processing.",
            "",
        ]
        lines += _table(MEMORY_COLUMNS, results["memory"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def write_report(output_dir: Path | None, name: str, results: Any, markdown: str) -> None:
    """Print a benchmark's markdown report and, with an output folder, write it with the JSON results there
    (`<name>.md`, `<name>.json`)."""
    print(markdown)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (output_dir / f"{name}.md").write_text(markdown)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/benchmark.py",
        description="Benchmark PEM against transformers' Mask2Former-R50: latency, training steps, GMACs, memory.",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="Models to run.")
    parser.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES), help="Inference HEIGHTxWIDTH:CLASSES.")
    parser.add_argument(
        "--train-sizes", nargs="*", default=list(DEFAULT_TRAIN_SIZES), help="Training crops, HEIGHTxWIDTH:CLASSES."
    )
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of every model (median and min).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed runs of every model before them.")
    parser.add_argument("--batch-size", type=int, default=1, help="Images per inference run.")
    parser.add_argument("--train-batch-size", type=int, default=2, help="Images per training step.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's).")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available).")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=None,
        help="fp32 and/or amp (autocast: float16 on CUDA, bfloat16 on CPU). Default: fp32 on CPU, both on CUDA.",
    )
    parser.add_argument("--no-post-processing", action="store_true", help="Do not time the post-processing.")
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="Do not time the whole path (processor to segments, pipeline)."
    )
    parser.add_argument("--no-gmacs", action="store_true", help="Do not count GMACs (that needs fvcore).")
    parser.add_argument("--no-memory", action="store_true", help="Do not measure peak memory.")
    add_allocator_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights and inputs.")
    parser.add_argument("--output-dir", type=Path, default=None, help="Write benchmark.json and benchmark.md there.")
    args = parser.parse_args(argv)
    try:
        args.sizes = [Scenario.parse(size) for size in args.sizes]
        args.train_sizes = [Scenario.parse(size) for size in args.train_sizes]
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: run the benchmark, print the markdown report, and with `--output-dir` write it with
    the JSON results."""
    args = _parse_args(argv)
    apply_allocator_argument(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    precisions = args.precision or (["fp32", "amp"] if device.startswith("cuda") else ["fp32"])
    transformers.logging.set_verbosity_error()  # Mask2Former logs that it was not tested with a ResNet backbone
    results = run_benchmark(
        [MODELS[name] for name in dict.fromkeys(args.models)],
        args.sizes,
        args.train_sizes,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        train_batch_size=args.train_batch_size,
        device=device,
        precisions=tuple(dict.fromkeys(precisions)),
        post_processing=not args.no_post_processing,
        end_to_end=not args.no_end_to_end,
        gmacs=not args.no_gmacs,
        memory=not args.no_memory,
        threads=args.threads,
        seed=args.seed,
    )
    write_report(args.output_dir, "benchmark", results, format_markdown(results))
    return results


if __name__ == "__main__":
    main()
