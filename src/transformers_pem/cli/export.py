"""`pem export CHECKPOINT --output DIR`: a checkpoint as a self-describing ONNX directory
(`model.onnx`, `config.json`, `preprocessor_config.json`), optionally with its int8 version (see
`deploy.onnx_export`)."""

import argparse
from collections.abc import Sequence

from ..deploy.onnx_export import DEFAULT_OPSET, INT8_FILE, ONNX_OPSETS, QUANTIZATION_MODES, export


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pem export",
        description="Export a PEM checkpoint to ONNX (BatchNorm folded, deformable convolutions as DeformConv, "
        "dynamic batch, height and width), optionally quantized to int8 for ONNX Runtime.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory (or Hub id) written by save_pretrained")
    parser.add_argument("--output", required=True, help="directory to write model.onnx, config.json and the processor")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, choices=ONNX_OPSETS, help="ONNX opset (%(default)s)"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATION_MODES,
        help=f"also write {INT8_FILE}: int8 = static QDQ quantization calibrated on --calibration-data (dynamic "
        "without it); int8-dynamic = dynamic quantization",
    )
    parser.add_argument(
        "--calibration-data",
        help="a folder of images, or a datasets folder (save_to_disk) or Hub name with an 'image' column",
    )
    parser.add_argument("--calibration-split", default="validation", help="split of a datasets source (%(default)s)")
    parser.add_argument("--num-calibration-images", type=int, default=32, help="images to calibrate on (%(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    written = export(
        args.checkpoint,
        args.output,
        opset=args.opset,
        quantize=args.quantize,
        calibration_data=args.calibration_data,
        num_calibration_images=args.num_calibration_images,
        calibration_split=args.calibration_split,
    )
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
