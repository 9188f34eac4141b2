"""`python -m transformers_pem.cli.train ...` (also `scripts/train.py`, under `accelerate launch` or `torchrun`
too): fine-tune PEM; the options build a `TrainingConfig` (see `training.loop`)."""

import argparse
import dataclasses
import json

from ..presets_pem import PRESETS, TASKS
from ..training.config import TrainingConfig
from ..training.loop import train
from .options import add_allocator_argument, apply_allocator_argument

# Options given as JSON on the command line.
_JSON_OPTIONS = ("config_overrides", "id2label", "column_mapping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pem train",
        description="Fine-tune PEM with accelerate (official recipe by default). The options are the fields of "
        "transformers_pem.TrainingConfig, and take its defaults.",
        argument_default=argparse.SUPPRESS,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--preset", help="PEMConfig preset (official recipe)")
    model.add_argument("--model-name-or-path", help="start from a saved PEM model (local dir or Hub id)")
    model.add_argument("--config-overrides", help="JSON of PEMConfig fields, e.g. '{\"num_queries\": 50}'")
    model.add_argument("--backbone-weights", help="ImageNet backbone checkpoint (STDC .tar/.pkl, ResNet-50 .pth)")
    model.add_argument("--id2label", help="JSON {id: name} for a custom label set (else the preset's dataset)")
    model.add_argument("--thing-ids", type=int, nargs="*", help="thing classes of a custom label set")
    model.add_argument(
        "--freeze-backbone-batch-norm",
        action=argparse.BooleanOptionalAction,
        help="fixed backbone BatchNorm (FrozenBN); default: on for the ADE20K R50 presets, as officially",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=["cityscapes", "ade20k", "hub"])
    data.add_argument(
        "--data-root", required=True, help="dataset root folder, or a Hub id / parquet path (--dataset hub)"
    )
    data.add_argument("--task", choices=TASKS)
    data.add_argument(
        "--column-mapping", help='JSON renaming dataset columns (--dataset hub), e.g. \'{"annotation": "semantic"}\''
    )
    data.add_argument("--train-split")
    data.add_argument("--eval-split")
    data.add_argument(
        "--augmentation",
        choices=["cityscapes", "ade20k"],
        help="official augmentation recipe (default: the dataset's; ADE20K's square crops for other datasets)",
    )
    data.add_argument("--scale", type=float, help="scale of the recipe's resize/crop sizes")
    data.add_argument(
        "--reduce-labels",
        action=argparse.BooleanOptionalAction,
        help="semantic maps with 0 = 'other' (ADE20K): 0 -> ignore, c -> c - 1 (default: the processor's setting)",
    )
    data.add_argument("--test-size", type=int, nargs=2, metavar=("SHORT", "MAX"), help="evaluation resize")
    data.add_argument("--num-workers", type=int)
    optim = parser.add_argument_group("optimisation (defaults: the preset's official recipe)")
    optim.add_argument("--max-steps", type=int)
    optim.add_argument("--learning-rate", type=float)
    optim.add_argument("--batch-size", type=int, help="per process (the official recipe's is the total)")
    optim.add_argument("--gradient-accumulation-steps", type=int)
    optim.add_argument("--weight-decay", type=float)
    optim.add_argument("--backbone-lr-multiplier", type=float)
    optim.add_argument("--clip-grad-norm", type=float, help="full-model gradient clipping (0: off)")
    optim.add_argument("--warmup-steps", type=int)
    optim.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    optim.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, slower steps, the same weights",
    )
    optim.add_argument("--seed", type=int)
    optim.add_argument(
        "--precise-bn-batches",
        type=int,
        help="at the end, recompute BatchNorm statistics over N batches of training images (eval resize)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--save-every", type=int)
    run.add_argument("--keep-checkpoints", type=int)
    run.add_argument("--eval-every", type=int)
    run.add_argument("--resume", nargs="?", const="latest", help="resume from the latest checkpoint or a given one")
    run.add_argument("--report-to", help="accelerate tracker, e.g. tensorboard")
    run.add_argument(
        "--push-to-hub", metavar="REPO", help="upload the final model, its card (metrics, settings) and curves"
    )
    add_allocator_argument(run)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainingConfig, argparse.Namespace]:
    """The `TrainingConfig` of a command line, and the parsed arguments (for `--allocator`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None) and args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}.")
    fields = {field.name for field in dataclasses.fields(TrainingConfig)}
    values = {name: value for name, value in vars(args).items() if name in fields}
    for name in _JSON_OPTIONS:
        if name in values:
            try:
                values[name] = json.loads(values[name])
            except json.JSONDecodeError as error:
                parser.error(f"--{name.replace('_', '-')} is not valid JSON ({error}): {values[name]!r}")
    if "test_size" in values:
        values["test_size"] = tuple(values["test_size"])
    try:
        return TrainingConfig(**values), args
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    apply_allocator_argument(args)
    final = train(config)
    print(json.dumps({k: v for k, v in final.items() if k != "last_losses"}, indent=1))


if __name__ == "__main__":
    main()
