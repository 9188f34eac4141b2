"""PEM on ONNX Runtime: an exported graph (`deploy.onnx_export`) behind the interface of `PEMForUniversalSegmentation`.

`PEMOnnxModel(pixel_values)` returns a `PEMForUniversalSegmentationOutput` as the eager model does (see
`deploy.exported_model`), so the processor, `predict`, `evaluate_model` and the pipeline take it.

Written by hand rather than on optimum's `ORTModel`: optimum-onnx requires transformers < 4.58, and this package
targets transformers 5.
"""

import os
from pathlib import Path

import numpy as np
import torch

from ..configuration_pem import PEMConfig
from ..utils.extras import require
from .exported_model import PEMExportedModel, load_exported_config
from .onnx_export import INPUT_NAMES, ONNX_FILE, OUTPUT_NAMES


class PEMOnnxModel(PEMExportedModel):
    """An exported PEM graph run by an ONNX Runtime `InferenceSession`.

    Args:
        session (`onnxruntime.InferenceSession`): the session of a graph written by `deploy.onnx_export.export_onnx`.
        config ([`PEMConfig`]): the model's config (labels, thing classes), saved next to the graph.
    """

    runtime_name = "An ONNX Runtime"
    placement_hint = (
        "choose the device that runs it with `providers=` in PEMOnnxModel.from_pretrained (e.g. "
        "['CUDAExecutionProvider'])"
    )

    def __init__(self, session, config: PEMConfig):
        super().__init__(config)
        inputs = [node.name for node in session.get_inputs()]
        outputs = [node.name for node in session.get_outputs()]
        if inputs != list(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ValueError(
                f"This ONNX graph is not a PEM export: it takes {inputs} and returns {outputs}, where "
                f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)} is expected. Export the checkpoint with "
                "`pem export CHECKPOINT --output DIR`."
            )
        self.session = session

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
        config = load_exported_config(directory)
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

    def run_logits(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        class_logits, masks_logits = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: pixel_values})
        return class_logits, masks_logits


__all__ = ["PEMOnnxModel"]
