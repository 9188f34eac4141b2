"""
Segmentation data for PEM: `datasets` loaders for Cityscapes, ADE20K and any image/annotation dataset, and the
decoding of their targets (segment ids, `segments_info`, evaluation references). The training augmentations are in
`data.augmentation`.

```python
>>> from transformers_pem import load_cityscapes
>>> train = load_cityscapes("data/cityscapes", split="train", task="panoptic")
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

import numpy as np
import PIL.Image

from ..labels_pem import ADE20K_LABELS, CITYSCAPES_LABELS, DATASET_LABELS, reduce_labels
from ..presets_pem import check_task
from ..utils.extras import require
from ..utils.paths import check_local_or_hub

datasets = require("datasets", "train", "Loading segmentation datasets")

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
    check_task(task)
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
    check_task(task)
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
        category_map = {label.dataset_id: index for index, label in enumerate(ADE20K_LABELS)}
        things = {index for index, label in enumerate(ADE20K_LABELS) if label.isthing}
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
    check_task(task)
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
    check_same_size(example["image"], example[task], f"example 0 of {source}")
    if task != "semantic":
        segments_list(example["segments_info"])
    return dataset


def _load_dataset_source(source: str, split: str, load_dataset_kwargs: dict) -> datasets.Dataset:
    path = Path(source)
    check_local_or_hub(source, "The dataset", "a dataset folder, a .parquet file or a Hub dataset name")
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
                    # Reads every chunk and checks its checksum (PNG), without decoding: a truncated file fails here,
                    # not steps into training.
                    image.verify()
            except (OSError, SyntaxError, PIL.UnidentifiedImageError) as error:
                raise ValueError(f"Cannot read image file {path}: {error}") from error
        if sizes[0] != sizes[1]:
            raise ValueError(
                f"Size mismatch: {image_path} is {sizes[0][0]}x{sizes[0][1]} but its annotation {target_path} is "
                f"{sizes[1][0]}x{sizes[1][1]} (width x height)."
            )


def _cityscapes_train_id_table() -> tuple[np.ndarray, set[int]]:
    """labelId -> trainId lookup table (255 = ignore) and the thing train ids (cityscapesscripts' label table)."""
    lut = np.full(256, 255, np.uint8)
    for train_id, label in enumerate(CITYSCAPES_LABELS):
        lut[label.dataset_id] = train_id
    return lut, {train_id for train_id, label in enumerate(CITYSCAPES_LABELS) if label.isthing}


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


def segments_list(segments) -> list[dict]:
    """A `segments_info` value as a list of dicts: a list, a JSON string or `datasets`' dict of lists."""
    if isinstance(segments, str):
        segments = json.loads(segments)
    if isinstance(segments, Mapping):  # a dict of lists (datasets' `Sequence` of dicts)
        segments = [dict(zip(segments, values)) for values in zip(*segments.values())]
    if any(not isinstance(s, Mapping) or "id" not in s or "category_id" not in s for s in segments):
        raise ValueError("segments_info must be a list of dicts with 'id' and 'category_id' (and optional 'iscrowd').")
    return list(segments)


def panoptic_reference(example: Mapping, column: str) -> dict:
    """A panoptic/instance target as `{"segmentation", "segments_info"}` with segment ids 1..n (0 = void)."""
    segment_ids = segment_ids_from_image(example[column])
    segments = segments_list(example["segments_info"])
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


def semantic_reference(
    example: Mapping, segments: dict | None, ignore_index: int | None, reduce: bool, where: str
) -> np.ndarray:
    """The class map of an example for semantic metrics: its `semantic` column (reduced as ADE20K's with `reduce`),
    or else the classes of its panoptic `segments` (from `panoptic_reference`; crowd regions included, void pixels
    `ignore_index`)."""
    if "semantic" in example:
        classes = np.asarray(example["semantic"])
        if classes.ndim != 2:
            raise ValueError(
                f"Semantic maps must be single-channel class ids, got an array of shape {classes.shape} for {where}. "
                "Convert colour-coded annotations to class ids first."
            )
        classes = classes.astype(np.int64)
        return reduce_labels(classes, ignore_index) if reduce else classes
    lookup = [segment["category_id"] for segment in segments["segments_info"]]
    ignore_index = ignore_index if ignore_index is not None else -1
    return np.array([ignore_index] + lookup, np.int64)[segments["segmentation"]]


def check_same_size(image: PIL.Image.Image, target: PIL.Image.Image, where: str) -> None:
    if image.size != target.size:
        raise ValueError(
            f"Size mismatch in {where}: the image is {image.size[0]}x{image.size[1]} but its annotation is "
            f"{target.size[0]}x{target.size[1]} (width x height)."
        )


def load_evaluation_dataset(dataset: str, data_root: str | None, split: str, task: str):
    """
    The dataset of the command line: `"cityscapes"` / `"ade20k"` from a local tree under `data_root` (for ADE20K
    panoptic, with a `semantic` column of the semantic annotations, which the official mIoU of panoptic models
    uses), or any source of [`load_segmentation_dataset`] (a local folder or file, a Hub dataset).
    """
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
