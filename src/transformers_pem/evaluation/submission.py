"""Predictions written in the official submission formats (Cityscapes, ADE20K, COCO panoptic and COCO results)."""

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import PIL.Image

from ..labels_pem import DATASET_LABELS
from ..utils.extras import require
from ..utils.paths import atomic_file
from .process_order import key_order


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
            [label.dataset_id for label in DATASET_LABELS[label_set]]
            if label_set is not None
            else list(range(num_labels))
        )
        self.categories = []
        for index in range(num_labels):
            category = {"id": self.category_ids[index], "name": id2label[index], "isthing": int(index in thing_ids)}
            if label_set is not None:
                category["color"] = list(DATASET_LABELS[label_set][index].color)
            self.categories.append(category)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        # The JSON records, one entry per added panoptic or instance prediction, written by `close`.
        self.panoptic_annotations, self.images = [], []
        self.instances: list[list[dict]] = []

    def add_semantic(self, image_id: str, segmentation: np.ndarray) -> None:
        folder = self.export_dir / "semantic"
        if self.label_set == "cityscapes":
            values, name = np.asarray(self.category_ids, np.uint8)[segmentation], f"{image_id}_labelIds.png"
        elif self.label_set == "ade20k":
            values, name = (segmentation + 1).astype(np.uint8), f"{image_id}.png"
        else:
            dtype = np.uint8 if len(self.category_ids) <= 256 else np.uint16
            values, name = segmentation.astype(dtype), f"{image_id}.png"
        with atomic_file(folder / name) as path:
            PIL.Image.fromarray(values).save(path)

    def add_panoptic(self, image_id: str, segmentation: np.ndarray, segments_info: list[dict]) -> dict:
        """Write the panoptic PNG; returns the image's JSON entries (`{"image", "annotation"}`, as
        `replace_entries` takes them)."""
        folder = self.export_dir / "panoptic"
        segmentation = segmentation.astype(np.int64)
        rgb = np.stack([segmentation % 256, segmentation // 256 % 256, segmentation // 65536 % 256], axis=-1)
        with atomic_file(folder / f"{image_id}.png") as path:
            PIL.Image.fromarray(rgb.astype(np.uint8)).save(path)
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
        entries = {
            "image": {"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width},
            "annotation": {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments},
        }
        self._add_entries(entries)
        return entries

    def add_instance(self, image_id: str, masks: np.ndarray, segments_info: list[dict]) -> dict:
        """Encode the masks; returns the image's JSON entries (`{"instances"}`, as `replace_entries` takes them)."""
        mask_utils = require("pycocotools.mask", "eval", "Exporting instance predictions (COCO RLE)")
        instances = []
        for mask, segment in zip(masks, segments_info):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            instances.append(
                {
                    "image_id": image_id,
                    "category_id": self.category_ids[segment["label_id"]],
                    "segmentation": rle,
                    "score": float(segment["score"]),
                }
            )
        entries = {"instances": instances}
        self._add_entries(entries)
        return entries

    def _add_entries(self, entries: dict) -> None:
        if "annotation" in entries:
            self.images.append(entries["image"])
            self.panoptic_annotations.append(entries["annotation"])
        else:
            self.instances.append(entries["instances"])

    def replace_entries(self, entries: Iterable[dict]) -> None:
        """Replace the JSON records by `entries`, one image's as `add_panoptic` or `add_instance` returned them, in
        the order given (for a run that resumes from the entries it kept)."""
        self.panoptic_annotations, self.images, self.instances = [], [], []
        for image_entries in entries:
            self._add_entries(image_entries)

    def state(self) -> dict:
        """The JSON records added so far, to combine with other processes' by `merge_states` (the PNGs are
        written by each process as it goes)."""
        return {"images": self.images, "annotations": self.panoptic_annotations, "instances": self.instances}

    def merge_states(self, states: Sequence[dict], keys: Sequence[Sequence[int]]) -> None:
        """Replace the JSON records by those of `states` (one per process; `keys[i]` the dataset indices of the
        predictions `states[i]` added, in order), in key order: the files `close` writes equal one process's."""
        order = key_order(keys)
        for name, attribute in (
            ("images", "images"),
            ("annotations", "panoptic_annotations"),
            ("instances", "instances"),
        ):
            if any(states[part][name] for part, _ in order):
                setattr(self, attribute, [states[part][name][position] for part, position in order])

    def close(self) -> None:
        """Write the JSON files of the predictions added so far (atomically: it may be called again later)."""
        if self.panoptic_annotations:
            with atomic_file(self.export_dir / "panoptic.json") as path, open(path, "w") as file:
                json.dump(
                    {"images": self.images, "annotations": self.panoptic_annotations, "categories": self.categories},
                    file,
                )
        if self.instances:
            with atomic_file(self.export_dir / "instances.json") as path, open(path, "w") as file:
                json.dump([instance for instances in self.instances for instance in instances], file)


__all__ = ["PredictionExporter"]
