"""Peak memory of one training step (2 images at the official 512x1024 crop, 5 targets each) with and without
activation checkpointing, each in a fresh process: `python benchmarks/cpu-2core-checkpointing/measure.py PRESET 0|1`.

Writes one JSON line; the results of this machine are in results.jsonl beside it (README, "transformers' own test
suite, activation checkpointing, attentions")."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchmark.memory import PeakMemory  # noqa: E402

from transformers_pem import PEMConfig, PEMForUniversalSegmentation  # noqa: E402

HEIGHT, WIDTH = 512, 1024

if __name__ == "__main__":
    preset, checkpointing = sys.argv[1], sys.argv[2] == "1"
    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(PEMConfig.from_preset(preset)).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    mask_labels = [(torch.rand(5, HEIGHT, WIDTH) > 0.5).float() for _ in range(2)]
    class_labels = [torch.tensor([0, 1, 2, 11, 13]) for _ in range(2)]
    tracker = PeakMemory(torch.device("cpu"))
    with tracker.measure():
        model(images, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    print(
        json.dumps(
            {
                "preset": preset,
                "checkpointing": checkpointing,
                "size": [HEIGHT, WIDTH],
                "baseline_mb": round(tracker.baseline_mb),
                "peak_mb": round(tracker.peak_mb),
                "method": tracker.method,
            }
        )
    )
