"""`pem export CHECKPOINT --output DIR`: a checkpoint as a self-describing ONNX directory (`model.onnx`, `config.json`,
`preprocessor_config.json`; see `deploy.onnx_export`) or, with `--format openvino`, OpenVINO directory
(`openvino_model.xml` / `.bin`, ...; see `deploy.openvino_export`), optionally with its int8 version."""

import argparse
from collections.abc import Sequence

from ..deploy import onnx_export, openvino_export
from ..deploy.onnx_export import DEFAULT_OPSET, INT8_FILE, ONNX_OPSETS, QUANTIZATION_MODES
from ..deploy.openvino_export import OPENVINO_INT8_FILE

FORMATS = ("onnx", "openvino")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pem export",
        description="Export a PEM checkpoint (BatchNorm folded, the deformable convolutions kept, dynamic batch, "
        "height and width) to ONNX for ONNX Runtime or to OpenVINO IR, optionally quantized to int8.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory (or Hub id) written by save_pretrained")
    parser.add_argument("--output", required=True, help="directory to write the model, config.json and the processor")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="onnx (default): model.onnx for ONNX Runtime; openvino: openvino_model.xml/.bin (fastest on x86 CPUs)",
    )
    parser.add_argument(
        "--opset", type=int, default=None, choices=ONNX_OPSETS, help=f"ONNX opset ({DEFAULT_OPSET}; onnx only)"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATION_MODES,
        help=f"also write the int8 model ({INT8_FILE} or {OPENVINO_INT8_FILE}): int8 = static quantization "
        "calibrated on --calibration-data (onnx: QDQ, dynamic without calibration data; openvino: NNCF, which needs "
        "it); int8-dynamic = dynamic quantization (onnx only)",
    )
    parser.add_argument(
        "--calibration-data",
        help="a folder of images or glob, or a datasets folder (save_to_disk) or Hub name with an 'image' column",
    )
    parser.add_argument("--calibration-split", default="validation", help="split of a datasets source (%(default)s)")
    parser.add_argument("--num-calibration-images", type=int, default=32, help="images to calibrate on (%(default)s)")
    args = parser.parse_args(argv)
    if args.format == "openvino" and args.opset is not None:
        parser.error("--opset is an ONNX option: drop it with --format openvino")
    if args.format == "openvino" and args.quantize == "int8-dynamic":
        parser.error("--quantize int8-dynamic is an ONNX Runtime mode: use --quantize int8 with --format openvino")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    calibration = {
        "quantize": args.quantize,
        "calibration_data": args.calibration_data,
        "num_calibration_images": args.num_calibration_images,
        "calibration_split": args.calibration_split,
    }
    if args.format == "openvino":
        written = openvino_export.export(args.checkpoint, args.output, **calibration)
    else:
        written = onnx_export.export(args.checkpoint, args.output, opset=args.opset or DEFAULT_OPSET, **calibration)
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
