"""The options the command lines share: `--allocator` (`pem predict`, `train`, `evaluate`, the benchmark) and
`--runtime` / `--model-file` (`pem predict`, `pem app`)."""

import argparse

from ..deploy.runtimes import RUNTIMES
from ..inference.allocator import tune_glibc_malloc


def add_allocator_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--allocator {tuned,default}` to a command line; `apply_allocator_argument` acts on it."""
    parser.add_argument(
        "--allocator",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned (default): call `tune_glibc_malloc()` first, where the C library is glibc, so that the process "
        "reuses freed memory instead of page-faulting on fresh memory (faster on CPU); default: leave the C library's "
        "allocator alone.",
    )


def apply_allocator_argument(args: argparse.Namespace) -> None:
    """Tune the allocator if the parsed `--allocator` asks for it (call before the work starts)."""
    if args.allocator == "tuned":
        tune_glibc_malloc()


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--runtime {pytorch,onnx,openvino}` and `--model-file` (the export's file, e.g. its int8 version)."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="pytorch",
        help="pytorch (default): a save_pretrained checkpoint; onnx / openvino: a `pem export` directory run by ONNX "
        "Runtime / OpenVINO (fp32, on the CPU)",
    )
    parser.add_argument(
        "--model-file",
        metavar="FILE",
        help="with --runtime onnx or openvino: the model file of the export directory (default model.onnx / "
        "openvino_model.xml; e.g. model_int8.onnx, openvino_model_int8.xml)",
    )
