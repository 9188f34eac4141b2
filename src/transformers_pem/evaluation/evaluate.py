"""
Evaluation of PEM models: the paper's metrics on a `datasets.Dataset`, test-time augmentation, sliding-window
inference, and prediction export in the official submission formats.

```python
>>> from transformers_pem import (
...     PEMForUniversalSegmentation, PEMImageProcessor, evaluate_model, format_results_table, load_cityscapes,
...     official_tta_settings,
... )
>>> model = PEMForUniversalSegmentation.from_pretrained("checkpoints/pem-r50-cityscapes-semantic")
>>> processor = PEMImageProcessor.from_pretrained("checkpoints/pem-r50-cityscapes-semantic")
>>> dataset = load_cityscapes("data/cityscapes", split="val", task="semantic")
>>> results = evaluate_model(model, processor, dataset, task="semantic")  # single scale, as the paper reports
>>> results_tta = evaluate_model(model, processor, dataset, **official_tta_settings("cityscapes", "semantic"))
>>> print(format_results_table(results, task="semantic"))
```

Command line: `python -m transformers_pem.cli.evaluate CHECKPOINT --dataset cityscapes --data-root DIR --task
semantic` (also `python scripts/evaluate_checkpoint.py ...`); see `--help`.

Predictions come from [`predict`] (`inference.predictor`: single scale, test-time augmentation, sliding windows,
batches).

Metrics are percentages, as in the paper and detectron2's evaluators (NaN for classes without any evaluated pixel
or segment): semantic `mIoU`, `mAcc`, `pAcc`, `IoU-<class>`; panoptic `PQ`, `SQ`, `RQ`, `PQ_th`, `SQ_th`, `RQ_th`,
`PQ_st`, `SQ_st`, `RQ_st`, `PQ-<class>` and the semantic metrics of the same model (the official panoptic configs
also report mIoU); instance `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AP-<class>`. They are computed by
[`~evaluation.metrics.MeanIoU`], [`~evaluation.metrics.PanopticQuality`] and [`~evaluation.metrics.MaskAP`], equal
to the official scorers.
"""

import math
import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.augmentation import LABEL_DIVISOR
from ..data.loaders import panoptic_reference, semantic_reference
from ..inference.predictor import Predictor, eval_mode
from ..labels_pem import dataset_for
from ..presets_pem import check_task
from ..utils.extras import require
from ..utils.paths import check_output_dir
from .metrics import MaskAP, MeanIoU, PanopticQuality
from .submission import PredictionExporter

accelerate = require("accelerate", "eval", "Evaluating (one process or several)")
accelerate_utils = require("accelerate.utils", "eval", "Evaluating (one process or several)")

# Label of void pixels in the semantic references `PEMTrainerMetrics` builds from `label_maps`.
IGNORE_INDEX = 255
# Headline metrics per task, in the order of the paper's tables.
HEADLINE_METRICS = {
    "semantic": ("mIoU", "mAcc", "pAcc"),
    "panoptic": ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"),
    "instance": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
}


class _EvaluationExamples(torch.utils.data.Dataset):
    """
    The examples of [`evaluate_model`] with their references, built where they are decoded (in the DataLoader
    workers with `num_workers > 0`): `index`, `image_id`, `image`, `semantic` (class map, `ignore_index` = ignored)
    unless the task is instance, `segments` (`{"segmentation", "segments_info"}`, ids 1..n) unless it is semantic.
    """

    def __init__(self, dataset, task: str, ignore_index: int | None, reduce_labels: bool):
        self.dataset, self.task, self.ignore_index, self.reduce_labels = dataset, task, ignore_index, reduce_labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        example = self.dataset[index]
        image_id = str(example.get("image_id") or f"{index:06d}").replace(os.sep, "_")
        item = {"index": index, "image_id": image_id, "image": example["image"]}
        if self.task != "semantic":
            item["segments"] = panoptic_reference(example, self.task)
        if self.task != "instance":
            where = f"example {index} ({image_id})"
            # ADE20K: 0 = "other" is ignored, class c is stored as c + 1
            item["semantic"] = semantic_reference(
                example, item.get("segments"), self.ignore_index, self.reduce_labels, where
            )
        return item


def _percent(value) -> float:
    return float(value) * 100.0


def evaluate_model(
    model: nn.Module,
    processor,
    dataset,
    task: str = "semantic",
    batch_size: int = 1,
    scales: Sequence[int] | None = None,
    max_size: int | None = None,
    flip: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
    sliding_window_stride: int | tuple[int, int] | None = None,
    reduce_labels: bool | None = None,
    export_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "fp32",
) -> dict[str, float]:
    """
    Evaluate a PEM model on a dataset and return the paper's metrics (in percent; see the module docstring for the
    keys). Single-scale inference by default, as the paper reports; the model is evaluated in eval mode without
    gradients and put back in its previous mode.

    Args:
        model ([`PEMForUniversalSegmentation`]):
            The model (`config.id2label` gives the classes).
        processor ([`PEMImageProcessor`]):
            Pre- and post-processing; `PEMImageProcessor.from_preset(...)` gives the official test settings.
        dataset (`datasets.Dataset` or a sequence of dicts):
            Examples with an `image` and the task's target, as the loaders of `data.loaders` return them: `semantic`
            (class ids, 255 = ignored); or `panoptic` / `instance` (segment ids, RGB-encoded or single-channel) with
            `segments_info` (`{"id", "category_id", "iscrowd"}`, `category_id` = class index). For the panoptic
            task, the mIoU uses the `semantic` column if there is one, else the classes of the panoptic segments.
            An optional `image_id` names the exported files.
        task (`str`, *optional*, defaults to `"semantic"`):
            `"semantic"`, `"panoptic"` or `"instance"`.
        batch_size (`int`, *optional*, defaults to 1):
            Images (and sliding windows) per forward pass.
        scales, max_size, flip:
            Test-time augmentation (see [`predict`]; [`official_tta_settings`] gives the official values).
        sliding_window, sliding_window_stride:
            Sliding-window inference (see [`predict`]; [`official_crop_size`] gives the official window).
        reduce_labels (`bool`, *optional*):
            Whether `semantic` maps store class `c` as `c + 1` with 0 = "other" (raw ADE20K annotations): 0 is then
            ignored. Defaults to the processor's `do_reduce_labels`.
        export_dir (`str` or `os.PathLike`, *optional*):
            Also write the predictions there in the official formats (see [`PredictionExporter`]).
        dataset_name (`str`, *optional*):
            Label set of the exported files, `"cityscapes"` or `"ade20k"`. Defaults to the dataset whose class names
            equal the model's, else class indices are written.
        num_workers (`int`, *optional*, defaults to 0):
            DataLoader worker processes that decode the examples and build their references while the model runs.
        progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar (images/s).
        precision (`str`, *optional*, defaults to `"fp32"`):
            `"amp"`: the model runs under autocast (bfloat16 on CPU, float16 on CUDA), see [`predict`].

    Returns:
        `dict[str, float]`: the metrics in percent, e.g. `{"mIoU": 79.9, "mAcc": ..., "pAcc": ..., "IoU-road": ...}`.
    """
    check_task(task)
    if isinstance(dataset, (str, os.PathLike)):
        raise ValueError(
            f"dataset is a path ({dataset}): load it first, e.g. with data.loaders.load_cityscapes(root, split, "
            "task), load_ade20k(...) or load_segmentation_dataset(source) (a saved or Hub `datasets` dataset)."
        )
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    if export_dir is not None:
        check_output_dir(export_dir, "export_dir")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    columns = set(getattr(dataset, "column_names", None) or dataset[0].keys())
    required = ["image", task] + (["segments_info"] if task != "semantic" else [])
    if not set(required) <= columns:
        raise ValueError(
            f"The {task} task needs the columns {required}; the dataset has {sorted(columns)}. Load it with the "
            f"data.loaders loaders (task={task!r}) or rename its columns."
        )
    if task == "instance" and (scales is not None or flip or sliding_window is not None):
        raise ValueError(
            "Test-time augmentation and sliding windows apply to semantic predictions only (as the official TTA), "
            "and the instance task evaluates none: drop scales/flip/sliding_window."
        )
    predictor = Predictor(
        model,
        processor,
        task,
        scales,
        max_size,
        flip,
        sliding_window,
        sliding_window_stride,
        batch_size,
        precision,
        semantic=task != "instance",  # the instance task scores no semantic output
    )
    id2label = {i: str(model.config.id2label[i]) for i in range(predictor.num_labels)}
    ignore_index = getattr(processor, "ignore_index", 255)
    if reduce_labels is None:
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    if reduce_labels and ignore_index is None:
        raise ValueError("reduce_labels needs an ignore index: set the processor's ignore_index (e.g. 255).")
    exporter = None
    if export_dir is not None:
        label_set = dataset_name if dataset_name is not None else dataset_for(id2label)
        exporter = PredictionExporter(export_dir, id2label, predictor.thing_ids, label_set)
    scores = _DatasetScores(task, id2label, predictor.thing_ids, ignore_index, exporter)
    examples = _EvaluationExamples(dataset, task, ignore_index, reduce_labels)
    # Under `accelerate launch` / `torchrun`, each process evaluates every num_processes-th example (no padding, so
    # no example twice), and the statistics are gathered below.
    state = accelerate.PartialState(cpu=not torch.cuda.is_available())  # CPU processes too (gloo)
    shard = torch.utils.data.Subset(examples, range(state.process_index, len(examples), state.num_processes))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    show = progress and state.is_main_process
    with eval_mode(model), torch.inference_mode():
        with tqdm(total=len(shard), unit="img", desc=f"Evaluating ({task})", disable=not show) as bar:
            for items in loader:
                predictions = predictor([item["image"] for item in items], return_scores=False)
                for item, prediction in zip(items, predictions):
                    scores.add(item, prediction)
                bar.update(len(items))
    if state.num_processes > 1:
        scores.merge_states(accelerate_utils.gather_object([scores.state()]))
    if exporter is not None and state.is_main_process:
        exporter.close()
    return scores.compute()


class _DatasetScores:
    """The metrics of an evaluation: every example's references and predictions, then the paper's metrics."""

    def __init__(self, task, id2label, thing_ids, ignore_index, exporter):
        self.task, self.id2label, self.thing_ids, self.ignore_index = task, id2label, thing_ids, ignore_index
        self.exporter = exporter
        self.semantic_metric = MeanIoU() if task != "instance" else None
        self.segments_metric = {"panoptic": PanopticQuality(), "instance": MaskAP()}.get(task)
        self.indices = []  # dataset index of every added example, in order

    def _parts(self) -> dict:
        """The stateful parts of this evaluation (metrics, exporter), by name."""
        parts = {"semantic": self.semantic_metric, "segments": self.segments_metric, "exporter": self.exporter}
        return {name: part for name, part in parts.items() if part is not None}

    def state(self) -> dict:
        """The statistics of the examples added here (one process's share)."""
        return {"indices": self.indices, **{name: part.state() for name, part in self._parts().items()}}

    def merge_states(self, states: list[dict]) -> None:
        """Combine every process's `state()` in dataset order: the same statistics as one process adding all."""
        keys = [state["indices"] for state in states]
        for name, part in self._parts().items():
            part.merge_states([state[name] for state in states], keys)
        self.indices = sorted(index for part_keys in keys for index in part_keys)

    def add(self, item: dict, prediction: dict) -> None:
        """Add an item of `_EvaluationExamples` and its prediction."""
        self.indices.append(item["index"])
        image_id = item["image_id"]
        if self.semantic_metric is not None:
            semantic = prediction["semantic"].cpu().numpy()
            if item["semantic"].shape != semantic.shape:
                raise ValueError(
                    f"Example {item['index']} ({image_id}): its image is {semantic.shape[::-1]} but its semantic map "
                    f"is {item['semantic'].shape[::-1]} (width x height)."
                )
            self.semantic_metric.add(prediction=semantic, reference=item["semantic"])
            if self.exporter is not None:
                self.exporter.add_semantic(image_id, semantic)
        if self.segments_metric is not None:
            output = prediction[self.task]
            segmentation = output["segmentation"].cpu().numpy()
            self.segments_metric.add(
                prediction={"segmentation": segmentation, "segments_info": output["segments_info"]},
                reference=item["segments"],
            )
            if self.exporter is not None and self.task == "panoptic":
                self.exporter.add_panoptic(image_id, segmentation, output["segments_info"])
            elif self.exporter is not None:
                self.exporter.add_instance(image_id, segmentation, output["segments_info"])

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.task == "panoptic":
            stuff_ids = sorted(set(self.id2label) - set(self.thing_ids))
            scores = self.segments_metric.compute(thing_ids=self.thing_ids, stuff_ids=stuff_ids)
            for name in ("pq", "sq", "rq"):
                for suffix, key_suffix in (("", ""), ("_things", "_th"), ("_stuff", "_st")):
                    results[name.upper() + key_suffix] = _percent(scores[name + suffix])
            for index, value in scores["per_category_pq"].items():
                results[f"PQ-{self.id2label[index]}"] = _percent(value)
        if self.semantic_metric is not None:
            scores = self.semantic_metric.compute(num_labels=len(self.id2label), ignore_index=self.ignore_index)
            results["mIoU"] = _percent(scores["mean_iou"])
            results["mAcc"] = _percent(scores["mean_accuracy"])
            results["pAcc"] = _percent(scores["overall_accuracy"])
            for index, value in enumerate(scores["per_category_iou"]):
                results[f"IoU-{self.id2label[index]}"] = _percent(value)
        if self.task == "instance":
            scores = self.segments_metric.compute(thing_ids=self.thing_ids)
            names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
            for key, name in zip(HEADLINE_METRICS["instance"], names):
                results[key] = _percent(scores[name])
            for index, value in scores["per_category_ap"].items():
                results[f"AP-{self.id2label[index]}"] = _percent(value)
        return results


class PEMTrainerMetrics:
    """
    `compute_metrics` for transformers' `Trainer` with `TrainingArguments(batch_eval_metrics=True)`: every evaluation
    batch is post-processed and added to the streaming metrics at once, so no prediction or label is kept across
    batches (with `batch_eval_metrics=False`, `Trainer` would hold every batch's mask logits and `mask_labels`).

    The references are the batch's `label_maps` (from `collate_fn`: the targets of `mask_labels` / `class_labels`
    as one map per image), so the metrics are those of the processed size; `evaluate_model` scores at the original
    size, as the paper does. Void, crowd, ignored and padding pixels are ignored. Use it with
    `label_names=["label_maps"]` (the model computes its loss from `mask_labels` all the same; `Trainer` would cut
    the per-image lists of masks on a last, short batch, see transformers PR #43395),
    `remove_unused_columns=False` and one process: with several, `Trainer` gathers batches of different padded
    sizes, which it cannot; evaluate those runs with `evaluate_model` (exact across processes).

    Args:
        processor ([`PEMImageProcessor`]): post-processing (its thresholds and `thing_ids`).
        task: `"semantic"`, `"panoptic"` or `"instance"`.
        id2label: the model's classes.
    """

    def __init__(self, processor, task: str, id2label: Mapping[int, str]):
        check_task(task)
        self.processor, self.task = processor, task
        self.id2label = {int(i): str(name) for i, name in id2label.items()}
        self.thing_ids = processor.thing_ids if processor.thing_ids is not None else list(self.id2label)
        self.scores = self._new_scores()

    def _new_scores(self) -> _DatasetScores:
        return _DatasetScores(self.task, self.id2label, self.thing_ids, IGNORE_INDEX, None)

    def __call__(self, prediction, compute_result: bool = False) -> dict[str, float] | None:
        class_logits, mask_logits = (torch.as_tensor(logits) for logits in prediction.predictions[:2])
        label_maps = prediction.label_ids
        if isinstance(label_maps, (tuple, list)) or label_maps.ndim != 3:
            raise ValueError(
                "PEMTrainerMetrics scores against the batch's `label_maps` (from `collate_fn`): set "
                "`TrainingArguments(label_names=['label_maps'])`. (`Trainer` truncates list-valued labels such as "
                "`mask_labels` on the last batch, so they cannot be scored.)"
            )
        outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
        sizes = [tuple(label_maps.shape[-2:])] * len(label_maps)  # the padded batch size; padding is void
        semantic = segments = None
        if self.task != "instance":
            semantic = self.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        if self.task == "panoptic":
            segments = self.processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes)
        elif self.task == "instance":
            segments = self.processor.post_process_instance_segmentation(outputs, target_sizes=sizes)
        for index, label_map in enumerate(torch.as_tensor(label_maps).detach().cpu().long()):
            void = label_map < 0
            item = {"index": len(self.scores.indices), "image_id": str(len(self.scores.indices))}
            if self.task != "semantic":
                # One segment per distinct class * LABEL_DIVISOR + instance value, numbered from 1; void is 0.
                values, ids = torch.unique(label_map, return_inverse=True)
                if void.any():
                    values = values[1:]  # -1, the smallest, is first
                else:
                    ids = ids + 1
                infos = [
                    {"id": n, "category_id": int(v) // LABEL_DIVISOR, "iscrowd": 0}
                    for n, v in enumerate(values.tolist(), start=1)
                ]
                item["segments"] = {"segmentation": ids.numpy(), "segments_info": infos}
            if self.task != "instance":
                item["semantic"] = (label_map // LABEL_DIVISOR).masked_fill(void, IGNORE_INDEX).numpy()
            result = {"semantic": semantic[index]} if semantic is not None else {}
            if segments is not None:
                result[self.task] = segments[index]
            self.scores.add(item, result)
        if not compute_result:
            return None
        results = self.scores.compute()
        self.scores = self._new_scores()
        return {name: results[name] for name in HEADLINE_METRICS[self.task] if name in results}


def format_results_table(results: Mapping[str, float], task: str, per_class: bool = True) -> str:
    """
    The metrics of [`evaluate_model`] as markdown: a row of the paper's headline metrics (one decimal) and, with
    `per_class`, a table of the per-class scores.
    """
    if task not in HEADLINE_METRICS:
        raise ValueError(f"Unknown task {task!r}: use one of {tuple(HEADLINE_METRICS)}.")

    def cell(value) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.1f}"

    names = [name for name in HEADLINE_METRICS[task] if name in results]
    lines = [
        "| " + " | ".join(names) + " |",
        "|" + "|".join("---:" for _ in names) + "|",
        "| " + " | ".join(cell(results[name]) for name in names) + " |",
    ]
    if per_class:
        prefixes = [prefix for prefix in ("PQ", "IoU", "AP") if any(k.startswith(prefix + "-") for k in results)]
        classes = list(
            dict.fromkeys(k.split("-", 1)[1] for k in results if "-" in k and k.split("-", 1)[0] in prefixes)
        )
        if classes:
            lines += [
                "",
                "| class | " + " | ".join(prefixes) + " |",
                "|---|" + "|".join("---:" for _ in prefixes) + "|",
            ]
            for name in classes:
                values = [cell(results.get(f"{prefix}-{name}")) for prefix in prefixes]
                lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


__all__ = ["HEADLINE_METRICS", "PEMTrainerMetrics", "evaluate_model", "format_results_table"]
