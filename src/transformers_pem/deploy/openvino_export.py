"""Export PEM to OpenVINO IR, and its int8 version by NNCF post-training quantization.

OpenVINO reads the same exported program as the ONNX path (`onnx_export.export_program`: BatchNorm folded, the
deformable convolutions kept, dynamic batch, height and width in multiples of 32) through its PyTorch frontend; its
ONNX reader rejects ONNX's `DeformConv`, so the IR is not made from `model.onnx`. The IR keeps float32 weights
(OpenVINO's `save_model` would compress them to float16 by default).

An OpenVINO output directory is self-describing: `openvino_model.xml` / `.bin` (and `openvino_model_int8.xml` /
`.bin`), `config.json` and `preprocessor_config.json`; `PEMOpenVINOModel.from_pretrained(directory)` runs it. Needs the
`openvino` extra (`pip install "transformers-pem[openvino]"`: openvino, nncf).
"""

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import Tensor

from ..modeling_pem import PEMForUniversalSegmentation
from ..utils.extras import require
from ..utils.paths import check_output_dir
from .onnx_export import INPUT_NAMES, OUTPUT_NAMES, calibration_images, export_program, load_checkpoint

logger = logging.getLogger(__name__)

OPENVINO_FILE = "openvino_model.xml"
OPENVINO_INT8_FILE = "openvino_model_int8.xml"


def convert_openvino(model: PEMForUniversalSegmentation):
    """The folded model as an in-memory `openvino.Model` with dynamic batch, height and width, its input and outputs
    named as in the ONNX export (`pixel_values` -> `class_queries_logits`, `masks_queries_logits`)."""
    openvino = require("openvino", "openvino", "OpenVINO export")
    converted = openvino.convert_model(export_program(model))
    converted.inputs[0].get_tensor().set_names(set(INPUT_NAMES))
    for output, name in zip(converted.outputs, OUTPUT_NAMES):
        output.get_tensor().set_names({name})
    return converted


def save_openvino(converted, output_path: str | os.PathLike) -> Path:
    """Write an `openvino.Model` as IR (`.xml` + `.bin`) with float32 weights. Both files are written under temporary
    names beside the target and renamed, the `.xml` last: an interrupted export never leaves an IR that loads with a
    truncated or foreign `.bin`."""
    openvino = require("openvino", "openvino", "OpenVINO export")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_path.parent, prefix=".openvino-") as work:
        staged = Path(work) / output_path.name
        openvino.save_model(converted, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), output_path.with_suffix(".bin"))
        os.replace(staged, output_path)
    return output_path


def export_openvino(model: PEMForUniversalSegmentation, output_path: str | os.PathLike) -> Path:
    """Write the folded model as OpenVINO IR at `output_path` (`.xml`, with its `.bin`). Returns the path."""
    return save_openvino(convert_openvino(model), output_path)


# NNCF's bias correction after quantization: "fast" (one pass over each layer's output mean, NNCF's default), "full"
# (layer by layer on the quantized model's own inputs; slower) or "none".
BIAS_CORRECTIONS = ("fast", "full", "none")
# The names OpenVINO's PyTorch frontend gives the `torch.bmm` products (`bmm`, `bmm_1`, ...): the mask einsums (each
# layer's attention mask, the final masks) and the prototype similarities; an `ignored_patterns` entry for them all.
PRODUCT_PATTERN = r"bmm(_\d+)?/.*"


def quantize_openvino(
    converted,
    calibration: Iterable[Tensor],
    bias_correction: str = "fast",
    ignored_patterns: Sequence[str] = (),
):
    r"""int8 version of an `openvino.Model` by NNCF post-training quantization, calibrated on `pixel_values` tensors
    as the processor returns them (one image each): int8 weights per output channel, activation ranges from the
    calibration inputs (NNCF's performance preset: symmetric), then `bias_correction` (see `BIAS_CORRECTIONS`).
    The deformable convolutions, the prototype selection (argmax and gathers) and the element-wise operators stay
    float32: NNCF quantizes only the inputs of the operators OpenVINO runs in int8 (convolutions, matrix products).
    `ignored_patterns`: regular expressions of operator names to keep float32 as well (e.g. `PRODUCT_PATTERN`, the
    mask einsums; NNCF leaves the prototype similarities float32 already, their inputs being broadcast);
    benchmarks/runtime_accuracy.py measures what each choice costs and gains."""
    nncf = require("nncf", "openvino", "OpenVINO int8 quantization")
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"bias_correction={bias_correction!r} is not supported: use one of {list(BIAS_CORRECTIONS)}.")
    if isinstance(ignored_patterns, str):  # list() would split it into one-letter patterns
        raise ValueError(f"ignored_patterns is a list of regular expressions: pass [{ignored_patterns!r}].")
    for pattern in ignored_patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(f"ignored_patterns entry {pattern!r} is not a regular expression ({error}).") from None
    inputs = [pixel_values.numpy() for pixel_values in calibration]
    if not inputs:
        raise ValueError("No calibration images: int8 quantization with NNCF needs at least one.")
    return nncf.quantize(
        converted,
        nncf.Dataset(inputs),
        subset_size=len(inputs),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        fast_bias_correction=bias_correction != "full",
        ignored_scope=nncf.IgnoredScope(patterns=list(ignored_patterns)) if ignored_patterns else None,
        advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=bias_correction == "none"),
    )


def export(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    quantize: str | None = None,
    calibration_data: str | os.PathLike | None = None,
    num_calibration_images: int = 32,
    calibration_split: str = "validation",
) -> dict[str, Path]:
    """Export a checkpoint directory to a self-describing OpenVINO directory: `openvino_model.xml` / `.bin`,
    `config.json`, `preprocessor_config.json`, and with `quantize="int8"` also `openvino_model_int8.xml` / `.bin`
    (NNCF, calibrated on `calibration_data`: an image folder or glob, or a `datasets` folder or Hub name with an
    `image` column). Returns the written `.xml` files by kind (`"fp32"`, `"int8"`)."""
    require("openvino", "openvino", "OpenVINO export")
    if quantize is not None:
        require("nncf", "openvino", "OpenVINO int8 quantization")
        if quantize != "int8":
            raise ValueError(f"quantize={quantize!r} is not supported for OpenVINO: use 'int8' (NNCF) or None.")
        if calibration_data is None:
            raise ValueError(
                "OpenVINO int8 is calibrated on images: pass calibration_data (--calibration-data), a folder of "
                "images or a datasets source like those evaluated on."
            )
    elif calibration_data is not None:
        raise ValueError("calibration_data is used by int8 quantization only: add quantize='int8' (--quantize int8).")
    if num_calibration_images < 1:
        raise ValueError(f"num_calibration_images must be at least 1, got {num_calibration_images}.")
    output_dir = check_output_dir(output_dir, "output_dir")
    model, processor = load_checkpoint(checkpoint)
    # The calibration images are read before the slow conversion, so that a bad source fails at once.
    images = calibration_images(calibration_data, num_calibration_images, calibration_split) if quantize else []
    converted = convert_openvino(model)
    written = {"fp32": save_openvino(converted, output_dir / OPENVINO_FILE)}
    model.config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if quantize is not None:
        calibration = (processor(image, return_tensors="pt")["pixel_values"] for image in images)
        written["int8"] = save_openvino(quantize_openvino(converted, calibration), output_dir / OPENVINO_INT8_FILE)
    return written


__all__ = [
    "BIAS_CORRECTIONS",
    "PRODUCT_PATTERN",
    "convert_openvino",
    "export",
    "export_openvino",
    "quantize_openvino",
    "save_openvino",
]
