"""
Evaluation of PEM models: the paper's metrics on a `datasets.Dataset`, test-time augmentation, sliding-window
inference, and prediction export in the official submission formats.

```python
>>> from transformers_pem import PEMForUniversalSegmentation, PEMImageProcessor
>>> from transformers_pem.data_pem import load_cityscapes
>>> from transformers_pem.evaluation_pem import evaluate_model, format_results_table, official_tta_settings
>>> model = PEMForUniversalSegmentation.from_pretrained("checkpoints/pem-r50-cityscapes-semantic")
>>> processor = PEMImageProcessor.from_pretrained("checkpoints/pem-r50-cityscapes-semantic")
>>> dataset = load_cityscapes("data/cityscapes", split="val", task="semantic")
>>> results = evaluate_model(model, processor, dataset, task="semantic")  # single scale, as the paper reports
>>> results_tta = evaluate_model(model, processor, dataset, **official_tta_settings("cityscapes", "semantic"))
>>> print(format_results_table(results, task="semantic"))
```

Command line: `python -m transformers_pem.evaluate CHECKPOINT --dataset cityscapes --data-root DIR --task semantic`
(also `python scripts/evaluate.py ...`); see `--help`.

How predictions are made (see [`predict`]):

- **Single scale** (default): the processor's test-time resize, one forward pass, the processor's post-processing
  at the original image size. This is the official evaluation.
- **Test-time augmentation** (`scales`, `max_size`, `flip`): as the official `SemanticSegmentorWithTTA`, every
  augmentation (each scale, and with `flip` its horizontal mirror) gives the semantic scores `sum_q softmax(class_q)
  * sigmoid(mask_q)` at the original size (mirrored back); the scores are averaged and the class map is their argmax.
  The official TTA is semantic only: panoptic and instance predictions always come from single-scale inference (so
  with TTA a panoptic model's mIoU uses TTA, its PQ does not).
- **Sliding window** (`sliding_window`, `sliding_window_stride`): for processed images larger than the window (the
  training crop) in some dimension, windows of that size (clipped to the image) slide with the stride, the last one
  aligned to the image border; the semantic scores of overlapping windows are averaged at the processed resolution,
  then resized to the original size. Images that fit in the window are processed whole, so the result is then
  exactly the whole-image one. Like TTA, it applies to the semantic output only.
- **Batches**: images are processed `batch_size` at a time. Within a batch, images whose padded sizes (a multiple of
  32) differ run in separate forward passes: padding an image further would change its predictions (convolutions
  see the padding, and PEM-CA's prototype selection runs over the whole padded map), and the results would then
  depend on the batch composition. Images of one padded size share a forward pass and are cropped by their own
  `pixel_mask` in post-processing; they equal batch-size-1 results up to the float rounding of batched kernels.

Metrics are percentages, as in the paper and detectron2's evaluators (NaN for classes without any evaluated pixel
or segment): semantic `mIoU`, `mAcc`, `pAcc`, `IoU-<class>`; panoptic `PQ`, `SQ`, `RQ`, `PQ_th`, `SQ_th`, `RQ_th`,
`PQ_st`, `SQ_st`, `RQ_st`, `PQ-<class>` and the semantic metrics of the same model (the official panoptic configs
also report mIoU); instance `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AP-<class>`. They are computed by
[`~metrics.MeanIoU`], [`~metrics.PanopticQuality`] and [`~metrics.MaskAP`], equal to the official scorers.
"""

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from pycocotools import mask as mask_utils
from torch import nn
from tqdm.auto import tqdm

from .allocator_pem import add_allocator_argument, apply_allocator_argument
from .data_pem import TASKS, segment_ids_from_image
from .labels_pem import DATASET_LABELS
from .metrics import MaskAP, MeanIoU, PanopticQuality

# The model zero-pads its inputs to a multiple of this size.
SIZE_DIVISOR = 32

# "fp32", or "amp": the model under autocast (bfloat16 on CPU, float16 on CUDA).
PRECISIONS = ("fp32", "amp")

# Official test-time augmentation (`TEST.AUG` of configs/<dataset>/<task>-segmentation/Base-*.yaml): shortest-edge
# sizes, the longest-edge cap, and horizontal flip.
OFFICIAL_TTA = {
    ("cityscapes", "semantic"): ([512, 768, 1024, 1280, 1536, 1792], 4096),
    ("cityscapes", "panoptic"): ([512, 768, 1024, 1280, 1536, 1792], 4096),
    ("ade20k", "semantic"): ([256, 384, 512, 640, 768, 896], 3584),
    ("ade20k", "panoptic"): ([320, 480, 640, 800, 960, 1120], 4480),
}

# Official training crops (`INPUT.CROP.SIZE`), the natural sliding-window size.
OFFICIAL_CROP_SIZES = {
    ("cityscapes", "semantic"): (512, 1024),
    ("cityscapes", "panoptic"): (512, 1024),
    ("ade20k", "semantic"): (512, 512),
    ("ade20k", "panoptic"): (640, 640),
}

# Headline metrics per task, in the order of the paper's tables.
HEADLINE_METRICS = {
    "semantic": ("mIoU", "mAcc", "pAcc"),
    "panoptic": ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"),
    "instance": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
}


def _official_key(dataset: str, task: str) -> tuple[str, str]:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: use one of {TASKS}.")
    if dataset not in DATASET_LABELS:
        raise ValueError(f"No official settings for dataset {dataset!r}: use one of {sorted(DATASET_LABELS)}.")
    # The instance task has no official configuration: it uses the panoptic models and their settings.
    return dataset, "semantic" if task == "semantic" else "panoptic"


def official_tta_settings(dataset: str, task: str) -> dict[str, Any]:
    """
    The official multi-scale + flip test-time augmentation of a dataset (`"cityscapes"`, `"ade20k"`) and task, as
    keyword arguments of [`evaluate_model`] / [`predict`]: `{"scales": [...], "max_size": ..., "flip": True}`.
    """
    scales, max_size = OFFICIAL_TTA[_official_key(dataset, task)]
    return {"scales": list(scales), "max_size": max_size, "flip": True}


def official_crop_size(dataset: str, task: str) -> tuple[int, int]:
    """The official training crop `(height, width)` of a dataset and task: the natural sliding window."""
    return OFFICIAL_CROP_SIZES[_official_key(dataset, task)]


# ---------------------------------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pair(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering `[0, length)`: every `stride`, the last window ending at the border."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def _padded(size: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(size[0] / SIZE_DIVISOR) * SIZE_DIVISOR, math.ceil(size[1] / SIZE_DIVISOR) * SIZE_DIVISOR


def precision_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context of a precision in `PRECISIONS`: nothing for "fp32"; for "amp", autocast to float16 on CUDA and to
    bfloat16 on CPU."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


class _Predictor:
    """Holds the inference settings of [`predict`] and runs them on one list of images."""

    def __init__(
        self,
        model: nn.Module,
        processor,
        task: str,
        scales: Sequence[int] | None,
        max_size: int | None,
        flip: bool,
        sliding_window,
        sliding_window_stride,
        batch_size: int | None,
        precision: str = "fp32",
    ):
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}: use one of {TASKS}.")
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}: use one of {PRECISIONS}.")
        if scales is not None:
            scales = [scales] if isinstance(scales, int) else list(scales)
            if not scales or any(not isinstance(s, (int, np.integer)) or s < 1 for s in scales):
                raise ValueError(f"scales must be a non-empty list of positive shortest-edge sizes, got {scales!r}.")
        if max_size is not None and (not isinstance(max_size, (int, np.integer)) or max_size < 1):
            raise ValueError(f"max_size must be a positive int, got {max_size!r}.")
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        self.window = _pair(sliding_window, "sliding_window")
        stride = _pair(sliding_window_stride, "sliding_window_stride")
        if stride is not None and self.window is None:
            raise ValueError("sliding_window_stride needs sliding_window (the window size) to be set.")
        if self.window is not None and stride is None:
            stride = (math.ceil(2 * self.window[0] / 3), math.ceil(2 * self.window[1] / 3))
        self.stride = stride
        if max_size is None and scales is not None:
            size = getattr(processor, "size", None)
            max_size = size.get("longest_edge") if isinstance(size, Mapping) else getattr(size, "longest_edge", None)
        self.model, self.processor, self.task = model, processor, task
        self.max_size, self.batch_size, self.precision = max_size, batch_size, precision
        # (shortest edge or None for the processor's own size, flipped), in the order of detectron2's TTA mapper
        self.augmentations = [
            (scale, mirrored) for scale in (scales or [None]) for mirrored in ((False, True) if flip else (False,))
        ]
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        config = model.config
        self.num_labels = len(config.id2label)
        thing_ids = getattr(processor, "thing_ids", None)
        if thing_ids is None:
            thing_ids = getattr(config, "thing_ids", None)
        self.thing_ids = sorted(int(i) for i in thing_ids) if thing_ids is not None else list(range(self.num_labels))
        self.object_mask_threshold = getattr(config, "object_mask_threshold", 0.8)
        self.overlap_threshold = getattr(config, "overlap_threshold", 0.8)

    # ------------------------------------------------------------------------------------------------- forward passes

    def _preprocess(self, images: list, scale: int | None, mirrored: bool) -> tuple[torch.Tensor, list]:
        """Processed `(batch, 3, height, width)` pixel values (mirrored within each image) and per-image sizes."""
        kwargs = {}
        if scale is not None:
            kwargs["size"] = {"shortest_edge": scale}
            if self.max_size is not None:
                kwargs["size"]["longest_edge"] = self.max_size
        inputs = self.processor(images=images, return_tensors="pt", **kwargs)
        pixel_values = inputs["pixel_values"]
        pixel_mask = inputs.get("pixel_mask")
        if pixel_mask is None:
            sizes = [tuple(pixel_values.shape[-2:])] * len(images)
        else:
            valid = pixel_mask.bool()
            sizes = list(zip(valid.any(dim=2).sum(dim=1).tolist(), valid.any(dim=1).sum(dim=1).tolist()))
        if mirrored:  # flip each image inside its valid region (the padding stays bottom/right)
            pixel_values = pixel_values.clone()
            for index, (height, width) in enumerate(sizes):
                pixel_values[index, :, :height, :width] = pixel_values[index, :, :height, :width].flip(-1)
        return pixel_values, sizes

    def _forward(self, pixel_values: torch.Tensor, sizes: list) -> tuple:
        """Model outputs of images that all pad to the size of `pixel_values`, and their `pixel_mask`."""
        pixel_mask = torch.zeros(len(sizes), *pixel_values.shape[-2:], dtype=torch.int64, device=self.device)
        for index, (height, width) in enumerate(sizes):
            pixel_mask[index, :height, :width] = 1
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        with precision_autocast(self.device, self.precision):
            outputs = self.model(pixel_values=pixel_values)
        if self.precision == "amp":
            # Autocast covers the model only; the logits are post-processed in float32, as in fp32 inference.
            outputs.class_queries_logits = outputs.class_queries_logits.float()
            outputs.masks_queries_logits = outputs.masks_queries_logits.float()
        return outputs, pixel_mask

    def _forward_groups(self, pixel_values: torch.Tensor, sizes: list, indices: list[int]) -> Iterator[tuple]:
        """Forward passes over `indices`, one per padded size (see the module docstring): (indices, outputs, mask)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            groups.setdefault(_padded(sizes[index]), []).append(index)
        for (height, width), group in groups.items():
            for start in range(0, len(group), self.batch_size or len(group)):
                chunk = group[start : start + (self.batch_size or len(group))]
                batch = pixel_values[chunk, :, :height, :width]
                batch = nn.functional.pad(batch, (0, width - batch.shape[-1], 0, height - batch.shape[-2]))
                outputs, pixel_mask = self._forward(batch, [sizes[i] for i in chunk])
                yield chunk, outputs, pixel_mask

    def _sliding_window_scores(self, image: torch.Tensor) -> torch.Tensor:
        """Semantic scores `(num_labels, height, width)` of one processed `(3, height, width)` image, by windows."""
        height, width = image.shape[-2:]
        window = (min(self.window[0], height), min(self.window[1], width))
        padded = _padded(window)
        offsets = [
            (top, left)
            for top in _window_starts(height, window[0], self.stride[0])
            for left in _window_starts(width, window[1], self.stride[1])
        ]
        scores = torch.zeros(self.num_labels, height, width, device=self.device)
        counts = torch.zeros(height, width, device=self.device)
        batch_size = self.batch_size or len(offsets)
        for start in range(0, len(offsets), batch_size):
            chunk = offsets[start : start + batch_size]
            crops = torch.stack([image[:, top : top + window[0], left : left + window[1]] for top, left in chunk])
            crops = nn.functional.pad(crops, (0, padded[1] - window[1], 0, padded[0] - window[0]))
            outputs, pixel_mask = self._forward(crops, [window] * len(chunk))
            results = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=[window] * len(chunk), pixel_mask=pixel_mask, return_segmentation_scores=True
            )
            for (top, left), result in zip(chunk, results):
                scores[:, top : top + window[0], left : left + window[1]] += result["segmentation_scores"]
                counts[top : top + window[0], left : left + window[1]] += 1
        return scores / counts

    # ------------------------------------------------------------------------------------------------ post-processing

    def _segments(self, outputs, target_sizes: list, pixel_mask: torch.Tensor) -> list[dict]:
        """Panoptic or instance predictions (single scale, whole image) at the target sizes."""
        if self.task == "panoptic":
            return self.processor.post_process_panoptic_segmentation(
                outputs,
                threshold=self.object_mask_threshold,
                overlap_mask_area_threshold=self.overlap_threshold,
                label_ids_to_fuse=set(range(self.num_labels)) - set(self.thing_ids),
                target_sizes=target_sizes,
                pixel_mask=pixel_mask,
            )
        results = self.processor.post_process_instance_segmentation(
            outputs, target_sizes=target_sizes, pixel_mask=pixel_mask, return_binary_maps=True
        )
        things = set(self.thing_ids)
        for result in results:  # the processor may know no thing classes when only the model config does
            keep = [i for i, segment in enumerate(result["segments_info"]) if segment["label_id"] in things]
            if len(keep) < len(result["segments_info"]):
                result["segmentation"] = result["segmentation"][keep]
                result["segments_info"] = [dict(result["segments_info"][i], id=k) for k, i in enumerate(keep)]
        return results

    def __call__(self, images: list, return_scores: bool) -> list[dict]:
        if len(images) == 0:
            return []
        original_sizes = []
        for image in images:
            if isinstance(image, PIL.Image.Image):
                original_sizes.append((image.height, image.width))
            else:  # arrays and tensors: channels first or last; the processor validates them
                shape = tuple(np.shape(image))
                channels_first = len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
                original_sizes.append(shape[-2:] if channels_first else shape[:2])
        score_sums: list[torch.Tensor | None] = [None] * len(images)
        segments: list[dict | None] = [None] * len(images)
        needs_segments = self.task != "semantic"

        def add_scores(index: int, scores: torch.Tensor, mirrored: bool):
            scores = scores.flip(-1) if mirrored else scores
            score_sums[index] = scores if score_sums[index] is None else score_sums[index] + scores

        for scale, mirrored in self.augmentations:
            pixel_values, sizes = self._preprocess(images, scale, mirrored)
            sliding = [
                self.window is not None and (height > self.window[0] or width > self.window[1])
                for height, width in sizes
            ]
            whole = [index for index, slides in enumerate(sliding) if not slides]
            for indices, outputs, pixel_mask in self._forward_groups(pixel_values, sizes, whole):
                target_sizes = [original_sizes[i] for i in indices]
                results = self.processor.post_process_semantic_segmentation(
                    outputs, target_sizes=target_sizes, pixel_mask=pixel_mask, return_segmentation_scores=True
                )
                for index, result in zip(indices, results):
                    add_scores(index, result["segmentation_scores"], mirrored)
                if needs_segments and scale is None and not mirrored:
                    for index, result in zip(indices, self._segments(outputs, target_sizes, pixel_mask)):
                        segments[index] = result
            for index in (index for index, slides in enumerate(sliding) if slides):
                height, width = sizes[index]
                scores = self._sliding_window_scores(pixel_values[index, :, :height, :width])
                scores = nn.functional.interpolate(
                    scores[None], size=original_sizes[index], mode="bilinear", align_corners=False
                )[0]
                add_scores(index, scores, mirrored)

        missing = [index for index, result in enumerate(segments) if result is None]
        if needs_segments and missing:  # single-scale whole-image inference for the panoptic / instance output
            pixel_values, sizes = self._preprocess([images[i] for i in missing], None, False)
            for positions, outputs, pixel_mask in self._forward_groups(pixel_values, sizes, list(range(len(missing)))):
                target_sizes = [original_sizes[missing[p]] for p in positions]
                for position, result in zip(positions, self._segments(outputs, target_sizes, pixel_mask)):
                    segments[missing[position]] = result

        predictions = []
        for index, score_sum in enumerate(score_sums):
            scores = score_sum / len(self.augmentations)
            prediction = {"semantic": scores.max(dim=0).indices}
            if return_scores:
                prediction["semantic_scores"] = scores
            if needs_segments:
                prediction[self.task] = segments[index]
            predictions.append(prediction)
        return predictions


def predict(
    model: nn.Module,
    processor,
    images: list,
    task: str = "semantic",
    scales: Sequence[int] | None = None,
    max_size: int | None = None,
    flip: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
    sliding_window_stride: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    return_scores: bool = False,
    precision: str = "fp32",
) -> list[dict]:
    """
    Predictions of a PEM model for a list of images, with optional test-time augmentation and sliding-window
    inference (see the module docstring for how they combine). The model runs on its device, in eval mode, without
    gradients.

    Args:
        model ([`PEMForUniversalSegmentation`]):
            Any model returning `class_queries_logits` and `masks_queries_logits`, with `config.id2label`.
        processor ([`PEMImageProcessor`]):
            Pre- and post-processing (its test size, thing classes and semantic post-processing order are used).
        images (`list`):
            PIL images, numpy arrays or tensors, of any sizes.
        task (`str`, *optional*, defaults to `"semantic"`):
            `"semantic"`, `"panoptic"` or `"instance"`. Every task also returns the semantic prediction.
        scales (`list[int]`, *optional*):
            Test-time augmentation: shortest-edge sizes (the official lists: [`official_tta_settings`]). `None`: the
            processor's own test size.
        max_size (`int`, *optional*):
            Longest-edge cap of the `scales`. Defaults to the processor's `size["longest_edge"]`.
        flip (`bool`, *optional*, defaults to `False`):
            Also predict the horizontally mirrored images and average.
        sliding_window (`int` or `(height, width)`, *optional*):
            Window size for sliding-window inference of processed images larger than it (the training crop:
            [`official_crop_size`]).
        sliding_window_stride (`int` or `(height, width)`, *optional*):
            Window stride. Defaults to two thirds of the window (rounded up).
        batch_size (`int`, *optional*):
            Images or windows per forward pass. Defaults to all the images given.
        return_scores (`bool`, *optional*, defaults to `False`):
            Also return the averaged semantic scores.
        precision (`str`, *optional*, defaults to `"fp32"`):
            `"amp"` runs the model under autocast (bfloat16 on CPU, float16 on CUDA); post-processing stays float32.

    Returns:
        `list[dict]`, one per image, at the image's original size: `semantic` (`torch.LongTensor` `(height,
        width)`), with `return_scores` `semantic_scores` (`(num_labels, height, width)`), and for the panoptic task
        `panoptic` (the processor's `{"segmentation", "segments_info"}`), for the instance task `instance` (the
        processor's output with `(num_instances, height, width)` boolean masks).
    """
    predictor = _Predictor(
        model, processor, task, scales, max_size, flip, sliding_window, sliding_window_stride, batch_size, precision
    )
    with _eval_mode(model), torch.inference_mode():
        return predictor(list(images), return_scores)


# ---------------------------------------------------------------------------------------------------------------------
# References and export
# ---------------------------------------------------------------------------------------------------------------------


def _segments_list(segments) -> list[dict]:
    """`segments_info` as a list of dicts (a JSON string and `datasets`' dict of lists are accepted)."""
    if isinstance(segments, str):
        segments = json.loads(segments)
    if isinstance(segments, Mapping):
        segments = [dict(zip(segments, values)) for values in zip(*segments.values())]
    if any(not isinstance(s, Mapping) or "id" not in s or "category_id" not in s for s in segments):
        raise ValueError("segments_info must be a list of dicts with 'id' and 'category_id' (and optional 'iscrowd').")
    return list(segments)


def _panoptic_reference(example: Mapping, column: str) -> dict:
    """A panoptic/instance target as `{"segmentation", "segments_info"}` with segment ids 1..n (0 = void)."""
    segment_ids = segment_ids_from_image(example[column])
    segments = _segments_list(example["segments_info"])
    listed = np.array([int(segment["id"]) for segment in segments], np.int64)
    if len(np.unique(listed)) != len(listed):
        raise ValueError(f"segments_info lists a segment id twice: {sorted(listed.tolist())}.")
    # new id k + 1 for segments_info[k]; ids not listed in segments_info are void (0)
    remapped = np.zeros_like(segment_ids)
    if len(listed):
        order = np.argsort(listed)
        positions = np.minimum(np.searchsorted(listed[order], segment_ids), len(listed) - 1)
        remapped = np.where(listed[order][positions] == segment_ids, order[positions] + 1, 0)
    info = [
        {"id": k, "category_id": int(segment["category_id"]), "iscrowd": int(segment.get("iscrowd", 0))}
        for k, segment in enumerate(segments, start=1)
    ]
    return {"segmentation": remapped, "segments_info": info}


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
            item["segments"] = _panoptic_reference(example, self.task)
        if self.task == "instance":
            return item
        if "semantic" in example:
            classes = np.asarray(example["semantic"])
            if classes.ndim != 2:
                raise ValueError(
                    f"Semantic maps must be single-channel class ids, got an array of shape {classes.shape} for "
                    f"example {index} ({image_id}). Convert colour-coded annotations to class ids first."
                )
            classes = classes.astype(np.int64)
            if self.reduce_labels:  # ADE20K: 0 = "other" is ignored, class c is stored as c + 1
                ignored = (classes == 0) | (classes == self.ignore_index)
                classes = np.where(ignored, self.ignore_index + 1, classes) - 1
        else:  # the classes of the panoptic segments (crowd regions included), void pixels ignored
            lookup = [segment["category_id"] for segment in item["segments"]["segments_info"]]
            ignore_index = self.ignore_index if self.ignore_index is not None else -1
            classes = np.array([ignore_index] + lookup, np.int64)[item["segments"]["segmentation"]]
        item["semantic"] = classes
        return item


def _infer_label_set(id2label: Mapping[int, str]) -> str | None:
    names = [id2label[i] for i in range(len(id2label))]
    for name, labels in DATASET_LABELS.items():
        if names == [label[0] for label in labels]:
            return name
    return None


class PredictionExporter:
    """
    Writes predictions in the official submission formats:

    - semantic: `semantic/<image_id>_labelIds.png` with Cityscapes label ids (cityscapesscripts'
      `evalPixelLevelSemanticLabeling` and the benchmark server), `semantic/<image_id>.png` with class + 1 for
      ADE20K (the SceneParsing challenge format, 0 = "other"), or class indices for other label sets;
    - panoptic: COCO panoptic, `panoptic/<image_id>.png` (RGB-encoded segment ids, 0 = void) and `panoptic.json`
      (`annotations` with `segments_info`, `categories`, `images`), with the dataset's category ids (Cityscapes
      label ids, ADE20K class indices), as read by panopticapi and `evalPanopticSemanticLabeling`;
    - instance: COCO results, `instances.json` (a list of `{"image_id", "category_id", "segmentation" (RLE),
      "score"}`), as read by `pycocotools.coco.COCO.loadRes`.

    Args:
        export_dir: Folder to write to (created).
        id2label: The model's class names.
        thing_ids: Thing classes (for the `isthing` flag of COCO categories).
        label_set: `"cityscapes"`, `"ade20k"` or `None` (class indices), for the label ids of the files.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        id2label: Mapping[int, str],
        thing_ids: Sequence[int],
        label_set: str | None = None,
    ):
        if label_set is not None and label_set not in DATASET_LABELS:
            raise ValueError(f"Unknown label set {label_set!r}: use one of {sorted(DATASET_LABELS)} or None.")
        num_labels = len(id2label)
        if label_set is not None and num_labels != len(DATASET_LABELS[label_set]):
            raise ValueError(
                f"The model has {num_labels} classes but the {label_set} label set has "
                f"{len(DATASET_LABELS[label_set])}: pass the right dataset_name (or None to export class indices)."
            )
        self.export_dir = Path(export_dir)
        self.label_set = label_set
        self.category_ids = (
            [label[3] for label in DATASET_LABELS[label_set]] if label_set is not None else list(range(num_labels))
        )
        self.categories = []
        for index in range(num_labels):
            category = {"id": self.category_ids[index], "name": id2label[index], "isthing": int(index in thing_ids)}
            if label_set is not None:
                category["color"] = list(DATASET_LABELS[label_set][index][1])
            self.categories.append(category)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self.panoptic_annotations, self.images = [], []
        self.instances: list[dict] | None = None  # a list once an instance prediction was added

    def add_semantic(self, image_id: str, segmentation: np.ndarray) -> None:
        folder = self.export_dir / "semantic"
        folder.mkdir(parents=True, exist_ok=True)
        if self.label_set == "cityscapes":
            values, name = np.asarray(self.category_ids, np.uint8)[segmentation], f"{image_id}_labelIds.png"
        elif self.label_set == "ade20k":
            values, name = (segmentation + 1).astype(np.uint8), f"{image_id}.png"
        else:
            dtype = np.uint8 if len(self.category_ids) <= 256 else np.uint16
            values, name = segmentation.astype(dtype), f"{image_id}.png"
        PIL.Image.fromarray(values).save(folder / name)

    def add_panoptic(self, image_id: str, segmentation: np.ndarray, segments_info: list[dict]) -> None:
        folder = self.export_dir / "panoptic"
        folder.mkdir(parents=True, exist_ok=True)
        segmentation = segmentation.astype(np.int64)
        rgb = np.stack([segmentation % 256, segmentation // 256 % 256, segmentation // 65536 % 256], axis=-1)
        PIL.Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{image_id}.png")
        segments = []
        for segment in segments_info:
            mask = segmentation == segment["id"]
            rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            if rows.size == 0:
                continue
            bbox = [int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)]
            segments.append(
                {
                    "id": int(segment["id"]),
                    "category_id": self.category_ids[segment["label_id"]],
                    "iscrowd": 0,
                    "isthing": self.categories[segment["label_id"]]["isthing"],
                    "area": int(mask.sum()),
                    "bbox": bbox,
                }
            )
        height, width = segmentation.shape
        self.images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
        self.panoptic_annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}
        )

    def add_instance(self, image_id: str, masks: np.ndarray, segments_info: list[dict]) -> None:
        self.instances = self.instances if self.instances is not None else []
        for mask, segment in zip(masks, segments_info):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            self.instances.append(
                {
                    "image_id": image_id,
                    "category_id": self.category_ids[segment["label_id"]],
                    "segmentation": rle,
                    "score": float(segment["score"]),
                }
            )

    def close(self) -> None:
        """Write the JSON files."""
        if self.panoptic_annotations:
            with open(self.export_dir / "panoptic.json", "w") as file:
                json.dump(
                    {"images": self.images, "annotations": self.panoptic_annotations, "categories": self.categories},
                    file,
                )
        if self.instances is not None:
            with open(self.export_dir / "instances.json", "w") as file:
                json.dump(self.instances, file)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


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
            The model (`config.id2label` gives the classes, `config.thing_ids` the thing classes if the processor
            has none).
        processor ([`PEMImageProcessor`]):
            Pre- and post-processing; `PEMImageProcessor.from_preset(...)` gives the official test settings.
        dataset (`datasets.Dataset` or a sequence of dicts):
            Examples with an `image` and the task's target, as the loaders of `data_pem` return them: `semantic`
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
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: use one of {TASKS}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    columns = set(getattr(dataset, "column_names", None) or dataset[0].keys())
    required = ["image", task] + (["segments_info"] if task != "semantic" else [])
    if not set(required) <= columns:
        raise ValueError(
            f"The {task} task needs the columns {required}; the dataset has {sorted(columns)}. Load it with the "
            f"data_pem loaders (task={task!r}) or rename its columns."
        )
    if task == "instance" and (scales is not None or flip or sliding_window is not None):
        raise ValueError(
            "Test-time augmentation and sliding windows apply to semantic predictions only (as the official TTA), "
            "and the instance task evaluates none: drop scales/flip/sliding_window."
        )
    predictor = _Predictor(
        model, processor, task, scales, max_size, flip, sliding_window, sliding_window_stride, batch_size, precision
    )
    id2label = {i: str(model.config.id2label[i]) for i in range(predictor.num_labels)}
    ignore_index = getattr(processor, "ignore_index", 255)
    if reduce_labels is None:
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    if reduce_labels and ignore_index is None:
        raise ValueError("reduce_labels needs an ignore index: set the processor's ignore_index (e.g. 255).")
    exporter = None
    if export_dir is not None:
        label_set = dataset_name if dataset_name is not None else _infer_label_set(id2label)
        exporter = PredictionExporter(export_dir, id2label, predictor.thing_ids, label_set)
    scores = _DatasetScores(task, id2label, predictor.thing_ids, ignore_index, exporter)
    examples = _EvaluationExamples(dataset, task, ignore_index, reduce_labels)
    loader = torch.utils.data.DataLoader(examples, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    with _eval_mode(model), torch.inference_mode():
        with tqdm(total=len(dataset), unit="img", desc=f"Evaluating ({task})", disable=not progress) as bar:
            for items in loader:
                predictions = predictor([item["image"] for item in items], return_scores=False)
                for item, prediction in zip(items, predictions):
                    scores.add(item, prediction)
                bar.update(len(items))
    if exporter is not None:
        exporter.close()
    return scores.compute()


class _DatasetScores:
    """The metrics of an evaluation: every example's references and predictions, then the paper's metrics."""

    def __init__(self, task, id2label, thing_ids, ignore_index, exporter):
        self.task, self.id2label, self.thing_ids, self.ignore_index = task, id2label, thing_ids, ignore_index
        self.exporter = exporter
        self.semantic_metric = MeanIoU() if task != "instance" else None
        self.segments_metric = {"panoptic": PanopticQuality(), "instance": MaskAP()}.get(task)

    def add(self, item: dict, prediction: dict) -> None:
        """Add an item of `_EvaluationExamples` and its prediction."""
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


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def load_evaluation_dataset(dataset: str, data_root: str | None, split: str, task: str):
    """
    The dataset of the command line: `"cityscapes"` / `"ade20k"` from a local tree under `data_root` (for ADE20K
    panoptic, with a `semantic` column of the semantic annotations, which the official mIoU of panoptic models
    uses), or any source of `data_pem.load_segmentation_dataset` (a local folder or file, a Hub dataset).
    """
    import datasets

    from .data_pem import load_ade20k, load_cityscapes, load_segmentation_dataset

    if dataset in DATASET_LABELS and data_root is None:
        raise ValueError(f"--data-root is required for --dataset {dataset} (the folder of the local dataset tree).")
    if dataset == "cityscapes":
        return load_cityscapes(data_root, split=split, task=task)
    if dataset != "ade20k":
        return load_segmentation_dataset(dataset, split=split, task=task)
    loaded = load_ade20k(data_root, split=split, task=task)
    if task == "panoptic":
        semantic = load_ade20k(data_root, split=split, task="semantic", verify=False)
        files = semantic.cast_column("semantic", datasets.Image(decode=False))["semantic"]
        paths = {image_id: file["path"] for image_id, file in zip(semantic["image_id"], files)}
        if all(image_id in paths for image_id in loaded["image_id"]):
            loaded = loaded.add_column("semantic", [paths[i] for i in loaded["image_id"]])
            loaded = loaded.cast_column("semantic", datasets.Image())
    return loaded


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
        prog="python -m transformers_pem.evaluate",
        description="Evaluate a PEM checkpoint: the paper's metrics (mIoU / PQ / mask AP) as markdown and JSON.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory (or Hub id) written by save_pretrained")
    parser.add_argument(
        "--dataset",
        required=True,
        help="'cityscapes' or 'ade20k' (local tree under --data-root), or a dataset path "
        "or Hub name for data_pem.load_segmentation_dataset",
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
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    parser.add_argument("--no-progress", action="store_true")
    add_allocator_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point (see `parse_args`); returns the results written to `--output`."""
    from .image_processing_pem import PEMImageProcessor
    from .modeling_pem import PEMForUniversalSegmentation

    args = parse_args(argv)
    apply_allocator_argument(args)
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

    model = PEMForUniversalSegmentation.from_pretrained(args.checkpoint).to(args.device)
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
        processor = PEMImageProcessor.from_preset(preset, thing_ids=model.config.thing_ids)
    dataset = load_evaluation_dataset(args.dataset, args.data_root, args.split, args.task)
    if args.max_images is not None:
        dataset = dataset.select(range(min(args.max_images, len(dataset))))
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
        },
        "seconds": seconds,
        "images_per_second": len(dataset) / seconds,
        "metrics": metrics,
    }
    print(format_results_table(metrics, args.task))
    print(f"\n{len(dataset)} images in {seconds:.1f} s ({len(dataset) / seconds:.2f} images/s)")
    if args.task == "panoptic" and (scales or flip or window):
        print("Test-time augmentation / sliding windows apply to the semantic output (mIoU) only; PQ is single-scale.")
    if args.output is not None:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as file:
            json.dump(_json_safe(results), file, indent=2)
    return results


if __name__ == "__main__":
    main()
