"""The base of PEM's streaming metrics (`StreamingMetric`: in-memory statistics, states merged across processes in
one process's order) and the checks of their inputs."""

from collections.abc import Sequence

import numpy as np

from ..utils.extras import require
from .process_order import key_order

evaluate = require("evaluate", "eval", "Computing the PEM metrics")


SEGMENTS_FORMAT = """
    Panoptic and instance inputs are dicts:
    - predictions: `{"segmentation": (height, width) int ids, "segments_info": [{"id", "label_id", ...}, ...]}`, as
      returned by `post_process_panoptic_segmentation`/`post_process_instance_segmentation`. The class may be given
      as `"label_id"` or `"category_id"`. Pixels whose id is not listed in `segments_info` must have an id <= 0 and
      are void (unassigned). For PQ, several entries with the same id and class (fused stuff) are one segment.
    - references: COCO-panoptic style `{"segmentation": (height, width) int ids, "segments_info": [{"id",
      "category_id", "iscrowd"}, ...]}` (`"label_id"` is accepted for the class, `"iscrowd"` defaults to 0). Id 0
      marks void pixels; every other id in the map must be listed, and listed ids must be non-zero. Decode COCO
      panoptic PNGs first with `id = R + 256 * G + 256**2 * B`.
    Arrays may be numpy arrays, torch tensors or PIL images; predictions and references must use the same class ids.
"""


class StreamingMetric(evaluate.Metric):
    """Base class: `add`/`add_batch` reduce every example to in-memory statistics that `compute` consumes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.num_process != 1:
            raise ValueError(
                f"{type(self).__name__} keeps its statistics in memory and supports only num_process=1; "
                "gather the predictions on one process before adding them."
            )
        self._reset()

    def __len__(self) -> int:
        return self._num_examples

    def add(self, *, prediction=None, reference=None):
        """Add one prediction and its reference (see the inputs description below)."""
        if prediction is None or reference is None:
            raise ValueError(f"{type(self).__name__}.add needs both `prediction` and `reference`.")
        self._accumulate(prediction, reference)
        self._num_examples += 1

    def add_batch(self, *, predictions=None, references=None):
        """Add a batch (any sequence) of predictions and references (see the inputs description below)."""
        if predictions is None or references is None:
            raise ValueError(f"{type(self).__name__}.add_batch needs both `predictions` and `references`.")
        if len(predictions) != len(references):
            raise ValueError(
                f"Got {len(predictions)} predictions but {len(references)} references; pass one reference per "
                "prediction."
            )
        for prediction, reference in zip(predictions, references):
            self.add(prediction=prediction, reference=reference)

    def compute(self, *, predictions=None, references=None, **kwargs) -> dict:
        """Add the optional last batch, compute the metric from all examples added so far and reset the statistics.

        Keyword arguments other than `predictions`/`references` go to the metric (see the inputs description below).
        The statistics are kept when the computation raises, so a call with wrong arguments can be repeated.
        """
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        if self._num_examples == 0:
            raise ValueError(f"{type(self).__name__}.compute was called before any example was added.")
        result = self._compute(**kwargs)
        self._reset()
        return result

    def state(self) -> dict:
        """The statistics added so far (picklable), to combine with other processes' by `merge_states`."""
        return {"num_examples": self._num_examples, **self._state()}

    def merge_states(self, states: Sequence[dict], keys: Sequence[Sequence[int]]) -> None:
        """Replace the statistics by the union of `states` (e.g. one per process); `keys[i]` holds a key per example
        of `states[i]`, in the order they were added (their dataset indices). The examples are combined in key order,
        so `compute` gives what one process gets adding them in that order (floating-point sums included)."""
        if len(states) != len(keys) or any(len(k) != state["num_examples"] for state, k in zip(states, keys)):
            raise ValueError("merge_states needs one key per example of each state.")
        order = key_order(keys)
        self._reset()
        self._merge(states, order)
        self._num_examples = len(order)

    def _reset(self):
        raise NotImplementedError

    def _accumulate(self, prediction, reference):
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _merge(self, states: Sequence[dict], order: list[tuple[int, int]]) -> None:
        """Take the statistics of `states`; `order` lists (state, example position) in the order to combine them."""
        raise NotImplementedError


def to_int_array(array, name: str) -> np.ndarray:
    """Converts a 2-D numpy array / torch tensor / PIL image of integer values into an int64 numpy array."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (height, width) array, got shape {array.shape}.")
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64, copy=False)
    if np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{name} must hold integer values, got dtype {array.dtype} with non-integer values.")


def joint_histogram(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct `(first[i], second[i])` value pairs of two same-shape int64 arrays and their pixel counts."""
    first, second = first.ravel(), second.ravel()
    if first.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    first_min, first_max = int(first.min()), int(first.max())
    second_min, second_max = int(second.min()), int(second.max())
    span = second_max - second_min + 1
    if (first_max - first_min + 1) * span >= 2**63:
        raise ValueError("The ids span too large a range to be paired; remap them to smaller integers.")
    keys, counts = np.unique((first - first_min) * span + (second - second_min), return_counts=True)
    return keys // span + first_min, keys % span + second_min, counts


def segment_class(segment: dict, name: str) -> int:
    for key in ("label_id", "category_id"):
        if key in segment:
            return int(segment[key])
    raise ValueError(f"Each entry of {name}['segments_info'] needs a 'label_id' or 'category_id', got {segment}.")


def check_segments_dict(segments: dict, name: str):
    if not isinstance(segments, dict) or "segmentation" not in segments or "segments_info" not in segments:
        raise ValueError(f"{name} must be a dict with 'segmentation' and 'segments_info' keys.")


def segments_of_prediction(prediction: dict) -> dict[int, int]:
    """Segment id -> class of a prediction; duplicated entries of one id (fused stuff) must agree on the class."""
    check_segments_dict(prediction, "prediction")
    classes = {}
    for segment in prediction["segments_info"]:
        segment_id, label = int(segment["id"]), segment_class(segment, "prediction")
        if classes.setdefault(segment_id, label) != label:
            raise ValueError(
                f"Predicted segment {segment_id} is listed with two classes: {classes[segment_id]}, {label}."
            )
    return classes


def segments_of_reference(reference: dict) -> tuple[np.ndarray, dict[int, tuple[int, bool]]]:
    """The id map of a reference and its segments: id -> (class, iscrowd)."""
    check_segments_dict(reference, "reference")
    id_map = to_int_array(reference["segmentation"], "reference['segmentation']")
    segments = {}
    for segment in reference["segments_info"]:
        segment_id = int(segment["id"])
        if segment_id == 0:
            raise ValueError("Reference segment id 0 is reserved for void pixels; number the segments from 1.")
        if segment_id in segments:
            raise ValueError(f"Reference segment id {segment_id} is listed twice in segments_info.")
        segments[segment_id] = (segment_class(segment, "reference"), bool(segment.get("iscrowd", 0)))
    return id_map, segments


def check_unlisted_reference_ids(pixel_ids, segments: dict[int, tuple[int, bool]]):
    unlisted = set(pixel_ids) - set(segments) - {0}
    if unlisted:
        raise ValueError(f"Reference ids {sorted(unlisted)} occur in the segmentation map but not in segments_info.")


def check_unlisted_predicted_ids(pixel_ids, segments: dict[int, int]):
    unlisted = {pixel_id for pixel_id in pixel_ids if pixel_id > 0 and pixel_id not in segments}
    if unlisted:
        raise ValueError(
            f"Predicted ids {sorted(unlisted)} occur in the segmentation map but not in segments_info "
            "(only ids <= 0 may mark void pixels)."
        )
