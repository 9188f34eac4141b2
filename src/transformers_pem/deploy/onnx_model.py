"""PEM on ONNX Runtime: an exported graph (`deploy.onnx_export`) behind the interface of `PEMForUniversalSegmentation`.

`PEMOnnxModel(pixel_values)` returns a `PEMForUniversalSegmentationOutput` with torch tensors, so the processor's
post-processing, `transformers_pem.predict` / `evaluate_model` and `pipeline("image-segmentation", model=...,
image_processor=...)` take it as they take the eager model. It is inference only: no loss, no hidden states.

Written by hand rather than on optimum's `ORTModel`: optimum-onnx requires transformers < 4.58, and this package
targets transformers 5. The class is an `nn.Module` without parameters so that code written for PyTorch models
(`eval()`, `parameters()`, `.to("cpu")`) works on it.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..configuration_pem import SIZE_DIVISOR, PEMConfig
from ..modeling_pem import PEMForUniversalSegmentationOutput
from ..utils.extras import require
from .onnx_export import INPUT_NAMES, ONNX_FILE, OUTPUT_NAMES


class PEMOnnxModel(nn.Module):
    """An exported PEM graph run by an ONNX Runtime `InferenceSession`.

    Args:
        session (`onnxruntime.InferenceSession`): the session of a graph written by `deploy.onnx_export.export_onnx`.
        config ([`PEMConfig`]): the model's config (labels, thing classes), saved next to the graph.
    """

    main_input_name = "pixel_values"

    def __init__(self, session, config: PEMConfig):
        super().__init__()
        inputs = [node.name for node in session.get_inputs()]
        outputs = [node.name for node in session.get_outputs()]
        if inputs != list(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ValueError(
                f"This ONNX graph is not a PEM export: it takes {inputs} and returns {outputs}, where "
                f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)} is expected. Export the checkpoint with "
                "`pem export CHECKPOINT --output DIR`."
            )
        self.session = session
        self.config = config
        self.training = False

    @classmethod
    def from_pretrained(
        cls,
        model_directory: str | os.PathLike,
        file_name: str = ONNX_FILE,
        providers: list | None = None,
        session_options=None,
    ) -> "PEMOnnxModel":
        """Load `file_name` (`model.onnx`, or `model_int8.onnx`) and `config.json` from an export directory.

        `providers` are ONNX Runtime execution providers, in order of preference (default: CPU). CUDA
        (`"CUDAExecutionProvider"`) and TensorRT (`"TensorrtExecutionProvider"`) need `onnxruntime-gpu`; outputs are
        returned on the CPU whichever provider runs the graph. `session_options`: an `onnxruntime.SessionOptions`
        (thread counts, graph optimisation level); by default as many threads as PyTorch uses, which sleep between
        runs instead of spinning, so that they leave the cores to the post-processing that follows each run.
        """
        ort = require("onnxruntime", "export", "Running PEM with ONNX Runtime")
        directory = Path(model_directory)
        path = directory / file_name
        if not path.is_file():
            found = sorted(p.name for p in directory.glob("*.onnx")) if directory.is_dir() else []
            raise ValueError(
                f"No ONNX model at {path}"
                + (f" (the directory has {found}: pass file_name=...)" if found else "")
                + ". Export one with `pem export CHECKPOINT --output DIR`."
            )
        config = _load_config(directory)
        available = ort.get_available_providers()
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        missing = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if missing:
            raise ValueError(
                f"ONNX Runtime providers {missing} are not available in this installation (available: {available}). "
                "CUDA and TensorRT need the onnxruntime-gpu package."
            )
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.intra_op_num_threads = torch.get_num_threads()
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
            raise ValueError(
                f"{path} is not a loadable ONNX model ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
                "It may be truncated or corrupt: export it again."
            ) from None
        return cls(session, config)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def can_generate(self) -> bool:
        return False

    def train(self, mode: bool = True) -> "PEMOnnxModel":
        if mode:
            raise ValueError("An ONNX Runtime model is for inference only: train the PyTorch checkpoint instead.")
        return self

    def to(self, *args, **kwargs) -> "PEMOnnxModel":
        values = [*args, kwargs.get("device"), kwargs.get("dtype")]
        devices = [torch.device(v) for v in values if isinstance(v, (str, torch.device, int)) and v is not None]
        dtypes = [v for v in values if isinstance(v, torch.dtype)]
        if any(device.type != "cpu" for device in devices) or any(dtype != torch.float32 for dtype in dtypes):
            raise ValueError(
                "An ONNX Runtime model takes and returns float32 CPU tensors; choose the device that runs it with "
                "`providers=` in PEMOnnxModel.from_pretrained (e.g. ['CUDAExecutionProvider'])."
            )
        return self

    def forward(
        self, pixel_values: Tensor, pixel_mask: Tensor | None = None, **kwargs
    ) -> PEMForUniversalSegmentationOutput:
        """pixel_values (B, 3, H, W) float32 with H and W multiples of 32 (the processor pads to them); `pixel_mask`
        is passed through to the output for post-processing, as by the eager model. Other keyword arguments of the
        eager model (`output_hidden_states`, ...) are not available in the exported graph."""
        unsupported = sorted(key for key, value in kwargs.items() if value and key != "return_dict")
        if unsupported:
            raise ValueError(f"The ONNX model returns the logits only; {unsupported} need the PyTorch model.")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be a (batch_size, 3, height, width) tensor, got "
                f"{getattr(pixel_values, 'shape', type(pixel_values))}. Use PEMImageProcessor to prepare images."
            )
        height, width = pixel_values.shape[-2:]
        if height % SIZE_DIVISOR or width % SIZE_DIVISOR:
            raise ValueError(
                f"The exported graph takes heights and widths in multiples of {SIZE_DIVISOR}, got {height}x{width}. "
                "PEMImageProcessor pads images to them."
            )
        array = np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())
        class_logits, masks_logits = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: array})
        return PEMForUniversalSegmentationOutput(
            class_queries_logits=torch.from_numpy(class_logits),
            masks_queries_logits=torch.from_numpy(masks_logits),
            pixel_mask=pixel_mask,
        )


def _load_config(directory: Path) -> PEMConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{directory} has no config.json: an exported directory holds the model's config beside the graph "
            "(`pem export` writes it)."
        )
    with open(path) as file:
        model_type = json.load(file).get("model_type")
    if model_type != PEMConfig.model_type:
        raise ValueError(f"{path} is the config of a {model_type!r} model, not of PEM.")
    return PEMConfig.from_pretrained(directory)


__all__ = ["PEMOnnxModel"]
