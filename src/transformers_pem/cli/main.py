"""`pem`, the transformers-pem command line: `pem predict`, and the training, evaluation, conversion and benchmark
command lines as subcommands (`pem train --help`, ...). Exit codes: 0 done, 1 an error (one line on stderr), 2 bad
arguments."""

import argparse
import importlib
import logging
import socket
import sys
from pathlib import Path

from ..presets_pem import TASKS
from .options import add_allocator_argument, add_runtime_arguments, apply_allocator_argument

# Subcommands that are the package's other command lines: (module of their `main(argv)`, one-line help).
DELEGATED = {
    "train": ("transformers_pem.cli.train", "fine-tune PEM with accelerate (official recipe by default)"),
    "evaluate": ("transformers_pem.cli.evaluate", "the paper's metrics of a checkpoint on a dataset"),
    "convert": ("transformers_pem.cli.convert", "convert an official detectron2 checkpoint"),
    "export": ("transformers_pem.cli.export", "export a checkpoint to ONNX or OpenVINO (and int8)"),
    "plot": ("transformers_pem.cli.plot", "draw a training run's curves (loss terms, learning rate, metrics)"),
    "benchmark": (None, "latency, GMACs and memory against Mask2Former (from a clone of the repository)"),
}

EXAMPLES = """examples:
  pem predict street.jpg --model pem-stdc1-cityscapes-panoptic
  pem predict "frames/*.png" --model DIR --task semantic --out predictions --batch-size 4
  pem predict drive.mp4 --model DIR --task instance
  pem app --model DIR   (then open http://127.0.0.1:7860)
  pem train --preset pem-stdc1-cityscapes-panoptic --task panoptic --data-root data/cityscapes --output-dir runs/stdc1
  pem evaluate runs/stdc1/final --dataset cityscapes --data-root data/cityscapes --task panoptic
  pem convert --checkpoint model_final.pth --config pem_STDC1_bs32_90k.yaml --output-dir pem-stdc1
  pem export runs/stdc1/final --output stdc1-onnx --quantize int8 --calibration-data data/cityscapes/leftImg8bit/val
  pem export runs/stdc1/final --format openvino --output stdc1-ov --quantize int8 --calibration-data "val/*.png"
  pem predict street.jpg --model stdc1-ov --runtime openvino --model-file openvino_model_int8.xml
  pem plot runs/stdc1   (writes runs/stdc1/curves.png from runs/stdc1/scalars.jsonl)
  accelerate launch -m transformers_pem.cli.train ...   (several processes)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pem",
        description="PEM (Prototype-based Efficient MaskFormer): predict, train, evaluate, convert, export.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    predict = subcommands.add_parser(
        "predict",
        help="segment images, folders, glob patterns or videos; write overlays, label PNGs and segment JSON",
        description="Segment every image (or video frame) of SOURCE and write overlays/, segments/ and the official "
        "label files (semantic/, panoptic/ + panoptic.json, or instances.json) under --out.",
    )
    predict.add_argument("source", metavar="SOURCE", help="an image, a video, a folder or a quoted glob pattern")
    predict.add_argument("--model", required=True, help="a saved PEM checkpoint directory")
    predict.add_argument("--task", choices=TASKS, default="panoptic")
    predict.add_argument("--out", default="pem_predictions", help="output folder (default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    predict.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    add_runtime_arguments(predict)
    predict.add_argument(
        "--resume", action="store_true", help="continue a run into --out: images it has done are skipped"
    )
    predict.add_argument(
        "--overwrite", action="store_true", help="replace the results a run left in --out (only those files)"
    )
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_allocator_argument(predict)
    app = subcommands.add_parser(
        "app",
        help="a web app (Gradio) for a checkpoint: upload an image, see the overlay, segments and prototypes",
        description="Serve the Gradio app of a checkpoint (the same app as app.py on a Hugging Face Space).",
    )
    app.add_argument("--model", required=True, help="a saved PEM checkpoint directory")
    app.add_argument("--examples", help="a folder of example images to offer")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    app.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    app.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    app.add_argument(
        "--max-pixels", type=int, default=None, help="largest upload in pixels (default: 24 million, 24 megapixels)"
    )
    add_runtime_arguments(app)
    for name, (_, help_text) in DELEGATED.items():
        subcommands.add_parser(name, help=help_text, add_help=False)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    from ..app.files import segment_files

    apply_allocator_argument(args)
    summary = segment_files(
        args.model,
        args.source,
        args.out,
        task=args.task,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        runtime=args.runtime,
        model_file=args.model_file,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    earlier = f" ({len(summary.resumed)} more done by the earlier run)" if summary.resumed else ""
    print(f"Segmented {len(summary.segmented)} images into {summary.output_dir}{earlier}.")
    if summary.skipped:
        print(f"Skipped {len(summary.skipped)} unreadable files (see the warnings above).", file=sys.stderr)
    if not summary.segmented and not summary.resumed:
        raise ValueError("no readable image was found")
    return 0


def check_can_serve(host: str, port: int) -> None:
    """Refuse, before the model loads, an address this machine cannot serve on (a port in use, a foreign host)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.bind(address)
    except OSError as error:
        raise ValueError(
            f"cannot serve on --host {host} --port {port} ({error.strerror or error}): pass another --port, or a "
            "--host of this machine."
        ) from None


def run_app(args: argparse.Namespace) -> int:
    from ..app.web import MAX_PIXELS, MAX_UPLOAD, build_app
    from ..data.sources import IMAGE_SUFFIXES

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0-65535, got {args.port}.")
    max_pixels = MAX_PIXELS if args.max_pixels is None else args.max_pixels
    if max_pixels < 1:
        raise ValueError(f"--max-pixels must be at least 1, got {max_pixels}.")
    examples = None
    if args.examples:
        if not Path(args.examples).is_dir():
            raise ValueError(f"--examples {args.examples} is not a folder: pass a folder of example images.")
        examples = [str(p) for p in sorted(Path(args.examples).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not examples:
            raise ValueError(f"--examples {args.examples} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    check_can_serve(args.host, args.port)
    options = {"device": args.device, "runtime": args.runtime, "model_file": args.model_file, "max_pixels": max_pixels}
    app = build_app(args.model, examples=examples, **options)
    app.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True)
    return 0


def run_delegated(name: str, argv: list[str]) -> None:
    module_name = DELEGATED[name][0]
    if module_name is None:  # the benchmark is tooling outside the package, beside its results
        benchmarks = Path(__file__).resolve().parents[3] / "benchmarks"
        if not (benchmarks / "benchmark" / "cli.py").is_file():
            raise ValueError(
                "pem benchmark runs from a clone of the transformers-pem repository (benchmarks/benchmark/)."
            )
        sys.path.insert(0, str(benchmarks))
        module_name = "benchmark.cli"
    importlib.import_module(module_name).main(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pem` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    command = argv[0] if argv else None
    try:
        if command in DELEGATED:
            run_delegated(command, argv[1:])
            return 0
        args = build_parser().parse_args(argv)
        return run_app(args) if args.command == "app" else run_predict(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"pem {command}: error: {error}" if command else f"pem: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # What was written stays consistent: `pem predict --resume` and `pem train` (from its checkpoints) go on.
        print(f"pem {command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
