"""Run by `test_distributed_evaluation.py`, alone or under `torchrun`: `evaluate_model` of a stand-in model that
predicts the annotations at stride 4 (blurred boundaries: IoUs below 1) with every 3rd thing segment dropped, on a
synthetic Cityscapes split, exporting its predictions. Arguments: DATA_ROOT TASK OUTPUT_JSON EXPORT_DIR."""

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_evaluation import CITYSCAPES_NAMES, CITYSCAPES_THINGS, GroundTruthModel, cityscapes_processor  # noqa: E402

from transformers_pem.data.loaders import load_cityscapes  # noqa: E402
from transformers_pem.evaluation.evaluate import evaluate_model  # noqa: E402

data_root, task, output, export_dir = sys.argv[1:5]
torch.set_num_threads(1)
processor = cityscapes_processor("semantic" if task == "semantic" else "panoptic")
annotations = load_cityscapes(data_root, split="val", task="panoptic" if task == "semantic" else task)
model = GroundTruthModel(
    processor, annotations, "panoptic" if task == "semantic" else task, CITYSCAPES_NAMES, CITYSCAPES_THINGS,
    stride=4, drop_every=3,
)  # fmt: skip
dataset = load_cityscapes(data_root, split="val", task=task)
results = evaluate_model(model, processor, dataset, task=task, export_dir=export_dir, progress=False)
if torch.distributed.is_initialized():
    print(f"process {torch.distributed.get_rank()} of {torch.distributed.get_world_size()}")
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    # repr keeps every bit of the floats; NaN as None
    Path(output).write_text(json.dumps({k: None if math.isnan(v) else repr(v) for k, v in results.items()}))
