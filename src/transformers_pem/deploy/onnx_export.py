"""Export PEM for deployment outside eager PyTorch: a `torch.export` program, an ONNX graph and its int8 version.

The exported model is the real PEM, unchanged: BatchNorm is folded into the convolutions first, the deformable
convolutions stay deformable (torchvision's operator, which becomes ONNX's native `DeformConv`), and the prototype
selection keeps its exact argmax. Inputs are `pixel_values` with a dynamic batch size and a dynamic height and width
(multiples of 32, as `PEMImageProcessor` pads them); outputs are the two logits tensors that post-processing reads,
`class_queries_logits` and `masks_queries_logits`. Post-processing stays in Python (the processor), as in optimum's
ONNX export of MaskFormer.

An ONNX output directory is self-describing: `model.onnx` (and `model_int8.onnx`), `config.json` and
`preprocessor_config.json`; `PEMOnnxModel.from_pretrained(directory)` runs it with ONNX Runtime. Needs the `export`
extra (`pip install "transformers-pem[export]"`: onnx, onnxscript, onnxruntime).
"""

import copy
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from ..configuration_pem import SIZE_DIVISOR
from ..image_processing_pem import PEMImageProcessor
from ..modeling_pem import PEMForUniversalSegmentation
from ..utils.extras import require
from ..utils.paths import check_local_or_hub, check_output_dir

logger = logging.getLogger(__name__)

# ONNX's `DeformConv` exists from opset 19; torch's exporter writes up to 23 and ONNX Runtime runs them all on CPU.
ONNX_OPSETS = (19, 20, 21, 22, 23)
DEFAULT_OPSET = 19
ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
INPUT_NAMES = ("pixel_values",)
OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits")
QUANTIZATION_MODES = ("int8", "int8-dynamic")
# The operators quantized to int8: those that carry the multiply-adds. Element-wise operators stay float32 (a quantized
# Add or Mul costs a quantize/dequantize pair and saves no arithmetic).
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# The traced example: batch 2 (an example batch of 1 would be specialised as a constant) at the smallest size whose
# stride-32 map is not 1x1 in both directions (a 1-wide map would specialise too).
EXAMPLE_SIZE = (64, 96)


class PEMLogitsModule(nn.Module):
    """A PEM model reduced to the exported signature: `pixel_values` in, `(class_queries_logits,
    masks_queries_logits)` out."""

    def __init__(self, model: PEMForUniversalSegmentation):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model(pixel_values, return_dict=True)
        return outputs.class_queries_logits, outputs.masks_queries_logits


def export_ready(model: PEMForUniversalSegmentation) -> PEMLogitsModule:
    """The model prepared for export: a folded copy in eval mode (the model itself is left as it is)."""
    if not isinstance(model, PEMForUniversalSegmentation):
        raise TypeError(f"Expected a PEMForUniversalSegmentation to export, got {type(model).__name__}.")
    if not getattr(model, "batch_norm_folded", False):
        model = copy.deepcopy(model).fold_batch_norm()
    return PEMLogitsModule(model).eval()


def dynamic_shapes() -> dict:
    """`torch.export` dynamic shapes of `pixel_values`: any batch size, heights and widths in multiples of 32."""
    dim = torch.export.Dim
    return {
        "pixel_values": {
            0: dim("batch_size", min=1, max=1024),
            2: SIZE_DIVISOR * dim("height_blocks", min=1, max=1024),
            3: SIZE_DIVISOR * dim("width_blocks", min=1, max=1024),
        }
    }


def _example_input(model: PEMLogitsModule) -> Tensor:
    parameter = next(model.parameters())
    return torch.zeros(2, 3, *EXAMPLE_SIZE, dtype=parameter.dtype, device=parameter.device)


def export_program(model: PEMForUniversalSegmentation) -> torch.export.ExportedProgram:
    """`torch.export.export` of the folded model with dynamic batch, height and width. Save it with
    `torch.export.save(program, "pem.pt2")`; `torch.export.load(...).module()(pixel_values)` returns the two logits
    tensors (import torchvision first: the program calls its deformable-convolution operator)."""
    module = export_ready(model)
    with torch.no_grad():
        return torch.export.export(module, (_example_input(module),), dynamic_shapes=dynamic_shapes())


def load_checkpoint(checkpoint: str | os.PathLike) -> tuple[PEMForUniversalSegmentation, PEMImageProcessor]:
    """The model and processor of a checkpoint directory (or Hub id) saved with `save_pretrained`."""
    if not Path(checkpoint).is_dir() and Path(checkpoint).exists():
        raise ValueError(f"{checkpoint} is a file: pass the checkpoint directory that holds config.json.")
    check_local_or_hub(checkpoint, "The checkpoint", "a folder written by save_pretrained or a Hub id")
    try:
        model = PEMForUniversalSegmentation.from_pretrained(checkpoint)
    except OSError as error:
        raise ValueError(
            f"Cannot load a PEM checkpoint from {checkpoint}: a directory written by save_pretrained (config.json and "
            f"model.safetensors) or a Hub id is expected ({error})."
        ) from None
    try:
        processor = PEMImageProcessor.from_pretrained(checkpoint)
    except OSError:
        raise ValueError(
            f"{checkpoint} has no preprocessor_config.json: save the processor with the model "
            "(processor.save_pretrained(directory)), so that the exported directory can be used on its own."
        ) from None
    return model, processor


def export_onnx(
    model: PEMForUniversalSegmentation,
    output_path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the folded model as an ONNX graph at `output_path` (dynamic batch, height and width) and check it with
    `onnx.checker`. Returns the path."""
    onnx = require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export")
    if opset not in ONNX_OPSETS:
        raise ValueError(
            f"opset {opset} is not supported: PEM's deformable convolutions need ONNX's DeformConv, which exists from "
            f"opset 19. Use one of {list(ONNX_OPSETS)} (default {DEFAULT_OPSET})."
        )
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    module = export_ready(model)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (_example_input(module),),
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes(),
            verbose=False,
        )
    # Written next to the target and renamed: an interrupted export never leaves a truncated model.onnx behind.
    with tempfile.NamedTemporaryFile(dir=output_path.parent, suffix=".onnx", delete=False) as file:
        temporary = Path(file.name)
    try:
        program.save(str(temporary))
        onnx.checker.check_model(str(temporary), full_check=True)
        os.replace(temporary, output_path)
    finally:
        temporary.unlink(missing_ok=True)
    return output_path


def calibration_images(source: str | os.PathLike, num_images: int, split: str = "validation") -> list:
    """Up to `num_images` PIL images for int8 calibration: the image files of a folder or glob pattern (as `pem
    predict` finds them, in name order), or the `image` column of a dataset that `load_segmentation_dataset` reads
    (a `save_to_disk` folder, a `.parquet` file, a Hub name; `split` selects the split)."""
    from ..data.sources import IMAGE_SUFFIXES, find_sources
    from ..image_loading_pem import image_to_rgb, load_image

    path = Path(source)
    saved_dataset = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    if (path.is_dir() and not saved_dataset) or any(character in str(source) for character in "*?["):
        files = [file for file in find_sources(source) if file.suffix.lower() in IMAGE_SUFFIXES][:num_images]
        if not files:
            raise ValueError(f"No images in {source} (looked for {', '.join(IMAGE_SUFFIXES)}) to calibrate with.")
        return [load_image(file) for file in files]
    require("datasets", "train", "Calibration on a `datasets` split")
    from ..data.loaders import _load_dataset_source

    dataset = _load_dataset_source(str(source), split, {})
    if "image" not in dataset.column_names:
        raise ValueError(f"The calibration dataset has no 'image' column (columns: {dataset.column_names}).")
    return [image_to_rgb(image) for image in dataset.select(range(min(num_images, len(dataset))))["image"]]


def quantize_onnx(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration: Iterable[Tensor] | None = None,
) -> Path:
    """int8 version of an exported PEM graph with ONNX Runtime's quantization tools.

    With `calibration` inputs (`pixel_values` tensors as the processor returns them, e.g. one image each): static
    quantization, QDQ format, int8 weights per output channel and uint8 activations whose ranges are the min/max over
    the calibration inputs. Without: dynamic quantization (weights int8, activation ranges computed at run time), the
    no-data fallback. The deformable convolutions and the prototype selection stay float32 (ONNX Runtime has no int8
    kernels for them).
    """
    quantization = require("onnxruntime.quantization", "export", "int8 quantization")
    output_path = Path(output_path)
    with tempfile.TemporaryDirectory() as work:
        # Shape inference and graph optimisation first, as ONNX Runtime's quantization guide advises.
        prepared = Path(work) / "prepared.onnx"
        quantization.quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        if calibration is not None:
            quantization.quantize_static(
                str(prepared),
                str(output_path),
                _CalibrationReader(calibration),
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
            )
        else:
            quantization.quantize_dynamic(
                str(prepared),
                str(output_path),
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                weight_type=quantization.QuantType.QInt8,
            )
    return output_path


class _CalibrationReader:
    """ONNX Runtime's calibration-data protocol (`get_next`) over `pixel_values` tensors."""

    def __init__(self, calibration: Iterable[Tensor]):
        self._batches: Iterator = ({INPUT_NAMES[0]: pixel_values.numpy()} for pixel_values in calibration)

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def export(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    calibration_data: str | os.PathLike | None = None,
    num_calibration_images: int = 32,
    calibration_split: str = "validation",
) -> dict[str, Path]:
    """Export a checkpoint directory to a self-describing ONNX directory: `model.onnx`, `config.json`,
    `preprocessor_config.json`, and with `quantize="int8"` also `model_int8.onnx` (static quantization calibrated on
    `calibration_data`, or dynamic quantization without it; `"int8-dynamic"` forces dynamic). Returns the written
    model files by kind (`"fp32"`, `"int8"`)."""
    if quantize is not None and quantize not in QUANTIZATION_MODES:
        raise ValueError(f"quantize={quantize!r} is not supported: use one of {list(QUANTIZATION_MODES)} or None.")
    if quantize == "int8-dynamic" and calibration_data is not None:
        raise ValueError("Dynamic quantization uses no calibration data: drop calibration_data, or use 'int8'.")
    if num_calibration_images < 1:
        raise ValueError(f"num_calibration_images must be at least 1, got {num_calibration_images}.")
    output_dir = check_output_dir(output_dir, "output_dir")
    model, processor = load_checkpoint(checkpoint)
    calibration = None
    if quantize == "int8" and calibration_data is not None:
        images = calibration_images(calibration_data, num_calibration_images, calibration_split)
        calibration = (processor(image, return_tensors="pt")["pixel_values"] for image in images)
    elif quantize == "int8":
        logger.warning("No calibration data given: int8 falls back to dynamic quantization (slower than static).")
    written = {"fp32": export_onnx(model, output_dir / ONNX_FILE, opset)}
    model.config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if quantize is not None:
        written["int8"] = quantize_onnx(written["fp32"], output_dir / INT8_FILE, calibration)
    return written


__all__ = ["PEMLogitsModule", "calibration_images", "export", "export_onnx", "export_program", "quantize_onnx"]
