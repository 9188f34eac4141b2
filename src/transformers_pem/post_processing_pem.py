"""PEM's official inference as image-processor post-processing: semantic, panoptic and instance segmentation from
`class_queries_logits` and `masks_queries_logits`, cropped to each image's valid region and resized to its output
size."""

import numpy as np
import torch
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from .configuration_pem import MASK_STRIDE
from .label_maps_pem import (
    FULL_MAP_ELEMENTS,
    THRESHOLD_MARGIN,
    best_instance_map,
    crop_and_resize,
    output_masks,
    panoptic_maps,
    panoptic_maps_in_chunks,
    probability_logit,
    semantic_labels,
    semantic_scores,
    upsample,
)


def binary_mask_to_rle(mask: torch.Tensor | np.ndarray) -> list[int]:
    """
    Run-length encoding of a binary `(height, width)` mask (tensor or array) in Mask2Former's format: `[start_1,
    length_1, start_2, length_2, ...]`, with 1-based starts of the runs of ones in the row-major flattened mask.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    pixels = torch.cat([mask.new_zeros(1), mask.flatten(), mask.new_zeros(1)]).to(torch.int8)
    changes = torch.nonzero(pixels[1:] != pixels[:-1]).flatten() + 1
    changes[1::2] -= changes[::2].clone()
    return changes.tolist()


def valid_sizes(pixel_mask: torch.Tensor) -> list[tuple[int, int]]:
    """The `(height, width)` of the valid (top-left, unpadded) region of each image of a `(batch_size, height, width)`
    pixel mask."""
    valid = pixel_mask.bool()
    return list(zip(valid.any(dim=2).sum(dim=1).tolist(), valid.any(dim=1).sum(dim=1).tolist()))


def _padded_and_valid_sizes(
    masks_queries_logits: torch.Tensor, pixel_mask: torch.Tensor | None
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The padded input size and, per image, the size of its unpadded (top-left) region."""
    batch_size, _, mask_height, mask_width = masks_queries_logits.shape
    if pixel_mask is None:
        padded_size = (mask_height * MASK_STRIDE, mask_width * MASK_STRIDE)
        return padded_size, [padded_size] * batch_size
    if pixel_mask.ndim != 3 or pixel_mask.shape[0] != batch_size:
        raise ValueError(
            f"pixel_mask must have shape (batch_size={batch_size}, height, width), got {tuple(pixel_mask.shape)}."
        )
    sizes = valid_sizes(pixel_mask)
    if min(min(size) for size in sizes) == 0:
        raise ValueError("pixel_mask marks no valid pixel for at least one image.")
    return tuple(pixel_mask.shape[-2:]), sizes


def _check_fraction(name: str, value: float, below_one: bool = False) -> None:
    """A threshold on probabilities or area fractions: in [0, 1], or [0, 1) for a mask probability (no finite mask
    logit reaches 1; 0 keeps every pixel, as Mask2Former's does)."""
    valid = 0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0
    if not valid:
        interval = "[0, 1)" if below_one else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}.")


def _resolve_target_sizes(target_sizes, default_sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if target_sizes is None:
        return default_sizes
    form = "target_sizes is a list of (height, width) pairs, one per image, e.g. [(480, 640)]"
    if isinstance(target_sizes, (str, bytes)) or not hasattr(target_sizes, "__len__"):
        raise ValueError(f"{form}; got {target_sizes!r}.")
    if len(target_sizes) != len(default_sizes):
        raise ValueError(
            f"Got {len(target_sizes)} target sizes for a batch of {len(default_sizes)}: {form} (one pair is "
            "[(height, width)], not (height, width))."
        )
    resolved = []
    for size in target_sizes:
        values = size.tolist() if isinstance(size, (torch.Tensor, np.ndarray)) else size
        if not isinstance(values, (list, tuple)) or len(values) != 2:
            raise ValueError(f"{form}; got the entry {size!r}.")
        # 0-d tensors and arrays (a tuple of `tensor(480), tensor(640)`) count as their numbers.
        values = [value.item() if getattr(value, "ndim", None) == 0 else value for value in values]
        numbers = (int, float, np.integer, np.floating)
        if not all(isinstance(v, numbers) and not isinstance(v, bool) and float(v).is_integer() for v in values):
            raise ValueError(f"{form} of whole numbers of pixels; got {tuple(values)}.")
        height, width = (int(value) for value in values)
        if height <= 0 or width <= 0:
            raise ValueError(f"Target sizes must be positive (height, width) pairs, got {tuple(values)}.")
        resolved.append((height, width))
    return resolved


# The post-processing settings a processor takes from its model's config (`PEMConfig`), where they are stated.
INFERENCE_SETTINGS = ("thing_ids", "object_mask_threshold", "overlap_threshold", "test_topk_per_image")


def inference_settings(config) -> dict:
    """The post-processing settings of a model config, as processor keyword arguments."""
    return {name: getattr(config, name) for name in INFERENCE_SETTINGS}


class PEMPostProcessingMixin:
    r"""
    The `post_process_*` methods of the PEM image processors, with their settings (saved with the processor; built
    from the model config by `from_preset(..., model_config=config)`):

    Args:
        thing_ids (`list[int]`, *optional*):
            Classes that are "things" (countable instances). In panoptic post-processing the other classes ("stuff")
            are fused by default; instance post-processing keeps only things. `None`: every class is a thing.
        resize_masks_before_semantic_inference (`bool`, *optional*, defaults to `False`):
            Order of semantic post-processing. `False` (official semantic configs): combine masks and classes at the
            padded input size, then crop and resize the class scores. `True` (official panoptic configs): crop and
            resize the query masks first. The two agree when the output size equals the processed image size.
        object_mask_threshold (`float`, *optional*, defaults to 0.8):
            Panoptic post-processing: default minimum class score of a kept query.
        overlap_threshold (`float`, *optional*, defaults to 0.8):
            Panoptic post-processing: default minimum visible fraction of a query's mask.
        test_topk_per_image (`int`, *optional*, defaults to 100):
            Instance post-processing: detections kept per image (top-k over queries x classes).
    """

    def __init__(
        self,
        thing_ids: list[int] | None = None,
        resize_masks_before_semantic_inference: bool = False,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.thing_ids = [int(i) for i in thing_ids] if thing_ids is not None else None
        self.resize_masks_before_semantic_inference = resize_masks_before_semantic_inference
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image

    @torch.no_grad()
    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | None = None,
        return_segmentation_scores: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """
        Semantic maps from [`PEMForUniversalSegmentationOutput`], as the official PEM inference computes them: per
        pixel, `sum_q softmax(class_logits_q)[:-1] * sigmoid(mask_logits_q)`, then the argmax over classes.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image, usually its original size. Defaults to the processed size
                without padding.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Also return the class scores `(num_labels, height, width)` (held whole: 150 classes at 6000x8000
                take 29 GB in float32).
            pixel_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
                The processor's `pixel_mask`, to drop the batch padding. Defaults to `outputs.pixel_mask` if the
                outputs carry it, else the inputs are assumed unpadded.

        Returns:
            `list[torch.LongTensor]` of `(height, width)` class maps, or with `return_segmentation_scores` a list of
            [`SemanticSegmentationPostProcessorOutput`] (`segmentation`, `segmentation_scores`).
        """
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            class_probs = class_logit.softmax(dim=-1)[:, :-1]  # (num_queries, num_labels); no-object dropped
            if not return_segmentation_scores:
                segmentation = semantic_labels(
                    class_probs,
                    mask_logit,
                    padded_size,
                    valid_size,
                    target_size,
                    self.resize_masks_before_semantic_inference,
                )
                if segmentation is not None:
                    results.append(segmentation)
                    continue
            if self.resize_masks_before_semantic_inference:
                masks = crop_and_resize(upsample(mask_logit, padded_size), valid_size, target_size)
                # The sigmoids in place on the freshly resized masks: no second tensor of this size.
                scores = torch.einsum("qc,qhw->chw", class_probs, masks.sigmoid_())
            else:
                scores = semantic_scores(class_probs, mask_logit, padded_size)
                scores = crop_and_resize(scores, valid_size, target_size)
            # `max` returns the first maximum's index like `argmax`, and is faster over a leading dimension on CPU.
            segmentation = scores.max(dim=0).indices
            if return_segmentation_scores:
                results.append(
                    SemanticSegmentationPostProcessorOutput(
                        data={"segmentation": segmentation, "segmentation_scores": scores}
                    )
                )
            else:
                results.append(segmentation)
        return results

    @torch.no_grad()
    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes: list[tuple[int, int]] | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[dict]:
        """
        Panoptic segmentation as the official PEM inference computes it (defaults = official settings).

        Queries whose best class is not "no object" and scores `> threshold` are kept; each pixel goes to the kept
        query with the highest `score * sigmoid(mask)`. A query becomes a segment on its pixels with
        `sigmoid(mask) >= mask_threshold`, unless fewer than `overlap_mask_area_threshold` of its own mask
        (`sigmoid >= mask_threshold`) won the argmax. Classes in `label_ids_to_fuse` form one segment per class.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            threshold (`float`, *optional*):
                Minimum class score of a kept query. Defaults to the processor's `object_mask_threshold` (official
                `OBJECT_MASK_THRESHOLD`).
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Probability threshold of the binary masks.
            overlap_mask_area_threshold (`float`, *optional*):
                Minimum visible fraction of a query's mask. Defaults to the processor's `overlap_threshold` (official
                `OVERLAP_THRESHOLD`).
            label_ids_to_fuse (`set[int]`, *optional*):
                Classes merged into a single segment. Defaults to the stuff classes (those not in `thing_ids`).
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image. Defaults to the processed size without padding.
            pixel_mask (`torch.Tensor`, *optional*):
                See [`~PEMImageProcessor.post_process_semantic_segmentation`].

        Returns:
            `list[dict]`, one per image: `segmentation` (`torch.IntTensor` `(height, width)`, segment ids from 1, 0 =
            void) and `segments_info` (list of `{"id", "label_id", "was_fused", "score"}`).
        """
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        num_labels = class_logits.shape[-1] - 1
        threshold = self.object_mask_threshold if threshold is None else threshold
        if overlap_mask_area_threshold is None:
            overlap_mask_area_threshold = self.overlap_threshold
        _check_fraction("threshold", threshold)
        _check_fraction("mask_threshold", mask_threshold, below_one=True)
        _check_fraction("overlap_mask_area_threshold", overlap_mask_area_threshold)
        if label_ids_to_fuse is None:
            label_ids_to_fuse = set(range(num_labels)) - set(self._thing_ids(num_labels))
        elif unknown := sorted(set(label_ids_to_fuse) - set(range(num_labels))):
            raise ValueError(f"label_ids_to_fuse has ids outside [0, {num_labels - 1}]: {unknown}.")
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            scores, labels = class_logit.softmax(dim=-1).max(dim=-1)
            keep = labels.ne(num_labels) & (scores > threshold)
            segmentation = torch.zeros(target_size, dtype=torch.int32, device=mask_logit.device)
            segments_info = []
            results.append({"segmentation": segmentation, "segments_info": segments_info})
            if not keep.any():
                continue
            scores, labels = scores[keep], labels[keep]
            mask_logit = mask_logit[keep]
            sizes = (padded_size, valid_size, target_size)
            maps = panoptic_maps(scores, mask_logit, mask_threshold, *sizes)
            if maps is None:  # the masks at the output size
                maps = panoptic_maps_in_chunks(scores, mask_logit, mask_threshold, *sizes)
            winners, winner_above, original_areas = maps
            won_areas = torch.bincount(winners.flatten(), minlength=len(labels)).tolist()
            visible_areas = torch.bincount(winners[winner_above], minlength=len(labels)).tolist()
            # Each pixel belongs to its winner's segment: the segment ids of the kept queries (0: rejected), in the
            # official order, then one lookup for the whole map.
            segment_of_query = [0] * len(labels)
            fused_segment_ids: dict[int, int] = {}
            for k, label in enumerate(labels.tolist()):
                if won_areas[k] == 0 or original_areas[k] == 0 or visible_areas[k] == 0:
                    continue
                if won_areas[k] / original_areas[k] < overlap_mask_area_threshold:
                    continue
                should_fuse = label in label_ids_to_fuse
                if should_fuse and label in fused_segment_ids:
                    segment_of_query[k] = fused_segment_ids[label]
                    continue
                segment_id = segment_of_query[k] = len(segments_info) + 1
                segments_info.append(
                    {"id": segment_id, "label_id": label, "was_fused": should_fuse, "score": float(scores[k])}
                )
                if should_fuse:
                    fused_segment_ids[label] = segment_id
            segment_ids = torch.tensor(segment_of_query, dtype=torch.int32, device=segmentation.device)
            segmentation.copy_(torch.where(winner_above, segment_ids[winners], 0))
        return results

    @torch.no_grad()
    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.0,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: list[tuple[int, int]] | None = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[dict]:
        """
        Instance segmentation as the official PEM inference computes it: the `test_topk_per_image` best (query,
        class) pairs over `softmax(class_logits)[:, :-1]`, restricted to thing classes; binary masks
        `sigmoid(mask) > mask_threshold` at the output size; score = class probability x mean mask probability inside
        the binary mask. With the defaults, every official detection is returned.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            threshold (`float`, *optional*, defaults to 0.0):
                Minimum score of a returned instance (the official inference keeps all top-k detections).
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Probability threshold of the binary masks.
            overlap_mask_area_threshold (`float`, *optional*, defaults to 0.8):
                Unused (instances may overlap); accepted for compatibility with the `image-segmentation` pipeline.
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image. Defaults to the processed size without padding.
            return_coco_annotation (`bool`, *optional*, defaults to `False`):
                Return `segmentation` as one run-length encoding per instance (see `binary_mask_to_rle`).
            return_binary_maps (`bool`, *optional*, defaults to `False`):
                Return `segmentation` as a `(num_instances, height, width)` boolean tensor, one mask per instance
                (one byte per pixel and instance; the other formats hold a few masks at a time).
            pixel_mask (`torch.Tensor`, *optional*):
                See [`~PEMImageProcessor.post_process_semantic_segmentation`].

        Returns:
            `list[dict]`, one per image, instances sorted by decreasing score: `segmentation` (`torch.IntTensor`
            `(height, width)` of instance ids from 0, -1 = background, each pixel showing the best-scoring instance
            covering it; or the RLE list / binary maps) and `segments_info` (`{"id", "label_id", "was_fused",
            "score"}`).
        """
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps cannot both be True.")
        _check_fraction("threshold", threshold)
        _check_fraction("mask_threshold", mask_threshold, below_one=True)
        mask_logit_threshold = probability_logit(mask_threshold)
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        num_queries, num_labels = class_logits.shape[1], class_logits.shape[2] - 1
        thing_ids = torch.tensor(self._thing_ids(num_labels), dtype=torch.int64, device=class_logits.device)
        top_k = min(self.test_topk_per_image, num_queries * num_labels)
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            class_probs = class_logit.softmax(dim=-1)[:, :-1]
            topk_scores, topk_indices = class_probs.flatten().topk(top_k, sorted=False)
            labels, queries = topk_indices % num_labels, topk_indices // num_labels
            # A detection's score is its class score times a mask score below 1: those whose class score is below
            # `threshold` are dropped before any work at the output size.
            kept = torch.isin(labels, thing_ids) & (topk_scores >= threshold)
            topk_scores, labels, queries = topk_scores[kept], labels[kept], queries[kept]

            # Masks depend only on the query: resize each selected query once (detections share queries).
            queries, detection_query = torch.unique(queries, return_inverse=True)
            # A query whose mask logits all stay below the threshold has an empty mask at any size (bilinear
            # resizing averages) and a mask score of 0: it is not resized. The others come first, so that the chunks
            # of `output_masks` cover them alone; detections follow their query to its new position.
            nonempty = mask_logit[queries].flatten(1).amax(dim=1) > mask_logit_threshold - THRESHOLD_MARGIN
            permutation = torch.cat([nonempty.nonzero()[:, 0], (~nonempty).nonzero()[:, 0]])
            position = torch.empty_like(permutation)
            position[permutation] = torch.arange(len(permutation), device=permutation.device)
            queries, detection_query = queries[permutation], position[detection_query]
            num_nonempty, num_empty = int(nonempty.sum()), int((~nonempty).sum())
            sizes = (padded_size, valid_size, target_size)
            binary_chunks, mask_scores, encodings = [], [], []
            # The binary masks are kept for the output where they fit; a larger output recomputes them in chunks.
            keep_binary = return_binary_maps or num_nonempty * target_size[0] * target_size[1] <= FULL_MAP_ELEMENTS
            for start, masks in output_masks(mask_logit[queries[:num_nonempty]], *sizes):
                binary_masks = masks > mask_logit_threshold  # (chunk queries, height, width)
                # Sigmoids in place: only the binary masks are needed after the mask scores.
                mask_scores.append(
                    (masks.sigmoid_().flatten(1) * binary_masks.flatten(1)).sum(1)
                    / (binary_masks.flatten(1).sum(1) + 1e-6)
                )
                if return_coco_annotation:
                    encodings += [binary_mask_to_rle(mask) for mask in binary_masks]
                elif keep_binary:
                    binary_chunks.append((start, binary_masks))
            mask_scores.append(torch.zeros(num_empty, device=mask_logit.device))
            if return_coco_annotation and num_empty:
                encodings += [binary_mask_to_rle(torch.zeros(target_size, dtype=torch.bool))] * num_empty
            if return_binary_maps and num_empty:
                empty = torch.zeros(num_empty, *target_size, dtype=torch.bool, device=mask_logit.device)
                binary_chunks.append((num_nonempty, empty))
            scores = topk_scores * torch.cat(mask_scores)[detection_query]
            order = [i for i in scores.argsort(descending=True, stable=True).tolist() if scores[i] >= threshold]

            segments_info = [
                {"id": index, "label_id": int(labels[i]), "was_fused": False, "score": float(scores[i])}
                for index, i in enumerate(order)
            ]
            order_queries = detection_query[order]
            if return_binary_maps:
                segmentation = torch.cat([masks for _, masks in binary_chunks])[order_queries]
            elif return_coco_annotation:
                segmentation = [encodings[query] for query in order_queries.tolist()]
            else:
                if not keep_binary:
                    chunks = output_masks(mask_logit[queries[:num_nonempty]], *sizes)
                    binary_chunks = ((start, masks > mask_logit_threshold) for start, masks in chunks)
                segmentation = best_instance_map(binary_chunks, order_queries, len(queries), target_size)
            results.append({"segmentation": segmentation, "segments_info": segments_info})
        return results

    def _thing_ids(self, num_labels: int) -> list[int]:
        if self.thing_ids is None:
            return list(range(num_labels))
        if any(not 0 <= i < num_labels for i in self.thing_ids):
            raise ValueError(
                f"thing_ids {self.thing_ids} do not fit a model with {num_labels} classes: set the processor's "
                "thing_ids to class indices of this model."
            )
        return self.thing_ids

    @staticmethod
    def _unpack_outputs(outputs, target_sizes, pixel_mask):
        class_logits = outputs.class_queries_logits.float()  # (batch_size, num_queries, num_labels + 1)
        mask_logits = outputs.masks_queries_logits.float()  # (batch_size, num_queries, height / 4, width / 4)
        if pixel_mask is None:
            pixel_mask = getattr(outputs, "pixel_mask", None)
        padded_size, valid_sizes = _padded_and_valid_sizes(mask_logits, pixel_mask)
        return class_logits, mask_logits, padded_size, valid_sizes, _resolve_target_sizes(target_sizes, valid_sizes)
