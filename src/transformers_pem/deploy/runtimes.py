"""The runtimes the applications (`pem predict`, `pem evaluate`, `pem app`) run a model directory with: eager
PyTorch (a `save_pretrained` checkpoint) or an exported directory (`pem export`) on ONNX Runtime or OpenVINO."""

import os
from pathlib import Path

from torch import nn

RUNTIMES = ("pytorch", "onnx", "openvino")


def check_runtime(
    runtime: str, device: str | None = None, fold_batch_norm: bool = False, model_file: str | None = None
) -> None:
    """Refuse an unknown runtime, PyTorch options given to an exported runtime and a model file given to PyTorch
    (before any model is loaded)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime {runtime!r}: use one of {list(RUNTIMES)}.")
    if runtime == "pytorch" and model_file is not None:
        raise ValueError("--model-file picks the file of an export directory: add --runtime onnx or openvino.")
    if runtime != "pytorch" and (device not in (None, "cpu") or fold_batch_norm):
        raise ValueError(
            f"The {runtime} runtime runs the exported model as it is, on the CPU: drop --device and --fold-batch-norm."
        )


def check_device(device: str) -> None:
    """Refuse a device string torch does not parse, or a device this machine does not have (before any model is
    loaded, not deep inside the first `.to`)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"--device {device!r} is not a torch device ({error}): use cpu, cuda, cuda:1, mps..."
        ) from None
    if parsed.type == "cpu":
        return
    backend = getattr(torch, parsed.type, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        raise ValueError(f"--device {device}: this machine has no {parsed.type} device: use --device cpu.")
    if parsed.index is not None and hasattr(backend, "device_count") and parsed.index >= backend.device_count():
        raise ValueError(f"--device {device}: this machine has {backend.device_count()} {parsed.type} device(s).")


def check_model_directory(model: str | os.PathLike) -> None:
    """Refuse a path that is not a saved (or exported) PEM model directory."""
    if not (Path(model) / "config.json").is_file():
        raise ValueError(f"{model} is not a saved PEM model (no config.json): pass a save_pretrained directory.")


def load_model(
    model: str | os.PathLike, runtime: str = "pytorch", device: str = "cpu", model_file: str | None = None
) -> nn.Module:
    """The model of a directory for `runtime`: `PEMForUniversalSegmentation` (on `device`, eval mode),
    `PEMOnnxModel` or `PEMOpenVINOModel` (`model_file` picks e.g. the int8 file of an export directory)."""
    check_runtime(runtime, device, model_file=model_file)
    check_model_directory(model)
    if runtime == "pytorch":
        from transformers import AutoModelForUniversalSegmentation

        return AutoModelForUniversalSegmentation.from_pretrained(model).to(device).eval()
    if runtime == "onnx":
        from .onnx_model import PEMOnnxModel

        return PEMOnnxModel.from_pretrained(model, **({"file_name": model_file} if model_file else {}))
    from .openvino_model import PEMOpenVINOModel

    return PEMOpenVINOModel.from_pretrained(model, **({"file_name": model_file} if model_file else {}))


__all__ = ["RUNTIMES", "check_model_directory", "check_runtime", "load_model"]
