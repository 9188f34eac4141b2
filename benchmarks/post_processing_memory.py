"""Peak memory and time of the three post-processings for one very large output (default: a 6000x8000 photo,
100 queries, 19 classes), each in a fresh process.

Two kinds of model outputs: `trained` (`workloads.confident_outputs`: confident classes, sharp masks, so most pixels
are decided at mask resolution) and `undecided` (the same classes with nearly flat masks, as from a barely trained
model: no pixel can be decided at mask resolution, so the fallbacks run). The processed size is what the Cityscapes
processor gives such a photo (shortest edge 1024, padded to a multiple of 32). Peak memory is the peak resident set
size during the call (`VmHWM`, reset right before it) minus the resident set before it.

    python benchmarks/post_processing_memory.py --output-dir benchmarks/cpu-2core-post-processing-memory
"""

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark.memory import PeakMemory, reset_peak_rss  # noqa: E402
from benchmark.report import write_report  # noqa: E402
from benchmark.workloads import confident_outputs  # noqa: E402

from transformers_pem import PEMImageProcessor  # noqa: E402
from transformers_pem.configuration_pem import MASK_STRIDE  # noqa: E402

TASKS = ("semantic", "panoptic", "instance")
KINDS = ("trained", "undecided")


def processed_size(height: int, width: int, shortest_edge: int = 1024, multiple: int = 32) -> tuple:
    """The resized size of an image (shortest edge) and the padded size (a multiple of `multiple`)."""
    scale = shortest_edge / min(height, width)
    valid = (round(height * scale), round(width * scale))
    return valid, tuple(math.ceil(side / multiple) * multiple for side in valid)


def measure(task: str, kind: str, target_size: tuple, num_queries: int, num_labels: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    valid, padded = processed_size(*target_size)
    outputs = confident_outputs(1, num_queries, num_labels, (padded[0] // MASK_STRIDE, padded[1] // MASK_STRIDE))
    if kind == "undecided":
        outputs.masks_queries_logits = outputs.masks_queries_logits * 0.02
    pixel_mask = torch.zeros(1, *padded, dtype=torch.int64)
    pixel_mask[:, : valid[0], : valid[1]] = 1
    processor = PEMImageProcessor.from_preset("pem-stdc1-cityscapes-panoptic")
    post_process = getattr(processor, f"post_process_{task}_segmentation")
    tracker = PeakMemory(torch.device("cpu"))
    start = time.perf_counter()
    with tracker.measure():
        result = post_process(outputs, target_sizes=[target_size], pixel_mask=pixel_mask)[0]
    seconds = time.perf_counter() - start
    segments = len(result["segments_info"]) if isinstance(result, dict) else int(result.unique().numel())
    return {
        "task": task,
        "outputs": kind,
        "increase_mb": round(tracker.peak_mb - tracker.baseline_mb),
        "seconds": round(seconds, 1),
        "segments_or_classes": segments,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[6000, 8000], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--labels", type=int, default=19)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not reset_peak_rss():
        parser.error("peak memory needs Linux's /proc/self/clear_refs.")
    rows = []
    for kind in KINDS:
        for task in TASKS:
            # A fresh process per measurement: nothing left in the allocator by an earlier one.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as executor:
                row = executor.submit(
                    measure, task, kind, tuple(args.size), args.queries, args.labels, args.threads
                ).result()
            print(row, flush=True)
            rows.append(row)
    for row in rows:
        semantic = next(r for r in rows if r["outputs"] == row["outputs"] and r["task"] == "semantic")
        row["over_semantic"] = round(row["increase_mb"] / semantic["increase_mb"], 2)
    height, width = args.size
    lines = [
        f"Post-processing of one {height}x{width} output, {args.queries} queries, {args.labels} classes, "
        f"{args.threads} threads ({torch.__version__}).",
        "",
        "| outputs | task | peak increase (MB) | × semantic | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['outputs']} | {r['task']} | {r['increase_mb']} | {r['over_semantic']} | {r['seconds']} |" for r in rows
    ]
    write_report(args.output_dir, "post_processing_memory", rows, "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
