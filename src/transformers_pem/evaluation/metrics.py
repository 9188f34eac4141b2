"""Streaming `evaluate` metrics for PEM: mean IoU, panoptic quality and COCO-style instance mask AP.

The three metrics are `evaluate.Metric` subclasses with the usual `add`, `add_batch` and `compute` methods, but they
do not write the full-resolution maps to evaluate's Arrow cache. Each `add` reduces an image to the statistics the
metric needs (a sparse joint histogram of reference and predicted values for mean IoU, per-category TP/FP/FN counts
and the IoUs of matches for PQ, run-length encoded masks for AP), keeps them in memory, and `compute` works from them
only. Across processes, each process adds its share of the examples and `merge_states` combines their `state()`s
(gathered with accelerate, as `evaluate_model` does): the examples are taken in the order of the keys given with
each state (dataset indices), so the result equals one process adding all of them in that order. evaluate's own
`num_process` / Arrow-cache route is not used (`num_process=1`).

The numbers equal the official scorers: the Hub's `mean_iou` and `cityscapesscripts.evaluation.
evalPixelLevelSemanticLabeling` (mean IoU), `cityscapesscripts.evaluation.evalPanopticSemanticLabeling` and
`panopticapi` (PQ), and `pycocotools.cocoeval.COCOeval` (mask AP).

Every metric can also be loaded with `evaluate.load` from the small scripts in
`transformers_pem/evaluation/metric_scripts/`.
"""

import contextlib
import io
import warnings
from collections import Counter

import numpy as np

from ..utils.extras import require
from .streaming_metric import (
    SEGMENTS_FORMAT,
    StreamingMetric,
    check_segments_dict,
    check_unlisted_predicted_ids,
    check_unlisted_reference_ids,
    joint_histogram,
    segment_class,
    segments_of_prediction,
    segments_of_reference,
    to_int_array,
)

evaluate = require("evaluate", "eval", "Computing the PEM metrics")
datasets = require("datasets", "eval", "Computing the PEM metrics")
mask_utils = require("pycocotools.mask", "eval", "Computing the PEM metrics")
COCO = require("pycocotools.coco", "eval", "Computing the PEM metrics").COCO
COCOeval = require("pycocotools.cocoeval", "eval", "Computing the PEM metrics").COCOeval


class MeanIoU(StreamingMetric):
    """Mean intersection-over-union, a streaming drop-in for the Hub's `mean_iou` metric (same signature and results).

    Example:
    ```python
    >>> metric = MeanIoU()
    >>> for prediction, reference in zip(predicted_maps, label_maps):
    ...     metric.add(prediction=prediction, reference=reference)
    >>> metric.compute(num_labels=19, ignore_index=255)["mean_iou"]
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        label_map = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description="Mean IoU, mean and overall pixel accuracy of semantic segmentation maps (streaming).",
            citation=(
                "@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020, author = "
                "{{MMSegmentation Contributors}}, title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}}, "
                "url = {https://github.com/open-mmlab/mmsegmentation}, year = {2020}}"
            ),
            inputs_description="""
Args:
    predictions / references: sequences of (height, width) integer label maps (numpy arrays, torch tensors or PIL
        images); each pair must have the same size, pairs may differ in size.
    num_labels (`int`): number of classes; values outside [0, num_labels) count only where the other map is a class.
    ignore_index (`int` or `None`): reference value excluded from the evaluation.
    nan_to_num (`float`, *optional*): replaces NaN values (classes absent from both maps) in all results.
    label_map (`dict[int, int]`, *optional*): maps reference values (original values) before evaluation.
    reduce_labels (`bool`, defaults to `False`): reference 0 becomes 255 and every other value is decreased by 1
        (ADE20K-style maps where 0 is "other"), applied after `label_map`.
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy ((num_labels,)
    arrays), computed over all added pixels (dataset-level IoU, as the Hub's `mean_iou` and Cityscapes).
""",
            features=datasets.Features({"predictions": label_map, "references": label_map}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _reset(self):
        self._num_examples = 0
        self._pixel_counts = Counter()  # (reference value, predicted value) -> number of pixels

    def _state(self) -> dict:
        return {"pixel_counts": dict(self._pixel_counts)}

    def _merge(self, states, order):
        for state in states:  # integer counts: any order
            self._pixel_counts.update(state["pixel_counts"])

    def _accumulate(self, prediction, reference):
        prediction = to_int_array(prediction, "prediction")
        reference = to_int_array(reference, "reference")
        if prediction.shape != reference.shape:
            raise ValueError(
                f"Prediction of shape {prediction.shape} does not match its reference of shape {reference.shape}; "
                "resize the prediction to the reference size first."
            )
        reference_values, predicted_values, counts = joint_histogram(reference, prediction)
        self._pixel_counts.update(
            dict(zip(zip(reference_values.tolist(), predicted_values.tolist()), counts.tolist()))
        )

    def _compute(
        self,
        num_labels: int,
        ignore_index: int | None,
        nan_to_num: float | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict:
        if not isinstance(num_labels, int | np.integer) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}.")
        pairs = np.array(list(self._pixel_counts), dtype=np.int64).reshape(-1, 2)
        counts = np.array(list(self._pixel_counts.values()), dtype=np.float64)
        original_reference, predicted = pairs[:, 0], pairs[:, 1]

        reference = original_reference.copy()
        for old_value, new_value in (label_map or {}).items():
            reference[original_reference == old_value] = new_value
        if reduce_labels:
            reference = np.where(reference == 0, 255, reference) - 1
            reference[reference == 254] = 255

        evaluated = reference != ignore_index if ignore_index is not None else np.ones_like(reference, dtype=bool)
        reference_is_class = evaluated & (reference >= 0) & (reference < num_labels)
        predicted_is_class = evaluated & (predicted >= 0) & (predicted < num_labels)
        correct = predicted_is_class & (predicted == reference)

        area_reference = np.bincount(reference[reference_is_class], counts[reference_is_class], num_labels)
        area_predicted = np.bincount(predicted[predicted_is_class], counts[predicted_is_class], num_labels)
        area_intersection = np.bincount(predicted[correct], counts[correct], num_labels)
        area_union = area_predicted + area_reference - area_intersection
        if evaluated.any() and not reference_is_class.any():
            # All-ignored references give NaN as the official scorers do; labels that are neither are a mistake.
            values = np.unique(reference[evaluated])[:10].tolist()
            raise ValueError(
                f"No reference pixel holds a class in [0, {num_labels}) or ignore_index={ignore_index} (reference "
                f"values: {values}): every IoU would be NaN. Check num_labels, ignore_index, label_map and "
                "reduce_labels."
            )

        with np.errstate(divide="ignore", invalid="ignore"):
            per_category_iou = area_intersection / area_union
            per_category_accuracy = area_intersection / area_reference
            overall_accuracy = area_intersection.sum() / area_reference.sum()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the mean of all-NaN values is NaN
            metrics = {
                "mean_iou": np.nanmean(per_category_iou),
                "mean_accuracy": np.nanmean(per_category_accuracy),
                "overall_accuracy": overall_accuracy,
                "per_category_iou": per_category_iou,
                "per_category_accuracy": per_category_accuracy,
            }
        if nan_to_num is not None:
            metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
        return metrics


class PanopticQuality(StreamingMetric):
    """Panoptic quality (PQ = SQ x RQ) overall, over things, over stuff and per class, as defined by panopticapi.

    Matching and void handling follow `panopticapi` / `cityscapesscripts.evaluation.evalPanopticSemanticLabeling`:
    a predicted and a reference segment of the same class match when their IoU is > 0.5, where the predicted
    pixels on void reference pixels are left out of the union; crowd reference segments are never matched nor
    counted as false negatives; an unmatched predicted segment whose area lies on void pixels and on the crowd
    region of its class by more than half is not a false positive. Classes without any TP, FP or FN are left out
    of the averages and reported as NaN (the official scripts print 0.0 for them).

    Example:
    ```python
    >>> metric = PanopticQuality()
    >>> metric.add_batch(predictions=processor.post_process_panoptic_segmentation(outputs, ...), references=refs)
    >>> metric.compute(thing_ids=[11, 12, 13], stuff_ids=[0, 1, 2])["pq"]
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        id_map = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        segment = {"id": datasets.Value("int64"), "category_id": datasets.Value("int64")}
        return evaluate.MetricInfo(
            description="Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ) (streaming).",
            citation=(
                "@inproceedings{kirillov2019panoptic, title={Panoptic Segmentation}, author={Kirillov, Alexander and "
                "He, Kaiming and Girshick, Ross and Rother, Carsten and Doll{\\'a}r, Piotr}, booktitle={CVPR}, "
                "year={2019}}"
            ),
            inputs_description=f"""
Args:
    predictions / references: sequences of panoptic segmentations.{SEGMENTS_FORMAT}
    thing_ids (`Iterable[int]`): the thing classes.
    stuff_ids (`Iterable[int]`): the stuff classes. Every class that occurs in the inputs must be a thing or a stuff.
Returns:
    pq, sq, rq (all classes), pq_things, sq_things, rq_things, pq_stuff, sq_stuff, rq_stuff (floats, NaN when no
    class of the group occurs), per_category_pq, per_category_sq, per_category_rq (dicts class -> float, NaN for
    classes without TP, FP or FN), all as fractions in [0, 1].
""",
            features=datasets.Features(
                {
                    "predictions": {"segmentation": id_map, "segments_info": [segment]},
                    "references": {"segmentation": id_map, "segments_info": [segment]},
                }
            ),
            reference_urls=[
                "https://github.com/cocodataset/panopticapi",
                "https://github.com/mcordts/cityscapesScripts",
            ],
        )

    def _reset(self):
        self._num_examples = 0
        self._false_positives = Counter()
        self._false_negatives = Counter()
        # Per example, the (class, IoU) of its matches in the order found: the official scorers sum the IoUs in
        # example order, and keeping them lets examples from several processes be summed in that order too.
        self._matches: list[list[tuple[int, float]]] = []
        self._seen_classes = set()

    def _state(self) -> dict:
        return {
            "false_positives": dict(self._false_positives),
            "false_negatives": dict(self._false_negatives),
            "matches": self._matches,
            "seen_classes": sorted(self._seen_classes),
        }

    def _merge(self, states, order):
        for state in states:
            self._false_positives.update(state["false_positives"])
            self._false_negatives.update(state["false_negatives"])
            self._seen_classes.update(state["seen_classes"])
        self._matches = [states[number]["matches"][position] for number, position in order]

    def _accumulate(self, prediction, reference):
        predicted_classes = segments_of_prediction(prediction)
        predicted_map = to_int_array(prediction["segmentation"], "prediction['segmentation']")
        reference_map, reference_segments = segments_of_reference(reference)
        if predicted_map.shape != reference_map.shape:
            raise ValueError(
                f"Predicted segmentation of shape {predicted_map.shape} does not match its reference of shape "
                f"{reference_map.shape}; resize the prediction to the reference size first."
            )
        # overlaps[(reference id, predicted id)] in pixels; unlisted predicted ids are void and become None
        reference_ids, predicted_ids, counts = joint_histogram(reference_map, predicted_map)
        check_unlisted_reference_ids(reference_ids.tolist(), reference_segments)
        check_unlisted_predicted_ids(set(predicted_ids.tolist()), predicted_classes)
        self._seen_classes.update(predicted_classes.values())
        self._seen_classes.update(category for category, _ in reference_segments.values())
        overlaps, predicted_areas, reference_areas = Counter(), Counter(), Counter()
        for reference_id, predicted_id, count in zip(reference_ids.tolist(), predicted_ids.tolist(), counts.tolist()):
            predicted_id = predicted_id if predicted_id in predicted_classes else None
            overlaps[reference_id, predicted_id] += count
            predicted_areas[predicted_id] += count
            reference_areas[reference_id] += count

        matched_references, matched_predictions, matches = set(), set(), []
        for (reference_id, predicted_id), intersection in overlaps.items():
            if reference_id == 0 or predicted_id is None:
                continue
            category, is_crowd = reference_segments[reference_id]
            if is_crowd or predicted_classes[predicted_id] != category:
                continue
            union = (
                predicted_areas[predicted_id]
                + reference_areas[reference_id]
                - intersection
                - overlaps[0, predicted_id]  # predicted pixels on void are not part of the union
            )
            iou = intersection / union
            if iou > 0.5:
                matches.append((category, iou))
                matched_references.add(reference_id)
                matched_predictions.add(predicted_id)
        self._matches.append(matches)

        crowd_segment_of_class = {}
        for reference_id, (category, is_crowd) in reference_segments.items():
            if reference_id in matched_references:
                continue
            if is_crowd:
                crowd_segment_of_class[category] = reference_id
                continue
            self._false_negatives[category] += 1

        for predicted_id, category in predicted_classes.items():
            if predicted_id in matched_predictions or predicted_areas[predicted_id] == 0:
                continue
            ignored_area = overlaps[0, predicted_id]
            if category in crowd_segment_of_class:
                ignored_area += overlaps[crowd_segment_of_class[category], predicted_id]
            if ignored_area / predicted_areas[predicted_id] > 0.5:
                continue
            self._false_positives[category] += 1

    def _compute(self, thing_ids, stuff_ids) -> dict:
        thing_ids, stuff_ids = {int(i) for i in thing_ids}, {int(i) for i in stuff_ids}
        if thing_ids & stuff_ids:
            raise ValueError(f"Classes {sorted(thing_ids & stuff_ids)} are in both thing_ids and stuff_ids.")
        unknown = self._seen_classes - thing_ids - stuff_ids
        if unknown:
            raise ValueError(
                f"Classes {sorted(unknown)} occur in the segments but are in neither thing_ids nor stuff_ids."
            )

        true_positives_of, iou_sums = Counter(), Counter()
        for matches in self._matches:  # summed in example order, as the official scorers do
            for category, iou in matches:
                true_positives_of[category] += 1
                iou_sums[category] += iou
        per_category = {name: {} for name in ("pq", "sq", "rq")}
        for category in sorted(thing_ids | stuff_ids):
            true_positives = true_positives_of[category]
            errors = 0.5 * self._false_positives[category] + 0.5 * self._false_negatives[category]
            if true_positives + errors == 0:
                pq = sq = rq = float("nan")
            else:
                iou_sum = iou_sums[category]
                pq = iou_sum / (true_positives + errors)
                sq = iou_sum / true_positives if true_positives else 0.0
                rq = true_positives / (true_positives + errors)
            per_category["pq"][category], per_category["sq"][category], per_category["rq"][category] = pq, sq, rq

        results = {}
        for suffix, group in (("", thing_ids | stuff_ids), ("_things", thing_ids), ("_stuff", stuff_ids)):
            for name, values in per_category.items():
                group_values = [values[category] for category in group if not np.isnan(values[category])]
                results[name + suffix] = float(np.mean(group_values)) if group_values else float("nan")
        for name, values in per_category.items():
            results[f"per_category_{name}"] = values
        return results


class MaskAP(StreamingMetric):
    """COCO-style instance mask AP (AP, AP50, AP75, APs/m/l and per-class AP) computed by `pycocotools.COCOeval`.

    Every predicted segment is a scored detection; reference segments are the ground-truth instances, crowd
    segments included (COCOeval ignores detections matched to them). Masks are kept run-length encoded in memory.

    Example:
    ```python
    >>> metric = MaskAP()
    >>> metric.add_batch(predictions=processor.post_process_instance_segmentation(outputs, ...), references=refs)
    >>> metric.compute(thing_ids=[11, 12, 13, 14, 15, 16, 17, 18])["ap"]
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        id_map = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        segment = {"id": datasets.Value("int64"), "category_id": datasets.Value("int64")}
        return evaluate.MetricInfo(
            description="COCO-style mask average precision of instance segmentations (streaming, pycocotools).",
            citation=(
                "@inproceedings{lin2014microsoft, title={Microsoft COCO: Common Objects in Context}, author={Lin, "
                "Tsung-Yi and others}, booktitle={ECCV}, year={2014}}"
            ),
            inputs_description=f"""
Args:
    predictions / references: sequences of instance segmentations.{SEGMENTS_FORMAT}
    Each predicted segment needs a `"score"`. A prediction may instead give `"segmentation"` as (num_segments,
    height, width) binary masks, which may overlap, with `segments_info[i]` describing mask i (the
    `return_binary_maps=True` output of `post_process_instance_segmentation`).
    thing_ids (`Iterable[int]`, *optional*): the classes to evaluate; segments of other classes, in references and
        predictions, are dropped. Defaults to every class that occurs in the references.
Returns:
    ap, ap50, ap75, ap_small, ap_medium, ap_large (floats, COCOeval's `stats[:6]`) and per_category_ap (dict class
    -> float), as fractions in [0, 1]; NaN where COCOeval reports -1 (no reference instance in range).
""",
            features=datasets.Features(
                {
                    "predictions": {"segmentation": id_map, "segments_info": [segment]},
                    "references": {"segmentation": id_map, "segments_info": [segment]},
                }
            ),
            reference_urls=["https://github.com/cocodataset/cocoapi"],
        )

    def _reset(self):
        self._num_examples = 0
        self._image_sizes = []  # per example: (height, width)
        self._references = []  # per example: [(class, iscrowd, RLE of the transposed mask), ...]
        self._detections = []  # per example: [(class, score, RLE of the transposed mask), ...]

    def _state(self) -> dict:
        return {"image_sizes": self._image_sizes, "references": self._references, "detections": self._detections}

    def _merge(self, states, order):
        for name in ("image_sizes", "references", "detections"):
            setattr(self, f"_{name}", [states[number][name][position] for number, position in order])

    def _accumulate(self, prediction, reference):
        check_segments_dict(prediction, "prediction")
        reference_map, reference_segments = segments_of_reference(reference)
        check_unlisted_reference_ids(np.unique(reference_map).tolist(), reference_segments)
        height, width = reference_map.shape
        segmentation = prediction["segmentation"]
        if hasattr(segmentation, "detach"):
            segmentation = segmentation.detach().cpu().numpy()
        segmentation = np.asarray(segmentation)
        segments_info = prediction["segments_info"]
        if segmentation.ndim not in (2, 3) or segmentation.shape[-2:] != (height, width):
            raise ValueError(
                "prediction['segmentation'] must be a (height, width) id map or (num_segments, height, width) binary "
                f"masks of the reference size {(height, width)}, got shape {segmentation.shape}; resize the "
                "prediction to the reference size first."
            )
        if segmentation.ndim == 3:
            if len(segmentation) != len(segments_info):
                raise ValueError(
                    f"Got {len(segmentation)} predicted binary masks but {len(segments_info)} segments_info entries; "
                    "segments_info[i] must describe mask i."
                )
            masks = (_binary_mask(mask) for mask in segmentation)
        else:
            segmentation = to_int_array(segmentation, "prediction['segmentation']")
            segment_ids = [int(segment["id"]) for segment in segments_info]
            if len(set(segment_ids)) != len(segment_ids):
                raise ValueError("Predicted instance ids must be unique in segments_info.")
            check_unlisted_predicted_ids(set(np.unique(segmentation).tolist()), dict.fromkeys(segment_ids))
            masks = (segmentation == segment_id for segment_id in segment_ids)

        detections = []
        for mask, segment in zip(masks, segments_info):
            if "score" not in segment:
                raise ValueError(f"Each predicted segment needs a 'score' for AP, got {segment}.")
            category = segment_class(segment, "prediction")
            detections.append((category, float(segment["score"]), _encode_transposed(mask)))
        references = [
            (category, is_crowd, _encode_transposed(reference_map == segment_id))
            for segment_id, (category, is_crowd) in reference_segments.items()
        ]
        self._references.append(references)
        self._detections.append(detections)
        self._image_sizes.append((height, width))

    def _compute(self, thing_ids=None) -> dict:
        if thing_ids is None:
            category_ids = sorted({category for references in self._references for category, _, _ in references})
        else:
            category_ids = sorted({int(category) for category in thing_ids})
        evaluated = set(category_ids)
        # the RLEs describe transposed masks, hence the swapped sizes
        images = [{"id": index + 1, "height": w, "width": h} for index, (h, w) in enumerate(self._image_sizes)]
        categories = [{"id": category} for category in category_ids]

        def coco_dataset(annotations) -> COCO:
            dataset = COCO()
            dataset.dataset = {"images": images, "categories": categories, "annotations": annotations}
            dataset.createIndex()
            return dataset

        references = [
            {"image_id": image_index + 1, "category_id": category, "iscrowd": int(is_crowd), "segmentation": rle}
            for image_index, image_references in enumerate(self._references)
            for category, is_crowd, rle in image_references
            if category in evaluated
        ]
        detections = [
            {"image_id": image_index + 1, "category_id": category, "iscrowd": 0, "score": score, "segmentation": rle}
            for image_index, image_detections in enumerate(self._detections)
            for category, score, rle in image_detections
            if category in evaluated
        ]
        for annotation_id, annotation in enumerate(references + detections, start=1):
            annotation["id"] = annotation_id
            annotation["area"] = float(mask_utils.area(annotation["segmentation"]))

        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(coco_dataset(references), coco_dataset(detections), iouType="segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()

        def nan_if_undefined(value: float) -> float:
            return float("nan") if value == -1 else float(value)

        names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
        results = {name: nan_if_undefined(value) for name, value in zip(names, coco_eval.stats[:6])}
        # precision: (iou thresholds, recall thresholds, classes, area ranges, max detections); area "all", 100 dets
        results["per_category_ap"] = {}
        for index, category in enumerate(coco_eval.params.catIds):
            precision = coco_eval.eval["precision"][:, :, index, 0, -1]
            precision = precision[precision > -1]
            results["per_category_ap"][int(category)] = float(np.mean(precision)) if precision.size else float("nan")
        return results


def _binary_mask(mask: np.ndarray) -> np.ndarray:
    """A bool mask from a bool, integer or float 0/1 mask."""
    if mask.dtype == bool:
        return mask
    binary = mask == 1
    if np.count_nonzero(binary) + np.count_nonzero(mask == 0) != mask.size:
        raise ValueError("Predicted binary masks must hold only 0 and 1; threshold probabilities first.")
    return binary


def _encode_transposed(mask: np.ndarray) -> dict:
    """COCO RLE of `mask.T`, which needs no copy of a row-major mask (COCO encodes column-major arrays).

    IoU and area, the only mask properties COCOeval uses, are the same for a mask and its transpose.
    """
    return mask_utils.encode(np.ascontiguousarray(mask).T.view(np.uint8))
