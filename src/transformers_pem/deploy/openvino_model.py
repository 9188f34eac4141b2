"""PEM on OpenVINO: an exported IR (`deploy.openvino_export`) behind the interface of `PEMForUniversalSegmentation`.

`PEMOpenVINOModel(pixel_values)` returns a `PEMForUniversalSegmentationOutput` as the eager model does (see
`deploy.exported_model`), so the processor, `predict`, `evaluate_model` and the pipeline take it.

Written by hand rather than on optimum-intel's `OVModel`: optimum-intel has no universal-segmentation task and pins
transformers versions below 5.
"""

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..configuration_pem import PEMConfig
from ..utils.extras import require
from .exported_model import PEMExportedModel, load_exported_config
from .onnx_export import INPUT_NAMES, OUTPUT_NAMES
from .openvino_export import OPENVINO_FILE

# Input shapes compiled statically at once (least recently used dropped first); see `PEMOpenVINOModel.run_logits`.
STATIC_SHAPES_KEPT = 4

# OpenVINO's inference precisions PEM is run in. An explicit choice: on CPUs with AMX or AVX512-BF16 OpenVINO's default
# is bf16, which moves PEM's class logits by ~3e-2 and flips near-tie prototype selections.
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class PEMOpenVINOModel(PEMExportedModel):
    """An exported PEM IR compiled by OpenVINO.

    The IR has a dynamic batch, height and width. A shape seen for the first time runs the model compiled for any
    shape; from its second time on, a model compiled for that shape alone (faster: static kernels and folded shape
    arithmetic), kept for the `STATIC_SHAPES_KEPT` most recent shapes. A folder of equally sized images runs static
    from its second image; images of ever new sizes never pay a compilation.

    Args:
        compiled_model (`openvino.CompiledModel`): the IR written by `deploy.openvino_export.export`, compiled for
            dynamic shapes.
        config ([`PEMConfig`]): the model's config (labels, thing classes), saved next to the IR.
        compile_static (`Callable`, *optional*): shape -> the IR compiled for that shape; None: dynamic only.
    """

    runtime_name = "An OpenVINO"
    placement_hint = "choose the device that runs it with `device=` in PEMOpenVINOModel.from_pretrained (e.g. 'GPU')"

    def __init__(self, compiled_model, config: PEMConfig, compile_static: Callable | None = None):
        super().__init__(config)
        inputs = [sorted(port.get_names()) for port in compiled_model.inputs]
        outputs = {name for port in compiled_model.outputs for name in port.get_names()}
        if inputs != [list(INPUT_NAMES)] or not set(OUTPUT_NAMES) <= outputs:
            raise ValueError(
                f"This OpenVINO model is not a PEM export: it takes {inputs} and returns {sorted(outputs)}, where "
                f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)} is expected. Export the checkpoint with "
                "`pem export CHECKPOINT --format openvino --output DIR`."
            )
        self.compiled_model = compiled_model
        self.request = compiled_model.create_infer_request()
        self.compile_static = compile_static
        self.seen_shapes: set[tuple[int, ...]] = set()
        self.static_requests: OrderedDict[tuple[int, ...], object] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        model_directory: str | os.PathLike,
        file_name: str = OPENVINO_FILE,
        precision: str = "fp32",
        num_threads: int | None = None,
        device: str = "CPU",
    ) -> "PEMOpenVINOModel":
        """Load `file_name` (`openvino_model.xml`, or `openvino_model_int8.xml`) and `config.json` from an export
        directory and compile it for `device` (an OpenVINO device name: `"CPU"`, `"GPU"`, ...).

        `precision`: `"fp32"` (default: the eager model's values) or `"bf16"` (faster on CPUs with AMX or
        AVX512-BF16, logits ~3e-2 away). An int8 IR runs its quantized layers in int8 and the others in `precision`.
        `num_threads`: CPU inference threads (default: as many as PyTorch uses).
        """
        openvino = require("openvino", "openvino", "Running PEM with OpenVINO")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported: use one of {list(PRECISIONS)}.")
        num_threads = torch.get_num_threads() if num_threads is None else num_threads
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}.")
        directory = Path(model_directory)
        path = directory / file_name
        if path.suffix != ".xml" or not path.is_file():
            found = sorted(p.name for p in directory.glob("*.xml")) if directory.is_dir() else []
            raise ValueError(
                f"No OpenVINO model at {path}"
                + (f" (the directory has {found}: pass file_name=...)" if found else "")
                + ". Export one with `pem export CHECKPOINT --format openvino --output DIR`."
            )
        if not path.with_suffix(".bin").is_file():
            raise ValueError(f"{path} has no weights file {path.with_suffix('.bin').name} beside it: export it again.")
        config = load_exported_config(directory)
        core = openvino.Core()
        if device not in core.available_devices:
            raise ValueError(f"OpenVINO device {device!r} is not available (available: {core.available_devices}).")
        properties = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            properties["INFERENCE_NUM_THREADS"] = num_threads
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, device, properties)
        except RuntimeError as error:  # OpenVINO raises RuntimeError for unreadable or inconsistent IR files
            raise ValueError(
                f"{path} is not a loadable OpenVINO model ({str(error).strip().splitlines()[0][:300]}). "
                "It may be truncated or corrupt: export it again."
            ) from None

        def compile_static(shape: tuple[int, ...]):
            static = model.clone()
            static.reshape({INPUT_NAMES[0]: list(shape)})
            return core.compile_model(static, device, properties)

        return cls(compiled, config, compile_static)

    def run_logits(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = pixel_values.shape
        request = self.static_requests.get(shape)
        if request is not None:
            self.static_requests.move_to_end(shape)
        elif shape in self.seen_shapes and self.compile_static is not None:
            request = self.static_requests[shape] = self.compile_static(shape).create_infer_request()
            if len(self.static_requests) > STATIC_SHAPES_KEPT:
                self.static_requests.popitem(last=False)
        else:
            self.seen_shapes.add(shape)
            request = self.request
        results = request.infer({INPUT_NAMES[0]: pixel_values})  # copies of the output buffers
        return tuple(results[name] for name in OUTPUT_NAMES)


__all__ = ["PEMOpenVINOModel"]
