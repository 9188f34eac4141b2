"""Instance post-processing time against the forward pass it follows, on outputs like a trained model's: most queries
"no object" with empty masks, a few confident ones with sharp masks (random weights give every query a mask, which
hides the cost of the empty ones). One process; the forward is PEM-STDC1 (BatchNorm folded) on the same input size.

    python benchmarks/instance_post_processing.py --output-dir benchmarks/cpu-2core-instance-post-processing
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor
from transformers_pem.modeling_pem import PEMForUniversalSegmentationOutput


def trained_like_outputs(num_queries: int, num_labels: int, size: tuple[int, int], kept: int, seed: int):
    """`kept` confident thing queries with sharp blob masks; the others "no object" with masks below 0 everywhere."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size[0] // 4, size[1] // 4
    class_logits = torch.full((1, num_queries, num_labels + 1), -4.0)
    class_logits[0, :, num_labels] = 6.0  # no object
    mask_logits = -6.0 - torch.rand(1, num_queries, height, width, generator=generator)
    rows, columns = torch.arange(height)[:, None], torch.arange(width)[None]
    for query in range(kept):
        label = 11 + query % 8  # the Cityscapes thing classes
        class_logits[0, query, label], class_logits[0, query, num_labels] = 6.0, -4.0
        y, x = torch.randint(0, height, (1,), generator=generator), torch.randint(0, width, (1,), generator=generator)
        radius = 3 + query % 10
        mask_logits[0, query] = 8.0 * (radius - ((rows - y) ** 2 + (columns - x) ** 2).float().sqrt()).clamp(-1, 1)
    return PEMForUniversalSegmentationOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def median_seconds(function, *arguments, repeats: int, **keywords) -> float:
    function(*arguments, **keywords)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*arguments, **keywords)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="HEIGHTxWIDTH")
    parser.add_argument("--kept", type=int, default=15, help="confident queries (the others: no object)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-dir", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = PEMConfig.from_preset("pem-stdc1-cityscapes-panoptic")
    model = PEMForUniversalSegmentation(config).eval()
    model.fold_batch_norm()
    processor = PEMImageProcessor.from_preset("pem-stdc1-cityscapes-panoptic", model_config=config)
    rows = []
    for text in args.sizes:
        size = tuple(int(value) for value in text.split("x"))
        pixel_values = torch.randn(1, 3, *size)
        with torch.inference_mode():
            forward = median_seconds(model, pixel_values, repeats=args.repeats)
            random_outputs = model(pixel_values)
        outputs = trained_like_outputs(config.num_queries, config.num_labels, size, args.kept, seed=0)
        for name, result in (("trained-like", outputs), ("random weights", random_outputs)):
            post_process = processor.post_process_instance_segmentation
            seconds = median_seconds(post_process, result, target_sizes=[size], repeats=args.repeats)
            rows.append({"size": text, "outputs": name, "forward_s": forward, "post_processing_s": seconds})
            print(f"{text} {name}: forward {forward:.3f} s, instance post-processing {seconds:.3f} s "
                  f"({seconds / forward:.0%} of the forward)")  # fmt: skip
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        settings = {"kept": args.kept, "repeats": args.repeats, "threads": torch.get_num_threads()}
        (args.output_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
