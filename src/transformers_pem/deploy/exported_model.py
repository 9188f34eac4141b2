"""What PEM's exported runtimes share: a model behind the interface of `PEMForUniversalSegmentation`.

`PEMExportedModel(pixel_values)` returns a `PEMForUniversalSegmentationOutput` with torch tensors, so the processor's
post-processing, `transformers_pem.predict` / `evaluate_model` and `pipeline("image-segmentation", model=...,
image_processor=...)` take an exported model as they take the eager one. It is inference only: no loss, no hidden
states, no prototype indices. The runtimes (`onnx_model.PEMOnnxModel`, `openvino_model.PEMOpenVINOModel`) implement
`run_logits`; the input checks, the output and the PyTorch-module surface are here.

An `nn.Module` without parameters, so that code written for PyTorch models (`eval()`, `parameters()`, `.to("cpu")`)
works on it.
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..configuration_pem import SIZE_DIVISOR, PEMConfig
from ..modeling_pem import PEMForUniversalSegmentationOutput


class PEMExportedModel(nn.Module):
    """Base class of the exported runtimes; subclasses implement `run_logits` and `from_pretrained`.

    Args:
        config ([`PEMConfig`]): the model's config (labels, thing classes), saved next to the exported model.
    """

    main_input_name = "pixel_values"
    runtime_name = "An exported"  # completes "... model is for inference only"
    placement_hint = "choose the device that runs it in from_pretrained"

    def __init__(self, config: PEMConfig):
        super().__init__()
        self.config = config
        self.training = False

    def run_logits(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(class_queries_logits, masks_queries_logits)` of a contiguous float32 (B, 3, H, W) array."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def can_generate(self) -> bool:
        return False

    def train(self, mode: bool = True) -> "PEMExportedModel":
        if mode:
            raise ValueError(f"{self.runtime_name} model is for inference only: train the PyTorch checkpoint instead.")
        return self

    def to(self, *args, **kwargs) -> "PEMExportedModel":
        values = [*args, kwargs.get("device"), kwargs.get("dtype")]
        devices = [torch.device(v) for v in values if isinstance(v, (str, torch.device, int)) and v is not None]
        dtypes = [v for v in values if isinstance(v, torch.dtype)]
        if any(device.type != "cpu" for device in devices) or any(dtype != torch.float32 for dtype in dtypes):
            raise ValueError(
                f"{self.runtime_name} model takes and returns float32 CPU tensors; {self.placement_hint}."
            )
        return self

    def forward(
        self, pixel_values: Tensor, pixel_mask: Tensor | None = None, **kwargs
    ) -> PEMForUniversalSegmentationOutput:
        """pixel_values (B, 3, H, W) float32 with H and W multiples of 32 (the processor pads to them); `pixel_mask`
        is passed through to the output for post-processing, as by the eager model. Other keyword arguments of the
        eager model (`output_hidden_states`, ...) are not available in an exported model."""
        unsupported = sorted(key for key, value in kwargs.items() if value and key != "return_dict")
        if unsupported:
            raise ValueError(
                f"{self.runtime_name} model returns the logits only; {unsupported} need the PyTorch model."
            )
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be a (batch_size, 3, height, width) tensor, got "
                f"{getattr(pixel_values, 'shape', type(pixel_values))}. Use PEMImageProcessor to prepare images."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor (normalised as PEMImageProcessor returns it), got "
                f"{pixel_values.dtype}."
            )
        height, width = pixel_values.shape[-2:]
        if height % SIZE_DIVISOR or width % SIZE_DIVISOR:
            raise ValueError(
                f"The exported model takes heights and widths in multiples of {SIZE_DIVISOR}, got {height}x{width}. "
                "PEMImageProcessor pads images to them."
            )
        array = np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())
        class_logits, masks_logits = self.run_logits(array)
        return PEMForUniversalSegmentationOutput(
            class_queries_logits=torch.from_numpy(class_logits),
            masks_queries_logits=torch.from_numpy(masks_logits),
            pixel_mask=pixel_mask,
        )


def load_exported_config(directory: Path) -> PEMConfig:
    """The PEM config saved beside an exported model, with a clear error when it is missing or another model's."""
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{directory} has no config.json: an exported directory holds the model's config beside the model "
            "(`pem export` writes it)."
        )
    with open(path) as file:
        model_type = json.load(file).get("model_type")
    if model_type != PEMConfig.model_type:
        raise ValueError(f"{path} is the config of a {model_type!r} model, not of PEM.")
    return PEMConfig.from_pretrained(directory)


__all__ = ["PEMExportedModel", "load_exported_config"]
