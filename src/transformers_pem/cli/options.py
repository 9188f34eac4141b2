"""The `--allocator` option the command lines share (`pem predict`, `train`, `evaluate`, the benchmark)."""

import argparse

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
