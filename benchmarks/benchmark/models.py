"""The benchmarked models: input settings (`Scenario`), the models by name (`MODELS`, PEM presets and their optimised
variants, transformers' Mask2Former-R50 as the reference) and how each is built."""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
    PreTrainedConfig,
    ResNetConfig,
)

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor
from transformers_pem.labels_pem import DATASET_LABELS

REFERENCE_MODEL = "mask2former-r50"


RESNET_STAGES = ["stage1", "stage2", "stage3", "stage4"]


# The dataset of each class count of the official presets.
DATASET_OF_NUM_LABELS = {len(labels): dataset for dataset, labels in DATASET_LABELS.items()}


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
    # "onnx", exported (`deploy.onnx_export.export_onnx`, folded) and run by ONNX Runtime on CPU; "onnx-int8", that
    # graph with static int8 quantization (QDQ, per-channel weights) calibrated on random inputs; "openvino", exported
    # to OpenVINO IR (`deploy.openvino_export`, folded) and run by `PEMOpenVINOModel` (fp32); "openvino-int8", that IR
    # quantized by NNCF on the same calibration inputs; "openvino-bf16" / "openvino-int8-bf16", the same run with
    # OpenVINO's bf16 inference precision (the layers int8 leaves float in bf16). Not for inference:
    # "checkpointing", trained with activation checkpointing (`activation_checkpointing_enable()`), measured in the
    # training sections only.
    optimization: str | None = None
    # The eager, unoptimised model of the same architecture whose outputs (inference) or step time and peak memory
    # (training) the variant is compared with.
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


# Optimisations whose model runs outside PyTorch: no parameters, GMACs or memory measured, fp32 only. OpenVINO's
# are timed in a phase of their own (its threads spin on after each run and would slow the model timed next).
ONNX_OPTIMIZATIONS = ("onnx", "onnx-int8")
OPENVINO_OPTIMIZATIONS = ("openvino", "openvino-int8", "openvino-bf16", "openvino-int8-bf16")
OUTSIDE_TORCH = (*ONNX_OPTIMIZATIONS, *OPENVINO_OPTIMIZATIONS)


# Variants measured in the training sections only (their inference is the plain model's).
TRAINING_VARIANTS = ("checkpointing",)


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
        _pem_spec("r50", "openvino"),
        _pem_spec("stdc1", "openvino"),
        _pem_spec("stdc2", "openvino"),
        _pem_spec("r50", "openvino-int8"),
        _pem_spec("stdc1", "openvino-int8"),
        _pem_spec("stdc2", "openvino-int8"),
        _pem_spec("r50", "openvino-bf16"),
        _pem_spec("stdc1", "openvino-bf16"),
        _pem_spec("stdc2", "openvino-bf16"),
        _pem_spec("r50", "openvino-int8-bf16"),
        _pem_spec("stdc1", "openvino-int8-bf16"),
        _pem_spec("stdc2", "openvino-int8-bf16"),
        _pem_spec("r50", "checkpointing"),
        _pem_spec("stdc1", "checkpointing"),
        _pem_spec("stdc2", "checkpointing"),
        ModelSpec(
            name=REFERENCE_MODEL,
            model_class=Mask2FormerForUniversalSegmentation,
            make_config=mask2former_r50_config,
            make_processor=lambda num_labels: Mask2FormerImageProcessor(),
        ),
    )
}


def build_model(
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
    if optimization in OPENVINO_OPTIMIZATIONS:
        return _openvino_model(model, optimization, seed)
    if optimization == "unfolded":
        model.fold_for_inference = False
    if optimization == "checkpointing":
        model.activation_checkpointing_enable()
    if optimization == "compiled":
        model.fold_batch_norm()
    if optimization == "compiled":
        # Compiled at the first call of every input size (in the warm-up runs).
        model.compile(dynamic=False, options={"freezing": True})
    return model


def _calibration_inputs(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *CALIBRATION_SIZE, generator=generator) for _ in range(CALIBRATION_INPUTS)]


def _openvino_model(model: PEMForUniversalSegmentation, optimization: str, seed: int) -> nn.Module:
    """The model exported to OpenVINO IR (int8 by NNCF with "openvino-int8*") and loaded with `PEMOpenVINOModel`'s
    defaults (fp32 but with "*-bf16", as many threads as PyTorch, a shape compiled statically from its second run)."""
    from transformers_pem.deploy.openvino_export import (
        OPENVINO_FILE,
        OPENVINO_INT8_FILE,
        convert_openvino,
        quantize_openvino,
        save_openvino,
    )
    from transformers_pem.deploy.openvino_model import PEMOpenVINOModel

    with tempfile.TemporaryDirectory() as directory:
        converted = convert_openvino(model)
        file_name = OPENVINO_FILE
        if optimization.startswith("openvino-int8"):
            converted, file_name = quantize_openvino(converted, _calibration_inputs(seed)), OPENVINO_INT8_FILE
        save_openvino(converted, Path(directory) / file_name)
        model.config.save_pretrained(directory)
        precision = "bf16" if optimization.endswith("-bf16") else "fp32"
        return PEMOpenVINOModel.from_pretrained(directory, file_name=file_name, precision=precision)


def _onnx_model(model: PEMForUniversalSegmentation, optimization: str, seed: int) -> nn.Module:
    """The model exported to ONNX (int8 with "onnx-int8") and loaded with `PEMOnnxModel`'s default session: as many
    threads as PyTorch, not spinning between runs."""
    from transformers_pem.deploy.onnx_export import ONNX_FILE, export_onnx, quantize_onnx
    from transformers_pem.deploy.onnx_model import PEMOnnxModel

    with tempfile.TemporaryDirectory() as directory:
        path = export_onnx(model, Path(directory) / ONNX_FILE)
        model.config.save_pretrained(directory)
        if optimization == "onnx-int8":
            path = quantize_onnx(path, Path(directory) / "model_int8.onnx", _calibration_inputs(seed))
        return PEMOnnxModel.from_pretrained(directory, file_name=path.name)
