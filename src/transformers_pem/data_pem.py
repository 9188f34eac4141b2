"""
Training data for PEM: `datasets` loaders for Cityscapes, ADE20K and any image/annotation dataset, the official
training augmentations (torchvision.transforms.v2 on tv_tensors), the conversion to model inputs and a collate
function.

A training data pipeline in a few lines:

```python
>>> from torch.utils.data import DataLoader
>>> from transformers_pem import PEMImageProcessor
>>> from transformers_pem.data_pem import (
...     AugmentedSegmentationDataset, PEMSegmentationTransform, collate_fn, load_cityscapes,
...     official_train_augmentation,
... )
>>> train = load_cityscapes("data/cityscapes", split="train", task="panoptic")
>>> transform = PEMSegmentationTransform(
...     PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic"),
...     task="panoptic",
...     augmentation=official_train_augmentation("cityscapes", "panoptic"),
... )
>>> loader = DataLoader(
...     AugmentedSegmentationDataset(train, transform, seed=0), batch_size=8, shuffle=True, collate_fn=collate_fn
... )
```

Dataset columns (the target column is named after the task):

- `image_id` (string), `image` (`Image`);
- semantic: `semantic` (`Image`), one class id per pixel: train ids (0..18, 255 = ignore) for Cityscapes, the raw
  ADE20K annotation (0 = "other", class `c` stored as `c + 1`; reduced by processors with `do_reduce_labels=True`);
- panoptic: `panoptic` (`Image`), segment ids as RGB (`id = R + 256 G + 256² B`, COCO panoptic) or as a 16-bit map
  (Cityscapes `instanceIds`), 0 = void; and `segments_info`, a list of `{"id", "category_id", "iscrowd"}` where
  `category_id` is the model's class index (contiguous, not the dataset id);
- instance: `instance` and `segments_info` as for panoptic, restricted to thing classes.

Images and maps are stored by reference to the files, so the files must stay in place.
"""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .image_processing_pem import get_resize_output_size
from .labels_pem import ADE20K_LABELS

TASKS = ("semantic", "instance", "panoptic")

# Inside the augmentation, every target is one integer map `class_id * LABEL_DIVISOR + k`: k = 0 for semantic maps,
# k = 1, 2, ... for the segments of instance/panoptic maps and k = LABEL_DIVISOR - 1 for crowd regions. Void pixels
# are `ignore_index * LABEL_DIVISOR`. The crop rule reads the class as `label // LABEL_DIVISOR`.
LABEL_DIVISOR = 2**16
CROWD = LABEL_DIVISOR - 1

_SEGMENTS_FEATURE = datasets.List(
    {"id": datasets.Value("int64"), "category_id": datasets.Value("int64"), "iscrowd": datasets.Value("int64")}
)
_ADE_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------


def load_cityscapes(
    root: str | os.PathLike,
    split: str = "train",
    task: str = "semantic",
    panoptic_source: str = "auto",
    verify: bool = True,
    write_train_ids: bool = True,
) -> datasets.Dataset:
    """
    Load a local Cityscapes tree (`leftImg8bit/<split>/<city>/*_leftImg8bit.png` and `gtFine/<split>/<city>/...`).

    Args:
        root: Folder holding `leftImg8bit/` and `gtFine/`.
        split: `"train"`, `"val"` or `"test"` (a sub-folder of `leftImg8bit/`).
        task: `"semantic"` (column `semantic`: the `*_gtFine_labelTrainIds.png` maps), `"panoptic"` (columns
            `panoptic` and `segments_info`) or `"instance"` (columns `instance` and `segments_info`, things only).
        panoptic_source: Where panoptic/instance targets come from. `"json"`: cityscapesscripts' panoptic format
            (`gtFine/cityscapes_panoptic_<split>.json` and `gtFine/cityscapes_panoptic_<split>/*.png`, from
            `createPanopticImgs`). `"instance_ids"`: the `*_gtFine_instanceIds.png` maps (`labelId * 1000 + k` for
            thing instances; a thing `labelId` alone is a crowd region), scanned once here to list the segments.
            `"auto"`: `"json"` when the JSON file exists, else `"instance_ids"`. Both give the same segments.
        verify: Check that every image and target file can be opened and that their sizes match.
        write_train_ids: For the semantic task, write missing `*_gtFine_labelTrainIds.png` files next to the
            `*_gtFine_labelIds.png` ones (what cityscapesscripts' `createTrainIdLabelImgs` produces) using the
            label table of `cityscapesscripts.helpers.labels`. With `False`, missing files raise an error.

    Returns:
        `datasets.Dataset` with columns `image_id`, `image` and the task's target columns (see the module docstring).
    """
    root = _check_root(root, ("leftImg8bit", "gtFine"), "a Cityscapes root")
    _check_task(task)
    image_paths = _list_split(root / "leftImg8bit", split, "*/*_leftImg8bit.png", "Cityscapes")
    image_ids = [path.name.removesuffix("_leftImg8bit.png") for path in image_paths]
    gt_prefixes = [
        root / "gtFine" / split / path.parent.name / f"{i}_gtFine_" for path, i in zip(image_paths, image_ids)
    ]
    lut, thing_train_ids = _cityscapes_train_id_table()
    columns: dict[str, list] = {"image_id": image_ids, "image": [str(path) for path in image_paths]}

    if task == "semantic":
        targets = [Path(f"{prefix}labelTrainIds.png") for prefix in gt_prefixes]
        missing = [(prefix, target) for prefix, target in zip(gt_prefixes, targets) if not target.exists()]
        if missing and not write_train_ids:
            raise ValueError(
                f"{len(missing)} labelTrainIds files are missing, e.g. {missing[0][1]}. Create them with "
                "cityscapesscripts' createTrainIdLabelImgs or pass write_train_ids=True."
            )
        for prefix, target in missing:
            label_path = Path(f"{prefix}labelIds.png")
            _require_files([label_path], "Cityscapes labelIds map")
            label_ids = np.array(_open_image(label_path))
            if label_ids.ndim != 2 or label_ids.max(initial=0) > 255:
                raise ValueError(f"{label_path} is not a Cityscapes labelIds map (single-channel ids 0..33).")
            try:
                PIL.Image.fromarray(lut[label_ids]).save(target)
            except OSError as error:
                raise ValueError(
                    f"Cannot write {target} ({error}): create the labelTrainIds files with cityscapesscripts' "
                    "createTrainIdLabelImgs, or use a writable copy of the dataset."
                ) from error
        columns["semantic"] = [str(path) for path in targets]
    else:
        json_path = root / "gtFine" / f"cityscapes_panoptic_{split}.json"
        if panoptic_source not in ("auto", "json", "instance_ids"):
            raise ValueError(f"panoptic_source must be 'auto', 'json' or 'instance_ids', got {panoptic_source!r}.")
        if panoptic_source == "auto":
            panoptic_source = "json" if json_path.exists() else "instance_ids"
        keep_classes = thing_train_ids if task == "instance" else None
        if panoptic_source == "json":
            category_map = {label_id: int(lut[label_id]) for label_id in range(256) if lut[label_id] != 255}
            targets, segments = _read_panoptic_json(
                json_path, json_path.with_suffix(""), image_ids, category_map, keep_classes, "cityscapesscripts"
            )
        else:
            targets = [Path(f"{prefix}instanceIds.png") for prefix in gt_prefixes]
            _require_files(targets, "Cityscapes instanceIds map")
            segments = [_segments_from_instance_ids(path, lut, thing_train_ids, keep_classes) for path in targets]
        columns[task] = [str(path) for path in targets]
        columns["segments_info"] = segments
    if verify:
        _verify_pairs(columns["image"], columns[task])
    return _make_dataset(columns, task)


def load_ade20k(
    root: str | os.PathLike, split: str = "train", task: str = "semantic", verify: bool = True
) -> datasets.Dataset:
    """
    Load a local ADE20K tree: `ADEChallengeData2016/images/{training,validation}/*.jpg` with
    `annotations/{training,validation}/*.png` for the semantic task, and the ADE20K-panoptic layout of Mask2Former /
    PEM (`ADEChallengeData2016/ade20k_panoptic_{train,val}.json` + `ade20k_panoptic_{train,val}/*.png`, from the
    official `datasets/prepare_ade20k_pan_seg.py`) for the panoptic and instance tasks.

    Args:
        root: The `ADEChallengeData2016` folder or the folder that contains it.
        split: `"train"` / `"training"` or `"val"` / `"validation"`.
        task: `"semantic"` (column `semantic`: the raw annotations, 0 = "other", class `c` stored as `c + 1`; use a
            processor with `do_reduce_labels=True`, as the ADE20K semantic presets are), `"panoptic"` (columns
            `panoptic`, `segments_info`) or `"instance"` (columns `instance`, `segments_info`, things only).
        verify: Check that every image and target file can be opened and that their sizes match.

    Returns:
        `datasets.Dataset` with columns `image_id`, `image` and the task's target columns (see the module docstring).
    """
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    root = _check_root(root, ("images", "annotations"), "an ADE20K root (ADEChallengeData2016)")
    _check_task(task)
    if split not in _ADE_SPLITS:
        raise ValueError(f"Unknown ADE20K split {split!r}: use 'train' (or 'training') or 'val' (or 'validation').")
    folder = _ADE_SPLITS[split]
    if task == "semantic":
        image_paths = _list_split(root / "images", folder, "*.jpg", "ADE20K")
        image_ids = [path.stem for path in image_paths]
        targets = [root / "annotations" / folder / f"{image_id}.png" for image_id in image_ids]
        _require_files(targets, "ADE20K annotation")
        columns = {
            "image_id": image_ids,
            "image": [str(p) for p in image_paths],
            "semantic": [str(p) for p in targets],
        }
    else:
        name = "train" if folder == "training" else "val"
        json_path = root / f"ade20k_panoptic_{name}.json"
        if not json_path.exists():
            raise ValueError(
                f"{json_path} not found: the ADE20K panoptic annotations are created by Mask2Former/PEM's "
                "datasets/prepare_ade20k_pan_seg.py (from ADEChallengeData2016 and the ADE20K instance annotations)."
            )
        with open(json_path) as f:
            image_ids = [Path(annotation["file_name"]).stem for annotation in json.load(f)["annotations"]]
        image_paths = [root / "images" / folder / f"{image_id}.jpg" for image_id in image_ids]
        _require_files(image_paths, "ADE20K image")
        category_map = {label[3]: index for index, label in enumerate(ADE20K_LABELS)}
        things = {index for index, label in enumerate(ADE20K_LABELS) if label[2]}
        targets, segments = _read_panoptic_json(
            json_path,
            root / f"ade20k_panoptic_{name}",
            image_ids,
            category_map,
            things if task == "instance" else None,
        )
        columns = {"image_id": image_ids, "image": [str(p) for p in image_paths], task: [str(p) for p in targets]}
        columns["segments_info"] = segments
    if verify:
        _verify_pairs(columns["image"], columns[task])
    return _make_dataset(columns, task)


def load_segmentation_dataset(
    source: "str | os.PathLike | datasets.Dataset | datasets.DatasetDict",
    split: str = "train",
    task: str = "semantic",
    column_mapping: Mapping[str, str] | None = None,
    **load_dataset_kwargs,
) -> datasets.Dataset:
    """
    Load any image/annotation dataset and bring it to the columns of this module.

    `source` is one of:
    - a `datasets.Dataset` or `datasets.DatasetDict`;
    - a local folder written by `save_to_disk`;
    - a local image folder with `<source>/<split>/metadata.jsonl` (or `<source>/metadata.jsonl` for a single
      `"train"` split) whose lines name the files, e.g. `{"file_name": "images/a.jpg", "annotation_file_name":
      "annotations/a.png"}`; every `*_file_name` field becomes an `Image` column without the suffix (`annotation`);
    - a local `.parquet` file, or a local folder in a layout `datasets.load_dataset` understands (e.g. parquet files
      named after their split);
    - a dataset name on the Hugging Face Hub (`load_dataset(source, split=split, **load_dataset_kwargs)`).

    Args:
        split: Split to load.
        task: `"semantic"`, `"instance"` or `"panoptic"`: the dataset must provide an `image` column and a column named
            after the task (plus `segments_info` for instance/panoptic: a list of `{"id", "category_id"[,
            "iscrowd"]}` or its JSON string) after `column_mapping`.
        column_mapping: Renames columns, `{"source name": "our name"}`, e.g. `{"annotation": "semantic"}`. Columns of
            file paths are cast to `Image` (paths are relative to the working directory).
        load_dataset_kwargs: Passed to `datasets.load_dataset` (Hub names and local folders), e.g. `revision`.

    Returns:
        The `datasets.Dataset` of the split, columns renamed; the first example is checked to decode with matching
        image and target sizes.
    """
    _check_task(task)
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        dataset = _pick_split(source, split, "the DatasetDict")
    else:
        dataset = _load_dataset_source(str(source), split, load_dataset_kwargs)

    column_mapping = dict(column_mapping or {})
    missing = [name for name in column_mapping if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"column_mapping names columns {missing} that the dataset does not have; its columns are "
            f"{dataset.column_names}."
        )
    dataset = dataset.rename_columns({old: new for old, new in column_mapping.items() if old != new})
    required = ["image", task] + (["segments_info"] if task != "semantic" else [])
    absent = [name for name in required if name not in dataset.column_names]
    if absent:
        raise ValueError(
            f"The {task} task needs the columns {required} but {absent} are missing; the dataset has "
            f"{dataset.column_names}. Use column_mapping={{'<dataset column>': '<needed name>'}} to rename them."
        )
    for name in ("image", task):
        feature = dataset.features[name]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            dataset = dataset.cast_column(name, datasets.Image())
        elif not isinstance(feature, datasets.Image):
            raise ValueError(f"Column {name!r} must hold images or image file paths, but its feature is {feature}.")
    if len(dataset) == 0:
        raise ValueError(f"Split {split!r} of {source} is empty.")
    example = dataset[0]
    _check_same_size(example["image"], example[task], f"example 0 of {source}")
    if task != "semantic":
        _segments_of(example)
    return dataset


def _load_dataset_source(source: str, split: str, load_dataset_kwargs: dict) -> datasets.Dataset:
    path = Path(source)
    try:
        if path.is_file() and path.suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split, **load_dataset_kwargs)
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            return _pick_split(datasets.load_from_disk(str(path)), split, source)
        metadata = path / split / "metadata.jsonl"
        if not metadata.exists() and split == "train" and (path / "metadata.jsonl").exists():
            metadata = path / "metadata.jsonl"
        if metadata.exists():
            return datasets.load_dataset(
                "imagefolder", data_files={split: [str(metadata)]}, split=split, **load_dataset_kwargs
            )
        if path.exists() and not path.is_dir():
            raise ValueError(f"{source} is a file but not a .parquet file: pass a folder, a .parquet file or a name.")
        return datasets.load_dataset(source, split=split, **load_dataset_kwargs)
    except ValueError as error:
        if "split" in str(error).lower() and "unknown" in str(error).lower():
            raise ValueError(f"Split {split!r} not found in {source}: {error}") from error
        raise
    except datasets.exceptions.DatasetGenerationError as error:
        raise ValueError(f"Cannot load {source!r}: {error.__cause__ or error}") from error
    except (FileNotFoundError, ConnectionError) as error:
        raise ValueError(
            f"Cannot load {source!r}: it is neither a local dataset (folder or .parquet file) nor a dataset found on "
            f"the Hub ({error})."
        ) from error


def _pick_split(loaded, split: str, source: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"Split {split!r} not found in {source}; available splits: {sorted(loaded)}.")
        return loaded[split]
    return loaded


def _make_dataset(columns: dict[str, list], task: str) -> datasets.Dataset:
    features = {"image_id": datasets.Value("string"), "image": datasets.Image(), task: datasets.Image()}
    if task != "semantic":
        features["segments_info"] = _SEGMENTS_FEATURE
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _check_root(root, children: Sequence[str], what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Dataset root {root} does not exist or is not a folder.")
    missing = [child for child in children if not (root / child).is_dir()]
    if missing:
        raise ValueError(
            f"{root} is not {what}: the folders {missing} are missing (expected {list(children)}). Pass the folder "
            "that contains them."
        )
    return root


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: use one of {TASKS}.")


def _list_split(parent: Path, split: str, pattern: str, dataset: str) -> list[Path]:
    folder = parent / split
    if not folder.is_dir():
        available = sorted(child.name for child in parent.iterdir() if child.is_dir())
        raise ValueError(f"{dataset} split {split!r} not found: {folder} does not exist. Available: {available}.")
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise ValueError(f"No {dataset} images matching {folder / pattern}.")
    return paths


def _require_files(paths: Sequence[Path], what: str) -> None:
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} {what} files are missing, e.g. {missing[0]}.")


def _open_image(path) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(path)
        image.load()
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"Cannot read image file {path}: {error}") from error
    return image


def _verify_pairs(images: Sequence[str], targets: Sequence[str]) -> None:
    for image_path, target_path in zip(images, targets):
        sizes = []
        for path in (image_path, target_path):
            try:
                with PIL.Image.open(path) as image:
                    sizes.append(image.size)
            except (OSError, PIL.UnidentifiedImageError) as error:
                raise ValueError(f"Cannot read image file {path}: {error}") from error
        if sizes[0] != sizes[1]:
            raise ValueError(
                f"Size mismatch: {image_path} is {sizes[0][0]}x{sizes[0][1]} but its annotation {target_path} is "
                f"{sizes[1][0]}x{sizes[1][1]} (width x height)."
            )


def _cityscapes_train_id_table() -> tuple[np.ndarray, set[int]]:
    """labelId -> trainId lookup table (255 = ignore) and the thing train ids, from cityscapesscripts."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, np.uint8)
    things = set()
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
            if label.hasInstances:
                things.add(label.trainId)
    return lut, things


def _read_panoptic_json(
    json_path: Path,
    png_dir: Path,
    image_ids: Sequence[str],
    category_map: Mapping[int, int],
    keep_classes: set[int] | None,
    tool: str = "prepare_ade20k_pan_seg.py",
) -> tuple[list[Path], list[list[dict]]]:
    """Panoptic PNG paths and segments (category ids mapped to class indices) of `image_ids`, from a COCO JSON."""
    if not json_path.exists():
        raise ValueError(f"Panoptic annotation file {json_path} not found; it is written by {tool}.")
    try:
        with open(json_path) as f:
            annotations = {annotation["image_id"]: annotation for annotation in json.load(f)["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{json_path} is not a COCO panoptic annotation file: {error}") from error
    missing = [image_id for image_id in image_ids if image_id not in annotations]
    if missing:
        raise ValueError(f"{len(missing)} images have no annotation in {json_path}, e.g. {missing[0]!r}.")
    paths, segments = [], []
    for image_id in image_ids:
        annotation = annotations[image_id]
        paths.append(png_dir / annotation["file_name"])
        image_segments = []
        for segment in annotation["segments_info"]:
            if segment["category_id"] not in category_map:
                raise ValueError(
                    f"Segment {segment['id']} of {image_id!r} in {json_path} has category_id "
                    f"{segment['category_id']}, which is not a class of this dataset."
                )
            class_id = category_map[segment["category_id"]]
            if keep_classes is None or class_id in keep_classes:
                image_segments.append(
                    {"id": int(segment["id"]), "category_id": class_id, "iscrowd": int(segment.get("iscrowd", 0))}
                )
        segments.append(image_segments)
    _require_files(paths, f"panoptic PNG (listed in {json_path.name})")
    return paths, segments


def _segments_from_instance_ids(
    path: Path, lut: np.ndarray, thing_train_ids: set[int], keep_classes: set[int] | None
) -> list[dict]:
    """Segments of a Cityscapes instanceIds map, as cityscapesscripts' createPanopticImgs lists them."""
    instance_ids = np.array(_open_image(path)).astype(np.int64)
    if instance_ids.ndim != 2:
        raise ValueError(f"{path} is not a Cityscapes instanceIds map (a single-channel 16-bit image).")
    segments = []
    for segment_id in np.unique(instance_ids).tolist():
        label_id = segment_id // 1000 if segment_id >= 1000 else segment_id
        if label_id > 255 or lut[label_id] == 255:
            continue
        class_id = int(lut[label_id])
        if keep_classes is None or class_id in keep_classes:
            iscrowd = int(segment_id < 1000 and class_id in thing_train_ids)
            segments.append({"id": segment_id, "category_id": class_id, "iscrowd": iscrowd})
    return segments


# ---------------------------------------------------------------------------------------------------------------------
# Decoding targets
# ---------------------------------------------------------------------------------------------------------------------


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of an RGB-encoded panoptic map (COCO panoptic format): `R + 256 * G + 256**2 * B`, int64."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def segment_ids_from_image(image: PIL.Image.Image) -> np.ndarray:
    """The `(height, width)` int64 segment ids of a panoptic/instance image: RGB-encoded or single-channel ids."""
    array = np.array(image)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return rgb_to_id(array[..., :3])
    if array.ndim == 2:
        return array.astype(np.int64)
    raise ValueError(f"Unsupported panoptic map of shape {array.shape}: expected RGB ids or a single-channel id map.")


def semantic_from_panoptic(
    segment_ids: np.ndarray, segments_info: Sequence[Mapping[str, Any]], ignore_index: int = 255
) -> np.ndarray:
    """Class map of a panoptic target (crowd regions keep their class, unlisted ids are `ignore_index`)."""
    lookup = {int(segment["id"]): int(segment["category_id"]) for segment in segments_info}
    unique, inverse = np.unique(segment_ids, return_inverse=True)
    classes = np.array([lookup.get(int(i), ignore_index) for i in unique], np.int64)
    return classes[inverse].reshape(segment_ids.shape)


def _segments_of(example: Mapping[str, Any]) -> list[dict]:
    segments = example["segments_info"]
    if isinstance(segments, str):
        segments = json.loads(segments)
    if isinstance(segments, Mapping):  # a dict of lists (datasets' `Sequence` of dicts)
        segments = [dict(zip(segments, values)) for values in zip(*segments.values())]
    if any(not isinstance(s, Mapping) or "id" not in s or "category_id" not in s for s in segments):
        raise ValueError("segments_info must be a list of dicts with 'id' and 'category_id' (and optional 'iscrowd').")
    return list(segments)


def _check_same_size(image: PIL.Image.Image, target: PIL.Image.Image, where: str) -> None:
    if image.size != target.size:
        raise ValueError(
            f"Size mismatch in {where}: the image is {image.size[0]}x{image.size[1]} but its annotation is "
            f"{target.size[0]}x{target.size[1]} (width x height)."
        )


def encode_label_map(
    example: Mapping[str, Any], task: str, ignore_index: int = 255, reduce_labels: bool = False
) -> np.ndarray:
    """
    The target of an example as one int64 map `class_id * LABEL_DIVISOR + k` (see `LABEL_DIVISOR`), the form the
    augmentations transform. Semantic maps are reduced first with `reduce_labels` (0 -> ignored, c -> c - 1).
    """
    target = example[task]
    if task == "semantic":
        classes = np.array(target)
        if classes.ndim != 2:
            raise ValueError(
                f"Semantic maps must be single-channel class ids, got an image of mode {target.mode!r}. Colour-coded "
                "annotations must be converted to class ids first."
            )
        classes = classes.astype(np.int64)
        if reduce_labels:
            classes = np.where((classes == 0) | (classes == ignore_index), ignore_index + 1, classes) - 1
        return classes * LABEL_DIVISOR
    segment_ids = segment_ids_from_image(target)
    lookup = {}
    for k, segment in enumerate(_segments_of(example), start=1):
        if k >= CROWD:
            raise ValueError(f"More than {CROWD - 1} segments in one image are not supported.")
        instance = CROWD if segment.get("iscrowd", 0) else k
        lookup[int(segment["id"])] = int(segment["category_id"]) * LABEL_DIVISOR + instance
    void = ignore_index * LABEL_DIVISOR
    unique, inverse = np.unique(segment_ids, return_inverse=True)
    labels = np.array([lookup.get(int(i), void) for i in unique], np.int64)
    return labels[inverse].reshape(segment_ids.shape)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentations (official detectron2 recipe, as torchvision.transforms.v2 transforms)
# ---------------------------------------------------------------------------------------------------------------------


class RandomShortestEdgeResize(v2.Transform):
    """
    detectron2 `ResizeShortestEdge(short_edge_lengths, max_size, "choice")`: resize the short side to a length drawn
    from `short_edge_lengths`, shrinking further if the long side would exceed `max_size` (detectron2 rounding). Images
    are resized bilinearly with antialiasing (as PIL does in detectron2), masks with nearest neighbour, exactly.
    detectron2 resizes semantic maps with torch's `nearest` (`InterpolationMode.NEAREST`, the default here) but the
    RGB panoptic PNGs with PIL's `NEAREST`, which samples pixel centres (`InterpolationMode.NEAREST_EXACT`).
    """

    def __init__(
        self,
        short_edge_lengths: Sequence[int],
        max_size: int,
        mask_interpolation: v2.InterpolationMode = v2.InterpolationMode.NEAREST,
    ):
        super().__init__()
        if mask_interpolation not in (v2.InterpolationMode.NEAREST, v2.InterpolationMode.NEAREST_EXACT):
            raise ValueError(f"mask_interpolation must be NEAREST or NEAREST_EXACT, got {mask_interpolation}.")
        self.mask_interpolation = mask_interpolation
        if not short_edge_lengths or min(short_edge_lengths) <= 0:
            raise ValueError(f"short_edge_lengths must be positive lengths, got {short_edge_lengths}.")
        self.short_edge_lengths = [int(length) for length in short_edge_lengths]
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        length = self.short_edge_lengths[int(torch.randint(len(self.short_edge_lengths), ()))]
        return {"size": list(get_resize_output_size(height, width, length, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            # float64 keeps every id exact (float32 would stop at 2**24).
            resized = F.resize(inpt.to(torch.float64), params["size"], interpolation=self.mask_interpolation)
            return tv_tensors.wrap(resized.to(inpt.dtype), like=inpt)
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return inpt


class RandomCropWithCategoryAreaConstraint(v2.Transform):
    """
    detectron2 `RandomCrop_CategoryAreaConstraint("absolute", crop_size, single_category_max_area, ignore_index)`:
    a random crop of `min(crop_size, image size)`; unless `single_category_max_area >= 1.0` (the official configs),
    up to 10 crops are drawn until no single class covers more than `single_category_max_area` of the non-ignored
    pixels of the crop and at least two classes are present (the last draw is kept otherwise). Classes are read from
    the first `tv_tensors.Mask` as `label // LABEL_DIVISOR`.
    """

    def __init__(
        self, crop_size: tuple[int, int], single_category_max_area: float = 1.0, ignore_index: int | None = 255
    ):
        super().__init__()
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be a positive (height, width), got {crop_size}.")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.single_category_max_area = float(single_category_max_area)
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_height, crop_width = min(self.crop_size[0], height), min(self.crop_size[1], width)
        masks = [inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.Mask)]
        attempts = 1 if self.single_category_max_area >= 1.0 or not masks else 10
        for _ in range(attempts):
            top = int(torch.randint(height - crop_height + 1, ()))
            left = int(torch.randint(width - crop_width + 1, ()))
            if attempts == 1:
                break
            classes = masks[0][..., top : top + crop_height, left : left + crop_width] // LABEL_DIVISOR
            labels, counts = torch.unique(classes, return_counts=True)
            if self.ignore_index is not None:
                counts = counts[labels != self.ignore_index]
            if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                break
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return F.crop(inpt, **params)
        return inpt


class ColorAugSSD(v2.Transform):
    """
    The SSD-style photometric distortion of detectron2 (`ColorAugSSDTransform`, used with `INPUT.COLOR_AUG_SSD`), on
    uint8 images only: brightness (p=0.5, add U(-32, 32)); then with equal probability either contrast, saturation,
    hue or saturation, hue, contrast; contrast (p=0.5, multiply by U(0.5, 1.5)); saturation (p=0.5, multiply the HSV
    saturation by U(0.5, 1.5)); hue (p=0.5, shift the 8-bit OpenCV hue (0..179) by an integer in [-18, 18], i.e. up
    to 36 degrees). Every step clips to 0..255 and truncates to uint8 as the official code does. HSV conversions follow
    OpenCV's 8-bit formulas (to within one level, as OpenCV rounds through lookup tables).
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(draw):
            return draw() if bool(torch.rand(()) < 0.5) else None

        params = {"brightness": maybe(lambda: self._uniform(-self.brightness_delta, self.brightness_delta))}
        params["contrast_last"] = bool(torch.rand(()) < 0.5)
        steps = ("saturation", "hue", "contrast") if params["contrast_last"] else ("contrast", "saturation", "hue")
        for step in steps:
            if step == "contrast":
                params[step] = maybe(lambda: self._uniform(*self.contrast_range))
            elif step == "saturation":
                params[step] = maybe(lambda: self._uniform(*self.saturation_range))
            else:
                params[step] = maybe(lambda: int(torch.randint(-self.hue_delta, self.hue_delta + 1, ())))
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if inpt.dtype != torch.uint8:
            raise ValueError(f"ColorAugSSD expects uint8 images (0..255), got {inpt.dtype}.")
        image = inpt.as_subclass(torch.Tensor)
        if params["brightness"] is not None:
            image = _to_uint8(image.float() + params["brightness"])
        steps = ("saturation", "hue", "contrast") if params["contrast_last"] else ("contrast", "saturation", "hue")
        for step in steps:
            value = params[step]
            if value is None:
                continue
            if step == "contrast":
                image = _to_uint8(image.float() * value)
            else:
                hue, saturation, brightness = rgb_to_hsv_uint8(image)
                if step == "saturation":
                    saturation = _to_uint8(saturation.float() * value)
                else:
                    hue = ((hue.long() + value) % 180).to(torch.uint8)
                image = hsv_uint8_to_rgb(hue, saturation, brightness)
        return tv_tensors.wrap(image, like=inpt)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """numpy's `clip(x, 0, 255).astype(uint8)`: clip, then truncate."""
    return values.clamp(0, 255).to(torch.uint8)


def rgb_to_hsv_uint8(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit RGB -> HSV of a `(3, H, W)` uint8 image: hue 0..179 (degrees / 2), saturation, value 0..255."""
    rgb = image.float()
    value, _ = rgb.max(dim=0)
    minimum, _ = rgb.min(dim=0)
    delta = value - minimum
    saturation = torch.where(value > 0, torch.round(255.0 * delta / value.clamp(min=1)), torch.zeros_like(value))
    red, green, blue = rgb
    safe_delta = delta.clamp(min=1)
    hue = torch.where(
        value == red,
        60.0 * (green - blue) / safe_delta,
        torch.where(
            value == green, 120.0 + 60.0 * (blue - red) / safe_delta, 240.0 + 60.0 * (red - green) / safe_delta
        ),
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) % 360.0
    hue = torch.round(hue / 2.0) % 180.0
    return hue.to(torch.uint8), saturation.to(torch.uint8), value.to(torch.uint8)


def hsv_uint8_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit HSV -> RGB (hue 0..179 in units of 2 degrees): a `(3, H, W)` uint8 image."""
    h = hue.float() * 2.0 / 60.0  # sector 0..6
    s = saturation.float() / 255.0
    v = value.float()
    sector = torch.floor(h)
    fraction = h - sector
    p = v * (1 - s)
    q = v * (1 - s * fraction)
    t = v * (1 - s * (1 - fraction))
    sector = sector.long() % 6
    red = torch.stack([v, q, p, p, t, v]).gather(0, sector[None])[0]
    green = torch.stack([t, v, v, q, p, p]).gather(0, sector[None])[0]
    blue = torch.stack([p, p, t, v, v, q]).gather(0, sector[None])[0]
    return torch.stack([red, green, blue]).round().clamp(0, 255).to(torch.uint8)


class PadToSize(v2.Transform):
    """
    Pad the bottom and right of images and masks to at least `size` (the official `INPUT.SIZE_DIVISIBILITY` padding
    of training crops: images with 128, targets with the void label).
    """

    def __init__(self, size: tuple[int, int], image_fill: int = 128, mask_fill: int = 255 * LABEL_DIVISOR):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.image_fill = image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - width, 0), max(self.size[0] - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            return F.pad(inpt, params["padding"], fill=self.image_fill)
        if isinstance(inpt, tv_tensors.Mask):
            return F.pad(inpt, params["padding"], fill=self.mask_fill)
        return inpt


def build_train_augmentation(
    min_sizes: Sequence[int],
    max_size: int,
    crop_size: tuple[int, int],
    single_category_max_area: float = 1.0,
    color_augmentation: bool = True,
    horizontal_flip: bool = True,
    pad_to_crop_size: bool = False,
    ignore_index: int = 255,
    mask_interpolation: v2.InterpolationMode = v2.InterpolationMode.NEAREST,
) -> v2.Compose:
    """
    The official training augmentation, in the official order: random short-side resize, random crop (with the
    single-category area rule), SSD colour distortion, horizontal flip (p=0.5), and with `pad_to_crop_size` the
    padding of smaller crops to `crop_size` (ADE20K's `SIZE_DIVISIBILITY`). Call it on `(tv_tensors.Image,
    tv_tensors.Mask)` with a uint8 image and a label map from `encode_label_map`. `mask_interpolation`: see
    [`RandomShortestEdgeResize`].
    """
    transforms = [
        RandomShortestEdgeResize(min_sizes, max_size, mask_interpolation),
        RandomCropWithCategoryAreaConstraint(crop_size, single_category_max_area, ignore_index),
    ]
    if color_augmentation:
        transforms.append(ColorAugSSD())
    if horizontal_flip:
        transforms.append(v2.RandomHorizontalFlip(p=0.5))
    if pad_to_crop_size:
        transforms.append(PadToSize(crop_size, mask_fill=ignore_index * LABEL_DIVISOR))
    return v2.Compose(transforms)


def official_train_augmentation(
    dataset: str, task: str = "semantic", scale: float = 1.0, ignore_index: int = 255
) -> v2.Compose:
    """
    The training augmentation of the official configs (`configs/<dataset>/<task>-segmentation/Base-*.yaml`):

    | dataset, task | short sides | max size | crop | pad to crop |
    |---|---|---|---|---|
    | cityscapes | `[int(x * 0.1 * 1024) for x in range(5, 21)]` | 4096 | 512 x 1024 | no |
    | ade20k, semantic | `[int(x * 0.1 * 512) for x in range(5, 21)]` | 2048 | 512 x 512 | yes |
    | ade20k, panoptic | `[int(x * 0.1 * 640) for x in range(5, 21)]` | 2560 | 640 x 640 | yes |

    all with `SINGLE_CATEGORY_MAX_AREA 1.0`, `COLOR_AUG_SSD True` and horizontal flips; targets are resized as
    detectron2 resizes them for the task (see [`RandomShortestEdgeResize`]). `scale` multiplies every
    length (e.g. 0.125 for 128 x 256 images instead of 1024 x 2048).
    """
    if dataset not in ("cityscapes", "ade20k"):
        raise ValueError(f"Unknown dataset {dataset!r}: official recipes exist for 'cityscapes' and 'ade20k'.")
    _check_task(task)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    if dataset == "cityscapes":
        base, max_size, crop = 1024, 4096, (512, 1024)
    elif task == "panoptic":
        base, max_size, crop = 640, 2560, (640, 640)
    else:
        base, max_size, crop = 512, 2048, (512, 512)
    min_sizes = [int(x * 0.1 * base * scale) for x in range(5, 21)]
    return build_train_augmentation(
        min_sizes,
        max(int(max_size * scale), 1),
        (max(int(crop[0] * scale), 1), max(int(crop[1] * scale), 1)),
        pad_to_crop_size=dataset == "ade20k",
        ignore_index=ignore_index,
        mask_interpolation=v2.InterpolationMode.NEAREST if task == "semantic" else v2.InterpolationMode.NEAREST_EXACT,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conversion to model inputs, seeded datasets and collation
# ---------------------------------------------------------------------------------------------------------------------


class PEMSegmentationTransform:
    """
    Turns one dataset example into model inputs: decode the target, apply the (optional) augmentation jointly to
    image and target, and let the image processor build `pixel_values`, `pixel_mask`, `mask_labels` and
    `class_labels` (no resize: the augmentation sets the size).

    Semantic targets give one mask per class present (ignored pixels in none). Instance and panoptic targets give
    one mask per non-crowd segment still visible after the augmentation; crowd regions and void pixels belong to no
    mask.

    Args:
        processor ([`PEMImageProcessor`]): Normalisation, padding to its `size_divisor` and target conversion.
        task: `"semantic"`, `"instance"` or `"panoptic"`: which target column to read.
        augmentation: A transform of `(tv_tensors.Image, tv_tensors.Mask)`, e.g. `official_train_augmentation(...)`.
            `None` keeps images at their size (e.g. for validation losses).
        ignore_index: Label of ignored pixels. Defaults to the processor's `ignore_index` (or 255).
        reduce_labels: For semantic maps with 0 = "other" (ADE20K): 0 becomes ignored and c becomes c - 1. Defaults
            to the processor's `do_reduce_labels`.
        num_labels: If given, class ids must be below it (a clear error instead of a failing loss).
    """

    def __init__(
        self,
        processor,
        task: str = "semantic",
        augmentation: v2.Transform | None = None,
        ignore_index: int | None = None,
        reduce_labels: bool | None = None,
        num_labels: int | None = None,
    ):
        _check_task(task)
        self.processor = processor
        self.task = task
        self.augmentation = augmentation
        processor_ignore = getattr(processor, "ignore_index", None)
        self.ignore_index = ignore_index if ignore_index is not None else (processor_ignore or 255)
        self.reduce_labels = (
            reduce_labels if reduce_labels is not None else bool(getattr(processor, "do_reduce_labels", False))
        )
        self.num_labels = num_labels

    def __call__(self, example: Mapping[str, Any], seed: int | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            example: A row with `image` and the task's target columns (PIL images as `datasets` decodes them).
            seed: Seed of the augmentation's random draws (the global torch RNG is left untouched). `None` draws
                from the global torch RNG.

        Returns:
            `pixel_values` `(3, H, W)` float, `pixel_mask` `(H, W)` int64, `mask_labels` `(num_masks, H, W)` float,
            `class_labels` `(num_masks,)` int64.
        """
        image, target = example["image"], example[self.task]
        where = f"example {example['image_id']!r}" if "image_id" in example else "the example"
        _check_same_size(image, target, where)
        image = tv_tensors.Image(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous())
        labels = tv_tensors.Mask(
            torch.from_numpy(encode_label_map(example, self.task, self.ignore_index, self.reduce_labels))
        )
        if self.augmentation is not None:
            if seed is None:
                image, labels = self.augmentation(image, labels)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    image, labels = self.augmentation(image, labels)
        labels = labels.as_subclass(torch.Tensor)

        classes, instances = labels // LABEL_DIVISOR, labels % LABEL_DIVISOR
        if self.task == "semantic":
            segmentation_map, instance_to_class = classes, None
        else:
            # Segments get consecutive ids (skipping the ignore value); void and crowd pixels get the ignore value.
            keep = (classes != self.ignore_index) & (instances != CROWD)
            segment_labels, inverse = torch.unique(labels, return_inverse=True)
            segment_labels = segment_labels.tolist()
            local_ids = [i if i < self.ignore_index else i + 1 for i in range(len(segment_labels))]
            segmentation_map = torch.tensor(local_ids, dtype=torch.int64)[inverse]
            segmentation_map[~keep] = self.ignore_index
            instance_to_class = {i: label // LABEL_DIVISOR for i, label in zip(local_ids, segment_labels)}
        if self.num_labels is not None:
            present = classes[classes != self.ignore_index]
            if present.numel() and int(present.max()) >= self.num_labels:
                raise ValueError(
                    f"{where} has class id {int(present.max())}, but the model has {self.num_labels} classes."
                )
        inputs = self.processor(
            images=image.as_subclass(torch.Tensor),
            segmentation_maps=segmentation_map,
            instance_id_to_semantic_id=instance_to_class,
            do_resize=False,
            do_reduce_labels=False,
            ignore_index=self.ignore_index,
            return_tensors="pt",
        )
        return {
            "pixel_values": inputs["pixel_values"][0],
            "pixel_mask": inputs["pixel_mask"][0],
            "mask_labels": inputs["mask_labels"][0],
            "class_labels": inputs["class_labels"][0],
        }


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch`: a hash of the three numbers (numpy `SeedSequence`)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class AugmentedSegmentationDataset(torch.utils.data.Dataset):
    """
    A map-style torch dataset applying a [`PEMSegmentationTransform`] to a `datasets.Dataset`, with augmentation
    seeded per sample by `sample_seed(seed, epoch, index)`. The result depends only on `(seed, epoch, index)`, not on
    workers, order or earlier samples, so a resumed run sees exactly the samples of an uninterrupted one.
    accelerate's prepared data loaders call `set_epoch` at the start of every epoch; with a plain `DataLoader`, call
    it yourself (and do not use `persistent_workers`, which would keep the workers' old epoch).
    """

    def __init__(self, dataset: datasets.Dataset, transform: PEMSegmentationTransform, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.transform(self.dataset[index], seed=sample_seed(self.seed, self.epoch, index))


def collate_fn(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """
    Batch transformed examples: `pixel_values` `(B, 3, H, W)` and `pixel_mask` `(B, H, W)` stacked (padded bottom and
    right with 0 to the largest size when sizes differ), `mask_labels` and `class_labels` kept as lists (images have
    different numbers of masks), masks padded like the images.
    """
    if not examples:
        raise ValueError("Cannot collate an empty list of examples.")
    height = max(example["pixel_values"].shape[-2] for example in examples)
    width = max(example["pixel_values"].shape[-1] for example in examples)

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]))

    return {
        "pixel_values": torch.stack([pad(example["pixel_values"]) for example in examples]),
        "pixel_mask": torch.stack([pad(example["pixel_mask"]) for example in examples]),
        "mask_labels": [pad(example["mask_labels"]) for example in examples],
        "class_labels": [example["class_labels"] for example in examples],
    }


__all__ = [
    "LABEL_DIVISOR",
    "AugmentedSegmentationDataset",
    "ColorAugSSD",
    "PEMSegmentationTransform",
    "PadToSize",
    "RandomCropWithCategoryAreaConstraint",
    "RandomShortestEdgeResize",
    "build_train_augmentation",
    "collate_fn",
    "encode_label_map",
    "hsv_uint8_to_rgb",
    "load_ade20k",
    "load_cityscapes",
    "load_segmentation_dataset",
    "official_train_augmentation",
    "rgb_to_hsv_uint8",
    "rgb_to_id",
    "sample_seed",
    "segment_ids_from_image",
    "semantic_from_panoptic",
]
