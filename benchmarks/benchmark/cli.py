"""`python scripts/benchmark.py` (or `pem benchmark`): the benchmark's command line."""

import argparse
from pathlib import Path
from typing import Any

import torch
import transformers

from transformers_pem.cli.options import add_allocator_argument, apply_allocator_argument
from transformers_pem.inference.precision import PRECISIONS

from .models import MODELS, Scenario
from .report import format_markdown, write_report
from .run import run_benchmark

DEFAULT_SIZES = ("512x1024:19", "1024x2048:19", "512x512:150")


DEFAULT_TRAIN_SIZES = ("512x1024:19",)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/benchmark.py",
        description="Benchmark PEM against transformers' Mask2Former-R50: latency, training steps, GMACs, memory.",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="Models to run.")
    parser.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES), help="Inference HEIGHTxWIDTH:CLASSES.")
    parser.add_argument(
        "--train-sizes", nargs="*", default=list(DEFAULT_TRAIN_SIZES), help="Training crops, HEIGHTxWIDTH:CLASSES."
    )
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of every model (median and min).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed runs of every model before them.")
    parser.add_argument("--batch-size", type=int, default=1, help="Images per inference run.")
    parser.add_argument("--train-batch-size", type=int, default=2, help="Images per training step.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's).")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available).")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=None,
        help="fp32 and/or amp (autocast: float16 on CUDA, bfloat16 on CPU). Default: fp32 on CPU, both on CUDA.",
    )
    parser.add_argument("--no-post-processing", action="store_true", help="Do not time the post-processing.")
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="Do not time the whole path (processor to segments, pipeline)."
    )
    parser.add_argument("--no-gmacs", action="store_true", help="Do not count GMACs (that needs fvcore).")
    parser.add_argument("--no-memory", action="store_true", help="Do not measure peak memory.")
    add_allocator_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights and inputs.")
    parser.add_argument("--output-dir", type=Path, default=None, help="Write benchmark.json and benchmark.md there.")
    args = parser.parse_args(argv)
    try:
        args.sizes = [Scenario.parse(size) for size in args.sizes]
        args.train_sizes = [Scenario.parse(size) for size in args.train_sizes]
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: run the benchmark, print the markdown report, and with `--output-dir` write it with
    the JSON results."""
    args = _parse_args(argv)
    apply_allocator_argument(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    precisions = args.precision or (["fp32", "amp"] if device.startswith("cuda") else ["fp32"])
    transformers.logging.set_verbosity_error()  # Mask2Former logs that it was not tested with a ResNet backbone
    results = run_benchmark(
        [MODELS[name] for name in dict.fromkeys(args.models)],
        args.sizes,
        args.train_sizes,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        train_batch_size=args.train_batch_size,
        device=device,
        precisions=tuple(dict.fromkeys(precisions)),
        post_processing=not args.no_post_processing,
        end_to_end=not args.no_end_to_end,
        gmacs=not args.no_gmacs,
        memory=not args.no_memory,
        threads=args.threads,
        seed=args.seed,
    )
    write_report(args.output_dir, "benchmark", results, format_markdown(results))
    return results


if __name__ == "__main__":
    main()
