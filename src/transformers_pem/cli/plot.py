"""`pem plot RUN_DIR`: draw a training run's curves from its
`scalars.jsonl` to `curves.png` (see `training.scalars.plot_training_curves`)."""

import argparse
from collections.abc import Sequence

from ..training.scalars import CURVES_FILE, SCALARS_FILE, plot_training_curves


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pem plot",
        description=f"Draw a training run's loss terms, learning rate and evaluation metrics from its {SCALARS_FILE}.",
    )
    parser.add_argument("run", help=f"a training run folder (--output-dir of training) or its {SCALARS_FILE}")
    parser.add_argument("--output", help=f"the PNG to write (default: {CURVES_FILE} beside the scalars)")
    args = parser.parse_args(argv)
    try:
        print(plot_training_curves(args.run, args.output))
    except (ValueError, OSError, ImportError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
