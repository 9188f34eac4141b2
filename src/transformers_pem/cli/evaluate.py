"""`python -m transformers_pem.cli.evaluate CHECKPOINT --dataset ...`: the paper's metrics of a PEM checkpoint
as a markdown table and JSON (see `evaluation.evaluate`)."""

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..data.loaders import load_evaluation_dataset
from ..deploy.hub import check_hub_token, push_folder, trained_model_card
from ..deploy.runtimes import check_device, load_model
from ..evaluation.evaluate import evaluate_model, format_results_table
from ..image_processing_pem import PEMImageProcessor
from ..inference.precision import PRECISIONS
from ..labels_pem import DATASET_LABELS
from ..modeling_pem import PEMForUniversalSegmentation
from ..presets_pem import TASKS, official_crop_size, official_tta_settings
from ..training.scalars import CURVES_FILE
from ..utils.paths import atomic_file, check_local_or_hub, check_output_dir, check_output_file
from .options import add_allocator_argument, apply_allocator_argument


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pem evaluate",
        description="Evaluate a PEM checkpoint: the paper's metrics (mIoU / PQ / mask AP) as markdown and JSON.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory (or Hub id) written by save_pretrained")
    parser.add_argument(
        "--dataset",
        required=True,
        help="'cityscapes' or 'ade20k' (local tree under --data-root), or a dataset path "
        "or Hub name for load_segmentation_dataset",
    )
    parser.add_argument("--data-root", help="root of the local Cityscapes / ADE20K tree")
    parser.add_argument("--split", default="val")
    parser.add_argument("--task", choices=TASKS, default="semantic")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="processes decoding the data and references")
    parser.add_argument("--tta", action="store_true", help="the official multi-scale + flip test-time augmentation")
    parser.add_argument("--scales", type=int, nargs="+", help="custom TTA shortest-edge sizes")
    parser.add_argument("--max-size", type=int, help="longest-edge cap of the TTA scales")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped predictions")
    parser.add_argument(
        "--sliding-window",
        type=int,
        nargs="*",
        metavar="SIZE",
        help="sliding-window inference: no value for the official training crop, or SIZE / HEIGHT WIDTH",
    )
    parser.add_argument("--stride", type=int, nargs="+", metavar="SIZE", help="sliding-window stride (HEIGHT WIDTH)")
    parser.add_argument("--export-dir", help="write the predictions in the official submission formats")
    parser.add_argument("--output", help="JSON file for the results")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="write the checkpoint's model card (README.md) with these results and upload the checkpoint folder",
    )
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="amp: run the model under autocast (bfloat16 on CPU, float16 on CUDA); post-processing stays float32",
    )
    parser.add_argument(
        "--fold-batch-norm",
        action="store_true",
        help="fold BatchNorm into the convolutions first (faster; equal up to float rounding)",
    )
    parser.add_argument(
        "--onnx",
        nargs="?",
        const="model.onnx",
        metavar="FILE",
        help="evaluate the exported ONNX graph of the checkpoint directory with ONNX Runtime instead of the PyTorch "
        "model (default file model.onnx; e.g. model_int8.onnx; see pem export)",
    )
    parser.add_argument(
        "--openvino",
        nargs="?",
        const="openvino_model.xml",
        metavar="FILE",
        help="evaluate the exported OpenVINO IR of the checkpoint directory (fp32) instead of the PyTorch model "
        "(default file openvino_model.xml; e.g. openvino_model_int8.xml; see pem export --format openvino)",
    )
    parser.add_argument("--no-progress", action="store_true")
    add_allocator_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point (see `parse_args`); returns the results written to `--output`."""
    args = parse_args(argv)
    apply_allocator_argument(args)
    check_local_or_hub(args.checkpoint, "The checkpoint", "a folder written by save_pretrained or a Hub id")
    for name in ("batch_size", "max_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {args.num_workers}.")
    for name in ("scales", "stride", "sliding_window"):
        if any(value < 1 for value in getattr(args, name) or []):
            raise ValueError(f"--{name.replace('_', '-')} takes positive sizes, got {getattr(args, name)}.")
    if args.max_size is not None and args.max_size < 1:
        raise ValueError(f"--max-size must be at least 1, got {args.max_size}.")
    if args.max_size is not None and not (args.tta or args.scales):
        raise ValueError("--max-size caps the test-time scales: pass --tta or --scales too.")
    if args.stride is not None and args.sliding_window is None:
        raise ValueError("--stride is the sliding window's: pass --sliding-window too.")
    if args.stride is not None and len(args.stride) > 2:
        raise ValueError(f"--stride takes 1 or 2 values (HEIGHT WIDTH), got {args.stride}.")
    # Where the results go is checked before the evaluation, not after it.
    if args.output is not None:
        check_output_file(args.output, "--output")
    if args.export_dir is not None:
        check_output_dir(args.export_dir, "--export-dir")
    if args.device is not None:
        check_device(args.device)
    if args.push_to_hub:
        check_hub_token("--push-to-hub")
        if args.onnx is not None or args.openvino is not None or not Path(args.checkpoint).is_dir():
            raise ValueError(
                "--push-to-hub uploads a local save_pretrained checkpoint folder (not --onnx or --openvino, not a Hub "
                "id)."
            )
    known_dataset = args.dataset in DATASET_LABELS
    scales, max_size, flip = args.scales, args.max_size, args.flip
    if args.tta:
        if not known_dataset and scales is None:
            raise ValueError(f"--tta knows the official scales of {sorted(DATASET_LABELS)} only: pass --scales.")
        official = official_tta_settings(args.dataset, args.task) if known_dataset else {}
        scales = scales or official["scales"]
        max_size = max_size or official.get("max_size")
        flip = True
    window = args.sliding_window
    if window is not None:
        if len(window) == 0:
            if not known_dataset:
                raise ValueError("--sliding-window without a size needs --dataset cityscapes or ade20k.")
            window = official_crop_size(args.dataset, args.task)
        elif len(window) > 2:
            raise ValueError(f"--sliding-window takes at most 2 values (HEIGHT WIDTH), got {window}.")
        window = tuple(window) if len(window) == 2 else window[0]
    stride = None if args.stride is None else (tuple(args.stride) if len(args.stride) == 2 else args.stride[0])

    if args.onnx is not None and args.openvino is not None:
        raise ValueError("--onnx and --openvino each evaluate one exported model: pass one of them.")
    runtime = "onnx" if args.onnx is not None else "openvino" if args.openvino is not None else None
    if runtime and (args.precision != "fp32" or args.fold_batch_norm or args.device not in (None, "cpu")):
        raise ValueError(
            f"--{runtime} runs the exported model as it is: drop --precision, --fold-batch-norm and --device."
        )
    # The data before the model: a wrong --data-root or --split is said without waiting for the model to load.
    dataset = load_evaluation_dataset(args.dataset, args.data_root, args.split, args.task)
    if args.max_images is not None:
        dataset = dataset.select(range(min(args.max_images, len(dataset))))
    if runtime:
        model = load_model(args.checkpoint, runtime, model_file=args.onnx or args.openvino)
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = PEMForUniversalSegmentation.from_pretrained(args.checkpoint).to(device)
    if args.fold_batch_norm:
        model.fold_batch_norm()
    try:
        processor = PEMImageProcessor.from_pretrained(args.checkpoint)
    except OSError:
        if not known_dataset:
            raise ValueError(
                f"{args.checkpoint} has no preprocessor_config.json: save the processor with the checkpoint, or use "
                "--dataset cityscapes / ade20k for the official test settings."
            ) from None
        preset = f"pem-r50-{args.dataset}-{'semantic' if args.task == 'semantic' else 'panoptic'}"
        processor = PEMImageProcessor.from_preset(preset, model_config=model.config)
    # The local ADE20K semantic annotations (also added to the panoptic task) store class c as c + 1, whatever the
    # processor says; Cityscapes maps hold train ids.
    reduce_labels = args.dataset == "ade20k" if known_dataset else None

    start = time.perf_counter()
    metrics = evaluate_model(
        model,
        processor,
        dataset,
        task=args.task,
        batch_size=args.batch_size,
        scales=scales,
        max_size=max_size,
        flip=flip,
        sliding_window=window,
        sliding_window_stride=stride,
        reduce_labels=reduce_labels,
        export_dir=args.export_dir,
        dataset_name=args.dataset if known_dataset else None,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        precision=args.precision,
    )
    seconds = time.perf_counter() - start
    results = {
        "checkpoint": str(args.checkpoint),
        "dataset": args.dataset,
        "split": args.split,
        "task": args.task,
        "num_images": len(dataset),
        "settings": {
            "batch_size": args.batch_size,
            "scales": scales,
            "max_size": max_size,
            "flip": flip,
            "sliding_window": window,
            "sliding_window_stride": stride,
            "augmented_outputs": "semantic" if (scales or flip or window) else None,
            "precision": args.precision,
            "fold_batch_norm": args.fold_batch_norm,
            "onnx": args.onnx,
            "openvino": args.openvino,
        },
        "seconds": seconds,
        "images_per_second": len(dataset) / seconds,
        "metrics": metrics,
    }
    from accelerate import PartialState  # installed with the eval extra

    # Every process has the results (evaluated over all processes); one reports them.
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        return results
    print(format_results_table(metrics, args.task))
    print(f"\n{len(dataset)} images in {seconds:.1f} s ({len(dataset) / seconds:.2f} images/s)")
    if args.task == "panoptic" and (scales or flip or window):
        print("Test-time augmentation / sliding windows apply to the semantic output (mIoU) only; PQ is single-scale.")
    if args.output is not None:
        with atomic_file(args.output) as path:
            path.write_text(json.dumps(_json_safe(results), indent=2))
    if args.push_to_hub:
        checkpoint = Path(args.checkpoint)
        training = checkpoint / "training_config.json"
        card = trained_model_card(
            model.config,
            args.push_to_hub,
            args.task,
            metrics=metrics,
            split=args.split,
            training=json.loads(training.read_text()) if training.is_file() else None,
            curves=CURVES_FILE if (checkpoint / CURVES_FILE).is_file() else None,
        )
        card.save(checkpoint / "README.md")
        push_folder(checkpoint, args.push_to_hub, commit_message=f"Evaluation on {args.dataset} {args.split}")
    return results


if __name__ == "__main__":
    main()
