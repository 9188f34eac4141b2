"""
Inference with PEM models beyond one forward pass: test-time augmentation and sliding windows ([`predict`]).

```python
>>> from transformers_pem import official_tta_settings, predict
>>> predictions = predict(model, processor, images, task="semantic", **official_tta_settings("cityscapes", "semantic"))
```

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
"""

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import PIL.Image
import torch
from torch import nn

from ..configuration_pem import padded_size
from ..image_loading_pem import load_image
from ..post_processing_pem import valid_sizes
from ..presets_pem import check_task
from .precision import PRECISIONS, precision_autocast


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with `model` in eval mode, then put it back in its previous mode."""
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


class Predictor:
    """The inference settings of [`predict`] (validated once), run on one list of images at a time; also what
    [`evaluate_model`] predicts with."""

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
        semantic: bool = True,
    ):
        check_task(task)
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
        if max_size is not None and scales is None:
            raise ValueError("max_size caps the test-time scales: pass scales too (or drop max_size).")
        if max_size is None and scales is not None:
            size = getattr(processor, "size", None)
            max_size = size.get("longest_edge") if isinstance(size, Mapping) else getattr(size, "longest_edge", None)
        self.model, self.processor, self.task = model, processor, task
        self.max_size, self.batch_size, self.precision = max_size, batch_size, precision
        # Whether the semantic output (and with it TTA and sliding windows, which apply to it only) is computed.
        self.semantic = semantic or task == "semantic"
        # (shortest edge or None for the processor's own size, flipped), in the order of detectron2's TTA mapper
        self.augmentations = [
            (scale, mirrored) for scale in (scales or [None]) for mirrored in ((False, True) if flip else (False,))
        ]
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        config = model.config
        self.num_labels = len(config.id2label)
        # Post-processing reads its settings from the processor, saved from the model config (`from_preset(...,
        # model_config=config)`); a processor that disagrees with its model would predict and score the wrong thing
        # classes.
        thing_ids = getattr(processor, "thing_ids", None)
        self.thing_ids = sorted(int(i) for i in thing_ids) if thing_ids is not None else list(range(self.num_labels))
        model_thing_ids = getattr(config, "thing_ids", None)
        if task != "semantic" and model_thing_ids is not None and self.thing_ids != sorted(model_thing_ids):
            raise ValueError(
                f"The processor's thing_ids {thing_ids} differ from the model's {sorted(model_thing_ids)}: build the "
                "processor from the model, e.g. PEMImageProcessor.from_preset(preset, model_config=model.config), or "
                "set processor.thing_ids = model.config.thing_ids."
            )

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
            sizes = valid_sizes(pixel_mask)
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
            groups.setdefault(padded_size(sizes[index]), []).append(index)
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
        padded = padded_size(window)
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
                outputs, target_sizes=target_sizes, pixel_mask=pixel_mask
            )
        return self.processor.post_process_instance_segmentation(
            outputs, target_sizes=target_sizes, pixel_mask=pixel_mask, return_binary_maps=True
        )

    def __call__(self, images: list, return_scores: bool) -> list[dict]:
        if len(images) == 0:
            return []
        # Paths are decoded as viewers show them (EXIF orientation, 16-bit and float images, transparency).
        images = [load_image(image) if isinstance(image, (str, os.PathLike)) else image for image in images]
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

        for scale, mirrored in self.augmentations if self.semantic else []:
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
            prediction = {}
            if self.semantic:
                scores = score_sum / len(self.augmentations)
                prediction["semantic"] = scores.max(dim=0).indices
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
    return_semantic: bool = True,
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
            PIL images, numpy arrays, tensors or image paths, of any sizes.
        task (`str`, *optional*, defaults to `"semantic"`):
            `"semantic"`, `"panoptic"` or `"instance"`. Every task also returns the semantic prediction, unless
            `return_semantic=False`.
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
        return_semantic (`bool`, *optional*, defaults to `True`):
            For the panoptic and instance tasks: also compute the semantic prediction (and its TTA / sliding windows).
            `False` skips that work and returns the task's output only.

    Returns:
        `list[dict]`, one per image, at the image's original size: `semantic` (`torch.LongTensor` `(height,
        width)`), with `return_scores` `semantic_scores` (`(num_labels, height, width)`), and for the panoptic task
        `panoptic` (the processor's `{"segmentation", "segments_info"}`), for the instance task `instance` (the
        processor's output with `(num_instances, height, width)` boolean masks).
    """
    if return_scores and not return_semantic and task != "semantic":
        raise ValueError("return_scores needs the semantic prediction: drop return_semantic=False.")
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
        semantic=return_semantic,
    )
    if isinstance(images, (str, os.PathLike, PIL.Image.Image)):
        raise ValueError(f"images must be a list of images, got one {type(images).__name__}: pass [image].")
    with eval_mode(model), torch.inference_mode():
        return predictor(list(images), return_scores)
