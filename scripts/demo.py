"""`make demo`, the main job end to end on CPU:

1. generate a synthetic dataset in the genuine Cityscapes folder layout (images, labelIds / trainIds, instanceIds,
   panoptic PNG + JSON);
2. fine-tune the PEM-STDC1 Cityscapes panoptic preset on it with `accelerate launch scripts/train.py`;
3. evaluate the checkpoint with `scripts/evaluate_checkpoint.py` (PQ, PQ^th, PQ^st, mIoU);
4. reload it with `AutoModelForUniversalSegmentation`, run `pipeline("image-segmentation")` on held-out images and
   write colour overlays.

Everything goes to `demo_output/` (or `--output-dir`). The same training command pointed at a real Cityscapes folder
(`--data-root /data/cityscapes --scale 1`) trains on it.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, pipeline

import transformers_pem  # noqa: F401  (registers PEM with the Auto classes)
from transformers_pem import draw_segmentation
from transformers_pem.data.synthetic import generate_cityscapes
from transformers_pem.training.scalars import CURVES_FILE

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU")


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "demo_output")
    # 288 images, each seen about 19 times in 700 steps of batch 8: with 96 (58 times each) the results of
    # different seeds and thread counts spread further apart (the README's demo section).
    parser.add_argument("--num-train", type=int, default=288)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--max-steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    # The official recipe's defaults (a tenth of the rate for the backbone, no warm-up). The demo's backbone starts
    # from random weights, not ImageNet's: see the README's demo section for what other settings measured.
    parser.add_argument("--backbone-lr-multiplier", type=float, default=1.0)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="Training seed (weights, data order, augmentation).")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of the training process.")
    args = parser.parse_args()

    output_dir = args.output_dir.resolve()
    data_root, run_dir = output_dir / "cityscapes", output_dir / "run"
    started = time.perf_counter()
    generate_cityscapes(data_root, num_train=args.num_train, num_val=args.num_val, size=tuple(args.size), seed=0)
    print(f"Synthetic Cityscapes layout: {data_root} ({args.num_train} train, {args.num_val} val images)")

    height, width = args.size
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes=1", "--num_machines=1"]
    # accelerate launch runs 1 thread per process unless told otherwise: use the machine's cores.
    accelerate += ["--mixed_precision=no", "--dynamo_backend=no", f"--num_cpu_threads_per_process={args.threads}"]
    run(
        [
            *accelerate,
            "scripts/train.py",
            "--preset=pem-stdc1-cityscapes-panoptic",
            "--task=panoptic",
            f"--data-root={data_root}",
            f"--output-dir={run_dir}",
            f"--scale={height / 1024}",  # the official crop/resize recipe, scaled to the synthetic image size
            "--test-size",
            str(height),
            str(width),
            f"--max-steps={args.max_steps}",
            f"--batch-size={args.batch_size}",
            f"--learning-rate={args.learning_rate}",
            f"--backbone-lr-multiplier={args.backbone_lr_multiplier}",
            f"--warmup-steps={args.warmup_steps}",
            f"--seed={args.seed}",
            # BatchNorm running averages of the last steps at batch 8 are noisy enough to cost 15 points of mIoU
            # on some seeds: recompute them over all the training images.
            f"--precise-bn-batches={args.num_train // args.batch_size}",
            # 1024 sampled points per mask instead of 12544: the crops are 64x128 pixels (masks 16x32), not 512x1024.
            # 30 queries instead of 100: a synthetic street scene has at most 17 segments, and each query fewer is
            # a step faster (the matcher, the mask loss and the decoder all scale with the queries).
            '--config-overrides={"train_num_points": 1024, "num_queries": 30}',
            "--save-every=100",
            "--eval-every=0",
        ]
    )
    checkpoint = run_dir / "final"
    results_file = output_dir / "results.json"
    run(
        [
            sys.executable,
            "scripts/evaluate_checkpoint.py",
            str(checkpoint),
            "--dataset=cityscapes",
            f"--data-root={data_root}",
            "--split=val",
            "--task=panoptic",
            f"--output={results_file}",
            "--no-progress",
        ]
    )
    metrics = json.loads(results_file.read_text())["metrics"]

    # Reload through the Auto classes and segment held-out images with the pipeline.
    model = AutoModelForUniversalSegmentation.from_pretrained(checkpoint)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    overlays = output_dir / "overlays"
    overlays.mkdir(exist_ok=True)
    images = sorted((data_root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))[:4]
    for path in images:
        image = Image.open(path).convert("RGB")
        segments = segmenter(image, subtask="panoptic", threshold=0.5)
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        overlay = draw_segmentation(
            image, panoptic["segmentation"], panoptic["segments_info"], model.config.id2label, palette="cityscapes"
        )
        overlay.save(overlays / path.name.replace("_leftImg8bit.png", "_panoptic.png"))
        labels = ", ".join(sorted({segment["label"] for segment in segments}))
        print(f"pipeline on {path.name}: {len(segments)} segments ({labels})")

    curves = run_dir / CURVES_FILE  # drawn by the training run from its scalars.jsonl
    minutes = (time.perf_counter() - started) / 60
    summary = {
        "metrics": {key: metrics[key] for key in METRICS if key in metrics},
        "seed": args.seed,
        "threads": args.threads,
        "checkpoint": str(checkpoint),
        "overlays": str(overlays),
        "curves": str(curves),
        "minutes": round(minutes, 1),
    }
    (output_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    print("\n| " + " | ".join(METRICS) + " |\n|" + "---|" * len(METRICS))
    print("| " + " | ".join(f"{metrics[key]:.1f}" for key in METRICS) + " |\n")
    print(f"Done in {minutes:.1f} minutes ({args.threads} threads, seed {args.seed}).")
    print(
        f"Checkpoint: {checkpoint}\nOverlays: {overlays}\nCurves: {curves}\n"
        f"Metrics: {results_file}, {output_dir / 'demo_summary.json'}"
    )


if __name__ == "__main__":
    main()
