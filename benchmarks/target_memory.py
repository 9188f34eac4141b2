"""Peak memory of the training targets of images with many instances: the data path (decode, official Cityscapes
augmentation with its 512x1024 crop, processor, `collate_fn`) and the loss (matching and point losses of the final
and 6 auxiliary predictions, forward and backward) for a batch of two 1024x2048 panoptic images with 200 instances
each, every measurement in a fresh process. `--float-masks` measures the earlier behaviour: float32 target masks,
converted to float all at once in the loss.

    python benchmarks/target_memory.py --output-dir benchmarks/cpu-2core-target-memory
"""

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark.memory import PeakMemory  # noqa: E402
from benchmark.report import write_report  # noqa: E402

from transformers_pem import (  # noqa: E402
    PEMConfig,
    PEMImageProcessor,
    PEMSegmentationTransform,
    collate_fn,
    loss_pem,
    official_train_augmentation,
)

PRESET = "pem-stdc1-cityscapes-panoptic"


def many_instances_example(seed: int, instances: int, size: tuple[int, int] = (1024, 2048)) -> dict:
    """A panoptic example: road below sky (stuff), then `instances` car and person rectangles (things)."""
    rng = np.random.default_rng(seed)
    height, width = size
    ids = np.where(np.arange(height)[:, None] < height // 3, 1, 2) * np.ones((1, width), np.int64)
    segments = [{"id": 1, "category_id": 10, "iscrowd": 0}, {"id": 2, "category_id": 0, "iscrowd": 0}]
    for k in range(instances):
        h, w = rng.integers(20, 120), rng.integers(20, 160)
        top, left = rng.integers(height // 3, height - h), rng.integers(0, width - w)
        ids[top : top + h, left : left + w] = k + 3
        segments.append({"id": k + 3, "category_id": int(rng.choice([11, 13])), "iscrowd": 0})
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {"image": PIL.Image.fromarray(image), "panoptic": PIL.Image.fromarray(rgb), "segments_info": segments}


def measure(part: str, float_masks: bool, instances: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = PEMConfig.from_preset(PRESET)
    processor = PEMImageProcessor.from_preset(PRESET, model_config=config)
    transform = PEMSegmentationTransform(processor, "panoptic", official_train_augmentation("cityscapes", "panoptic"))
    examples = [many_instances_example(seed, instances) for seed in (0, 1)]
    tracker = PeakMemory(torch.device("cpu"))

    def batch() -> dict:
        inputs = collate_fn([transform(example, seed=index) for index, example in enumerate(examples)])
        if float_masks:
            inputs["mask_labels"] = [masks.float() for masks in inputs["mask_labels"]]
        return inputs

    if part == "data":
        with tracker.measure():
            inputs = batch()
    else:
        inputs = batch()
        if float_masks:
            loss_pem.TARGET_MASK_CHUNK = 10**9  # all masks to float at once, as before
        criterion = loss_pem.PEMLoss(num_labels=config.num_labels, train_num_points=config.train_num_points)
        height, width = (side // 4 for side in inputs["pixel_values"].shape[-2:])
        shape = (2, config.num_queries)
        layers = [
            (torch.randn(*shape, height, width, requires_grad=True), torch.randn(*shape, 20, requires_grad=True))
            for _ in range(config.decoder_layers + 1)
        ]
        with tracker.measure():
            auxiliary = [{"masks_queries_logits": m, "class_queries_logits": c} for m, c in layers[:-1]]
            losses = criterion(*layers[-1], inputs["mask_labels"], inputs["class_labels"], auxiliary)
            criterion.weighted_sum(losses).backward()
    masks = inputs["mask_labels"]
    return {
        "part": part,
        "target_masks": "float32, all at once" if float_masks else "bool, 32 at a time",
        "increase_mb": round(tracker.peak_mb - tracker.baseline_mb),
        "masks_per_image": [len(m) for m in masks],
        "crop": list(inputs["pixel_values"].shape[-2:]),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for float_masks in (True, False):
        for part in ("data", "loss"):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as executor:
                rows.append(executor.submit(measure, part, float_masks, args.instances).result())
            print(rows[-1], flush=True)
    lines = [
        f"Two 1024x2048 images with {args.instances} instances each, official Cityscapes crop, {PRESET} "
        f"({torch.__version__}); peak resident memory increase (MB).",
        "",
        "| target masks | data path | loss (forward + backward) |",
        "|---|---|---|",
    ]
    for kind in dict.fromkeys(row["target_masks"] for row in rows):
        data, loss = (next(r for r in rows if r["target_masks"] == kind and r["part"] == p) for p in ("data", "loss"))
        lines.append(f"| {kind} | {data['increase_mb']} | {loss['increase_mb']} |")
    write_report(args.output_dir, "target_memory", rows, "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
